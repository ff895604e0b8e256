"""The train and eval steps, as pure functions of (state, batch), before compilation.

``parallel.Strategy`` compiles them: with ``jit`` the batch is one global array and every
reduction is global; with ``pmap`` each device sees its shard and ``axis_name`` names the axis
that gradients, model state and metric sums are reduced over.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from jaxvision.experiment import Experiment
from jaxvision.optim import ema_update
from jaxvision.replica import replica_context
from jaxvision.train.state import TrainState


def _keep_if(ok: jax.Array, new: Any, old: Any) -> Any:
    return jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)


def make_train_step(exp: Experiment, model: Any, optimizer: optax.GradientTransformation,
                    config: Any, axis_name: str | None = None, static: Any = None) -> Callable:
    """Returns ``train_step(state, batch, setup_data) -> (state, metrics)``.

    ``static`` and ``setup_data`` are the experiment's ``Setup`` (closed over and traced).

    A step whose loss or gradient is not finite leaves params, optimizer and model state as they
    were and records its number in ``state.bad_step``; the loop stops on it at the next log.
    """
    ema_decay = float(config.optim.get("ema_decay", 0.0))

    def train_step(state: TrainState, batch: dict, setup_data: Any = None
                   ) -> tuple[TrainState, dict]:
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

        local_batch = jax.tree.leaves(batch)[0].shape[0]
        # Experiments without a setup hook keep the plain loss signature.
        extra = exp.setup_kwargs(static, setup_data)

        def objective(params):
            with replica_context(local_batch, axis_name):
                loss, metrics, new_model_state = exp.loss(
                    config, model, {"params": params, **state.model_state}, batch, key, train=True,
                    **extra)
            return loss, (metrics, new_model_state)

        (loss, (metrics, model_state)), grads = jax.value_and_grad(objective, has_aux=True)(
            state.params)
        if axis_name is not None:
            grads = jax.lax.pmean(grads, axis_name)
            loss = jax.lax.pmean(loss, axis_name)
            model_state = jax.lax.pmean(model_state, axis_name)
            metrics = jax.lax.psum(metrics, axis_name)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        grad_norm = optax.global_norm(grads)
        ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & (state.bad_step < 0)
        ema = state.ema_params
        if ema is not None:
            ema = _keep_if(ok, ema_update(ema, params, ema_decay), ema)
        new_state = state.replace(
            step=state.step + 1,
            params=_keep_if(ok, params, state.params),
            opt_state=_keep_if(ok, opt_state, state.opt_state),
            model_state=_keep_if(ok, model_state, state.model_state),
            ema_params=ema,
            bad_step=jnp.where(ok | (state.bad_step >= 0), state.bad_step, state.step))
        metrics = dict(metrics)
        metrics["grad_norm"] = (grad_norm, jnp.ones((), jnp.float32))
        return new_state, metrics

    return train_step


def make_eval_step(fn: Callable, kind: str, axis_name: str | None = None) -> Callable:
    """Returns ``eval_step(state, batch, setup_data) -> outputs`` for an evaluator's device
    function ``fn(variables, batch, setup_data)`` (``jaxvision.evaluators``), run on the state's
    evaluation variables (EMA when tracked). Sums are reduced over the pmap axis; per-example
    outputs stay per device."""

    def eval_step(state: TrainState, batch: dict, setup_data: Any = None) -> dict:
        outputs = fn(state.eval_variables(), batch, setup_data)
        if axis_name is not None and kind == "sums":
            outputs = jax.lax.psum(outputs, axis_name)
        return outputs

    return eval_step
