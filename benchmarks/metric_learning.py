"""Trained embeddings next to the raw-pixel baseline on the same eval split, one table.

    .venv/bin/python benchmarks/metric_learning.py --workdir runs/triplet_mnist [--workdir ...]
        [--config.data.data_dir=/tmp/tfds]

Each workdir's final eval record (its `metrics.jsonl`) gives the trained rows; the raw-pixel row
runs the first workdir's own `retrieval` and `verification` evaluators on its eval images
(after `data.eval_pp`, scaled to [0, 1]) instead of embeddings (`jaxvision.tools.embed`), and
the train rate is the number of training images over the time between the first and the last
train record (evaluations excluded).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

COLUMNS = ("recall_at_1", "recall_at_8", "map_at_r", "knn_accuracy", "nmi",
           "verification_accuracy", "verification_auc", "tar_at_far_0.001")


def _rate(records: list[dict], batch: int) -> float:
    train = [r for r in records if r.get("split") == "train"]
    evals = [r for r in records if r.get("split") == "eval"]
    if len(train) < 2:
        return float("nan")
    t0, t1 = train[0]["time"], train[-1]["time"]
    # Evaluations between the two records took time too: subtract each one's gap.
    eval_s = 0.0
    for e in evals:
        before = [r["time"] for r in train if r["time"] <= e["time"]]
        if before and t0 < e["time"] < t1:
            eval_s += e["time"] - before[-1]
    return (train[-1]["step"] - train[0]["step"]) * batch / max(t1 - t0 - eval_s, 1e-9)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--workdir", action="append", required=True)
    args, rest = p.parse_known_args()
    overrides = [a[2:] for a in rest if a.startswith("--config.")]
    from jaxvision.config import workdir_config
    from jaxvision.tools.embed import pixel_baseline
    from jaxvision.train.logs import read_metrics
    print("| run | loss | " + " | ".join(COLUMNS) + " | train img/s |")
    print("|---|---|" + "---:|" * (len(COLUMNS) + 1))
    for w in args.workdir:
        config = workdir_config(w, None, overrides)
        records = read_metrics(w)
        final = [r for r in records if r.get("split") == "eval"][-1]
        loss = config.loss.name + (f"/{config.loss.mining}" if config.loss.name == "triplet" else "")
        cells = " | ".join(f"{final.get(c, float('nan')):.4f}" for c in COLUMNS)
        print(f"| {Path(w).name} (step {final['step']}) | {loss} | {cells} | "
              f"{_rate(records, int(config.train.batch_size)):.0f} |", flush=True)
    base = pixel_baseline(workdir_config(args.workdir[0], None, overrides))
    cells = " | ".join(f"{base.get(c, float('nan')):.4f}" for c in COLUMNS)
    print(f"| raw pixels (same split, same evaluators) | - | {cells} | - |")
    print(json.dumps({k: v for k, v in base.items()}))


if __name__ == "__main__":
    main()
