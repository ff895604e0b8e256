"""Detection runs side by side with the random-box baseline on the same eval split.

    python benchmarks/detection.py --workdir /tmp/det/retinanet_synthetic [--workdir ...] [--time-eval]

For each finished run: its final COCO metrics (``metrics.jsonl``), the training wall time and
images/s (from the train log times, evaluations and checkpoints included), the time of its
last evaluation (from the log: the eval record's time minus the train record's of the same
step; the run's first evaluation includes compiling the evaluators), and with
``--time-eval`` one more evaluation of the latest checkpoint timed here
(``loop.evaluate_checkpoint``, compilation included, then a second call without). The last row
of each data set is the random-box baseline (``jaxvision/tools/box_baseline.py``) on that run's
eval split.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from jaxvision.config import workdir_config
from jaxvision.tools.box_baseline import random_boxes

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _runs import markdown, run_row  # noqa: E402

KEYS = ("AP", "AP50", "AP75", "APs", "APm", "AR100")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--workdir", action="append", required=True)
    p.add_argument("--time-eval", action="store_true")
    a = p.parse_args()
    out, baselines = [], {}
    for w in map(Path, a.workdir):
        config = workdir_config(w)
        row = run_row(w, config, KEYS)
        if a.time_eval:
            from jaxvision.train import loop
            t = time.perf_counter()
            loop.evaluate_checkpoint(config, w)
            row["eval_s_first"] = time.perf_counter() - t
            t = time.perf_counter()
            loop.evaluate_checkpoint(config, w)
            row["eval_s_again"] = time.perf_counter() - t
        out.append(row)
        data_key = (str(config.data.name), str(config.data.eval_split), str(config.data.eval_pp),
                    json.dumps(config.data.procedural.to_dict(), sort_keys=True))
        if data_key not in baselines:
            base = random_boxes(config)
            baselines[data_key] = {"run": f"random boxes ({config.data.name})", "model": "baseline",
                                   **{k: base[k] for k in KEYS}}
    cols = ["run", "model", "steps", "train_min", "img_s", *KEYS, "eval_s"] + (
        ["eval_s_first", "eval_s_again"] if a.time_eval else [])
    print(markdown(out + list(baselines.values()), cols))


if __name__ == "__main__":
    main()
