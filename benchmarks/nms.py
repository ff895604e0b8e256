"""Jitted ``jaxvision.ops.nms.nms`` on random boxes: compile time and run time.

    python benchmarks/nms.py [--n 1000 10000] [--max-output 100 1000] [--repeats 20]

Boxes are uniform in a 1024 x 1024 image with sides of 8-256 pixels and uniform scores, IoU
threshold 0.5. For each (N, max_output): compile = lower + compile of the jitted function; ms =
median of ``--repeats`` timed calls after one warm-up call. The greedy loop stops early once no
candidate is left, so ``kept`` (how many boxes survived) matters as much as ``max_output``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxvision.ops.nms import nms  # noqa: E402


def random_boxes(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    yx = rng.uniform(0, 1024, (n, 2))
    hw = rng.uniform(8, 256, (n, 2))
    boxes = np.concatenate([yx, yx + hw], 1).astype(np.float32)
    return boxes, rng.uniform(0, 1, n).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--max-output", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, {os.cpu_count()} CPUs, "
          "IoU threshold 0.5")
    print(f"{'N':>7} {'max_output':>10} {'kept':>5} {'compile s':>9} {'median ms':>9}")
    for n in args.n:
        boxes, scores = (jax.device_put(a) for a in random_boxes(rng, n))
        for max_output in args.max_output:
            fn = jax.jit(nms, static_argnames=("iou_threshold", "max_output"))
            t = time.perf_counter()
            compiled = fn.lower(boxes, scores, iou_threshold=0.5, max_output=max_output).compile()
            compile_s = time.perf_counter() - t
            _, keep = jax.block_until_ready(compiled(boxes, scores))
            times = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                jax.block_until_ready(compiled(boxes, scores))
                times.append(time.perf_counter() - t)
            print(f"{n:>7} {max_output:>10} {int(keep.sum()):>5} {compile_s:>9.2f} "
                  f"{1e3 * statistics.median(times):>9.2f}")


if __name__ == "__main__":
    main()
