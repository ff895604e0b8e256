"""Batches onto devices: the device mesh and global ``jax.Array`` batches.

The mesh has two axes, ``('data', 'model')``: ``data`` spans every device of every process and
``model`` is 1 for now (room for model parallelism later). A batch is sharded along its leading
axis over ``data``; parameters are replicated.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxvision.data.source import DataError

DATA_AXIS = "data"
MODEL_AXIS = "model"


def make_mesh(devices: Sequence[jax.Device] | None = None, model_parallel: int = 1) -> Mesh:
    """Returns a ``(data, model)`` mesh over ``devices`` (default: all devices of all processes)."""
    devices = list(jax.devices() if devices is None else devices)
    if len(devices) % model_parallel:
        raise ValueError(f"{len(devices)} devices do not split into model_parallel={model_parallel}.")
    grid = np.asarray(devices, dtype=object).reshape(len(devices) // model_parallel, model_parallel)
    return Mesh(grid, (DATA_AXIS, MODEL_AXIS))


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of a batch: leading axis split over ``data``, the rest replicated."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding of parameters and optimizer state: a full copy on every device."""
    return NamedSharding(mesh, P())


def check_batch_size(global_batch: int, mesh: Mesh, key: str = "train.batch_size") -> None:
    """Raises ``DataError`` unless ``global_batch`` splits evenly over the mesh's data axis;
    ``key`` is the config key that set it, for the message."""
    n = mesh.shape[DATA_AXIS]
    if global_batch % n:
        raise DataError(f"{key}={global_batch} does not divide over {n} devices "
                        f"(data axis of the mesh); use a multiple of {n}, e.g. "
                        f"--config.{key}={max(n, global_batch - global_batch % n)}.")


def put_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Turns this process's slice of a batch into global arrays sharded over ``data``.

    Each value of ``batch`` has leading axis ``local_batch``; the result has leading axis
    ``local_batch * process_count`` (the global batch), laid out process by process.
    """
    sharding = data_sharding(mesh)
    out = {}
    for key, value in batch.items():
        value = np.asarray(value)
        global_shape = (value.shape[0] * jax.process_count(),) + value.shape[1:]
        check_batch_size(global_shape[0], mesh)
        out[key] = jax.make_array_from_process_local_data(sharding, value, global_shape)
    return out
