"""The train state: everything a step reads and writes, and everything a checkpoint holds."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class TrainState:
    """step (int32 scalar), params, model_state (e.g. {'batch_stats': ...}), opt_state,
    rng (uint32 key data, so it checkpoints as a plain array), ema_params (a copy of params when
    Polyak averaging is on, else None), bad_step (the first step whose loss or gradient was
    not finite, -1 while all were). Frozen data the loss reads (a distillation teacher) is not
    part of the state: it is the experiment's ``Setup.data``, an argument of the steps."""

    step: jax.Array
    params: Any
    model_state: Any
    opt_state: Any
    rng: jax.Array
    ema_params: Any = None
    bad_step: jax.Array = None  # type: ignore[assignment]

    @property
    def variables(self) -> dict:
        return {"params": self.params, **self.model_state}

    def eval_variables(self) -> dict:
        """Variables for evaluation: the EMA parameters when they are tracked."""
        params = self.ema_params if self.ema_params is not None else self.params
        return {"params": params, **self.model_state}


def create(variables: dict, optimizer: Any, rng: jax.Array, ema: bool) -> TrainState:
    """A fresh state at step 0 from ``model.init`` variables (a model without parameters, such
    as a classical baseline, gets an empty ``params``)."""
    params = variables.get("params", {})
    model_state = {k: v for k, v in variables.items() if k != "params"}
    # One compiled program: run eagerly, optax's init dispatches (and compiles) one small
    # program per parameter shape (zeros_like, dtype casts), ~1-2 s per fresh process.
    opt_state, ema_params = jax.jit(
        lambda p: (optimizer.init(p), jax.tree.map(jnp.copy, p) if ema else None))(params)
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
        opt_state=opt_state, rng=jax.random.key_data(rng), ema_params=ema_params,
        bad_step=jnp.full((), -1, jnp.int32))
