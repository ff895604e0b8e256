"""Checkpoints that resume exactly and never lose what the user has: a thin layer on orbax.

``Checkpointer`` wraps ``orbax.checkpoint.CheckpointManager``; orbax does the atomic writes
(temporary directory, then rename), the asynchronous saves and the multi-process coordination.
This module adds what a training loop needs on top:

* one step directory holds the train state (``state``, any pytree of jax/numpy arrays and
  python scalars; typed PRNG keys round-trip natively in orbax 0.12), the data-iterator state
  (``data_state``), the run metadata (``meta``, e.g. the config) and the ``train_metrics``;
* retention keeps the last ``max_to_keep`` checkpoints plus the best one by ``best_metric``,
  even when it is older (orbax preservation policies);
* ``restore`` checks the target against what is on disk and names any mismatch; when the
  latest (or best) checkpoint is unreadable it warns and falls back to the previous one.
  Unusable checkpoints are never deleted: the first ``save`` after such a fallback moves them
  to ``<directory>/_unusable/`` so that the resumed run can write those steps again.

Layout on disk (orbax's)::

    <directory>/<step>/state/...            arrays (OCDBT + zarr)
    <directory>/<step>/data_state|meta|train_metrics/metadata   JSON, present when given
    <directory>/<step>.orbax-checkpoint-tmp  an unfinished save; never listed as a step
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import logging
import math
import os
import re
import sys
import threading
import time
import warnings
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

PyTree = Any

STATE_ITEM = "state"
JSON_ITEMS = ("data_state", "meta", "train_metrics")
UNUSABLE_DIR = "_unusable"
_MAX_LISTED = 8  # mismatching leaves named in one error message


class CheckpointError(RuntimeError):
    """No usable checkpoint, or a checkpoint that cannot be read; the message lists why."""


class TargetMismatchError(CheckpointError, ValueError):
    """The restore target's structure, shapes or dtypes differ from the checkpoint's."""


class CheckpointFallbackWarning(UserWarning):
    """A checkpoint was unusable and an older one is used instead."""


@functools.cache
def _save_cpu_arrays_whole() -> None:
    """On CPU, registers orbax's ``jax.Array`` handler without replica-parallel saving (once).

    Orbax's default off GPU cuts each replicated array into one slice per device and writes the
    slices in parallel. CPU devices share one host memory, so the cut only adds an eager slice
    per array and device: a state of 60 arrays replicated over 4 simulated devices saved in
    2.1 s the first time (compiling the slices) and 0.23 s later, against 0.15 and 0.14 s
    whole. Orbax turns it off on GPU too. A registration, not a handler option, because
    ``StandardCheckpointHandler`` takes no type-handler registry.
    """
    if jax.default_backend() != "cpu":
        return
    default = ocp.type_handlers.get_type_handler(jax.Array)
    handler = ocp.type_handlers.ArrayHandler(
        use_replica_parallel=False,
        # Keeps the per-array metadata the default handler writes (absent: orbax skips it).
        array_metadata_store=getattr(default, "_array_metadata_store", None))
    absl_logger = logging.getLogger("absl")  # orbax warns of every override it is asked for
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
        ocp.type_handlers.register_type_handler(jax.Array, handler, override=True)
    finally:
        absl_logger.setLevel(level)


@dataclasses.dataclass(frozen=True)
class Restored:
    """What ``Checkpointer.restore`` returns.

    ``state`` has the target's pytree structure; ``data_state``, ``meta`` and ``metrics`` are
    the JSON dicts given to ``save`` (None when that save got none; tuples come back as lists).
    """

    step: int
    state: PyTree
    data_state: dict | None
    meta: dict | None
    metrics: dict | None


@dataclasses.dataclass
class _PreserveBest:
    """Orbax preservation policy: keep the best checkpoint among those orbax tracks.

    Metrics come from ``metric_of(step)`` rather than orbax's own metrics file so that one
    corrupt metrics file cannot stop the manager from opening (orbax reads its file at init and
    raises on bad JSON).
    """

    metric_of: Callable[[int], float | None]
    mode: str

    def should_preserve(
        self, checkpoints: Sequence[Any], *, context: Any
    ) -> Sequence[bool]:
        best = _best_of((info.step for info in checkpoints), self.metric_of, self.mode)
        return [info.step == best for info in checkpoints]


def _best_of(
    steps: Iterable[int], metric_of: Callable[[int], float | None], mode: str
) -> int | None:
    """Returns the step with the best finite metric (latest on ties), None if none has one."""
    best_step, best_value = None, None
    for step in sorted(steps):
        value = metric_of(step)
        if value is None:
            continue
        better = best_value is None or (value >= best_value if mode == "max" else value <= best_value)
        if better:
            best_step, best_value = step, value
    return best_step


class Checkpointer:
    """Saves and restores training checkpoints in ``directory`` (local path or ``gs://``).

    Keeps the last ``max_to_keep`` checkpoints (None: keep all) and, when ``best_metric`` is
    given, also the checkpoint with the best ``metrics[best_metric]`` (``best_mode`` 'max' or
    'min'), however old. With ``async_save`` the arrays are copied to host memory during
    ``save`` and written in the background; call ``wait()`` (or ``close()``) before reading
    the files from elsewhere. Use as a context manager or call ``close()`` at the end.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        max_to_keep: int | None = 3,
        best_metric: str | None = None,
        best_mode: str = "max",
        async_save: bool = True,
    ):
        positive_int = isinstance(max_to_keep, int) and not isinstance(max_to_keep, bool) and max_to_keep >= 1
        if max_to_keep is not None and not positive_int:
            raise ValueError(f"max_to_keep must be a positive int or None (keep all), got {max_to_keep!r}")
        if best_mode not in ("max", "min"):
            raise ValueError(f"best_mode must be 'max' or 'min', got {best_mode!r}")
        if best_metric is not None and (not isinstance(best_metric, str) or not best_metric):
            raise ValueError(f"best_metric must be a metric name (str) or None, got {best_metric!r}")
        directory = os.fspath(directory)
        if "://" not in directory:
            directory = os.path.abspath(directory)
        self._directory = epath.Path(directory)
        self._best_metric = best_metric
        self._best_mode = best_mode
        self._name_format = ocp.step.standard_name_format()
        self._metrics: dict[int, dict | None] = {}  # step -> train_metrics, for best tracking
        self._unusable: dict[int, str] = {}  # step -> why restore could not use it

        _save_cpu_arrays_whole()
        policies: list[Any] = [ocp.checkpoint_managers.LatestN(n=max_to_keep)]
        if best_metric is not None:
            policies.append(_PreserveBest(self._metric_value, best_mode))
        registry = ocp.handlers.create_default_handler_registry(
            **{STATE_ITEM: ocp.handlers.StandardCheckpointHandler()},
            **{name: ocp.handlers.JsonCheckpointHandler() for name in JSON_ITEMS},
        )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
            enable_async_checkpointing=async_save,
            step_name_format=self._name_format,
            create=True,
            # Off on purpose: another process (an evaluator) may open the same directory while
            # the trainer is mid-save; orbax ignores unfinished dirs and rewrites them anyway.
            cleanup_tmp_directories=False,
        )
        self._mngr = ocp.CheckpointManager(self._directory, options=options, handler_registry=registry)
        if best_metric is not None:
            for step in self._mngr.all_steps():
                self._metrics[step] = self._read_metrics_for_tracking(step)

    # ------------------------------------------------------------------ queries

    @property
    def directory(self) -> epath.Path:
        """The checkpoint root directory (absolute)."""
        return self._directory

    def all_steps(self) -> list[int]:
        """Returns the steps of all committed checkpoints (and an in-flight async one), ascending.

        Unfinished temporary directories left by a crash are never listed.
        """
        return sorted(int(s) for s in self._mngr.all_steps())

    def latest_step(self) -> int | None:
        """Returns the newest finished (or in-flight async) checkpoint step, None when there is none.

        This is what is on disk; ``restore(...).step`` is the step actually resumed from, which
        is older when the latest checkpoint turned out to be unreadable.
        """
        steps = self.all_steps()
        return steps[-1] if steps else None

    def best_step(self) -> int | None:
        """Returns the step with the best ``best_metric`` (latest on ties); None without one."""
        if self._best_metric is None:
            return None
        return _best_of(self.all_steps(), self._metric_value, self._best_mode)

    # ------------------------------------------------------------------ save

    def save(
        self,
        step: int,
        state: PyTree,
        *,
        data_state: dict | None = None,
        meta: dict | None = None,
        metrics: dict | None = None,
        force: bool = False,
    ) -> bool:
        """Saves ``state`` (and the JSON dicts) as checkpoint ``step``; returns whether it saved.

        Nothing is written (returns False) when ``step`` is not newer than the latest checkpoint,
        unless ``force`` (which still raises for a step that already exists). ``metrics`` must hold
        ``best_metric`` (a number) when best tracking is on, or be None (then this checkpoint
        cannot become the best). Older checkpoints are deleted only after this one is committed.
        """
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise ValueError(f"step must be a non-negative int, got {step!r}")
        step = int(step)
        json_values = {
            name: _to_json(value, arg)
            for name, arg, value in (
                ("data_state", "data_state", data_state),
                ("meta", "meta", meta),
                ("train_metrics", "metrics", metrics),
            )
            if value is not None
        }
        metrics_json = json_values.get("train_metrics")
        if metrics_json is not None and self._best_metric is not None:
            _metric_number(metrics_json, self._best_metric, where=f"save(step={step}, metrics=...)")
        items: dict[str, Any] = {STATE_ITEM: ocp.args.StandardSave(state)}
        items.update({name: ocp.args.JsonSave(value) for name, value in json_values.items()})

        self._move_aside_unusable()
        had_entry, old_entry = step in self._metrics, self._metrics.get(step)
        if self._best_metric is not None:
            # Retention is decided inside orbax's save, so the policy must see this step's metrics.
            self._metrics[step] = metrics_json
        saved = False
        try:
            saved = self._mngr.save(step, args=ocp.args.Composite(**items), force=force)
        finally:
            if not saved:
                if had_entry:
                    self._metrics[step] = old_entry
                else:
                    self._metrics.pop(step, None)
        kept = set(self._mngr.all_steps())
        self._metrics = {s: m for s, m in self._metrics.items() if s in kept}
        return bool(saved)

    def wait(self) -> None:
        """Blocks until in-flight async saves are committed; raises if one of them failed."""
        self._mngr.wait_until_finished()

    def close(self) -> None:
        """Waits for in-flight saves and releases orbax's threads."""
        self._mngr.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ restore

    def restore(self, target: PyTree, step: int | str | None = None) -> Restored:
        """Restores a checkpoint into the structure, shapes, dtypes and shardings of ``target``.

        ``target`` leaves may be ``jax.ShapeDtypeStruct`` (give ``sharding=`` to place shards;
        without one jax arrays come back as saved, numpy arrays as numpy), concrete jax/numpy
        arrays (their sharding is used) or python scalars. ``step``: None or 'latest' = the newest
        usable checkpoint, 'best' = the best usable by ``best_metric``, an int = exactly that step.
        For 'latest'/'best' an unreadable checkpoint is skipped with a
        ``CheckpointFallbackWarning``. Raises ``TargetMismatchError`` when the target does not
        match the checkpoint, ``CheckpointError`` when no candidate is usable.
        """
        abstract = jax.tree.map(_abstract_leaf, target)
        restored = self._first_usable(step, lambda s: self._load(s, abstract), "restore")
        if jax.process_count() > 1:
            # Host copies for numpy leaves: a global array on the fallback mesh could not be
            # moved onto the caller's mesh without a cross-host transfer (unsupported on CPU).
            state = jax.tree.map(
                lambda t, r: np.asarray(r) if isinstance(t, (np.ndarray, np.generic)) else r,
                target, restored.state)
            restored = dataclasses.replace(restored, state=state)
        return restored

    def restore_meta(self, step: int | str | None = None) -> dict | None:
        """Returns only the ``meta`` dict of a checkpoint (cheap: no arrays are read).

        ``step`` as in ``restore``; None when the directory holds no checkpoint yet or that
        checkpoint was saved without meta. With 'latest' this reads the newest checkpoint whose
        meta is readable, which is the one ``restore`` picks unless its arrays are damaged.
        """
        if step in (None, "latest") and not self.all_steps():
            return None
        return self._first_usable(step, lambda s: self._load_json(s, ("meta",))["meta"], "restore_meta")

    def restore_raw(self, step: int | str | None = None) -> Restored:
        """Restores a checkpoint without a target: ``state`` comes back as stored, nested dicts
        (lists for sequences) of arrays on the default device, whatever model or optimizer
        wrote it.

        For reading another run's parameters (transfer learning, teachers, ensembles) when its
        config is not at hand. ``step`` as in ``restore`` (with the same fallback); a step whose
        array metadata is unreadable counts as unusable, since nothing else describes it.
        """
        def load(s: int) -> Restored:
            stored = self._stored_tree(s)
            if stored is None:
                raise CheckpointError(f"the array metadata of step {s} is unreadable")
            def leaf(m: Any) -> Any:
                # A python scalar target restores a saved python scalar; no sharding: as saved.
                if isinstance(m, ocp.metadata.ScalarMetadata):
                    return np.dtype(m.dtype).type(0).item()
                return jax.ShapeDtypeStruct(tuple(m.shape), m.dtype)
            abstract = jax.tree.map(
                leaf, stored, is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype"))
            return self._load(s, abstract)
        return self._first_usable(step, load, "restore_raw")

    # ------------------------------------------------------------------ internals

    def _step_path(self, step: int) -> epath.Path:
        return ocp.step.build_step_path(self._directory, self._name_format, step)

    def _metric_value(self, step: int) -> float | None:
        metrics = self._metrics.get(step)
        if metrics is None or self._best_metric is None:
            return None
        try:
            return _metric_number(metrics, self._best_metric, where=f"step {step}")
        except ValueError:
            return None

    def _read_metrics_for_tracking(self, step: int) -> dict | None:
        try:
            return self._load_json(step, ("train_metrics",))["train_metrics"]
        except Exception as e:  # noqa: BLE001 - any unreadable file only disqualifies this step
            warnings.warn(
                f"checkpoint step {step} in {self._directory}: metrics are unreadable "
                f"({type(e).__name__}: {_short(e)}); it cannot be chosen as the best checkpoint",
                CheckpointFallbackWarning,
                stacklevel=3,
            )
            return None

    def _candidates(self, step: int | str | None) -> tuple[list[int], bool]:
        """Returns (steps to try in order, whether falling back along them is allowed)."""
        steps = self.all_steps()
        if step is None or step == "latest":
            if not steps:
                raise CheckpointError(
                    f"no checkpoint in {self._directory}: the directory holds no finished step "
                    "(start from scratch, or point the checkpoint directory at the run to resume)"
                )
            return steps[::-1], True
        if step == "best":
            if self._best_metric is None:
                raise ValueError("restore(step='best') needs Checkpointer(..., best_metric='NAME')")
            ranked = [s for s in steps if self._metric_value(s) is not None]
            if not ranked:
                raise CheckpointError(
                    f"no checkpoint in {self._directory} has metric {self._best_metric!r} "
                    f"(steps on disk: {steps}); pass metrics={{'{self._best_metric}': ...}} to save"
                )
            sign = -1.0 if self._best_mode == "max" else 1.0
            ranked.sort(key=lambda s: (sign * self._metric_value(s), -s))  # type: ignore[operator]
            return ranked, True
        if isinstance(step, str) or isinstance(step, bool) or not isinstance(step, (int, np.integer)):
            raise ValueError(f"step must be None, 'latest', 'best' or an int, got {step!r}")
        if int(step) not in steps:
            raise CheckpointError(
                f"no checkpoint for step {int(step)} in {self._directory}; finished steps: {steps}"
            )
        return [int(step)], False

    def _first_usable(self, step: int | str | None, load: Callable[[int], Any], what: str) -> Any:
        candidates, may_fall_back = self._candidates(step)
        with _QuietClosedLoop():
            return self._first_usable_loud(candidates, may_fall_back, load, what)

    def _first_usable_loud(self, candidates: list[int], may_fall_back: bool,
                           load: Callable[[int], Any], what: str) -> Any:
        failures: list[str] = []
        for i, candidate in enumerate(candidates):
            try:
                result = load(candidate)
            except TargetMismatchError:
                raise  # the caller's target is wrong; an older checkpoint would not fix that
            except Exception as e:  # noqa: BLE001 - every other failure means this step is unusable
                why = f"{type(e).__name__}: {_short(e)}"
                failures.append(f"step {candidate}: {why}")
                _ORPHANED_READS.mute(self._step_path(candidate))
                if not may_fall_back:
                    raise CheckpointError(
                        f"{what}: checkpoint step {candidate} in {self._directory} is unusable ({why})"
                    ) from e
                if what == "restore":
                    self._unusable[candidate] = why
                if i + 1 < len(candidates):
                    warnings.warn(
                        f"{what}: checkpoint step {candidate} in {self._directory} is unusable "
                        f"({why}); falling back to step {candidates[i + 1]}",
                        CheckpointFallbackWarning,
                        stacklevel=4,
                    )
                continue
            return result
        raise CheckpointError(
            f"{what}: no usable checkpoint in {self._directory}; tried (newest/best first):\n  "
            + "\n  ".join(failures)
        )

    def _present_items(self, step: int) -> set[str]:
        path = self._step_path(step)
        return {name for name in (STATE_ITEM, *JSON_ITEMS) if (path / name).exists()}

    def _load_json(self, step: int, names: Sequence[str]) -> dict[str, Any]:
        present = [n for n in names if n in self._present_items(step)]
        out: dict[str, Any] = {n: None for n in names}
        if present:
            restored = self._mngr.restore(
                step, args=ocp.args.Composite(**{n: ocp.args.JsonRestore() for n in present})
            )
            out.update({n: restored[n] for n in present})
        return out

    def _load(self, step: int, abstract: PyTree) -> Restored:
        present = self._present_items(step)
        if STATE_ITEM not in present:
            raise FileNotFoundError(f"{self._step_path(step) / STATE_ITEM} is missing")
        stored = self._stored_tree(step)
        if stored is not None:
            _check_target(abstract, stored, step, self._directory)
        # data_state and meta are needed to resume exactly, so damage to them disqualifies the
        # checkpoint; train_metrics are informational and are read separately below.
        json_names = [n for n in ("data_state", "meta") if n in present]
        # Checkpoints written before TrainState lost its always-None 'aux' field still hold it.
        legacy = (isinstance(stored, Mapping) and dataclasses.is_dataclass(abstract)
                  and set(stored) - {f.name for f in dataclasses.fields(abstract)} == {"aux"})
        target = ({**{f.name: getattr(abstract, f.name) for f in dataclasses.fields(abstract)},
                   "aux": None} if legacy else abstract)
        args = {STATE_ITEM: ocp.args.StandardRestore(target, fallback_sharding=_fallback_sharding())}
        args.update({n: ocp.args.JsonRestore() for n in json_names})
        restored = self._mngr.restore(step, args=ocp.args.Composite(**args))
        metrics = None
        try:
            metrics = self._load_json(step, ("train_metrics",))["train_metrics"]
        except Exception as e:  # noqa: BLE001
            warnings.warn(
                f"checkpoint step {step} in {self._directory}: metrics are unreadable "
                f"({type(e).__name__}: {_short(e)}); restoring it with metrics=None",
                CheckpointFallbackWarning,
                stacklevel=4,
            )
        state = restored[STATE_ITEM]
        if legacy:
            state = abstract.replace(**{k: v for k, v in state.items() if k != "aux"})
        return Restored(
            step=step,
            state=state,
            data_state=restored["data_state"] if "data_state" in json_names else None,
            meta=restored["meta"] if "meta" in json_names else None,
            metrics=metrics,
        )

    def _stored_tree(self, step: int) -> PyTree | None:
        """Returns the on-disk tree metadata of ``state``, or None when it cannot be read.

        Unreadable metadata does not make the checkpoint unusable by itself: orbax can restore
        from the target alone, and if the data is damaged too that restore fails instead.
        """
        try:
            item = self._mngr.item_metadata(step)[STATE_ITEM]
        except Exception:  # noqa: BLE001
            return None
        return getattr(item, "tree", item)

    def _move_aside_unusable(self) -> None:
        """Moves checkpoints that restore found unusable to ``_unusable/`` (kept, not deleted)."""
        if not self._unusable:
            return
        steps = set(self.all_steps())
        bad = {s: why for s, why in self._unusable.items() if s in steps}
        self._unusable.clear()
        if not bad:
            return
        self._mngr.wait_until_finished()
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
        if ocp.multihost.process_index() == 0:
            dest_root = self._directory / UNUSABLE_DIR
            dest_root.mkdir(parents=True, exist_ok=True)
            for s, why in sorted(bad.items()):
                src = self._step_path(s)
                dest = dest_root / f"{src.name}-{stamp}"
                src.rename(dest)
                warnings.warn(
                    f"moved unusable checkpoint step {s} ({why}) to {dest} so that step {s} "
                    "can be written again; delete it once you no longer need it",
                    CheckpointFallbackWarning,
                    stacklevel=4,
                )
        ocp.multihost.sync_global_processes("jaxvision_checkpoint_move_aside")
        self._mngr.reload()


# ---------------------------------------------------------------------- helpers


class _QuietClosedLoop:
    """While a damaged checkpoint fails to load, tensorstore's pending reads report into orbax's
    already-closed asyncio loop, and each prints an 'Event loop is closed' traceback to
    ``sys.stderr`` from its own thread (a hundred or more for one bad file, interleaved). This
    holds back what is written to ``sys.stderr`` meanwhile and, at the end, writes it again
    without the pieces of those tracebacks; the failure itself is reported once by the caller."""

    _NOISE = re.compile(
        r"Traceback \(most recent call last\):|File \"[^\"]*asyncio[/\\]base_events\.py\", "
        r"line \d+, in \w+|self\._check_closed\(\)|raise RuntimeError\('Event loop is closed'\)"
        r"|RuntimeError: Event loop is closed|RuntimeError|: Event loop is closed")

    def __init__(self):
        self._held: list[str] = []
        self._stream: Any = None
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            self._held.append(text)
        return len(text)

    def flush(self) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    def __enter__(self) -> "_QuietClosedLoop":
        self._stream, sys.stderr = sys.stderr, self
        return self

    def __exit__(self, *exc: Any) -> None:
        if any("Event loop is closed" in t for t in self._held):
            time.sleep(0.5)   # callbacks of reads still in flight report a moment later
        sys.stderr = self._stream
        text = "".join(self._held)
        if "Event loop is closed" in text:
            lines = (self._NOISE.sub("", line).rstrip() for line in text.splitlines())
            text = "".join(line + "\n" for line in lines if line.strip())
        if text:
            self._stream.write(text)


class _OrphanedReadFilter(logging.Filter):
    """Drops asyncio's 'Future exception was never retrieved' records about damaged checkpoints.

    When one read of a damaged checkpoint fails, orbax stops waiting for the others; their
    futures fail too and asyncio logs each one when it is garbage-collected, which may be long
    after the restore returned (so ``_QuietClosedLoop`` cannot catch them). Only records that
    name a step directory already reported unusable are dropped; every other one passes.
    """

    def __init__(self):
        super().__init__()
        self._paths: set[str] = set()

    def mute(self, step_dir: Any) -> None:
        # With a separator, so that muting step 8 leaves step 80's records alone.
        self._paths.update(os.path.join(p, "") for p in
                           (os.fspath(step_dir), os.path.abspath(os.fspath(step_dir))))
        logging.getLogger("asyncio").addFilter(self)   # once: addFilter skips a present one

    def filter(self, record: logging.LogRecord) -> bool:
        if "never retrieved" not in str(record.msg):
            return True
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += str(record.exc_info[1])
        return not any(p in text for p in self._paths)


_ORPHANED_READS = _OrphanedReadFilter()


def _short(e: BaseException, limit: int = 300) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _metric_number(metrics: Mapping[str, Any], name: str, *, where: str) -> float | None:
    """Returns ``metrics[name]`` as a float (None when not finite); raises naming what is wrong."""
    if not isinstance(metrics, Mapping) or name not in metrics:
        keys = sorted(metrics) if isinstance(metrics, Mapping) else type(metrics).__name__
        raise ValueError(f"{where}: best_metric {name!r} not in metrics (keys: {keys})")
    value = metrics[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where}: metrics[{name!r}] must be a number, got {value!r}")
    value = float(value)
    return value if math.isfinite(value) else None


def _to_json(value: Any, arg: str, path: str = "") -> Any:
    """Returns ``value`` with numpy/jax scalars turned into python ones; raises on non-JSON data."""
    where = f"{arg}{path}"
    if arg and not path and not isinstance(value, Mapping):
        raise TypeError(f"{arg} must be a dict (JSON object), got {type(value).__name__}")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (np.generic, np.ndarray, jax.Array)):
        if np.ndim(value) != 0:
            raise TypeError(
                f"{where} is an array of shape {np.shape(value)}; only scalars go in {arg} "
                "(put arrays in the state pytree, or convert with .tolist())"
            )
        return np.asarray(value).item()
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where}: key {k!r} is a {type(k).__name__}; JSON keys must be str")
            out[k] = _to_json(v, arg, f"{path}[{k!r}]")
        return out
    if isinstance(value, (list, tuple)):
        return [_to_json(v, arg, f"{path}[{i}]") for i, v in enumerate(value)]
    raise TypeError(f"{where} is a {type(value).__name__}, which JSON cannot store")


def _fallback_sharding() -> jax.sharding.Sharding:
    """Where a leaf goes when its saved sharding names devices this run does not have.

    That happens whenever the device or process count changed since the save (e.g. a checkpoint
    of 2 processes restored in 1, or the reverse): one local device in a single process, a full
    copy on every device of every process in a multi-process run.
    """
    if jax.process_count() == 1:
        return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("devices",))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def _abstract_leaf(x: Any) -> Any:
    """Returns the restore target for one leaf: a ShapeDtypeStruct or a python scalar."""
    if isinstance(x, jax.ShapeDtypeStruct):
        return x
    if isinstance(x, jax.Array):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    if isinstance(x, (np.ndarray, np.generic)):
        if jax.process_count() > 1:
            # Every process needs the whole value; the saved sharding may name devices of
            # another process count (or only another process's devices).
            return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=_fallback_sharding())
        return jax.ShapeDtypeStruct(np.shape(x), x.dtype)  # no sharding: as saved, or one device
    if isinstance(x, (bool, int, float)):
        return x
    raise TypeError(
        f"restore target leaf of type {type(x).__name__} is not supported; use arrays, "
        "jax.ShapeDtypeStruct (e.g. from jax.eval_shape) or python scalars"
    )


def _key_str(entry: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def _flat_by_path(tree: PyTree, is_leaf: Callable[[Any], bool] | None = None) -> dict[str, Any]:
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
    return {"/".join(_key_str(k) for k in path): leaf for path, leaf in leaves}


def _physical(leaf: Any) -> tuple[tuple[int, ...], np.dtype | None]:
    """Returns (shape, dtype) as stored on disk; a typed PRNG key is stored as its key data."""
    if isinstance(leaf, (bool, int, float)):
        return (), None
    dtype = leaf.dtype
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        data = jax.eval_shape(jax.random.key_data, jax.ShapeDtypeStruct(leaf.shape, dtype))
        return tuple(data.shape), np.dtype(data.dtype)
    return tuple(leaf.shape), np.dtype(dtype)


def _check_target(abstract: PyTree, stored: PyTree, step: int, directory: Any) -> None:
    """Raises TargetMismatchError naming missing/extra leaves and shape/dtype differences."""
    want = _flat_by_path(abstract)
    have = _flat_by_path(stored, is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype"))
    problems = []
    missing = sorted(set(have) - set(want))
    extra = sorted(set(want) - set(have))
    if missing:
        problems.append(f"in the checkpoint but not in the target: {_listing(missing)}")
    if extra:
        problems.append(f"in the target but not in the checkpoint: {_listing(extra)}")
    differ = []
    for path in sorted(set(want) & set(have)):
        shape, dtype = _physical(want[path])
        stored_leaf = have[path]
        stored_shape = tuple(getattr(stored_leaf, "shape", ()) or ())
        is_scalar = isinstance(stored_leaf, ocp.metadata.ScalarMetadata)  # a python int/float was saved
        if shape != stored_shape:
            differ.append(f"{path}: checkpoint shape {stored_shape}, target shape {shape}")
        elif dtype is not None and not is_scalar and np.dtype(stored_leaf.dtype) != dtype:
            differ.append(f"{path}: checkpoint dtype {np.dtype(stored_leaf.dtype)}, target dtype {dtype}")
    if differ:
        problems.append("shape/dtype differ: " + _listing(differ))
    if problems:
        raise TargetMismatchError(
            f"restore target does not match checkpoint step {step} in {directory}:\n  "
            + "\n  ".join(problems)
            + "\nBuild the target from the same model/optimizer config that wrote the checkpoint "
            "(compare restore_meta() with your config); cast dtypes after restoring if intended."
        )


def _listing(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    return shown + (f" (+{len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else "")


__all__ = [
    "CheckpointError",
    "CheckpointFallbackWarning",
    "Checkpointer",
    "Restored",
    "TargetMismatchError",
]
