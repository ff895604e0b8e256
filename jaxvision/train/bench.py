"""``summary`` and ``bench``: the model's layer table, and the compiled train step's speed."""

from __future__ import annotations

import resource
import time
from typing import Any

import jax
import numpy as np

from jaxvision.experiment import resolve_experiment
from jaxvision.train.loop import build
from jaxvision.train.step import make_train_step


def model_and_input_shape(config: Any, spec: str | None = None) -> tuple[Any, tuple[int, ...]]:
    """The config's model and its per-example input shape (H, W, C).

    Both come from the eval split when the data is there; when it is not (a ``DataError``, e.g.
    an unprepared TFDS set), from the config's declared ``data.input_shape`` and
    ``data.num_classes``, so published models can be inspected without their data.
    """
    from jaxvision.data.source import DataError, SourceInfo, build_source
    exp = resolve_experiment(config, spec)
    try:
        source = build_source(config.data, config.data.eval_split)
    except DataError as e:
        declared = config.data.get("input_shape", None)
        if not declared:
            raise DataError(f"{e}\n(Or declare data.input_shape (H, W, C) and data.num_classes in "
                            "the config to summarize the model without its data.)") from None
        info = SourceInfo(name=str(config.data.name), split=str(config.data.eval_split),
                          keys=("image", "label"), num_classes=config.data.get("num_classes", None))
        return exp.build_model(config, info), tuple(int(d) for d in declared)
    from jaxvision.data.pipeline import make_transform
    example = make_transform(config.data, config.data.eval_pp)(source[0], np.random.default_rng(0))
    return exp.build_model(config, source.info), tuple(np.shape(example["image"]))


def summary(config: Any, spec: str | None = None) -> tuple[str, dict]:
    """Per-layer table of the config's model at its input shape; totals ``params`` and ``flops``."""
    from jaxvision.models.summary import format_table, summarize
    model, shape = model_and_input_shape(config, spec)
    rows, totals = summarize(model, shape)
    return format_table(rows, totals), {"params": int(totals["params"]), "flops": int(totals["flops"])}


def _peak_memory_bytes() -> tuple[int, str]:
    stats = [d.memory_stats() or {} for d in jax.local_devices()]
    peaks = [s.get("peak_bytes_in_use") for s in stats]
    if all(p is not None for p in peaks) and peaks:
        return int(max(peaks)), "device_peak_bytes_in_use"
    # CPU backends keep no allocator stats: report the process's peak resident memory instead.
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "host_max_rss"


def bench(config: Any, spec: str | None = None, *, steps: int = 20) -> dict:
    """Times the compiled train step on one real batch, repeated (data loading excluded)."""
    exp = resolve_experiment(config, spec)
    run = build(config, exp)
    strategy = run.strategy
    train_step = strategy.compile_train(make_train_step(exp, run.model, run.optimizer, config,
                                                        strategy.axis_name, run.setup.static))

    def step_fn(state, batch):
        return train_step(state, batch, run.setup_data)

    state = strategy.put_state(run.state)
    batch = strategy.put_batch(next(iter(run.train_loader)))
    t0 = time.perf_counter()
    state, metrics = step_fn(state, batch)
    jax.block_until_ready((state, metrics))
    compile_s = time.perf_counter() - t0
    # A few warm-up steps, then the timed ones.
    for _ in range(2):
        state, metrics = step_fn(state, batch)
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    for _ in range(steps):
        state, metrics = step_fn(state, batch)
    jax.block_until_ready((state, metrics))
    elapsed = time.perf_counter() - t0
    step_ms = 1000 * elapsed / steps
    peak, peak_kind = _peak_memory_bytes()
    return {
        "model": str(config.model.name),
        "batch_size": int(config.train.batch_size),
        "input_shape": list(np.shape(next(iter(run.eval_loader))["image"])[1:]),
        "steps": steps,
        "step_ms": round(step_ms, 3),
        "images_per_sec": round(int(config.train.batch_size) / (step_ms / 1000), 1),
        "compile_s": round(compile_s, 3),
        "devices": strategy.num_devices,
        "backend": jax.default_backend(),
        "strategy": strategy.name,
        "mixed_precision": bool(config.train.mixed_precision),
        "peak_memory_bytes": peak,
        "peak_memory_kind": peak_kind,
    }
