"""Embeddings of a trained run's eval split, with the images and identities, for pictures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np


def embed_split(config: Any, workdir: str | Path, *, key: str = "identity",
                max_examples: int = 2000, checkpoint: Any = "latest"
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(images (M, H, W, C), embeddings (M, D), ids (M,))`` of the first ``max_examples``
    examples of ``data.eval_split`` under the run's ``checkpoint``, through the experiment's
    ``predict`` (its ``embedding`` output) on the run's device mesh. Single-process runs only
    (for plots at the end of training); returns empty arrays in a multi-process job."""
    if jax.process_count() > 1:
        return np.zeros((0, 1, 1, 1), np.uint8), np.zeros((0, 1), np.float32), np.zeros(0, np.int64)
    from jaxvision.experiment import resolve_experiment
    from jaxvision.train import loop
    exp = resolve_experiment(config)
    run = loop.build(config, exp, abstract=True)
    (restored,) = loop.restore_checkpoints(run, workdir, [checkpoint])
    state = run.strategy.put_state(restored.state)
    static = run.setup.static

    def fn(variables, batch, setup_data):
        out = exp.predict(config, run.model, variables, batch, **exp.setup_kwargs(static, setup_data))
        return {"embedding": out["embedding"], "image": batch["image"], "id": batch[key]}

    out = loop.predict(run, state, fn, run.eval_loader)
    n = min(int(max_examples), len(out["id"]))
    return out["image"][:n], out["embedding"][:n], out["id"][:n]


def pixel_baseline(config: Any) -> dict:
    """The run's ``retrieval`` and ``verification`` evaluators fed raw pixels instead of
    embeddings: each eval image (after ``data.eval_pp``) flattened and scaled to [0, 1] (uint8 /
    255; no other normalization), so a learned embedding can be compared with the trivial one on
    the same examples by the same code. Returns their scalar metrics."""
    from jaxvision.data.pipeline import make_loader
    from jaxvision.evaluators import build_evaluators
    out: dict = {}
    evaluators = [ev for ev in build_evaluators(config)
                  if ev.type_name() in ("retrieval", "verification")]
    for ev in evaluators:
        loader = make_loader(config.data, ev.split, mode="eval", global_batch=ev.batch_size,
                             seed=int(config.seed))
        ev.reset()
        for batch in loader:
            keep = batch["valid"].astype(bool)
            image = batch["image"][keep]
            pixels = (image.astype(np.float32) / 255.0 if image.dtype == np.uint8
                      else image.astype(np.float32))
            ev.update({"embedding": pixels.reshape(len(pixels), -1),
                       "label": np.asarray(batch[ev.label])[keep]})
        out.update({k: v for k, v in ev.compute().items() if np.ndim(v) == 0})
    return out
