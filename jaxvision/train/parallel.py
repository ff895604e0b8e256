"""Strategies: how state and batches are laid out on devices and how the steps are compiled.

* ``jit`` (default): one ``(data, model)`` mesh over all devices of all processes; state
  replicated, batches sharded along ``data`` as global ``jax.Array`` s; one program, global
  reductions. Works unchanged from one CPU to a multi-host pod.
* ``pmap``: one replica per local device; batches reshaped to ``(local_devices, per_device, ...)``
  and reductions are explicit collectives over the axis ``batch``.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxvision.data.device import check_batch_size, data_sharding, make_mesh, put_batch, replicated
from jaxvision.data.source import DataError

PMAP_AXIS = "batch"


class Strategy:
    """Places state and batches and compiles steps for ``name`` in {'jit', 'pmap'}."""

    def __init__(self, name: str = "jit", devices: list | None = None):
        if name not in ("jit", "pmap"):
            raise ValueError(f"parallel.strategy must be 'jit' or 'pmap', got {name!r}.")
        self.name = name
        self.mesh = make_mesh(devices)
        self.local_devices = [d for d in self.mesh.devices.flat if d.process_index == jax.process_index()]
        # pmap inputs carry a leading axis of one entry per local device, split over them.
        self._replicas = NamedSharding(Mesh(np.asarray(self.local_devices), ("replica",)),
                                       P("replica"))

    @property
    def axis_name(self) -> str | None:
        """The collective axis the steps reduce over (None under jit: reductions are global)."""
        return PMAP_AXIS if self.name == "pmap" else None

    @property
    def num_devices(self) -> int:
        return self.mesh.devices.size

    def check_batch(self, global_batch: int, key: str = "train.batch_size") -> None:
        check_batch_size(global_batch, self.mesh, key)

    def put_state(self, state: Any) -> Any:
        if self.name == "jit":
            return jax.device_put(state, replicated(self.mesh))
        n = len(self.local_devices)
        return jax.tree.map(
            lambda x: jax.device_put(np.broadcast_to(np.asarray(x), (n,) + np.shape(x)),
                                     self._replicas), state)

    def put_batch(self, batch: dict[str, np.ndarray]) -> dict:
        if self.name == "jit":
            return put_batch(batch, self.mesh)
        n = len(self.local_devices)
        out = {}
        for key, value in batch.items():
            if value.shape[0] % n:
                raise DataError(f"local batch of {value.shape[0]} does not divide over {n} devices.")
            out[key] = jax.device_put(value.reshape((n, -1) + value.shape[1:]), self._replicas)
        return out

    def gather(self, tree: Any) -> Any:
        """Per-example outputs of an eval step (leading axis = the global batch, sharded along
        ``data``) as numpy arrays on every process, in global batch order (process by process)."""
        if self.name == "pmap":
            return jax.tree.map(lambda x: np.asarray(x).reshape((-1,) + x.shape[2:]), tree)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))
        return jax.tree.map(np.asarray, tree)

    def unreplicate(self, tree: Any) -> Any:
        """The state as one copy of device arrays: for checkpoints."""
        if self.name == "jit":
            return tree
        return jax.tree.map(lambda x: x[0], tree)

    def host(self, tree: Any) -> Any:
        """One copy of ``tree`` (metrics, eval sums, a few leaves of the state) as numpy arrays
        on the host, for reading. Under pmap it copies every replica and keeps the first:
        ``unreplicate``'s ``x[0]`` is a computation dispatched (and first compiled) per leaf,
        which each logged step would pay."""
        tree = jax.device_get(tree)
        if self.name == "jit":
            return tree
        return jax.tree.map(lambda x: x[0], tree)

    def compile_train(self, step: Callable) -> Callable:
        """``step(state, batch, setup_data) -> (state, metrics)``; the state is donated."""
        if self.name == "jit":
            rep, data = replicated(self.mesh), data_sharding(self.mesh)
            return jax.jit(step, in_shardings=(rep, data, rep), out_shardings=(rep, rep),
                           donate_argnums=(0,))
        return jax.pmap(step, axis_name=PMAP_AXIS, donate_argnums=(0,))

    def compile_eval(self, step: Callable, kind: str = "sums") -> Callable:
        """``step(state, batch, setup_data) -> outputs``: reduced sums (``kind='sums'``,
        replicated) or per-example arrays (``'gather'``, sharded along ``data``)."""
        if self.name == "jit":
            rep, data = replicated(self.mesh), data_sharding(self.mesh)
            out = rep if kind == "sums" else data
            return jax.jit(step, in_shardings=(rep, data, rep), out_shardings=out)
        return jax.pmap(step, axis_name=PMAP_AXIS)
