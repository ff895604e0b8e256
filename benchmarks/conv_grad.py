"""Convolution weight gradient on this backend: every formulation of ``jaxvision.ops.conv`` per
conv shape of the CIFAR ResNet-20 and ResNet-18 (batch 128, NHWC, float32), beside the forward
and the input gradient.

    python benchmarks/conv_grad.py [--batch 128] [--repeats 5] [--models resnet20 resnet18]

For each distinct shape: XLA's forward and input gradient GFLOP/s and those of the shipped
forward formulation (``choose_forward``: 'elementwise' / 'im2col' / 'xla'), then the kernel gradient's
GFLOP/s with XLA's backward-filter convolution ('xla') and the rewrite ('im2col'), measured
interleaved (every formulation once per round, median over rounds, so machine noise hits all
alike), the fastest, and what ``jaxvision.ops.conv.measured_rule`` picks. FLOPs = 2 * N * Ho * Wo
* KH * KW * C * O for each. Then, per model, the milliseconds one train step spends in its
convolutions (each shape times its count in the model; no input gradient for the stem): the
ceiling that the convolutions alone put on the step.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxvision.ops import conv as C

# (input H=W, C, O, kernel, stride): count in the model, for each distinct convolution (3x3
# 'SAME' / 1x1 shortcuts); the first is the stem.
MODELS = {
    "resnet20": {(32, 3, 16, 3, 1): 1, (32, 16, 16, 3, 1): 6, (32, 16, 32, 3, 2): 1,
                 (16, 32, 32, 3, 1): 5, (16, 32, 64, 3, 2): 1, (8, 64, 64, 3, 1): 5},
    "resnet18": {(32, 3, 64, 3, 1): 1, (32, 64, 64, 3, 1): 4, (32, 64, 128, 3, 2): 1,
                 (16, 128, 128, 3, 1): 3, (32, 64, 128, 1, 2): 1, (16, 128, 256, 3, 2): 1,
                 (8, 256, 256, 3, 1): 3, (16, 128, 256, 1, 2): 1, (8, 256, 512, 3, 2): 1,
                 (4, 512, 512, 3, 1): 3, (8, 256, 512, 1, 2): 1},
    "vgg11": {(32, 3, 64, 3, 1): 1, (16, 64, 128, 3, 1): 1, (8, 128, 256, 3, 1): 1,
              (8, 256, 256, 3, 1): 1, (4, 256, 512, 3, 1): 1, (4, 512, 512, 3, 1): 1,
              (2, 512, 512, 3, 1): 2},
    # Run these two at their own batch (--batch 32 / --batch 16).
    "alexnet": {(224, 3, 64, 11, 4): 1, (27, 64, 192, 5, 1): 1, (13, 192, 384, 3, 1): 1,
                (13, 384, 256, 3, 1): 1, (13, 256, 256, 3, 1): 1},
    "unet": {(64, 3, 32, 3, 1): 1, (64, 32, 32, 3, 1): 2, (32, 32, 64, 3, 1): 1,
             (32, 64, 64, 3, 1): 2, (16, 64, 128, 3, 1): 1, (16, 128, 128, 3, 1): 2,
             (8, 128, 256, 3, 1): 1, (8, 256, 256, 3, 1): 1, (16, 256, 128, 3, 1): 1,
             (32, 128, 64, 3, 1): 1, (64, 64, 32, 3, 1): 1},
}


def _grad_fn(formulation: str, strides, padding):
    def loss(x, w, dy):
        y = C.conv_general_dilated(x, w, strides, padding, dimension_numbers=C._NHWC,
                                   formulation=formulation)
        return jnp.sum(y * dy)
    return jax.jit(jax.grad(loss, argnums=1))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--models", nargs="+", default=["resnet20", "resnet18"], choices=list(MODELS))
    args = p.parse_args()
    shapes = []
    for m in args.models:
        shapes += [s for s in MODELS[m] if s not in shapes]
    rng = np.random.default_rng(0)
    print(f"backend {jax.default_backend()}, {jax.device_count()} device(s), batch {args.batch}, "
          f"float32, median of {args.repeats} interleaved rounds; GFLOP/s")
    print("| input (HxWxC) | kernel | out | stride | fwd xla | fwd chosen | dx xla | dx chosen | "
          + " | ".join(f"dW {f}" for f in C.FORMULATIONS) + " | dW fastest | dW chosen |")
    print("|---|---|---:|---:|---:|---|---:|---:|" + "---:|" * len(C.FORMULATIONS) + "---|---|")
    ms = {}
    for h, c, o, k, s in shapes:
        x = jnp.asarray(rng.standard_normal((args.batch, h, h, c), dtype=np.float32))
        w = jnp.asarray(rng.standard_normal((k, k, c, o), dtype=np.float32) * 0.05)
        ho = -(-h // s)
        dy = jnp.asarray(rng.standard_normal((args.batch, ho, ho, o), dtype=np.float32))
        flops = 2 * args.batch * ho * ho * k * k * c * o
        fns = {"fwd": jax.jit(lambda x, w: lax.conv_general_dilated(
            x, w, (s, s), "SAME", dimension_numbers=C._NHWC))}
        fns["dx"] = jax.jit(jax.grad(lambda x, w, dy: jnp.sum(lax.conv_general_dilated(
            x, w, (s, s), "SAME", dimension_numbers=C._NHWC) * dy)))
        # The shipped forward and input gradient (kernel gradient left to XLA: not timed here).
        fwd_form = C.choose_forward(x.shape, w.shape, (ho, ho))
        fns["fwd_chosen"] = jax.jit(lambda x, w: C.conv_general_dilated(
            x, w, (s, s), "SAME", dimension_numbers=C._NHWC, forward=fwd_form, formulation="xla"))
        fns["dx_chosen"] = jax.jit(jax.grad(lambda x, w, dy: jnp.sum(C.conv_general_dilated(
            x, w, (s, s), "SAME", dimension_numbers=C._NHWC, forward=fwd_form,
            formulation="xla") * dy)))
        for f in C.FORMULATIONS:
            fns[f] = _grad_fn(f, (s, s), "SAME")
        ref = np.asarray(fns["xla"](x, w, dy))
        for f in C.FORMULATIONS[1:]:
            got = np.asarray(fns[f](x, w, dy))
            err = np.max(np.abs(got - ref)) / max(np.max(np.abs(ref)), 1e-30)
            assert err < 1e-4, (f, (h, c, o, k, s), err)
        calls = {"fwd": lambda: fns["fwd"](x, w).block_until_ready(),
                 "dx": lambda: fns["dx"](x, w, dy).block_until_ready(),
                 "fwd_chosen": lambda: fns["fwd_chosen"](x, w).block_until_ready(),
                 "dx_chosen": lambda: fns["dx_chosen"](x, w, dy).block_until_ready()}
        for f in C.FORMULATIONS:
            calls[f] = (lambda f=f: fns[f](x, w, dy).block_until_ready())
        for call in calls.values():
            call()                                           # compile and warm up
        times = {name: [] for name in calls}
        for _ in range(args.repeats):
            for name, call in calls.items():
                t0 = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - t0)
        rate = {name: flops / statistics.median(t) / 1e9 for name, t in times.items()}
        fastest = max(C.FORMULATIONS, key=lambda f: rate[f])
        chosen = C.measured_rule(x.shape, w.shape, (s, s))
        ms[(h, c, o, k, s)] = {name: 1000 * statistics.median(t) for name, t in times.items()}
        ms[(h, c, o, k, s)]["chosen"] = ms[(h, c, o, k, s)][chosen]
        print(f"| {h}x{h}x{c} | {k}x{k} | {o} | {s} | {rate['fwd']:.1f} | "
              f"{rate['fwd_chosen']:.1f} ({fwd_form}) | {rate['dx']:.1f} | {rate['dx_chosen']:.1f} | "
              + " | ".join(f"{rate[f]:.1f}" for f in C.FORMULATIONS)
              + f" | {fastest} | {chosen} |", flush=True)
    print("\nms per train step in the convolutions (shape times count; the stem has no dx):")
    print("| model | fwd xla | fwd chosen | dx xla | dx chosen | dW xla | dW chosen | total xla | "
          "total chosen |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for m in args.models:
        tot = {name: sum(ms[sh][name] * n * (0 if name in ("dx", "dx_chosen") and i == 0 else 1)
                         for i, (sh, n) in enumerate(MODELS[m].items()))
               for name in ("fwd", "fwd_chosen", "dx", "dx_chosen", "xla", "chosen")}
        print(f"| {m} | {tot['fwd']:.0f} | {tot['fwd_chosen']:.0f} | {tot['dx']:.0f} | "
              f"{tot['dx_chosen']:.0f} | {tot['xla']:.0f} | {tot['chosen']:.0f} | "
              f"{tot['fwd'] + tot['dx'] + tot['xla']:.0f} | "
              f"{tot['fwd_chosen'] + tot['dx_chosen'] + tot['chosen']:.0f} |")


if __name__ == "__main__":
    main()
