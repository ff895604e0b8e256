"""Batch norm in training, alone: ``flax.linen.BatchNorm`` vs ``jaxvision.models.layers.BatchNorm``.

    python benchmarks/batch_norm.py [--rounds 5] [--calls 10]

For each activation shape of the zoo's batch-norm models (ResNet-20 and VGG-11 on CIFAR at
batch 128, U-Net at 64x64 batch 16, the small CNN at 48x48 batch 64), the jitted forward and
backward pass (``value_and_grad`` of ``sum(relu(bn(x)) * g)`` with respect to x, scale and bias,
running statistics updated) of both layers, timed in interleaved rounds (median ms per call).
Prints a table with the ratio and the largest gradient difference between the two, relative to
the largest gradient of its array.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jaxvision.models import layers  # noqa: E402

SHAPES = {
    "ResNet-20 stage 1": (128, 32, 32, 16),
    "ResNet-20 stage 2": (128, 16, 16, 32),
    "ResNet-20 stage 3": (128, 8, 8, 64),
    "VGG-11 / ResNet-18 32x32x64": (128, 32, 32, 64),
    "VGG-11 / ResNet-18 8x8x256": (128, 8, 8, 256),
    "U-Net 64x64x32": (16, 64, 64, 32),
    "U-Net 16x16x128": (16, 16, 16, 128),
    "small CNN 48x48x16": (64, 48, 48, 16),
}


def _step(module: nn.Module):
    def loss(x, params, stats, g):
        y, new = module.apply({"params": params, "batch_stats": stats}, x, mutable=["batch_stats"])
        return jnp.sum(jax.nn.relu(y) * g), new

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--calls", type=int, default=10, help="calls per layer per round")
    a = p.parse_args()
    print(f"jax {jax.__version__}, backend {jax.default_backend()}; median ms per forward+backward "
          f"call over {a.rounds} interleaved rounds of {a.calls}\n")
    print("| shape (N, H, W, C) | flax ms | jaxvision ms | flax / jaxvision | max grad diff (relative) |")
    print("|---|---:|---:|---:|---:|")
    kinds = {"flax": _step(nn.BatchNorm(use_running_average=False, momentum=0.9)),
             "jaxvision": _step(layers.BatchNorm(momentum=0.9))}
    for name, shape in SHAPES.items():
        r = np.random.default_rng(0)
        c = shape[-1]
        x = jnp.asarray(r.normal(size=shape), jnp.float32)
        g = jnp.asarray(r.normal(size=shape), jnp.float32)
        params = {"scale": jnp.ones(c), "bias": jnp.zeros(c)}
        stats = {"mean": jnp.zeros(c), "var": jnp.ones(c)}
        outs = {k: jax.block_until_ready(f(x, params, stats, g)) for k, f in kinds.items()}
        diff = max(float(jnp.max(jnp.abs(u - v)) / jnp.max(jnp.abs(u))) for u, v in zip(
            jax.tree.leaves(outs["flax"][1]), jax.tree.leaves(outs["jaxvision"][1])))
        ms: dict[str, list[float]] = {k: [] for k in kinds}
        for _ in range(a.rounds):
            for k, f in kinds.items():
                t0 = time.perf_counter()
                for _ in range(a.calls):
                    out = f(x, params, stats, g)
                jax.block_until_ready(out)
                ms[k].append(1000 * (time.perf_counter() - t0) / a.calls)
        m = {k: statistics.median(v) for k, v in ms.items()}
        print(f"| {name} {shape} | {m['flax']:.2f} | {m['jaxvision']:.2f} | "
              f"{m['flax'] / m['jaxvision']:.2f}x | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
