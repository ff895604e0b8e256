"""Reading other runs: transfer learning, and the configs and weights of finished runs.

Transfer learning (``config.transfer``, see ``base_config``): a run that starts fresh copies the
selected parameters (and, with ``transfer.model_state``, the same layers' batch statistics) from
another run's checkpoint, then trains as usual. The source's config need not match: its
checkpoint is read as stored (``Checkpointer.restore_raw``) and leaves are matched by their
'/'-joined paths (``stage1_conv1/kernel``, ``head/bias``; model-state leaves by their path inside
their collection, so ``^stage1_`` selects a layer's parameters and its statistics alike).

* ``transfer.include``: regexes (``re.search``); a path is selected when one matches (``()``:
  every path); each pattern must match some parameter path. ``transfer.exclude``: regexes that
  deselect (default ``'^head/'``: the head is re-initialized, e.g. for a new class count).
* Every selected path must exist in the source with the same shape, or the transfer stops with
  the paths and both shapes. Source paths that are not selected or not in this model are unused.
* The source's evaluation parameters are copied (its EMA parameters when it kept them). The new
  run's optimizer state and EMA start fresh from the merged parameters.
* A resumed run never transfers again: its own checkpoint holds the weights (``train`` applies
  the transfer only when the workdir has no checkpoint).

Feature extraction is ``optim.freeze=('^stage',)`` (frozen leaves stay bit-identical);
fine-tuning at a smaller rate is ``optim.lr_multipliers=('^stage=0.1',)``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable, Sequence

import jax
import ml_collections
import numpy as np

from jaxvision.config import ConfigError, saved_config, workdir_config
from jaxvision.train.checkpoint import Checkpointer
from jaxvision.train.state import TrainState

_SHOWN = 12  # paths listed in one error message


def _key_name(entry: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def flat_paths(tree: Any) -> dict[str, Any]:
    """Returns ``{'/'-joined path: leaf}`` of ``tree`` in leaf order (as ``optim.param_paths``)."""
    return {"/".join(_key_name(k) for k in path): leaf
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _listing(paths: Sequence[str]) -> str:
    shown = ", ".join(paths[:_SHOWN])
    return shown + (f", ... ({len(paths)} in all)" if len(paths) > _SHOWN else "")


def _checkpoint_arg(checkpoint: Any) -> int | str | None:
    """None / 'latest' / 'best' / a step (int or digits) -> what ``Checkpointer.restore`` takes."""
    if checkpoint is None or checkpoint in ("", "latest"):
        return None
    if isinstance(checkpoint, (int, np.integer)) and not isinstance(checkpoint, bool):
        return int(checkpoint)
    if isinstance(checkpoint, str) and checkpoint.isdigit():
        return int(checkpoint)
    if checkpoint == "best":
        return "best"
    raise ConfigError(f"checkpoint {checkpoint!r} must be None or 'latest', 'best' or a step "
                      "number.")


def open_run(workdir: str | Path, *, what: str = "workdir") -> Checkpointer:
    """A read-only use ``Checkpointer`` over another run's ``workdir/checkpoints``.

    'best' works when the run's saved config names a ``train.best_metric``. ``what`` names the
    config key that gave ``workdir``, for the error when there is no checkpoint.
    """
    directory = Path(workdir) / "checkpoints"
    if not directory.is_dir():
        raise FileNotFoundError(f"{what}={str(workdir)!r}: no checkpoints in {directory}. Point "
                                f"{what} at the workdir of a trained run (it holds checkpoints/).")
    train = (saved_config(workdir) or {}).get("train", {})
    # max_to_keep=None: opening a manager must never prune another run's checkpoints.
    return Checkpointer(directory, max_to_keep=None, async_save=False,
                        best_metric=str(train.get("best_metric") or "") or None,
                        best_mode=str(train.get("best_mode", "max")))


def read_variables(workdir: str | Path, checkpoint: Any = None, *, what: str = "workdir"
                   ) -> tuple[dict, int]:
    """Reads another run's evaluation variables, whatever its config.

    Returns ``({'params': ..., **model_state}, step)`` with numpy leaves, from checkpoint
    ``checkpoint`` (None/'latest', 'best' or a step); the params are the run's EMA parameters
    when it kept them (what its evaluation used).
    """
    which = _checkpoint_arg(checkpoint)
    with open_run(workdir, what=what) as ckpt:
        restored = ckpt.restore_raw(step=which)
    state = restored.state
    if not isinstance(state, dict) or "params" not in state:
        raise ValueError(f"{what}={str(workdir)!r}: checkpoint step {restored.step} holds no "
                         "'params'; it was not written by jaxvision's training loop.")
    params = state.get("ema_params") or state["params"]
    variables = {"params": params, **(state.get("model_state") or {})}
    return jax.tree.map(np.asarray, variables), int(restored.step)


def _compile_all(key: str, patterns: Iterable[str]) -> list[re.Pattern]:
    if isinstance(patterns, str):
        patterns = (patterns,) if patterns else ()
    out = []
    for p in patterns:
        try:
            out.append(re.compile(p))
        except re.error as e:
            raise ConfigError(f"{key}: {p!r} is not a valid regular expression ({e}).") from None
    return out


def merge_variables(target: dict, source: dict, *, include: Iterable[str] = (),
                    exclude: Iterable[str] = ("^head/",), model_state: bool = True,
                    what: str = "transfer") -> tuple[dict, list[str]]:
    """Copies the selected leaves of ``source`` into ``target`` (both ``{'params': ...,
    **collections}``); returns (the merged variables, the copied '<collection>/<path>' list).

    Selection and errors as in the module docstring; copied leaves take the target's dtype.
    ``target`` is not modified.
    """
    inc = _compile_all(f"{what}.include", include)
    exc = _compile_all(f"{what}.exclude", exclude)
    param_paths = list(flat_paths(target["params"]))
    for p in inc:
        if not any(p.search(path) for path in param_paths):
            raise ConfigError(f"{what}.include: pattern {p.pattern!r} matches no parameter path of "
                              f"this run's model (re.search over '/'-joined paths). Paths: "
                              f"{_listing(param_paths)}.")

    def selected(path: str) -> bool:
        return ((not inc or any(p.search(path) for p in inc))
                and not any(p.search(path) for p in exc))

    collections = ["params"] + ([c for c in target if c != "params"] if model_state else [])
    merged, copied, missing, differ = dict(target), [], [], []
    for collection in collections:
        have = flat_paths(source.get(collection, {}))
        new: dict[str, np.ndarray] = {}
        for path, leaf in flat_paths(target[collection]).items():
            if not selected(path):
                continue
            name = f"{collection}/{path}"
            if path not in have:
                missing.append(name)
            elif np.shape(have[path]) != np.shape(leaf):
                differ.append(f"{name}: source shape {np.shape(have[path])}, "
                              f"this run's shape {np.shape(leaf)}")
            else:
                new[path] = np.asarray(have[path]).astype(np.asarray(leaf).dtype)
                copied.append(name)
        merged[collection] = jax.tree_util.tree_map_with_path(
            lambda p, leaf: new.get("/".join(_key_name(k) for k in p), leaf), target[collection])
    problems = []
    if differ:
        problems.append("shapes differ: " + "; ".join(differ[:_SHOWN])
                        + (f"; ... ({len(differ)} in all)" if len(differ) > _SHOWN else ""))
    if missing:
        problems.append(f"in this run's model but not in the source: {_listing(missing)} "
                        f"(source params: {_listing(list(flat_paths(source.get('params', {}))))})")
    if problems:
        raise ValueError(f"{what}: cannot copy the selected leaves:\n  " + "\n  ".join(problems)
                         + f"\nNarrow {what}.include or add the paths to {what}.exclude"
                         + (f" (or set {what}.model_state=False)" if model_state else "") + ".")
    if not copied:
        raise ConfigError(f"{what}: include={tuple(p.pattern for p in inc)} and exclude="
                          f"{tuple(p.pattern for p in exc)} select no parameter. Paths: "
                          f"{_listing(param_paths)}.")
    return merged, copied


def transfer_state(tc: ml_collections.ConfigDict, state: TrainState, optimizer: Any
                   ) -> tuple[TrainState, str]:
    """Applies a ``transfer`` config block to a fresh ``state``; returns (state, a log line).

    The optimizer state (and the EMA copy, when tracked) restart from the merged parameters;
    step, rng and ``aux`` are kept.
    """
    source, step = read_variables(tc.workdir, tc.get("checkpoint"), what="transfer.workdir")
    merged, copied = merge_variables(state.variables, source, include=tc.include,
                                     exclude=tc.exclude, model_state=bool(tc.model_state))
    params = merged["params"]
    new = state.replace(
        params=params, model_state={k: v for k, v in merged.items() if k != "params"},
        opt_state=optimizer.init(params),
        ema_params=jax.tree.map(np.copy, params) if state.ema_params is not None else None)
    total = len(flat_paths(state.variables))
    return new, (f"transfer: copied {len(copied)} of {total} leaves from {tc.workdir} "
                 f"(step {step}); the others keep their fresh initialization")


def run_config(spec: str | None, workdir: str | Path, overrides: Iterable[str] = ()
               ) -> ml_collections.ConfigDict:
    """The config a finished run used (``jaxvision.config.workdir_config``); ``spec`` when given
    names the experiment config to start from, else the one the run recorded."""
    return workdir_config(workdir, spec, overrides)
