"""Transposed convolutions on this backend: the input-dilated convolution (``jax.vjp`` of a
strided convolution, what ``lax.conv_transpose`` computes) vs one stride-1 convolution over
the output's phases (``jaxvision.ops.conv``, the CPU default), per upsampling layer of the zoo.

    python benchmarks/conv_transpose.py [--repeats 5] [--steps CONFIG ...]

For each layer shape (collected by tracing the models below at their training batch): forward
and forward+backward milliseconds of both formulations, measured interleaved (median over
rounds), and their ratio. With ``--steps``, the whole train step of each experiment config
(``bench``'s, one synthetic batch) with each formulation, alternated twice.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jaxvision.ops import conv as C  # noqa: E402

# (config, batch): the experiments whose models upsample with conv_transpose.
CONFIGS = {
    "experiments/segmentation.py:unet_synthetic": 16,
    "experiments/segmentation.py:default": 16,
    "experiments/stereo.py:default": 16,
    "experiments/detection.py:maskrcnn_synthetic": 8,
}


def _layer_shapes(spec: str, batch: int) -> list[tuple]:
    """(x shape, kernel shape, stride, padding) of every conv_transpose in the spec's model."""
    from jaxvision.config import get_config
    from jaxvision.train.bench import model_and_input_shape
    config = get_config(spec, [f"train.batch_size={batch}"])
    model, shape = model_and_input_shape(config)
    seen, original = [], C.conv_transpose

    def record(x, kernel, stride, padding=0, *a, **k):
        seen.append((tuple(x.shape), tuple(kernel.shape), stride, padding))
        return original(x, kernel, stride, padding, *a, **k)

    C.conv_transpose = record
    try:
        shape = tuple(shape)
        if "stereo" in spec:   # the pair, left channels first
            shape = shape[:-1] + (2 * shape[-1],)
        x = jnp.zeros((batch,) + shape)
        jax.eval_shape(lambda: model.init(jax.random.key(0), x))
    finally:
        C.conv_transpose = original
    return list(dict.fromkeys(seen))


def _timed(fn, args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))
    t = time.perf_counter()
    for _ in range(repeats):
        out = fn(*args)
    jax.block_until_ready(out)
    return 1000 * (time.perf_counter() - t) / repeats


@contextlib.contextmanager
def _formulation(formulation: str):
    """Within this block ``conv_transpose`` is computed by ``formulation`` ('xla' / 'phases')."""
    saved = C.choose_transpose
    C.choose_transpose = lambda backend=None: formulation
    try:
        yield
    finally:
        C.choose_transpose = saved


def _with(formulation: str, fn):
    """``fn`` traced with ``formulation`` (jit traces on the first call)."""
    def run(*args):
        with _formulation(formulation):
            return fn(*args)
    return run


def layers(repeats: int) -> None:
    print(f"{'layer (x -> kernel, stride, pad)':58s} {'fwd xla':>8s} {'fwd ph':>8s} "
          f"{'f+b xla':>9s} {'f+b ph':>8s} {'f+b ratio':>9s}")
    for spec, batch in CONFIGS.items():
        for xs, ks, s, p in _layer_shapes(spec, batch):
            x = jax.random.normal(jax.random.key(0), xs)
            k = jax.random.normal(jax.random.key(1), ks) * 0.1
            fns = {}
            for form in ("xla", "phases"):
                f = _with(form, lambda x, k: C.conv_transpose(x, k, s, p))
                fwd = jax.jit(f)
                both = jax.jit(jax.grad(lambda x, k, f=f: jnp.sum(f(x, k) ** 2), (0, 1)))
                fns[form] = (fwd, both)
            ms = {key: [] for key in ("fx", "fp", "bx", "bp")}
            for _ in range(3):
                ms["fx"].append(_timed(fns["xla"][0], (x, k), repeats))
                ms["fp"].append(_timed(fns["phases"][0], (x, k), repeats))
                ms["bx"].append(_timed(fns["xla"][1], (x, k), repeats))
                ms["bp"].append(_timed(fns["phases"][1], (x, k), repeats))
            m = {key: statistics.median(v) for key, v in ms.items()}
            name = f"{Path(spec).stem}:{spec.split(':')[1]} {xs} {ks[:2]} s{s} p{p}"
            print(f"{name:58s} {m['fx']:8.2f} {m['fp']:8.2f} {m['bx']:9.2f} {m['bp']:8.2f} "
                  f"{m['bx'] / m['bp']:8.1f}x", flush=True)


def steps(specs: list[str]) -> None:
    from jaxvision.config import get_config
    from jaxvision.train.bench import bench
    print(f"\n{'config':45s} {'xla ms':>8s} {'phases ms':>10s} {'speed-up':>8s} "
          f"{'compile xla':>11s} {'compile ph':>10s}")
    for spec in specs:
        runs = {"xla": [], "phases": []}
        for _ in range(2):
            for form in runs:
                with _formulation(form):
                    runs[form].append(bench(get_config(spec, []), steps=5))
        ms = {f: statistics.median(r["step_ms"] for r in v) for f, v in runs.items()}
        comp = {f: statistics.median(r["compile_s"] for r in v) for f, v in runs.items()}
        print(f"{spec:45s} {ms['xla']:8.1f} {ms['phases']:10.1f} {ms['xla'] / ms['phases']:7.2f}x "
              f"{comp['xla']:10.1f}s {comp['phases']:9.1f}s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", nargs="*", default=[], metavar="CONFIG")
    args = parser.parse_args()
    print(f"backend {jax.default_backend()}, {jax.device_count()} device(s)")
    layers(args.repeats)
    if args.steps:
        steps(args.steps)


if __name__ == "__main__":
    main()
