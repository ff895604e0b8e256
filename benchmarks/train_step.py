"""The whole compiled train step: plain Flax vs this project, per zoo model, in one process.

    python benchmarks/train_step.py [--models lenet5 resnet20 ...] [--rounds 5] [--steps 5]
                                    [--compile-rounds 3]

For each model, four jitted steps on one fixed synthetic batch (numpy seed 0), timed in
interleaved rounds so machine noise hits all alike (median ms per step over the rounds):

* ``plain``: ``value_and_grad`` of softmax cross-entropy + ``optax.sgd(momentum=0.9)`` + new
  batch statistics, state donated, convolutions with XLA's gradients: what a plain Flax user
  writes (``JAXVISION_CONV_GRAD=xla`` while tracing, so ``jaxvision.ops.conv`` is
  ``lax.conv_general_dilated``);
* ``plain+conv``: the same step with this project's per-shape CPU convolution
  (``JAXVISION_CONV_GRAD=auto``);
* ``project``: ``jaxvision.train.step.make_train_step`` with the experiment's own loss
  (metrics, masks, the non-finite guard, grad norm; same optimizer), XLA's gradients;
* ``project+conv``: that step with the project's convolution (what ``auto`` ships).

``import jaxvision`` turns XLA:CPU's YNNPACK fusions off (``jaxvision/cpu_flags.py``), so all
four run without them. ``--plain-ynn`` also times ``plain`` in a subprocess with JAX's default
(YNNPACK on, ``JAXVISION_CPU_YNN=1``), right after the rounds of the same model: what a plain Flax
user gets, and ``project+conv``'s ratio to it.

Prints images/s per step kind, the ratios to ``plain``, compile seconds (the median of
``--compile-rounds`` compiles from scratch per kind, interleaved; each includes the trace, the
lowering and the first call) with the two ratios the issue limits to +30%, and the process's
peak resident memory. With ``torch`` importable (not a dependency; install it beside),
``--torch`` also times PyTorch eager on the same architectures
(``benchmarks/_torch_models.py``; ``--torch-python PY`` runs them with another interpreter that
has torch, right after the JAX rounds of the same model) and prints ``project+conv``'s ratio
to it.

``--ablate NAME...`` also times ``project+conv`` without one of its CPU rewrites, its floor
out of reach while tracing, interleaved with the four, and prints ``project+conv``'s ratio to
it: ``materialize``, the materialized convolution inputs and cotangents
(``jaxvision.ops.conv.MIN_MATERIALIZED_ELEMENTS``); ``bias``, the bias gradients as matrix
products (``jaxvision.ops.bias.MIN_ELEMENTS``). ``--ablate-materialize`` is ``--ablate
materialize``.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jaxvision.config import get_config  # noqa: E402
from jaxvision.data.source import SourceInfo  # noqa: E402
from jaxvision.experiment import resolve_experiment  # noqa: E402
from jaxvision.ops import bias as bias_ops  # noqa: E402
from jaxvision.ops import conv as conv_ops  # noqa: E402
from jaxvision.optim import make_optimizer  # noqa: E402
from jaxvision.train import state as state_lib  # noqa: E402
from jaxvision.train.parallel import Strategy  # noqa: E402
from jaxvision.train.step import make_train_step  # noqa: E402

CLS = "experiments/classification.py:default"
# name -> (experiment, model config, (H, W, C), batch, classes); the sizes of the peer scripts in
# ../shared/reference/peer_bench (same architectures in plain Flax and PyTorch).
CASES = {
    "default": (CLS, dict(name="small_cnn", widths=(16, 32, 64, 128, 256), norm="batch"),
                (48, 48, 3), 64, 6),
    "lenet5": (CLS, dict(name="lenet5", activation="relu", pool="max"), (28, 28, 1), 128, 10),
    "resnet20": (CLS, dict(name="resnet20"), (32, 32, 3), 128, 10),
    "resnet18": (CLS, dict(name="resnet18", stem="cifar"), (32, 32, 3), 128, 10),
    "alexnet": (CLS, dict(name="alexnet_torchvision", dropout=0.5), (224, 224, 3), 32, 1000),
    "vgg11": (CLS, dict(name="vgg11", norm="batch", fc_width=512, grid=1, dropout=0.5),
              (32, 32, 3), 128, 10),
    "unet": ("experiments/segmentation.py:unet_synthetic", dict(name="unet", widths=(32, 64, 128, 256)),
             (64, 64, 3), 16, 3),
}
KINDS = ("plain", "plain+conv", "project", "project+conv")
# --ablate's kinds: (the kind's name, the module and the floor it puts out of reach).
ABLATIONS = {"materialize": ("project+conv, not materialized", conv_ops,
                             "MIN_MATERIALIZED_ELEMENTS"),
             "bias": ("project+conv, XLA's bias gradients", bias_ops, "MIN_ELEMENTS")}


def _config(case: str):
    spec, model, shape, batch, classes = CASES[case]
    config = get_config(spec)
    config.model = type(config.model)(model)
    config.optim.update(dict(name="momentum", lr=0.01, momentum=0.9, schedule="constant",
                             warmup_steps=0))
    config.optim.weight_decay = 0.0
    config.train.batch_size = batch
    config.data.input_shape, config.data.num_classes = shape, classes
    return spec, config, shape, batch, classes


def _batch(shape, batch: int, classes: int, segmentation: bool) -> dict:
    r = np.random.default_rng(0)
    out = {"image": r.integers(0, 256, (batch,) + shape, dtype=np.uint8),
           "valid": np.ones((batch,), bool)}
    if segmentation:
        out["mask"] = r.integers(0, classes, (batch,) + shape[:2]).astype(np.int32)
    else:
        out["label"] = r.integers(0, classes, (batch,)).astype(np.int32)
    return out


def _plain_step(model, optimizer, target: str):
    def step(params, model_state, opt_state, batch):
        def objective(p):
            x = batch["image"].astype(jnp.float32) / 255.0
            out = model.apply({"params": p, **model_state}, x, train=True,
                              mutable=list(model_state) or False,
                              rngs={"dropout": jax.random.key(0)})
            logits, new_state = out if model_state else (out, {})
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch[target])
            return loss.mean(), new_state

        (loss, new_state), grads = jax.value_and_grad(objective, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_state, opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1, 2))


def _model(case: str):
    """(config, experiment, model, whether the target is a mask) of ``case``."""
    spec, config, _, _, classes = _config(case)
    exp = resolve_experiment(config, spec)
    segmentation = "mask" in tuple(config.data["keys"])
    info = SourceInfo(name="synthetic", split="train",
                      keys=("image", "mask" if segmentation else "label"), num_classes=classes)
    return config, exp, exp.build_model(config, info), segmentation


def _setup(case: str, kinds: tuple[str, ...] = KINDS, fresh: bool = False) -> dict:
    """The steps of ``kinds``, each compiled under its convolution setting, and their states.
    ``fresh``: clear jax's in-memory caches before each kind, so that its compile time includes
    every function it shares with the kinds before it."""
    _, _, shape, batch_size, classes = _config(case)
    config, exp, model, segmentation = _model(case)
    optimizer = make_optimizer(config.optim, int(config.train.steps))
    batch = _batch(shape, batch_size, classes, segmentation)
    variables = jax.device_get(jax.jit(lambda b, k: exp.init_variables(config, model, b, k))(
        {k: v[:1] for k, v in batch.items()}, jax.random.key(0)))
    strategy = Strategy("jit")
    out = {"batch_size": batch_size}
    for kind in kinds:
        os.environ["JAXVISION_CONV_GRAD"] = "auto" if "+conv" in kind else "xla"
        copy = jax.tree.map(np.copy, variables)
        if kind.startswith("plain"):
            params = copy["params"]
            ms = {k: v for k, v in copy.items() if k != "params"}
            fn = _plain_step(model, optimizer, "mask" if segmentation else "label")
            args = [params, ms, optimizer.init(params)]
            dev_batch = jax.device_put(batch)

            def run(fn=fn, args=args, b=dev_batch):
                out = fn(*args, b)
                args[:] = out[:3]
                jax.block_until_ready(out)
        else:
            step = strategy.compile_train(make_train_step(exp, model, optimizer, config,
                                                          strategy.axis_name))
            args = [strategy.put_state(state_lib.create(copy, optimizer, jax.random.key(1),
                                                        False))]
            dev_batch = strategy.put_batch(batch)

            def run(step=step, args=args, b=dev_batch):
                args[0], metrics = step(args[0], b, None)
                jax.block_until_ready((args[0], metrics))
        if fresh:
            jax.clear_caches()
        ablated = [(m, attr, getattr(m, attr)) for name, m, attr in ABLATIONS.values()
                   if name == kind]
        for m, attr, _ in ablated:
            setattr(m, attr, 2**62)
        t0 = time.perf_counter()
        try:
            run()   # traced here, under this kind's convolution setting
        finally:
            for m, attr, floor in ablated:
                setattr(m, attr, floor)
        out[kind] = {"run": run, "compile_s": time.perf_counter() - t0, "ms": []}
    os.environ.pop("JAXVISION_CONV_GRAD")
    return out


def _compile_s(case: str, rounds: int) -> dict[str, float]:
    """Median seconds over ``rounds`` from-scratch compiles of each kind's step (trace, lower,
    compile and the first call), the kinds interleaved within each round."""
    times: dict[str, list[float]] = {k: [] for k in KINDS}
    for _ in range(rounds):
        s = _setup(case, fresh=True)
        for k in KINDS:
            times[k].append(s[k]["compile_s"])
    return {k: statistics.median(v) for k, v in times.items()}


def _plain_ynn_ms(case: str, steps: int, rounds: int) -> float:
    """``plain``'s ms per step of ``case`` in a subprocess with XLA:CPU's YNNPACK fusions on."""
    from jaxvision import cpu_flags
    env = dict(os.environ, **{cpu_flags.ENV: "1"})
    env["XLA_FLAGS"] = " ".join(t for t in env.get("XLA_FLAGS", "").split()
                                if not t.startswith(cpu_flags.OPTION))
    out = subprocess.run([sys.executable, __file__, "--plain-only", "--models", case,
                          "--steps", str(steps), "--rounds", str(rounds)],
                         env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _time(s: dict, kinds: tuple[str, ...], rounds: int, steps: int) -> None:
    """One warm-up call per kind, then ``rounds`` interleaved rounds of ``steps`` calls per
    kind; appends each round's ms per step to ``s[kind]['ms']``."""
    for kind in kinds:
        s[kind]["run"]()
    for _ in range(rounds):
        for kind in kinds:
            t0 = time.perf_counter()
            for _ in range(steps):
                s[kind]["run"]()
            s[kind]["ms"].append(1000 * (time.perf_counter() - t0) / steps)


def _time_plain_only(case: str, steps: int, rounds: int) -> None:
    """Prints ``plain``'s median ms per step of ``case`` (the ``--plain-only`` mode)."""
    s = _setup(case, ("plain",))
    _time(s, ("plain",), rounds, steps)
    print(statistics.median(s["plain"]["ms"]))


def _torch_ms(case: str, steps: int, rounds: int, python: str | None) -> float | None:
    """PyTorch eager ms per step of ``case``'s twin: in this process when ``torch`` imports,
    else with the interpreter ``python`` (a venv that has torch), else None."""
    _, _, shape, batch, classes = CASES[case]
    try:
        import torch  # noqa: F401
    except ImportError:
        if not python:
            return None
        here = Path(__file__).resolve().parent / "_torch_models.py"
        out = subprocess.run([python, str(here), case, *map(str, shape), str(batch), str(classes),
                              str(steps), str(rounds)], capture_output=True, text=True, check=True)
        return float(out.stdout.strip().splitlines()[-1])
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _torch_models import time_step
    return time_step(case, shape, batch, classes, steps=steps, rounds=rounds)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=5, help="steps per kind per round")
    p.add_argument("--torch", action="store_true", help="also time PyTorch eager (needs torch)")
    p.add_argument("--torch-python", default=None,
                   help="a Python with torch, when this one has none (implies --torch)")
    p.add_argument("--plain-ynn", action="store_true",
                   help="also time plain with XLA:CPU's YNNPACK fusions on (JAX's default)")
    p.add_argument("--compile-rounds", type=int, default=3,
                   help="from-scratch compiles per kind whose median is reported (0: the one "
                        "compile of the timed steps)")
    p.add_argument("--ablate", nargs="+", default=[], choices=list(ABLATIONS),
                   help="also time project+conv without these CPU rewrites")
    p.add_argument("--ablate-materialize", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--plain-only", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    names = a.ablate + ["materialize"] * a.ablate_materialize
    ablate = [ABLATIONS[n][0] for n in dict.fromkeys(names)]
    if a.plain_only:
        _time_plain_only(a.models[0], a.steps, a.rounds)
        return
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, {os.cpu_count()} CPUs; "
          f"median of {a.rounds} rounds of {a.steps} steps, kinds interleaved\n")
    head = "| model | batch | " + " | ".join(f"{k} img/s" for k in KINDS)
    head += " | plain+conv / plain | project / plain | project+conv / plain | compile s (" + \
        " / ".join(KINDS) + ") | compile plain+conv / plain, project+conv / project | peak RSS GiB |"
    rows = []
    for case in a.models:
        compile_s = _compile_s(case, a.compile_rounds) if a.compile_rounds > 0 else None
        kinds = KINDS + tuple(ablate)
        s = _setup(case, kinds)
        compile_s = compile_s or {k: s[k]["compile_s"] for k in KINDS}
        _time(s, kinds, a.rounds, a.steps)
        ips = {k: s["batch_size"] / (statistics.median(s[k]["ms"]) / 1000) for k in kinds}
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        row = (f"| {case} | {s['batch_size']} | " + " | ".join(f"{ips[k]:,.0f}" for k in KINDS)
               + f" | {ips['plain+conv'] / ips['plain']:.2f}x | {ips['project'] / ips['plain']:.2f}x"
               f" | {ips['project+conv'] / ips['plain']:.2f}x | "
               + " / ".join(f"{compile_s[k]:.1f}" for k in KINDS)
               + f" | {compile_s['plain+conv'] / compile_s['plain']:.2f}x, "
               f"{compile_s['project+conv'] / compile_s['project']:.2f}x | {rss:.1f} |")
        for kind in ablate:
            row += (f" {kind.removeprefix('project+conv, ')} {ips[kind]:,.0f} img/s, "
                    f"project+conv / it {ips['project+conv'] / ips[kind]:.2f}x |")
        if a.plain_ynn:
            ynn = s["batch_size"] / (_plain_ynn_ms(case, a.steps, a.rounds) / 1000)
            row += f" plain (YNNPACK on) {ynn:,.0f} img/s, project+conv / it {ips['project+conv'] / ynn:.2f}x |"
        if a.torch or a.torch_python:
            ms = _torch_ms(case, a.steps, a.rounds, a.torch_python)
            row += (f" torch eager {s['batch_size'] / (ms / 1000):,.0f} img/s, project+conv / "
                    f"torch {ips['project+conv'] / (s['batch_size'] / (ms / 1000)):.2f}x |"
                    if ms else " (torch not importable) |")
        rows.append(row)
        print(row, flush=True)
    print("\n" + head + "\n|" + "---|" * (head.count("|") - 1))
    print("\n".join(rows))


if __name__ == "__main__":
    main()
