"""Pooling on this backend: ``flax.linen``'s max and average pools (whose gradients are XLA's
``select_and_scatter`` and an input-padded ``reduce_window``) vs ``jaxvision.ops.pool``'s
backward pass by output phases (the CPU default), per pooling layer of the train-step models.

    python benchmarks/pool.py [--models default lenet5 ...] [--repeats 5]

The layer shapes come from tracing each model of ``benchmarks/train_step.py`` at its batch.
For each layer: the forward, and forward+backward of both formulations, in milliseconds
(median over interleaved rounds, each round timing every formulation once), and the sum per
train step over the model's pooling layers.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import linen as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from jaxvision.ops import pool as P  # noqa: E402
from train_step import CASES, _config, _model  # noqa: E402


def _layers(case: str) -> list[tuple]:
    """(kind, input shape, window, strides, padding) of every pool in the case's model."""
    _, _, shape, batch, _ = _config(case)
    model = _model(case)[2]
    seen: list[tuple] = []
    originals = P.max_pool, P.avg_pool

    def recorder(kind, fn):
        def wrapped(x, window, strides=None, padding="VALID", *a, **kw):
            seen.append((kind, tuple(x.shape), tuple(window), tuple(strides or (1,) * len(window)),
                         padding if isinstance(padding, str) else tuple(map(tuple, padding))))
            return fn(x, window, strides, padding, *a, **kw)
        return wrapped

    P.max_pool, P.avg_pool = recorder("max", originals[0]), recorder("avg", originals[1])
    try:
        x = jax.ShapeDtypeStruct((batch,) + tuple(shape), jnp.float32)
        jax.eval_shape(lambda x: model.init({"params": jax.random.key(0),
                                             "dropout": jax.random.key(1)}, x, train=True), x)
    finally:
        P.max_pool, P.avg_pool = originals
    # init traces the model once, so this lists each layer once.
    return seen


def _time(fn, *args, reps: int) -> float:
    jax.block_until_ready(fn(*args))
    t = time.perf_counter()
    for _ in range(reps):
        jax.block_until_ready(fn(*args))
    return (time.perf_counter() - t) / reps * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--repeats", type=int, default=5, help="interleaved rounds")
    p.add_argument("--reps", type=int, default=5, help="calls per timing")
    args = p.parse_args()
    print(f"backend {jax.default_backend()}, {jax.device_count()} device(s), jax {jax.__version__}")
    print("| model | pool | input | window / stride / padding | count | fwd ms | fwd+bwd flax "
          "| fwd+bwd phases | ratio |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|")
    totals = []
    for case in args.models:
        layers = _layers(case)
        counts: dict[tuple, int] = {}
        for layer in layers:
            counts[layer] = counts.get(layer, 0) + 1
        step_flax = step_phases = 0.0
        for (kind, shape, window, strides, padding), count in counts.items():
            x = jax.random.normal(jax.random.key(0), shape)
            x = jnp.maximum(x, 0)   # pools follow a ReLU: ties of zeros
            flax_fn = nn.max_pool if kind == "max" else nn.avg_pool
            ours_fn = P.max_pool if kind == "max" else P.avg_pool

            fwd = jax.jit(lambda x: flax_fn(x, window, strides, padding))
            # A linear loss: the output gradient arrives as an array, as it does from the next
            # layer's backward pass (a loss like sum(sin(y)) would be recomputed inside the
            # fused backward and time the cosine instead).
            c = jax.random.normal(jax.random.key(1), jax.eval_shape(fwd, x).shape)

            def fb(f):
                return jax.jit(lambda x, c: jax.grad(lambda z: jnp.vdot(
                    f(z, window, strides, padding), c))(x))

            runs = {"fwd": fwd, "flax": fb(flax_fn), "phases": fb(ours_fn)}
            got = {k: [] for k in runs}
            for _ in range(args.repeats):
                for k, f in runs.items():
                    got[k].append(_time(f, *((x,) if k == "fwd" else (x, c)), reps=args.reps))
            ms = {k: statistics.median(v) for k, v in got.items()}
            step_flax += count * ms["flax"]
            step_phases += count * ms["phases"]
            pad = padding if isinstance(padding, str) else str(padding).replace(" ", "")
            print(f"| {case} | {kind} | {shape} | {window[0]}x{window[1]} / {strides[0]} / {pad} "
                  f"| {count} | {ms['fwd']:.2f} | {ms['flax']:.2f} | {ms['phases']:.2f} "
                  f"| {ms['flax'] / ms['phases']:.1f}x |", flush=True)
        totals.append((case, step_flax, step_phases))
    print("\n| model | pools fwd+bwd per step, flax ms | phases ms |")
    print("|---|---:|---:|")
    for case, a, b in totals:
        print(f"| {case} | {a:.1f} | {b:.1f} |")


if __name__ == "__main__":
    main()
