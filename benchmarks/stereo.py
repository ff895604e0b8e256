"""Stereo runs scored on the four Middlebury pairs side by side, with inference time per pair.

    python benchmarks/stereo.py --run /tmp/st/ncc_middlebury --run /tmp/st/dispnet_p32:0.5 \
        --run /tmp/st/mccnn_synthetic:1:64 [--data ../shared/data/stereo_middlebury] [--repeat 3]

``--run WORKDIR[:SCALE[:MAX_DISPARITY[:KEY=VALUE...]]]``: a finished run (any data), scored on the pairs the
way ``experiments/stereo.py``'s Middlebury configs score (``middlebury_eval``): each pair whole,
resized by SCALE for the model (default 1), the map resized back with its values / SCALE, every
pixel with ground truth at full resolution. MAX_DISPARITY replaces the run's range (only for
models whose parameters do not depend on it: ``classical``, ``mccnn``; 0 keeps the run's);
KEY=VALUE are config overrides (e.g. ``model.aggregate=5``). Prints, per run, the
pooled EPE / bad-2 and each pair's, and the milliseconds of one ``predict`` call per pair (the
median of ``--repeat`` calls after one compiling call; the pair already resized, on the host's
default device). A second table gives each run's training as logged (``_runs.run_row``: steps,
wall minutes, train images/s, and the final EPE / bad-1 / bad-2 on its own eval split).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from jaxvision.config import load_module, workdir_config
from jaxvision.data.pipeline import make_loader
from jaxvision.inference import load_predictor
from jaxvision.train.loop import evaluate_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _runs import markdown, run_row  # noqa: E402

STEREO = load_module(Path(__file__).resolve().parents[1] / "experiments" / "stereo.py")
PAIRS = ("cones", "teddy", "tsukuba", "venus")  # the source's order (sorted folder names)


def middlebury_config(workdir: Path, scale: float, max_disparity: int | None, data: str | None,
                      overrides: tuple[str, ...] = ()):
    """The run's config, scored on the Middlebury pairs (``STEREO.middlebury_eval``)."""
    config = STEREO.middlebury_eval(workdir_config(workdir, None, overrides), scale)
    if data:
        config.data.path = data
    if max_disparity:
        if str(config.model.name) not in ("classical", "mccnn"):
            raise SystemExit(f"{workdir}: model {config.model.name} has parameters sized by its "
                             "max_disparity; score it at the range it was trained with.")
        config.model.max_disparity = int(max_disparity)
    config.model.report_pictures = 0
    config.train.batch_size = 1    # the build reads the (four-pair) training split too
    return config


def pair_ms(workdir: Path, config, repeat: int) -> list[float]:
    """Median ms of one ``predict`` call per pair (after a compiling call)."""
    predictor = load_predictor(workdir, "latest", config=config, batch_size=1)
    out = []
    for batch in make_loader(config.data, "all", global_batch=1, mode="eval", seed=0):
        example = [{"image": batch["image"][0], "image_right": batch["image_right"][0]}]
        predictor(example)
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            predictor(example)
            times.append(1000 * (time.perf_counter() - start))
        out.append(float(np.median(times)))
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--run", action="append", required=True, help="WORKDIR[:SCALE[:MAX_DISPARITY[:KEY=VALUE...]]]")
    p.add_argument("--data", default=None, help="the Middlebury folder (default: the configs')")
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    rows, trained = [], {}
    for spec in a.run:
        parts = spec.split(":")
        w = Path(parts[0])
        scale = float(parts[1]) if len(parts) > 1 else 1.0
        md = int(parts[2]) if len(parts) > 2 and parts[2] else None
        config = middlebury_config(w, scale, md, a.data, tuple(parts[3:]))
        res = evaluate_checkpoint(config, w)
        epe, bad2 = np.asarray(res["EPE_per_image"]), np.asarray(res["bad2_per_image"])
        ms = pair_ms(w, config, a.repeat)
        row = {"run": w.name + "".join(f" {o}" for o in parts[3:]), "model": str(config.model.name), "scale": scale,
               "D": int(config.model.max_disparity), "EPE": res["EPE"], "bad2": res["bad2"],
               "ms/pair": float(np.mean(ms))}
        for i, name in enumerate(PAIRS[:len(epe)]):
            row[name] = f"{epe[i]:.2f} / {bad2[i]:.1f} / {ms[i]:.0f}"
        rows.append(row)
        if w.name not in trained:
            own = workdir_config(w)
            trained[w.name] = {**run_row(w, own, ("EPE", "bad1", "bad2")), "data": str(own.data.name)}
        print(f"{spec}: EPE {res['EPE']:.3f} bad2 {res['bad2']:.2f}", flush=True)
    cols = ["run", "model", "scale", "D", "EPE", "bad2", "ms/pair", *PAIRS]
    print("\nper pair: EPE px / bad2 % / ms")
    print(markdown(rows, cols))
    print("\ntraining (own eval split)")
    print(markdown(list(trained.values()), ["run", "model", "data", "steps", "train_min", "img_s",
                                            "EPE", "bad1", "bad2"]))


if __name__ == "__main__":
    main()
