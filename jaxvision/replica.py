"""How the current batch is split over devices, for the layers that must not care.

Under ``jit`` a step sees the global batch; under ``pmap`` each device sees a slice. Two things
would make results depend on that split, and this module removes both:

* **Randomness** (dropout, on-device augmentation): a layer asks for one key per example with
  ``example_keys(key, n)``; row ``i`` gets ``fold_in(key, global position of row i)``, so device
  ``d`` of a pmap draws exactly what rows ``d*b .. d*b+b-1`` draw under jit.
* **Batch norm**: under pmap, ``cross_replica_axis()`` names the axis that batch statistics are
  averaged over (``layers.norm`` reads it), so normalisation uses the global batch as under jit.

The train step states both with ``replica_context(batch_size, axis_name)`` while it traces the
model. Outside it, rows are numbered ``0..n-1`` and batch norm is per device (plain flax).
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator

import jax
import jax.numpy as jnp

_POSITIONS: contextvars.ContextVar = contextvars.ContextVar("example_positions", default=None)
_AXIS: contextvars.ContextVar = contextvars.ContextVar("cross_replica_axis", default=None)


def batch_positions(batch_size: int, axis_name: str | None) -> jax.Array:
    """Global positions of this device's rows: ``arange`` (jit) or this replica's slice (pmap)."""
    local = jnp.arange(batch_size, dtype=jnp.int32)
    if axis_name is None:
        return local
    return jax.lax.axis_index(axis_name) * batch_size + local


@contextlib.contextmanager
def replica_context(batch_size: int, axis_name: str | None) -> Iterator[None]:
    """Within this block (at trace time): rows' global positions, and the pmap axis if any."""
    t1 = _POSITIONS.set(batch_positions(batch_size, axis_name))
    t2 = _AXIS.set(axis_name)
    try:
        yield
    finally:
        _POSITIONS.reset(t1)
        _AXIS.reset(t2)


def cross_replica_axis() -> str | None:
    """The pmap axis batch statistics must be averaged over, or None (jit, or outside a step)."""
    return _AXIS.get()


def positions(n: int) -> jax.Array:
    """(n,) int32 global positions of the current batch's rows."""
    pos = _POSITIONS.get()
    if pos is None or pos.shape[0] != n:
        return jnp.arange(n, dtype=jnp.int32)
    return pos


def example_keys(key: jax.Array, n: int) -> jax.Array:
    """(n,) keys, one per example of the current batch (see the module docstring)."""
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, positions(n))
