"""Hyperparameter search with optuna: each trial a normal, resumable run.

    python -m jaxvision sweep --config experiments/classification.py:default --workdir DIR \
        --trials 20 --space.optim.lr="loguniform(1e-4, 1e-2)" --space.optim.weight_decay="choice(0, 1e-4)"

A search space maps dotted config keys (any key the config has, as ``--config.KEY``) to a
distribution: ``uniform(low, high)``, ``loguniform(low, high)`` (low > 0), ``int(low, high)``
(both ends included) or ``choice(a, b, ...)`` (Python literals). The whole space is checked,
and the config with each key's first value built (data, model, evaluators), before any training.

Trial ``k`` trains in ``DIR/trial_<k>`` with ``jaxvision.train.loop.train``; the study lives in
``DIR/study.db`` (SQLite), so a sweep stopped by SIGTERM, Ctrl-C or a lost job is started again
with the same command: a trial left unfinished gets the same parameters and continues its run from
its checkpoints (optuna records it as a new trial that names the old workdir; the old one is kept
as FAIL with ``superseded``). Trials are pruned with optuna's median rule on the metric at each
evaluation (``--pruner none`` turns it off; nothing is pruned before 5 trials have completed).
The objective is
``train.best_metric`` with ``train.best_mode`` unless ``metric`` / ``mode`` say otherwise.
A diverging trial (non-finite loss) is recorded as FAIL and the sweep goes on. The sampler is
seeded (``seed``), so a sweep run without interruption is reproducible; after a resume the
sampler starts afresh from the stored trials, so later suggestions may differ. A trial that
fails for any other reason (a value that breaks the data or the model, say) is recorded as FAIL
with its ``error``; a SIGTERM that lands in a trial's final evaluation ends that trial normally
and the sweep goes on to the next one, whose run a later SIGTERM (or a kill) stops resumably.

Outputs in ``DIR``: ``sweep.csv`` (one row per trial), ``sweep.png`` (the optimization history:
each trial's value and the best so far) and the study; ``markdown_table`` marks the best trial.
One sweep process per ``DIR`` at a time (``DIR/.jaxvision.lock``), on one host (the study is a
local SQLite file). ``sweep.json`` records the space, the objective and the base config's hash:
the same ``DIR`` with another of them is refused.
"""

from __future__ import annotations

import ast
import copy
import csv
import dataclasses
import json
import math
import re
import sys
from pathlib import Path
from typing import Any, Mapping

import ml_collections

from jaxvision.config import ConfigError
from jaxvision.experiment import resolve_experiment
from jaxvision.tools.ablation import check_variant, variant_config

DISTRIBUTIONS = ("uniform", "loguniform", "int", "choice")
SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "none")
_DIST_RE = re.compile(r"^\s*([A-Za-z_]+)\s*\((.*)\)\s*$", re.S)
_META = "sweep.json"


@dataclasses.dataclass(frozen=True)
class Dimension:
    """One searched key: ``kind`` in ``DISTRIBUTIONS`` and its arguments."""

    key: str
    kind: str
    args: tuple

    def first(self) -> Any:
        """The value the space check builds the config with."""
        return self.args[0]

    def suggest(self, trial: Any) -> Any:
        if self.kind == "uniform":
            return trial.suggest_float(self.key, *self.args)
        if self.kind == "loguniform":
            return trial.suggest_float(self.key, *self.args, log=True)
        if self.kind == "int":
            return trial.suggest_int(self.key, *self.args)
        return trial.suggest_categorical(self.key, list(self.args))


def parse_dimension(key: str, text: str) -> Dimension:
    """``key`` with the distribution ``text`` (module docstring); ConfigError when malformed."""
    where = f"--space.{key}={text!r}"
    m = _DIST_RE.match(str(text))
    if not m or m.group(1) not in DISTRIBUTIONS:
        raise ConfigError(f"{where}: a distribution is one of {', '.join(d + '(...)' for d in DISTRIBUTIONS)}, "
                          "e.g. loguniform(1e-4, 1e-2).")
    kind = m.group(1)
    try:
        args = ast.literal_eval(f"({m.group(2)},)") if m.group(2).strip() else ()
    except (ValueError, SyntaxError):
        raise ConfigError(f"{where}: the arguments must be Python literals.") from None
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)  # noqa: E731
    if kind == "choice":
        if not args:
            raise ConfigError(f"{where}: choice needs at least one value.")
        if not all(v is None or isinstance(v, (bool, int, float, str)) for v in args):
            raise ConfigError(f"{where}: choice values must be numbers, strings, True/False or None "
                              "(optuna stores them; for a tuple value sweep its parts as keys).")
        return Dimension(key, kind, tuple(args))
    if len(args) != 2 or not all(number(v) for v in args):
        raise ConfigError(f"{where}: {kind} takes two numbers (low, high).")
    low, high = args
    if kind == "int" and not all(isinstance(v, int) for v in args):
        raise ConfigError(f"{where}: int takes two whole numbers.")
    if not low < high and not (kind == "int" and low == high):
        raise ConfigError(f"{where}: low must be below high.")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{where}: loguniform needs low > 0.")
    return Dimension(key, kind, (float(low), float(high)) if kind != "int" else (low, high))


def parse_space(space: Mapping[str, str], config: ml_collections.ConfigDict) -> list[Dimension]:
    """Every dimension of ``space`` ({dotted key: distribution text}), each key checked to
    exist in ``config`` and to accept its first value; ConfigError otherwise."""
    if not space:
        raise ConfigError("the search space is empty; give at least one --space.KEY=DIST, e.g. "
                          "--space.optim.lr=\"loguniform(1e-4, 1e-2)\".")
    dims = []
    for key, text in space.items():
        key = key.removeprefix("--").removeprefix("space.").removeprefix("config.")
        dim = parse_dimension(key, text)
        for value in dim.args:
            try:
                variant_config(config, "space", {key: value})
            except ConfigError as e:
                raise ConfigError(f"--space.{key}: {e}") from None
        dims.append(dim)
    return dims


@dataclasses.dataclass
class SweepResult:
    """The study's trials (``rows``: number, state, value, params, workdir, steps), the best
    trial's number (None before any trial completes), and whether this call was interrupted."""

    rows: list[dict]
    best: int | None
    metric: str
    mode: str
    interrupted: bool = False

    def to_json(self) -> dict:
        best = next((r for r in self.rows if r["number"] == self.best), None)
        states = [r["state"] for r in self.rows]
        return {"metric": self.metric, "mode": self.mode, "trials": len(self.rows),
                "complete": states.count("COMPLETE"), "pruned": states.count("PRUNED"),
                "failed": states.count("FAIL"), "best_trial": self.best,
                "best_value": best["value"] if best else None,
                "best_params": best["params"] if best else None, "interrupted": self.interrupted}


def _optuna():
    try:
        import optuna
    except ImportError:
        raise ConfigError("`sweep` needs optuna: pip install -e '.[sweep]' (or pip install "
                          "optuna).") from None
    return optuna


def _check_meta(directory: Path, meta: dict) -> None:
    path = directory / _META
    if path.is_file():
        old = json.loads(path.read_text())
        if old != meta:
            changed = sorted(k for k in set(old) | set(meta) if old.get(k) != meta.get(k))
            raise ConfigError(f"{directory} holds a sweep with another {', '.join(changed)}; "
                              "resume it with the same command, or use a new --workdir.")
    else:
        directory.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(meta, indent=2, sort_keys=True))


def sweep(config: ml_collections.ConfigDict, directory: str | Path, space: Mapping[str, str],
          trials: int, *, metric: str | None = None, mode: str | None = None, sampler: str = "tpe",
          pruner: Any = "median", seed: int = 0, progress: bool = False, force: bool = False,
          stop_at: int | None = None) -> SweepResult:
    """Runs (or resumes) the study in ``directory`` until it holds ``trials`` finished trials
    (COMPLETE, PRUNED, or FAIL by divergence); returns every trial. ``stop_at`` is passed to
    each trial's ``train`` (it interrupts the run after that step, as a SIGTERM would: for
    tests and time-sliced jobs), which interrupts the sweep. ``pruner``: a name in ``PRUNERS``
    or an optuna pruner object."""
    from jaxvision import config as config_lib
    from jaxvision.train.lock import WorkdirLock
    directory = Path(directory).absolute()   # trial workdirs are stored: independent of the cwd
    if int(trials) < 1:
        raise ConfigError(f"--trials={trials} must be >= 1.")
    if sampler not in SAMPLERS or (isinstance(pruner, str) and pruner not in PRUNERS):
        raise ConfigError(f"--sampler must be one of {', '.join(SAMPLERS)} and --pruner one of "
                          f"{', '.join(PRUNERS)}; got {sampler!r}, {pruner!r}.")
    dims = parse_space(space, config)
    metric = str(metric or config.train.best_metric)
    mode = str(mode or config.train.best_mode)
    if not metric:
        raise ConfigError("the config has no train.best_metric: give the objective with --metric "
                          "(an eval metric name, e.g. accuracy) and --mode max|min.")
    if mode not in ("max", "min"):
        raise ConfigError(f"--mode={mode!r} must be 'max' or 'min'.")
    exp = resolve_experiment(config)
    first = variant_config(config, "space", {d.key: d.first() for d in dims})
    check_variant(first, exp, metric)   # builds data, model, evaluators: no training yet
    optuna = _optuna()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with WorkdirLock(directory):
        _check_meta(directory, {"space": {d.key: [d.kind, list(d.args)] for d in dims},
                                "metric": metric, "mode": mode,
                                "config": config_lib.config_hash(config)})
        return _run_study(optuna, config, exp, dims, directory, int(trials), metric, mode,
                          sampler, pruner, seed, progress, force, stop_at)


def _run_study(optuna, config, exp, dims, directory, trials, metric, mode, sampler, pruner, seed,
               progress, force, stop_at) -> SweepResult:
    from jaxvision.train.loop import train
    states = optuna.trial.TrialState
    if isinstance(pruner, str):
        pruner = optuna.pruners.MedianPruner() if pruner == "median" else optuna.pruners.NopPruner()
    study = optuna.create_study(
        study_name="jaxvision", storage=f"sqlite:///{(directory / 'study.db').resolve()}",
        load_if_exists=True, direction="maximize" if mode == "max" else "minimize",
        sampler=(optuna.samplers.TPESampler(seed=seed) if sampler == "tpe"
                 else optuna.samplers.RandomSampler(seed=seed)),
        pruner=pruner)
    for stale in study.get_trials(deepcopy=False, states=(states.RUNNING,)):
        # Left running by an interrupted sweep: continue its run under a new trial (queued
        # first, so that a kill in between loses nothing).
        study.enqueue_trial(stale.params, user_attrs={"workdir": stale.user_attrs.get("workdir", "")})
        study._storage.set_trial_user_attr(stale._trial_id, "superseded", True)
        study.tell(stale.number, state=states.FAIL)

    def finished() -> int:
        return sum(1 for t in study.get_trials(deepcopy=False)
                   if t.state in (states.COMPLETE, states.PRUNED)
                   or (t.state == states.FAIL and not t.user_attrs.get("superseded")))

    interrupted = False
    while finished() < trials:
        trial = study.ask()
        workdir = trial.user_attrs.get("workdir") or str(directory / f"trial_{trial.number}")
        trial.set_user_attr("workdir", workdir)
        params = {d.key: d.suggest(trial) for d in dims}

        def on_eval(step: int, results: dict, trial=trial) -> bool:
            if metric not in results or not math.isfinite(float(results[metric])):
                return False
            trial.report(float(results[metric]), step)
            return trial.should_prune()

        try:
            trial_config = variant_config(config, f"trial {trial.number}", params)
            result = train(copy.deepcopy(trial_config), workdir, experiment=exp, force=force,
                           progress=progress, stop_at=stop_at, on_eval=on_eval)
        except Exception as e:  # noqa: BLE001 - a diverging or broken trial must not stop the study
            trial.set_user_attr("error", f"{type(e).__name__}: {e}")
            study.tell(trial, state=states.FAIL)
            print(f"[jaxvision] sweep trial {trial.number} failed: {type(e).__name__}: {e}",
                  file=sys.stderr)
            continue
        if result.get("preempted"):
            interrupted = True   # the trial stays RUNNING: the next sweep continues it
            break
        if result.get("stopped"):
            study.tell(trial, state=states.PRUNED)
            continue
        value = float(result.get(metric, float("nan")))
        if math.isfinite(value):
            study.tell(trial, value)
        else:
            trial.set_user_attr("error", f"final {metric} is {value}")
            study.tell(trial, state=states.FAIL)
    return _result(study, metric, mode, interrupted)


def _result(study: Any, metric: str, mode: str, interrupted: bool) -> SweepResult:
    import optuna
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("superseded"):
            continue
        value = t.value
        if value is None and t.intermediate_values:
            value = t.intermediate_values[max(t.intermediate_values)]   # a pruned trial's last
        rows.append({"number": t.number, "state": t.state.name, "value": value,
                     "params": dict(t.params), "workdir": t.user_attrs.get("workdir", ""),
                     "steps": max(t.intermediate_values) if t.intermediate_values else None})
    done = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    best = study.best_trial.number if done else None
    return SweepResult(rows, best, metric, mode, interrupted)


def markdown_table(result: SweepResult) -> str:
    """One row per trial, the best marked ``*``."""
    keys = sorted({k for r in result.rows for k in r["params"]})
    lines = ["| trial | state | " + " | ".join([result.metric, *keys]) + " | workdir |",
             "|" + "---|" * (4 + len(keys))]
    for r in result.rows:
        mark = " *" if r["number"] == result.best else ""
        value = f"{r['value']:.4g}" if r["value"] is not None else ""
        params = [f"{r['params'][k]:.4g}" if isinstance(r["params"].get(k), float) else str(r["params"].get(k, ""))
                  for k in keys]
        lines.append(f"| {r['number']}{mark} | {r['state']} | " + " | ".join([value, *params])
                     + f" | {Path(r['workdir']).name} |")
    return "\n".join(lines)


def write_outputs(result: SweepResult, directory: str | Path) -> dict:
    """``sweep.csv`` and ``sweep.png`` (values per trial; the best so far as a line)."""
    directory = Path(directory)
    keys = sorted({k for r in result.rows for k in r["params"]})
    with open(directory / "sweep.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["trial", "state", result.metric, *keys, "best", "workdir"])
        for r in result.rows:
            w.writerow([r["number"], r["state"], r["value"], *[r["params"].get(k) for k in keys],
                        int(r["number"] == result.best), r["workdir"]])
    from matplotlib.figure import Figure
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    sign = 1 if result.mode == "max" else -1
    for state, marker in (("COMPLETE", "o"), ("PRUNED", "x")):
        pts = [(r["number"], r["value"]) for r in result.rows if r["state"] == state and r["value"] is not None]
        if pts:
            ax.scatter(*zip(*pts), marker=marker, label=state.lower())
    best, xs, ys = None, [], []
    for r in result.rows:
        if r["state"] == "COMPLETE" and (best is None or sign * r["value"] > sign * best):
            best = r["value"]
        if best is not None:
            xs.append(r["number"])
            ys.append(best)
    if xs:
        ax.step(xs, ys, where="post", color="C3", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(result.metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(directory / "sweep.png", dpi=120, bbox_inches="tight")
    return {"csv": str(directory / "sweep.csv"), "png": str(directory / "sweep.png")}
