"""Batches from a source: the order of examples, per-example transforms, padding, host sharding.

The order is a pure function of ``(seed, global step)``, so every process, every worker and every
restart agrees on it without talking to each other:

* ``train`` mode runs forever. Epoch ``e`` visits ``permutation(seed, e)`` of the source in
  ``N // B`` global batches (the remainder is dropped); with ``sampler='pk'`` each global batch
  holds ``P`` identities x ``K`` images (for triplet / metric learning).
* ``eval`` mode visits every example once, in order; the last global batch is padded with
  copies of example 0 whose ``valid`` flag is False, so no example is lost or counted twice.

A global batch of ``B`` examples is split into ``process_count`` contiguous slices of
``B / process_count``; process ``p`` loads only slice ``p``. The global batch is therefore the
same whatever the process count. Random transforms get ``np.random.default_rng([seed, epoch,
index])``, so augmentation does not depend on the process count or on worker scheduling either.

Loading runs on grain (``MapDataset`` -> ``batch`` -> ``IterDataset`` with optional
``mp_prefetch`` worker processes). The iterator's ``get_state`` / ``set_state`` save and restore
the position exactly.

**Bad examples.** A file source raises ``BadExample`` for an example whose file cannot be read
or whose values break the conventions.
With ``bad_examples='error'`` (the default) that error stops the iteration (grain re-raises it
as it is, from worker processes too). With ``'skip'`` the example is replaced by the next good
index (wrapping around): the same choice in every epoch, process and worker, since it depends
only on the files. In eval mode the replacement's ``valid`` is False, so metrics count each good
example exactly once. ``Loader.skipped()`` reports the bad examples this process has met.

**Boxes** follow the box policy of ``jaxvision/data/example.py``: clipped to the image as read,
dropped below 1 px by clipping or cropping, counted in ``Loader.dropped_boxes`` (valid examples
only); every per-box key is padded to ``max_boxes`` with ``box_valid`` False.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import grain
import numpy as np

from jaxvision.data.config import BAD_EXAMPLES
from jaxvision.data.example import BOX_KEYS, SPEC, Example, validate_example
from jaxvision.data.source import BadExample, DataError, Source, next_good, source_labels
from jaxvision.data.transforms import clip_boxes

Transform = Callable[[Example, np.random.Generator], Example]

# Train iterators are "infinite": grain needs a length, and 2**40 slots is ~34 billion steps.
_INFINITE = 2**40
# Batch key (under 'skip' only) carrying, per slot, the index of the bad example it replaces or
# -1; the loader removes it in the main process, where it counts the bad examples.
_SKIPPED = "_skipped"
_DROPPED = "_dropped_boxes"


class Skipped(NamedTuple):
    """Bad examples skipped so far (``Loader.skipped()``), in index order."""

    count: int                 # distinct bad examples of the source met by this process
    files: tuple[str, ...]     # the file at fault of each (one per example)


def _identity_transform(example: Example, rng: np.random.Generator) -> Example:
    del rng
    return example


@dataclasses.dataclass(frozen=True)
class Order:
    """Which example fills each slot. Pure and picklable: every worker recomputes it."""

    num_examples: int
    global_batch: int
    seed: int
    mode: str = "train"                 # 'train' or 'eval'
    sampler: str = "random"             # 'random' or 'pk'
    identities: tuple[int, ...] = ()    # identity of every example (pk sampler only)
    pk: tuple[int, int] = (8, 4)        # (identities, images per identity) per batch
    _cache: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        if self.mode not in ("train", "eval"):
            raise ValueError(f"mode must be 'train' or 'eval', got {self.mode!r}")
        if self.global_batch <= 0:
            raise DataError(f"train.batch_size must be positive, got {self.global_batch}.")
        if self.mode == "train" and self.num_examples < self.global_batch:
            raise DataError(f"the training split has {self.num_examples} examples, fewer than "
                            f"train.batch_size={self.global_batch}: lower the batch size or use a "
                            "larger split.")
        if self.sampler == "pk":
            p, k = self.pk
            if p * k != self.global_batch:
                raise DataError(f"sampler 'pk' needs train.batch_size == data.pk_identities * "
                                f"data.pk_images, got {self.global_batch} != {p} * {k}.")
            if len(self.identities) != self.num_examples:
                raise DataError("sampler 'pk' needs the identity of every example; the source "
                                "has no 'identity' key.")
            if len(set(self.identities)) < p:
                raise DataError(f"sampler 'pk' asks for {p} identities per batch but the split "
                                f"has only {len(set(self.identities))}: lower data.pk_identities.")
            ids, counts = np.unique(np.asarray(self.identities), return_counts=True)
            if counts.min() < k:
                short = ids[counts < k]
                raise DataError(
                    f"sampler 'pk' takes data.pk_images={k} images of each identity, but "
                    f"{len(short)} of {len(ids)} identities have fewer (identity {int(short[0])} "
                    f"has {int(counts[ids == short[0]][0])}; the smallest count is "
                    f"{int(counts.min())}): lower data.pk_images to at most {int(counts.min())}, "
                    "or leave those identities out of the split.")
        elif self.sampler != "random":
            raise DataError(f"data.sampler must be 'random' or 'pk', got {self.sampler!r}.")

    @property
    def steps_per_epoch(self) -> int:
        """Global batches per epoch (train drops the remainder; eval pads the last batch)."""
        if self.mode == "eval":
            return -(-self.num_examples // self.global_batch)
        return self.num_examples // self.global_batch

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def _cached(self, key: tuple, make: Callable[[], np.ndarray]) -> np.ndarray:
        if key not in self._cache:
            if len(self._cache) >= 8:  # a few epochs / batches live at once at most
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = make()
        return self._cache[key]

    def _permutation(self, epoch: int) -> np.ndarray:
        return self._cached(("perm", epoch), lambda: np.random.default_rng(
            [self.seed, epoch]).permutation(self.num_examples))

    @functools.cached_property
    def _by_identity(self) -> dict[int, np.ndarray]:
        ids = np.asarray(self.identities)
        return {int(i): np.flatnonzero(ids == i) for i in np.unique(ids)}

    def _pk_batch(self, step: int) -> np.ndarray:
        return self._cached(("pk", step), lambda: self._draw_pk(step))

    def _draw_pk(self, step: int) -> np.ndarray:
        p, k = self.pk
        rng = np.random.default_rng([self.seed, self.epoch_of(step), step])
        groups = self._by_identity
        chosen = rng.choice(np.asarray(sorted(groups)), size=p, replace=False)
        rows = [rng.choice(groups[int(c)], size=k, replace=False) for c in chosen]
        return np.concatenate(rows)

    def index(self, step: int, position: int) -> tuple[int, int, bool]:
        """Returns ``(example index, epoch, valid)`` for slot ``position`` of global batch ``step``."""
        if self.mode == "eval":
            g = step * self.global_batch + position
            return (g, 0, True) if g < self.num_examples else (0, 0, False)
        epoch = self.epoch_of(step)
        if self.sampler == "pk":
            return int(self._pk_batch(step)[position]), epoch, True
        within = (step % self.steps_per_epoch) * self.global_batch + position
        return int(self._permutation(epoch)[within]), epoch, True


class _LoadSlot:
    """Maps a process-local slot number to a transformed example (grain map function)."""

    def __init__(self, source: Source, order: Order, transform: Transform, local_batch: int,
                 process_index: int, where: str, skip: bool = False):
        self.source, self.order, self.transform = source, order, transform
        self.local_batch, self.process_index, self.where = local_batch, process_index, where
        self.skip = skip
        self._bad: dict[int, str] = {}  # bad index -> its error, as met by this process or worker

    def _read(self, index: int) -> tuple[int, Example]:
        """Returns ``(i, example i)`` for ``i = index``, or under 'skip' for its stand-in if
        example ``index`` is bad (``next_good``)."""
        if not self.skip:
            return index, self._check(index, self.source[index])
        return next_good(self.source, index, self._bad, self._check)

    def _check(self, index: int, example: Example) -> Example:
        return validate_example(example, where=f"{self.where}[{index}]", info=self.source.info)

    def __call__(self, slot: int) -> Example:
        step, offset = divmod(int(slot), self.local_batch)
        index, epoch, valid = self.order.index(step, self.process_index * self.local_batch + offset)
        used, example = self._read(index)
        rng = np.random.default_rng([self.order.seed, epoch, used])
        if "boxes" in example:
            example, dropped = clip_boxes(example)
            before = len(example["boxes"])
        example = self.transform(example, rng)
        example["index"] = np.int64(used)
        # A replacement repeats another example: eval must not count it twice.
        example["valid"] = np.bool_(valid and (used == index or self.order.mode == "train"))
        if "boxes" in example:
            dropped += before - len(example["boxes"])
            example[_DROPPED] = np.int64(dropped if example["valid"] else 0)
        if self.skip:
            example[_SKIPPED] = np.int64(-1 if used == index else index)
        return example


class _Collate:
    """Stacks examples into a batch, padding ``boxes`` and the per-box keys to ``max_boxes``."""

    def __init__(self, max_boxes: int, where: str):
        self.max_boxes, self.where = max_boxes, where

    def __call__(self, examples: Sequence[Example]) -> dict[str, np.ndarray]:
        keys = examples[0].keys()
        for ex in examples[1:]:
            if ex.keys() != keys:
                raise DataError(f"{self.where}: examples in one batch have different keys "
                                f"({sorted(keys)} vs {sorted(ex.keys())}); a source must give "
                                "every example the same keys.")
        if "boxes" in keys:
            examples = [self._pad_boxes(ex) for ex in examples]
        batch = {}
        for key in examples[0]:
            values = [np.asarray(ex[key]) for ex in examples]
            shapes = {v.shape for v in values}
            if len(shapes) > 1:
                raise DataError(f"{self.where}: '{key}' has different shapes within a batch "
                                f"({sorted(shapes)[:3]}...); add a resize or crop to the "
                                "transform pipeline (data.train_pp / data.eval_pp), e.g. 'resize(64)'.")
            batch[key] = np.stack(values)
        return batch

    def _pad_boxes(self, ex: Example) -> Example:
        boxes = np.asarray(ex["boxes"], np.float32).reshape(-1, 4)
        n = boxes.shape[0]
        if n > self.max_boxes:
            raise DataError(f"{self.where}[{int(ex['index'])}] has {n} boxes, more than "
                            f"data.max_boxes={self.max_boxes}; raise data.max_boxes "
                            f"(e.g. --config.data.max_boxes={n}).")
        ex = dict(ex)
        ex["boxes"] = np.zeros((self.max_boxes, 4), np.float32)
        ex["boxes"][:n] = boxes
        for key in BOX_KEYS:
            if key in ex:
                padded = np.zeros((self.max_boxes,), SPEC[key][1])
                padded[:n] = ex[key]
                ex[key] = padded
        ex["box_valid"] = np.arange(self.max_boxes) < n
        return ex


class Loader:
    """An iterable of process-local batches (dicts of numpy arrays, leading axis = local batch).

    ``iter(loader)`` starts at step 0; ``loader.iterator(state)`` resumes from a state saved with
    ``get_state()`` on a previous iterator. ``len(loader)`` is the number of batches in eval mode
    (one pass) and per epoch in train mode. ``bad_examples`` is 'error' or 'skip' (see the
    module docstring); ``skipped()`` reports what was skipped.
    """

    def __init__(self, source: Source, *, global_batch: int, seed: int = 0, mode: str = "train",
                 transform: Transform | None = None, max_boxes: int = 16, sampler: str = "random",
                 pk: tuple[int, int] = (8, 4), process_index: int = 0, process_count: int = 1,
                 num_workers: int = 0, prefetch: int = 2, bad_examples: str = "error"):
        if bad_examples not in BAD_EXAMPLES:
            raise DataError(f"data.bad_examples={bad_examples!r} must be one of "
                            f"{', '.join(map(repr, BAD_EXAMPLES))}.")
        if global_batch % process_count:
            raise DataError(f"train.batch_size={global_batch} does not divide over "
                            f"{process_count} processes; use a multiple of {process_count}.")
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} not in [0, {process_count}).")
        identities: tuple[int, ...] = ()
        if sampler == "pk" and mode == "train":
            identities = tuple(int(x) for x in source_identities(source))
        self.source = source
        self.order = Order(len(source), global_batch, seed, mode,
                           sampler if mode == "train" else "random", identities, tuple(pk))
        self.local_batch = global_batch // process_count
        self.process_index, self.process_count = process_index, process_count
        self.num_workers, self.prefetch = num_workers, prefetch
        where = f"{source.info.name}[{source.info.split}]"
        self._load = _LoadSlot(source, self.order, transform or _identity_transform,
                               self.local_batch, process_index, where, bad_examples == "skip")
        self._collate = _Collate(max_boxes, where)
        self._skipped: dict[int, str] = {}  # bad index -> its file, met by this process
        self.dropped_boxes = 0  # boxes of valid examples dropped by the box policy, this process

    def skipped(self) -> Skipped:
        """Returns the bad examples skipped so far under ``bad_examples='skip'`` by this
        process's iterators (each counted once, however often it was met); empty under 'error'.

        Each process loads only its slice of every batch, so in a multi-process run the counts
        of the processes add up (an eval pass meets every bad example of the split exactly once
        over all processes).
        """
        indices = sorted(self._skipped)
        return Skipped(len(indices), tuple(self._skipped[i] for i in indices))

    def _tally(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Removes the skip and box marks from ``batch`` (in the main process), records the bad
        examples they name, warning once for each, and counts dropped boxes."""
        if _DROPPED in batch:
            self.dropped_boxes += int(batch.pop(_DROPPED).sum())
        if _SKIPPED not in batch:
            return batch
        for index in np.unique(batch.pop(_SKIPPED)).tolist():
            if index >= 0 and index not in self._skipped:
                try:  # the worker that met it holds the error; reading again names the file
                    self.source[index]
                    path, what = f"{self._load.where}[{index}]", "read without error on a second try"
                except BadExample as e:
                    path, what = e.path, e.what
                self._skipped[index] = path
                warnings.warn(f"data.bad_examples='skip': skipped {what}.")
        return batch

    def __len__(self) -> int:
        return self.order.steps_per_epoch

    @property
    def global_batch(self) -> int:
        return self.order.global_batch

    def dataset(self) -> grain.IterDataset:
        """The grain pipeline: slots -> examples -> local batches (-> worker processes)."""
        steps = len(self) if self.order.mode == "eval" else _INFINITE
        ds = grain.MapDataset.range(steps * self.local_batch).map(self._load)
        ds = ds.batch(self.local_batch, drop_remainder=True, batch_fn=self._collate)
        it = ds.to_iter_dataset(grain.ReadOptions(num_threads=max(1, self.prefetch),
                                                  prefetch_buffer_size=max(1, self.prefetch)))
        if self.num_workers > 0:
            # grain's worker processes read absl flags; programs not started by absl.app never
            # parse them, so accept the defaults rather than crash.
            from absl import flags
            if not flags.FLAGS.is_parsed():
                flags.FLAGS.mark_as_parsed()
            it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=self.num_workers))
        # After mp_prefetch: runs in this process and sees every batch.
        it = it.map(self._tally)
        return it

    def iterator(self, state: dict[str, Any] | None = None) -> grain.DatasetIterator:
        """A fresh iterator, positioned by ``state`` (from ``get_state()``) when given."""
        it = iter(self.dataset())
        if state is not None:
            it.set_state(state)
        return it

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self.iterator()


def source_identities(source: Source) -> np.ndarray:
    """Returns the (N,) int identities of a source for the pk sampler: ``identity``, or
    ``label`` for a source without identities (``source.source_labels``)."""
    if "identity" not in source.info.keys and "label" not in source.info.keys:
        raise DataError(f"{source.info.name}: sampler 'pk' needs an 'identity' (or a 'label') per "
                        "example, and this source has neither.")
    return source_labels(source, "identity")
