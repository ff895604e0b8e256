"""Reading other runs: transfer learning, and the configs and weights of finished runs.

Transfer learning (``config.transfer``, see ``base_config``): a run that starts fresh copies the
selected parameters (and, with ``transfer.model_state``, the same layers' batch statistics) from
another run's checkpoint, then trains as usual. The source's config need not match: its
checkpoint is read as stored (``Checkpointer.restore_raw``) and leaves are matched by their
'/'-joined paths (``stage1_conv1/kernel``, ``head/bias``; model-state leaves by their path inside
their collection, so ``^stage1_`` selects a layer's parameters and its statistics alike).

* ``transfer.map``: rewrites the *source's* paths into this model's path space before
  matching, for a model that nests the source's under another name. ``(pattern, replacement)``
  pairs, applied in order with ``re.sub`` to each source path (a model-state leaf's path inside
  its collection, so its batch statistics follow its parameters); default ``()``: no rewriting.
  A detector that nests a classifier under ``backbone/`` takes a classification run's weights
  with ``transfer.map=(('^', 'backbone/'),)`` (``stage1_conv1/kernel`` ->
  ``backbone/stage1_conv1/kernel``); ``(('^backbone/', ''),)`` goes the other way. An entry may
  also be a ``'pattern=replacement'`` string, as in ``optim.lr_multipliers`` (the last '='
  separates; the command line's ``--config.transfer.map='^=backbone/'``); a list of lists (a
  saved config) is a tuple of pairs. Each pattern must match some source path (after the pairs
  before it); two source paths mapped onto one path this run copies are an error naming both.
* ``transfer.include``: regexes (``re.search``) over *this model's* paths; a path is selected
  when one matches (``()``: every path); each pattern must match some parameter path.
  ``transfer.exclude``: regexes over this model's paths that deselect (default ``'^head/'``: the
  head is re-initialized, e.g. for a new class count; a nested head such as ``backbone/head/``
  needs its own pattern).
* Every selected path must exist in the (mapped) source with the same shape, or the transfer
  stops with the paths and both shapes. Source paths that are not selected or not in this model
  are unused.
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


_MAP_EXAMPLE = "e.g. (('^', 'backbone/'),) or ('^=backbone/',)"


def parse_map(entries: Any, what: str = "transfer") -> list[tuple[re.Pattern, str]]:
    """Parses ``transfer.map`` into ``[(compiled pattern, replacement), ...]``.

    ``entries``: None / ``''`` / ``()`` (no mapping), or a sequence whose entries are
    ``(pattern, replacement)`` pairs (tuples, or lists as a saved config or the command line
    gives them) or ``'pattern=replacement'`` strings (the last '=' separates, as in
    ``optim.lr_multipliers``); a lone string is one entry. Patterns must be non-empty; a
    replacement may be empty (``'^backbone/='`` strips a prefix).
    """
    key = f"{what}.map"
    if entries is None:
        return []
    if isinstance(entries, str):
        entries = (entries,) if entries else ()
    out = []
    for entry in entries:
        if isinstance(entry, str):
            if "=" not in entry:
                raise ConfigError(f"{key}: entry {entry!r} must be a (pattern, replacement) "
                                  f"pair or a 'pattern=replacement' string; {key} is a sequence "
                                  f"of them, {_MAP_EXAMPLE} (one pair still needs the outer "
                                  f"tuple).")
            pattern, _, replacement = entry.rpartition("=")
        elif (isinstance(entry, (tuple, list)) and len(entry) == 2
              and all(isinstance(x, str) for x in entry)):
            pattern, replacement = entry
        else:
            raise ConfigError(f"{key}: entry {entry!r} must be a (pattern, replacement) pair of "
                              f"strings or a 'pattern=replacement' string, {_MAP_EXAMPLE}.")
        if not pattern:
            raise ConfigError(f"{key}: entry {entry!r} needs a non-empty pattern (use '^' to "
                              f"prefix every path), {_MAP_EXAMPLE}.")
        out.append((_compile_all(key, (pattern,))[0], replacement))
    return out


def _map_paths(rules: list[tuple[re.Pattern, str]], flat: dict[str, Any], hits: list[int],
               what: str) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """Rewrites the keys of ``flat`` with ``rules``; returns ({new path: leaf}, {new path: the
    source paths that map onto it}) and counts in ``hits`` the paths each rule matched."""
    mapped: dict[str, Any] = {}
    origins: dict[str, list[str]] = {}
    for path, leaf in flat.items():
        new = path
        for i, (p, replacement) in enumerate(rules):
            if p.search(new):
                hits[i] += 1
                try:
                    new = p.sub(replacement, new)
                except (re.error, IndexError) as e:
                    raise ConfigError(f"{what}.map: replacement {replacement!r} of pattern "
                                      f"{p.pattern!r} is invalid on {new!r} ({e}); it is an "
                                      f"re.sub template (groups as \\1 or \\g<name>).") from None
        origins.setdefault(new, []).append(path)
        mapped.setdefault(new, leaf)
    return mapped, origins


def _prefix_hint(missing: Sequence[str], source_paths: Iterable[str], what: str) -> str:
    """A ``transfer.map`` suggestion when a missing path is a source path under a prefix."""
    source_paths = list(source_paths)
    for name in missing:
        path = name.split("/", 1)[1] if name.startswith("params/") else None
        if path is None:
            continue
        for s in source_paths:
            if path.endswith("/" + s):
                prefix = path[:-len(s)]
                return (f" This model nests the source's paths under {prefix!r}: add "
                        f"{what}.map=(('^', {prefix!r}),).")
    return ""


def merge_variables(target: dict, source: dict, *, include: Iterable[str] = (),
                    exclude: Iterable[str] = ("^head/",), model_state: bool = True,
                    path_map: Any = (), what: str = "transfer") -> tuple[dict, list[str]]:
    """Copies the selected leaves of ``source`` into ``target`` (both ``{'params': ...,
    **collections}``); returns (the merged variables, the copied '<collection>/<path>' list).

    ``path_map`` (``transfer.map``, any form ``parse_map`` takes) rewrites the source's paths
    into the target's first; ``include`` / ``exclude`` select among the target's paths.
    Selection and errors as in the module docstring; copied leaves take the target's dtype.
    ``target`` is not modified.
    """
    rules = parse_map(path_map, what)
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
    # The source's leaves per collection, keyed by their paths in this model's space.
    hits = [0] * len(rules)
    sources, origins = {}, {}
    for collection in collections:
        flat = flat_paths(source.get(collection, {}))
        if rules:
            sources[collection], origins[collection] = _map_paths(rules, flat, hits, what)
        else:
            sources[collection], origins[collection] = flat, {}
    for (p, replacement), n in zip(rules, hits):
        if not n:
            raw = list(flat_paths(source.get("params", {})))
            raise ConfigError(f"{what}.map: pattern {p.pattern!r} (-> {replacement!r}) matches no "
                              f"path of the source (re.search over its '/'-joined paths, after the "
                              f"pairs before it). Source params: {_listing(raw)}. Fix the pattern "
                              f"or drop the pair.")

    merged, copied, missing, differ, clash = dict(target), [], [], [], []
    for collection in collections:
        have = sources[collection]
        new: dict[str, np.ndarray] = {}
        for path, leaf in flat_paths(target[collection]).items():
            if not selected(path):
                continue
            name = f"{collection}/{path}"
            came_from = origins[collection].get(path, [])
            if len(came_from) > 1:
                clash.append(f"{name} <- " + " and ".join(f"{collection}/{s}" for s in came_from))
            elif path not in have:
                missing.append(name)
            elif np.shape(have[path]) != np.shape(leaf):
                via = f" (source path {collection}/{came_from[0]})" if came_from and \
                    came_from[0] != path else ""
                differ.append(f"{name}: source shape {np.shape(have[path])}, "
                              f"this run's shape {np.shape(leaf)}{via}")
            else:
                new[path] = np.asarray(have[path]).astype(np.asarray(leaf).dtype)
                copied.append(name)
        merged[collection] = jax.tree_util.tree_map_with_path(
            lambda p, leaf: new.get("/".join(_key_name(k) for k in p), leaf), target[collection])
    if clash:
        raise ConfigError(f"{what}.map maps several source paths onto one path this run copies: "
                          + "; ".join(clash[:_SHOWN])
                          + (f"; ... ({len(clash)} in all)" if len(clash) > _SHOWN else "")
                          + f". Make the patterns more specific (anchor them with '^'), or add the "
                          f"paths to {what}.exclude.")
    problems = []
    if differ:
        problems.append("shapes differ: " + "; ".join(differ[:_SHOWN])
                        + (f"; ... ({len(differ)} in all)" if len(differ) > _SHOWN else ""))
    if missing:
        after = f" after {what}.map" if rules else ""
        problems.append(f"in this run's model but not in the source: {_listing(missing)} "
                        f"(source params{after}: {_listing(list(sources['params']))})")
    if problems:
        hint = "" if rules else _prefix_hint(missing, sources["params"], what)
        raise ValueError(f"{what}: cannot copy the selected leaves:\n  " + "\n  ".join(problems)
                         + f"\nNarrow {what}.include or add the paths to {what}.exclude"
                         + (f" (or set {what}.model_state=False)" if model_state else "")
                         + (f", or fix {what}.map" if rules else "") + "." + hint)
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
    path_map = tc.get("map", ())
    merged, copied = merge_variables(state.variables, source, include=tc.include,
                                     exclude=tc.exclude, model_state=bool(tc.model_state),
                                     path_map=path_map)
    params = merged["params"]
    new = state.replace(
        params=params, model_state={k: v for k, v in merged.items() if k != "params"},
        opt_state=optimizer.init(params),
        ema_params=jax.tree.map(np.copy, params) if state.ema_params is not None else None)
    total = len(flat_paths(state.variables))
    mapped = "; source paths rewritten by transfer.map" if parse_map(path_map) else ""
    return new, (f"transfer: copied {len(copied)} of {total} leaves from {tc.workdir} "
                 f"(step {step}{mapped}); the others keep their fresh initialization")


def run_config(spec: str | None, workdir: str | Path, overrides: Iterable[str] = ()
               ) -> ml_collections.ConfigDict:
    """The config a finished run used (``jaxvision.config.workdir_config``); ``spec`` when given
    names the experiment config to start from, else the one the run recorded."""
    return workdir_config(workdir, spec, overrides)
