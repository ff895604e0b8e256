"""The whole input pipeline from a config: source -> transforms -> batches -> host shard.

``make_loader(config.data, split, mode=..., global_batch=..., seed=...)`` is what every
experiment calls; ``device.put_batch`` then turns each batch into global device arrays.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from jaxvision.data import transforms as T
from jaxvision.data.config import check_data_config
from jaxvision.data.pp import Compose, parse_pp
from jaxvision.data.loader import Loader
from jaxvision.data.source import SkipBad, Source, build_source

_STATS_CACHE: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}


def train_stats(data: Any, max_examples: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std (0-255 scale) over the first examples of the training split.

    Cached per (data name, path, split) within the process: normalization must use the training
    split's statistics for train and eval alike. Under ``data.bad_examples='skip'`` bad examples
    count as their stand-ins (``SkipBad``).
    """
    key = (str(data.name), str(data.get("path")), str(data.train_split), max_examples)
    if key not in _STATS_CACHE:
        source = build_source(data, data.train_split)
        if data.get("bad_examples", "error") == "skip":
            source = SkipBad(source)
        _STATS_CACHE[key] = T.compute_mean_std(source, max_examples)
    return _STATS_CACHE[key]


def make_transform(data: Any, pp: str) -> Compose:
    """Parses a pipeline string; a bare ``normalize`` uses the training split's statistics."""
    stats = train_stats(data) if "normalize" in pp else None
    return parse_pp(pp, stats=stats)


def make_loader(data: Any, split: str, *, mode: str, global_batch: int, seed: int,
                source: Source | None = None, process_index: int | None = None,
                process_count: int | None = None) -> Loader:
    """Builds the loader of ``split`` (``mode`` 'train' shuffles forever, 'eval' is one padded pass).

    ``data`` is the experiment's ``data`` ConfigDict (range-checked by ``check_data_config``).
    The transform pipeline is ``data.train_pp`` in train mode and ``data.eval_pp`` in eval mode.
    Process index/count default to JAX's. Under ``data.bad_examples='skip'``,
    ``loader.skipped()`` reports the bad examples met.
    """
    check_data_config(data)
    source = source if source is not None else build_source(data, split)
    pp = data.train_pp if mode == "train" else data.eval_pp
    return Loader(
        source, global_batch=global_batch, seed=seed, mode=mode,
        transform=make_transform(data, pp), max_boxes=int(data.max_boxes),
        sampler=str(data.sampler), pk=(int(data.pk_identities), int(data.pk_images)),
        process_index=jax.process_index() if process_index is None else process_index,
        process_count=jax.process_count() if process_count is None else process_count,
        num_workers=int(data.num_workers), prefetch=int(data.prefetch),
        bad_examples=str(data.get("bad_examples", "error")))
