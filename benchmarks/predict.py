"""Throughput of `predict` on real photos, and of an exported model against the predictor.

    .venv/bin/python benchmarks/predict.py [--workdir W] [--images DIR] [--repeat 3]

Without --workdir it trains `experiments/classification.py:default` for 30 steps in a temporary
folder (speed does not depend on accuracy). Without --images it uses COCO128's 128 JPEGs from
../shared/data/coco128 (640 px photos), else 128 random 640x480 JPEGs it writes. Prints a table:
images/s of the whole `predict` command path (decode, resize, eval pipeline, model, JSON, with
and without pictures), of the model alone on prepared batches (predictor vs exported file),
first-call (compile) times, the export's size, and the peak RSS.
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _train(workdir: Path) -> None:
    from jaxvision.config import get_config
    from jaxvision.experiment import load_experiment
    from jaxvision.train import loop
    config = get_config("experiments/classification.py:default",
                        ["train.steps=30", "train.eval_every=0", "train.checkpoint_every=0",
                         "optim.warmup_steps=0", "data.procedural.num_eval=64"])
    exp = dataclasses.replace(load_experiment("experiments/classification.py"), report=None)
    loop.train(config, workdir, experiment=exp, progress=False)


def _images(folder: Path | None, tmp: Path) -> Path:
    if folder is not None:
        return folder
    coco = ROOT.parent / "shared" / "data" / "coco128" / "images"
    if coco.is_dir():
        return coco
    from PIL import Image
    out = tmp / "images"
    out.mkdir()
    rng = np.random.default_rng(0)
    for i in range(128):
        Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(out / f"{i}.jpg")
    return out


def _timed(fn, repeat: int) -> tuple[float, float]:
    """(first call seconds, median of the next ``repeat`` calls)."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return first, float(np.median(times))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--images", type=Path, default=None)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    import jax
    from jaxvision import export, inference
    from jaxvision.tools.predict import list_inputs, predict_files
    from jaxvision.data.local import read_image

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        workdir = args.workdir
        if workdir is None:
            workdir = tmp / "run"
            _train(workdir)
        images = _images(args.images, tmp)
        files = list_inputs([images])
        n = len(files)
        predictor = inference.load_predictor(workdir, batch_size=64)
        rows = []
        for pictures in (False, True):
            first, med = _timed(lambda: predict_files(predictor, [images], tmp / "out",
                                                      pictures=pictures), args.repeat)
            rows.append((f"predict command path, pictures={'on' if pictures else 'off'}",
                         first, med, n / med))
        prepared = [predictor.prepare({"image": read_image(f, predictor.model_info.channels)})
                    for f in files]
        first, med = _timed(lambda: predictor(prepared), args.repeat)
        rows.append(("model only: Predictor (jit over the mesh)", first, med, n / med))
        path = tmp / "model.jvx"
        t0 = time.perf_counter()
        meta = export.export_predictor(predictor, path)
        export_s = time.perf_counter() - t0
        loaded = export.load(path)
        batch = np.stack([e["image"] for e in prepared])
        first, med = _timed(lambda: loaded(batch), args.repeat)
        rows.append(("model only: exported file, one call", first, med, n / med))
        got = loaded(batch)["logits"]
        want = np.stack([o["logits"] for o in predictor(prepared)])
        diff = float(np.max(np.abs(got - want)))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{n} images from {images}; workdir {workdir}; backend {jax.default_backend()}, "
          f"{jax.device_count()} device(s)")
    print("| what | first call s | median s | images/s |\n|---|---:|---:|---:|")
    for name, first, med, ips in rows:
        print(f"| {name} | {first:.2f} | {med:.3f} | {ips:.0f} |")
    print(f"export: {export_s:.2f} s, {meta['bytes'] / 1e6:.2f} MB; max |exported - predictor| "
          f"logits = {diff:.2e}; peak RSS {peak:.0f} MB")


if __name__ == "__main__":
    main()
