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
