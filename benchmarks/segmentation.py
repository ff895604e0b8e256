"""Segmentation runs side by side with the constant-class baselines on the same eval labels.

    python benchmarks/segmentation.py --workdir /tmp/seg/fcn8s_synthetic [--workdir ...] [--plot curves.png]

For each finished run: its final ``segmentation`` scores (``metrics.jsonl``), the training wall
time and images/s (from the train log, evaluations and checkpoints included), the time of its
last evaluation, and the mIoU at every evaluation (step @ minutes). Per data set, the constant
baselines (every pixel one class: ``jaxvision/tools/mask_baseline.py``; with more than two
classes only the best of them) scored on the labels the runs are scored on. ``--plot``: mIoU against wall-clock minutes, one curve per run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from jaxvision.config import workdir_config
from jaxvision.tools.mask_baseline import constant_baselines

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _runs import curve, markdown, run_row  # noqa: E402

KEYS = ("mIoU", "pixel_accuracy", "mean_accuracy", "fw_iou")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--workdir", action="append", required=True)
    p.add_argument("--plot", default="")
    a = p.parse_args()
    out, baselines, curves = [], {}, {}
    for w in map(Path, a.workdir):
        config = workdir_config(w)
        row = run_row(w, config, KEYS)
        curves[w.name] = curve(w, "mIoU")
        row["curve"] = ", ".join(f"{v:.3f}@{m:.1f}" for _, m, v in curves[w.name])
        out.append(row)
        data_key = (str(config.data.name), str(config.data.eval_split), str(config.data.eval_pp),
                    json.dumps(config.data.procedural.to_dict(), sort_keys=True))
        if data_key not in baselines:
            names = ["background"] + [str(k) for k in range(1, int(config.data.num_classes))]
            scored = constant_baselines(config)
            if len(scored) > 2:  # many classes: only the best constant class
                best = max(scored, key=lambda k: scored[k]["mIoU"])
                scored = {best: scored[best]}
            for k, scores in scored.items():
                baselines[data_key + (k,)] = {"run": f"all '{names[k]}' ({config.data.name})",
                                              "model": "baseline", **{c: scores[c] for c in KEYS}}
    cols = ["run", "model", "steps", "train_min", "img_s", *KEYS, "eval_s", "curve"]
    print(markdown(out + list(baselines.values()), cols))
    if a.plot:
        from matplotlib.figure import Figure
        fig = Figure(figsize=(6, 4))
        ax = fig.add_subplot()
        for name, points in curves.items():
            ax.plot([m for _, m, _ in points], [v for _, _, v in points], marker="o", label=name)
        ax.set_xlabel("wall-clock minutes (2-core CPU)")
        ax.set_ylabel("mIoU")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.savefig(a.plot, dpi=120, bbox_inches="tight")
        print(f"wrote {a.plot}")


if __name__ == "__main__":
    main()
