"""What an experiment module provides, and the defaults for what it leaves out.

An experiment is a file in ``experiments/`` with ``CONFIGS`` (name -> ConfigDict factory) and a
few pure functions (``variables`` below is ``{'params': params, **model_state}``):

* ``build_model(config, info, *, axis_name=None) -> flax.linen.Module`` (``info`` is the training
  source's ``SourceInfo``; ``axis_name`` is the pmap axis for cross-device batch norm, or None);
* ``loss(config, model, variables, batch, key, *, train) -> (loss, metrics, new_model_state)``:
  the scalar loss to minimise, metrics as ``(total, count)`` pairs (``jaxvision.metrics``), and the
  updated model state (e.g. ``{'batch_stats': ...}``, ``{}`` if none);
* ``evaluate(config, model, variables, batch) -> metrics`` (sums over the valid examples);
* optional ``init(config, model, batch, key) -> variables`` (default: ``model.init`` on the
  batch's ``image``, prepared by ``prepare``);
* optional ``prepare(config, batch) -> array`` turning a batch into the model input (default:
  uint8 ``image`` -> float32 in [0, 1]);
* optional ``report(config, workdir, results, info)``: host-side work at the end of training
  (plots, tables); ``results`` holds the final eval metrics, array metrics included;
* optional ``aux(config, info) -> pytree | None``: host-side, called when training starts (fresh
  or resumed; ``loop.with_aux``) for frozen data the loss reads, e.g. a distillation teacher's
  variables. When it returns a pytree, the train step calls ``loss(..., train=True,
  aux=that_pytree)`` with it as traced data (``TrainState.aux``: placed on the devices, not
  optimized, not checkpointed).

The core (``jaxvision.train``) does everything else: data, optimizer, compiled steps over the
device mesh, evaluation, checkpoints, logs.
"""

from __future__ import annotations

import dataclasses
from types import ModuleType
from typing import Any, Callable

import jax
import jax.numpy as jnp

from jaxvision.config import ConfigError, load_module, split_spec


def default_prepare(config: Any, batch: dict) -> jax.Array:
    """uint8 images -> float32 in [0, 1] (float images, e.g. normalized on host, pass through)."""
    image = batch["image"]
    dtype = jnp.bfloat16 if config.train.get("mixed_precision", False) else jnp.float32
    if image.dtype == jnp.uint8:
        return image.astype(dtype) / 255.0
    return image.astype(dtype)


@dataclasses.dataclass(frozen=True)
class Experiment:
    """The functions of one experiment module, with defaults filled in."""

    module: ModuleType
    build_model: Callable
    loss: Callable
    evaluate: Callable
    prepare: Callable = default_prepare
    init: Callable | None = None
    report: Callable | None = None
    aux: Callable | None = None

    def init_variables(self, config: Any, model: Any, batch: dict, key: jax.Array) -> dict:
        if self.init is not None:
            return self.init(config, model, batch, key)
        params_key, dropout_key = jax.random.split(key)
        return model.init({"params": params_key, "dropout": dropout_key},
                          self.prepare(config, batch), train=False)


def load_experiment(spec_or_path: str) -> Experiment:
    """Loads the experiment functions from ``experiments/<task>.py[:name]``."""
    module = load_module(split_spec(spec_or_path)[0])
    missing = [f for f in ("build_model", "loss", "evaluate") if not hasattr(module, f)]
    if missing:
        raise ConfigError(f"{module.__file__} lacks {', '.join(missing)}: an experiment module "
                          "defines build_model, loss and evaluate (see jaxvision/experiment.py).")
    return Experiment(module=module, build_model=module.build_model, loss=module.loss,
                      evaluate=module.evaluate,
                      prepare=getattr(module, "prepare", default_prepare),
                      init=getattr(module, "init", None), report=getattr(module, "report", None),
                      aux=getattr(module, "aux", None))
