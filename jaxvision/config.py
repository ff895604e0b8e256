"""Experiment configs: ``experiments/<task>.py:<name>``, command-line overrides, and diffs.

An experiment module defines ``CONFIGS``, a dict from config name to a function returning an
``ml_collections.ConfigDict``. Every config holds at least the keys of ``base_config()``.
Overrides are ``--config.<dotted.key>=<value>``; values are parsed as Python literals when they
can be (``3``, ``0.1``, ``True``, ``(1, 2)``, ``None``) and kept as strings otherwise.
"""

from __future__ import annotations

import ast
import difflib
import hashlib
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Iterable

import ml_collections

from jaxvision.data.config import data_config

EXPERIMENTS_DIR = Path(__file__).resolve().parents[1] / "experiments"


class ConfigError(ValueError):
    """A config path, name or override is wrong; the message says how to fix it."""


def base_config() -> ml_collections.ConfigDict:
    """Keys every experiment has (the command-line contract), with defaults."""
    from jaxvision.optim import optim_config
    return ml_collections.ConfigDict(dict(
        # The experiment module and config name ('experiments/<task>.py:<name>'); get_config sets
        # it, and the workdir's config.json records it, so a run knows its own task.
        experiment="",
        seed=0,
        data=data_config(),
        model=ml_collections.ConfigDict(dict(name="small_cnn")),
        optim=optim_config(),
        train=ml_collections.ConfigDict(dict(
            batch_size=128,          # global, over all devices and processes
            eval_batch_size=256,
            steps=1000,
            eval_every=500,          # 0 = only at the end
            checkpoint_every=500,
            log_every=50,
            keep_checkpoints=3,
            best_metric="accuracy",  # eval metric that picks the 'best' checkpoint ('' = none)
            best_mode="max",
            early_stopping_patience=0,   # evaluations without improvement; 0 = off
            mixed_precision=False,   # bfloat16 compute, float32 params and optimizer state
            async_checkpoint=True,
            # End-of-run figures: curves.png and the experiment report's pictures. Off, only
            # their numbers (JSON) are written: each figure costs ~0.3-1 s of matplotlib, more
            # than a test's short run trains.
            plots=True,
        )),
        # Named evaluators (jaxvision/evaluators.py): name -> ConfigDict(type=..., split=...,
        # batch_size=..., every=..., ...). Empty: one 'metrics' evaluator over data.eval_split
        # with train.eval_batch_size every train.eval_every steps (the experiment's ``evaluate``).
        evals=ml_collections.ConfigDict(),
        # strategy 'jit' or 'pmap'; num_devices 0 = all devices, n = the first n (single process)
        parallel=ml_collections.ConfigDict(dict(strategy="jit", num_devices=0)),
        # Start from another run's weights (jaxvision/train/transfer.py); only on a fresh start.
        transfer=ml_collections.ConfigDict(dict(
            workdir=None,            # the source run's workdir; None = off
            checkpoint=None,         # None (= latest), "best" or a step
            include=(),              # regexes over '/'-joined param paths; () = every path
            exclude=("^head/",),     # re-initialize the head (e.g. for a new class count)
            map=(),                  # (regex, replacement) pairs (or 'regex=replacement'
                                     # strings) re.sub'd into each source path, in order, before
                                     # matching: (('^', 'backbone/'),) nests a classifier's weights
            model_state=True,        # copy the selected layers' model state (batch_stats) too
        )),
    ))


# Integer keys every run reads, with the smallest value each accepts and what the value means.
_INT_RANGES = {
    "seed": (0, "the random seed"),
    "train.steps": (1, "optimizer steps of the run"),
    "train.batch_size": (1, "the global batch"),
    "train.eval_batch_size": (1, "the global eval batch"),
    "train.log_every": (1, "steps between train logs"),
    "train.eval_every": (0, "steps between evaluations; 0 = only at the end"),
    "train.checkpoint_every": (0, "steps between checkpoints; 0 = only with evaluations and at the end"),
    "train.keep_checkpoints": (1, "newest checkpoints kept (plus the best)"),
    "train.early_stopping_patience": (0, "evaluations without improvement; 0 = off"),
    "optim.warmup_steps": (0, "steps of linear warm-up"),
    "parallel.num_devices": (0, "devices to use; 0 = all"),
}
_EVAL_INT_RANGES = {
    "every": (-1, "steps between its runs; 0 = only at the end, -1 = train.eval_every"),
    "batch_size": (0, "its global batch; 0 = train.eval_batch_size"),
}
_CHOICES = {"train.best_mode": (("max", "min"), "whether a larger train.best_metric is better"),
            "parallel.strategy": (("jit", "pmap"), "how steps are compiled over the devices")}


def _lookup(config: Any, key: str) -> Any:
    value = config
    for part in key.split("."):
        if not hasattr(value, "get") or part not in value:
            return None
        value = value[part]
    return value


def check_config(config: Any) -> None:
    """Checks the ranges of the keys the core reads (``_INT_RANGES``, ``_CHOICES``, the ``data``
    block, every ``evals.<name>`` entry); raises ``ConfigError`` (``DataError`` for ``data``
    keys) naming the key as it is typed on the command line and a value that works."""
    from jaxvision.data.config import check_data_config, check_ranges
    check_ranges(lambda key: _lookup(config, key), _INT_RANGES, _CHOICES, error=ConfigError)
    if config.get("data") is not None:
        check_data_config(config.data)
    for name, ev in (config.get("evals") or {}).items():
        check_ranges(ev.get, _EVAL_INT_RANGES, {}, prefix=f"evals.{name}.", error=ConfigError)


def load_module(path: str | Path) -> ModuleType:
    """Imports an experiment file by path (``experiments/classification.py``)."""
    path = Path(path)
    if not path.is_file():
        alt = EXPERIMENTS_DIR / path.name
        if alt.is_file():
            path = alt
        else:
            known = ", ".join(sorted(p.name for p in EXPERIMENTS_DIR.glob("*.py") if p.name[0] != "_"))
            raise ConfigError(f"experiment file {str(path)!r} not found; experiments: {known}.")
    name = f"jaxvision_experiment_{path.stem}"
    if name in sys.modules and getattr(sys.modules[name], "__file__", None) == str(path.resolve()):
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path.resolve())
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        del sys.modules[name]
        line = (e.text or "").strip()
        raise ConfigError(f"{e.filename}:{e.lineno}: syntax error in the experiment file: "
                          f"{e.msg}" + (f"\n    {line}" if line else "")) from None
    except BaseException:
        del sys.modules[name]
        raise
    return module


def normalize_spec(spec: str) -> str:
    """``path:name`` with the path as ``experiments/<file>.py`` for the project's experiments and
    absolute otherwise, so the same experiment reads the same from any directory."""
    path, name = split_spec(spec)
    p = Path(path)
    resolved = p.resolve() if p.is_file() else (EXPERIMENTS_DIR / p.name).resolve()
    if resolved.parent == EXPERIMENTS_DIR and resolved.is_file():
        return f"experiments/{resolved.name}:{name}"
    return f"{resolved if resolved.is_file() else path}:{name}"


# Keys added to base_config after runs were already saved without them: a saved config that
# lacks one is read as holding its default (its behaviour then), so old workdirs keep resuming.
_ADDED_KEYS = ("evals", "data.bad_examples", "data.max_pixels", "data.train_classes",
               "data.eval_classes", "train.plots")


def migrate(saved: dict, current: dict) -> dict:
    """A saved config dict brought up to the current keys (see ``_ADDED_KEYS``).

    ``experiment`` missing from an old run's config is taken from ``current`` (the spec the
    user gave for it now)."""
    out = json.loads(json.dumps(saved))   # a deep copy
    defaults = to_dict(base_config())
    for key in _ADDED_KEYS:
        *parents, leaf = key.split(".")
        node, default = out, defaults
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
            default = default[p]
        if isinstance(node, dict):
            node.setdefault(leaf, default[leaf])
    if not out.get("experiment") and current.get("experiment"):
        out["experiment"] = current["experiment"]
    return out


def split_spec(spec: str) -> tuple[str, str]:
    """``'experiments/classification.py:default'`` -> (path, name); the name defaults to 'default'."""
    path, _, name = spec.partition(":")
    return path, (name or "default")


def get_config(spec: str, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
    """Loads ``path:name`` and applies ``overrides`` (``['train.steps=10', ...]``)."""
    path, name = split_spec(spec)
    module = load_module(path)
    configs = getattr(module, "CONFIGS", None)
    if not isinstance(configs, dict):
        raise ConfigError(f"{path} defines no CONFIGS dict (name -> function returning a ConfigDict).")
    if name not in configs:
        close = difflib.get_close_matches(name, list(configs), n=3)
        raise ConfigError(f"{path} has no config {name!r}; it has: {', '.join(configs)}."
                          + (f" Did you mean {close[0]!r}?" if close else ""))
    config = configs[name]()
    with config.unlocked():
        config.experiment = normalize_spec(f"{path}:{name}")
    for override in overrides:
        apply_override(config, override)
    return config


def _leaf_keys(config: Any, prefix: str = "") -> list[str]:
    keys = []
    for k, v in config.items():
        full = f"{prefix}{k}"
        keys.append(full)
        if isinstance(v, ml_collections.ConfigDict):
            keys.extend(_leaf_keys(v, full + "."))
    return keys


def parse_value(text: str) -> Any:
    """Parses an override value as a Python literal, falling back to the plain string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_override(config: ml_collections.ConfigDict, override: str) -> None:
    """Applies one ``key=value`` override in place; unknown keys fail listing close matches."""
    key, sep, raw = override.partition("=")
    key = key.strip().removeprefix("--").removeprefix("config.")
    if not sep:
        raise ConfigError(f"override {override!r} is not of the form --config.KEY=VALUE.")
    parent, leaf = config, key
    *parents, leaf = key.split(".")
    for p in parents:
        if not isinstance(parent, ml_collections.ConfigDict) or p not in parent:
            parent = None
            break
        parent = parent[p]
    if parent is None or not isinstance(parent, ml_collections.ConfigDict) or leaf not in parent:
        close = difflib.get_close_matches(key, _leaf_keys(config), n=5, cutoff=0.5)
        raise ConfigError(f"unknown config key {key!r}." +
                          (f" Close matches: {', '.join(close)}." if close else
                           " Run `python -m jaxvision list` to see the experiments' configs."))
    value = parse_value(raw)
    old = parent[leaf]
    if isinstance(old, ml_collections.ConfigDict):
        raise ConfigError(f"{key!r} is a group of keys, not a value; override its keys "
                          f"({', '.join(old.keys())}).")
    # Keep a field's type: an int field given "0.5" must fail; a float field given "1" is 1.0.
    if isinstance(old, bool) and not isinstance(value, bool):
        raise ConfigError(f"{key!r} is a bool; got {raw!r} (use True or False).")
    if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(old, tuple) and isinstance(value, list):
        value = tuple(value)
    if isinstance(old, tuple) and isinstance(value, str):
        value = (value,)
    try:
        parent[leaf] = value
    except (TypeError, ValueError) as e:
        raise ConfigError(f"cannot set {key!r} to {raw!r}: {e}") from None


def to_dict(config: ml_collections.ConfigDict) -> dict:
    """A plain, JSON-able dict of the config (tuples become lists)."""
    return json.loads(config.to_json_best_effort(sort_keys=True))


def config_hash(config: ml_collections.ConfigDict) -> str:
    return hashlib.sha256(json.dumps(to_dict(config), sort_keys=True).encode()).hexdigest()[:16]


def diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Lines ``key: old -> new`` for every leaf that differs between two config dicts."""
    lines = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k, "<absent>"), new.get(k, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            lines.extend(diff(a, b, f"{prefix}{k}."))
        elif a != b:
            lines.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return lines


def list_experiments(directory: Path = EXPERIMENTS_DIR) -> list[tuple[str, str, str]]:
    """Returns ``(spec, name, first docstring line)`` for every named config of every experiment."""
    rows = []
    for path in sorted(directory.glob("*.py")):
        if path.name.startswith("_"):
            continue
        module = load_module(path)
        for name, fn in getattr(module, "CONFIGS", {}).items():
            doc = (fn.__doc__ or "").strip().splitlines()
            rows.append((f"experiments/{path.name}:{name}", name, doc[0] if doc else ""))
    return rows


def saved_config(workdir: str | Path) -> dict | None:
    """Returns the config a run saved in ``workdir`` (``config.json``) as a dict, None if absent."""
    path = Path(workdir) / "config.json"
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not valid JSON ({e}); it was damaged or edited. Restore it, "
                          "or pass --config with the run's experiment config.") from None
    if not isinstance(saved, dict):
        raise ConfigError(f"{path} holds a {type(saved).__name__}, not a config object.")
    return saved


def _tupled(value: Any) -> Any:
    return tuple(_tupled(v) for v in value) if isinstance(value, list) else value


def _overlay(config: ml_collections.ConfigDict, saved: dict, prefix: str = "") -> None:
    """Sets every key of ``saved`` in ``config`` (JSON lists back to tuples), recursively."""
    for key, value in saved.items():
        old = config.get(key)
        if isinstance(value, dict):
            if isinstance(old, ml_collections.ConfigDict):
                _overlay(old, value, f"{prefix}{key}.")
                continue
            value = ml_collections.ConfigDict(value)
        elif isinstance(value, list) and not isinstance(old, list):
            value = _tupled(value)
        elif isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        try:
            config[key] = value
        except (TypeError, ValueError) as e:
            raise ConfigError(f"the saved config's {prefix}{key}={value!r} does not fit the "
                              f"config's {prefix}{key}={old!r}: {e}") from None


def workdir_config(workdir: str | Path, spec: str | None = None, overrides: Iterable[str] = (),
                   *, default_spec: str | None = None) -> ml_collections.ConfigDict:
    """The config a run used, from its ``workdir/config.json``: the experiment config it recorded
    (or ``spec`` when given; ``default_spec`` for an old run that recorded none), then every key
    it saved (its overrides included), then ``overrides``.

    So ``eval --workdir W`` needs no ``--config``, and a run trained with
    ``--config.model.widths=(4, 8)`` is rebuilt with that model. Raises FileNotFoundError when
    ``workdir`` holds no ``config.json``; ConfigError when no experiment is known.
    """
    saved = saved_config(workdir)
    if saved is None:
        raise FileNotFoundError(f"{Path(workdir) / 'config.json'} not found: {str(workdir)!r} is "
                                "not the workdir of a jaxvision run (train one there first).")
    spec = spec or saved.get("experiment") or default_spec
    if not spec:
        raise ConfigError(f"{Path(workdir) / 'config.json'} records no experiment (a run from "
                          "before configs recorded it): pass --config experiments/<task>.py:<name>.")
    path, name = split_spec(spec)
    if name in (getattr(load_module(path), "CONFIGS", None) or {}):
        config = get_config(spec)
    else:
        # A run trained from Python with a config of another name: the saved config has every key.
        config = base_config()
        config.experiment = normalize_spec(spec)
    _overlay(config, migrate(saved, to_dict(config)))
    for override in overrides:
        apply_override(config, override)
    return config
