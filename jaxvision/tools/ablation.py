"""Ablations: train named variants of one config over several seeds and tabulate a metric.

A config declares its variants in an ``ablation`` block (``ablation_config``)::

    config.ablation = ablation_config(
        variants=(("full", {}),                                   # the first is the reference
                  ("no_fc7", {"model.remove": ("fc7",)}),
                  ("sgd", {"optim.name": "sgd", "optim.lr": 0.01})),
        seeds=(0, 1, 2), metric="accuracy")

A variant is ``(name, overrides)``: ``overrides`` maps dotted config keys (any key the config
already has: ``model.widths``, ``data.train_pp``, ``optim.name``, ...) to Python literal values,
applied exactly like ``--config.KEY=VALUE``. The block is plain literals, so it can also be given
on the command line: ``--config.ablation.variants="(('full', {}), ('narrow', {'model.widths': (8,)}))"``.

``run_ablation`` checks every variant first (unknown keys, bad values, a model that does not
build, a metric the experiment does not report), then trains each (variant, seed) in its own
``DIR/<variant>/seed<k>`` with ``jaxvision.train.loop.train``. A finished run leaves
``result.json``; running again skips it while its config is unchanged and resumes any
unfinished run from its checkpoints. The sub-runs' configs have no ``ablation`` block, so adding
variants or seeds later never invalidates finished runs. Outputs: ``DIR/ablation.csv``,
``DIR/ablation.md``, ``DIR/ablation.png`` (mean ± sample std over seeds).
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import math
import re
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import jax
import ml_collections
import numpy as np

from jaxvision import config as config_lib
from jaxvision.config import ConfigError
from jaxvision.experiment import Experiment, resolve_experiment

RESULT_FILE = "result.json"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+\-]*$")


def ablation_config(variants: Sequence[tuple[str, dict]] = (), seeds: Sequence[int] = (0,),
                    metric: str = "accuracy") -> ml_collections.ConfigDict:
    """The ``ablation`` block: ``variants`` ((name, {key: value}), ...), ``seeds``, ``metric``."""
    return ml_collections.ConfigDict(dict(
        variants=tuple((str(n), dict(o)) for n, o in variants), seeds=tuple(int(s) for s in seeds),
        metric=str(metric)))


def load_config(spec: str, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
    """``get_config`` for ablations: adds a default ``ablation`` block when the config has none,
    before the ``ablation.*`` overrides are applied (so any config can be ablated from the CLI)."""
    overrides = list(overrides)
    def is_ablation(o: str) -> bool:
        return o.strip().removeprefix("--").removeprefix("config.").startswith("ablation.")
    config = config_lib.get_config(spec, [o for o in overrides if not is_ablation(o)])
    if "ablation" not in config:
        with config.unlocked():
            config.ablation = ablation_config()
    for o in overrides:
        if is_ablation(o):
            config_lib.apply_override(config, o)
    return config


@dataclasses.dataclass(frozen=True)
class Variant:
    """One named variant: its overrides as given, and the config they produce (no ablation block)."""

    name: str
    overrides: dict
    config: ml_collections.ConfigDict


def _format_value(value: Any) -> str:
    # apply_override parses values with ast.literal_eval; repr round-trips every literal.
    text = repr(value)
    if config_lib.parse_value(text) != value:
        raise ConfigError(f"value {value!r} is not a Python literal (numbers, strings, tuples, "
                          "lists, dicts, True/False/None).")
    return text


def variant_config(config: ml_collections.ConfigDict, name: str, overrides: Any
                   ) -> ml_collections.ConfigDict:
    """A copy of ``config`` without its ``ablation`` block and with ``overrides`` applied.

    Raises ``ConfigError`` naming the variant for an unknown key or a value of the wrong type.
    """
    if not isinstance(overrides, dict):
        raise ConfigError(f"ablation variant {name!r}: overrides must be a dict {{'dotted.key': value}}, "
                          f"got {type(overrides).__name__} {overrides!r}.")
    out = copy.deepcopy(config)
    if "ablation" in out:
        with out.unlocked():
            del out["ablation"]
    for key, value in overrides.items():
        if not isinstance(key, str):
            raise ConfigError(f"ablation variant {name!r}: override key {key!r} is not a string.")
        bare = key.removeprefix("config.")
        if bare == "seed" or bare.startswith("ablation"):
            raise ConfigError(f"ablation variant {name!r}: {key!r} cannot be overridden per variant; "
                              "seeds come from ablation.seeds.")
        try:
            config_lib.apply_override(out, f"{bare}={_format_value(value)}")
        except ConfigError as e:
            raise ConfigError(f"ablation variant {name!r}: {e}") from None
    return out


def parse_variants(config: ml_collections.ConfigDict) -> tuple[list[Variant], tuple[int, ...], str]:
    """Reads and checks ``config.ablation``; returns (variants, seeds, metric).

    Raises ``ConfigError`` for a missing block, no variants, a bad or repeated name, bad seeds,
    or any bad override (naming the variant).
    """
    if "ablation" not in config:
        raise ConfigError("the config has no 'ablation' block; add config.ablation = "
                          "jaxvision.tools.ablation.ablation_config(variants=...) or pass "
                          "--config.ablation.variants=\"(('full', {}), ...)\" to `ablate`.")
    block = config.ablation
    raw = tuple(block.get("variants", ()) or ())
    if not raw:
        raise ConfigError("ablation.variants is empty; give ((name, {key: value}), ...), the first "
                          "being the reference, e.g. (('full', {}), ('no_fc7', {'model.remove': ('fc7',)})).")
    seeds = tuple(block.get("seeds", (0,)) or ())
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds) \
            or len(set(seeds)) != len(seeds):
        raise ConfigError(f"ablation.seeds must be a non-empty tuple of distinct ints, got {seeds!r}.")
    variants, names = [], set()
    for i, entry in enumerate(raw):
        if not isinstance(entry, (tuple, list)) or len(entry) != 2:
            raise ConfigError(f"ablation.variants[{i}] must be a pair (name, {{key: value}}), got {entry!r}.")
        name, overrides = entry
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise ConfigError(f"ablation.variants[{i}]: name {name!r} must be letters, digits, "
                              "'_', '-', '.', '+' (it names a sub-directory).")
        if name in names:
            raise ConfigError(f"ablation.variants: the name {name!r} appears twice.")
        names.add(name)
        variants.append(Variant(name, dict(overrides) if isinstance(overrides, dict) else overrides,
                                variant_config(config, name, overrides)))
    return variants, seeds, str(block.get("metric", "accuracy"))


def check_variant(config: Any, exp: Experiment, metric: str | None = None) -> tuple[int, list[str]]:
    """Builds the variant's run abstractly (no compile, no training): data, model, evaluators.

    Returns (parameter count of the ``params`` collection, the metric names its evaluators log).
    Raises ``ConfigError`` when ``metric`` is given and no evaluator reports it.
    """
    from jaxvision.train.loop import build
    run = build(config, exp, abstract=True)
    params = sum(math.prod(x.shape) for x in jax.tree.leaves(run.state.params))
    names = run.logged_names()
    if metric is not None and metric not in names:
        raise ConfigError(f"ablation.metric={metric!r} is not a metric of this experiment's "
                          f"evaluators; they report: {', '.join(names)}.")
    return int(params), names


@dataclasses.dataclass
class RunRecord:
    """One finished training run: its final scalar eval metrics and what it cost."""

    workdir: str
    metrics: dict
    wall_s: float
    cpu_s: float
    skipped: bool = False


def train_or_skip(config: Any, workdir: str | Path, exp: Experiment, *, force: bool = False,
                  progress: bool = False, sources: tuple[Any, Any] | None = None) -> RunRecord:
    """Trains ``config`` in ``workdir`` unless ``workdir/result.json`` records this exact config.

    An unfinished run resumes from its checkpoints (the core's resume); a finished run with a
    different config goes to ``train``, which continues it (more ``train.steps``) or refuses the
    change unless ``force``. Wall and CPU seconds are those of the invocation that finished it:
    when ``train`` only found the run finished (same metrics, e.g. after a new config key with
    its default changed the hash), the recorded ones are kept.
    """
    from jaxvision.train.loop import TrainingError, train
    workdir = Path(workdir)
    digest = config_lib.config_hash(config)
    result_file = workdir / RESULT_FILE
    saved = None
    if result_file.is_file():
        saved = json.loads(result_file.read_text())
        if saved.get("config_hash") == digest:
            return RunRecord(str(workdir), saved["metrics"], saved["wall_s"], saved["cpu_s"], True)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    results = train(config, workdir, experiment=exp, force=force, progress=progress, sources=sources)
    if results.get("preempted"):
        raise TrainingError(f"training in {workdir} was interrupted (SIGTERM) after step "
                            f"{results.get('step')}; run the same command again to resume.")
    record = RunRecord(str(workdir), {k: float(v) for k, v in results.items() if np.ndim(v) == 0},
                       time.perf_counter() - wall0, time.process_time() - cpu0)
    if saved is not None and saved.get("metrics") == record.metrics:
        record = RunRecord(record.workdir, record.metrics, saved["wall_s"], saved["cpu_s"])
    if jax.process_index() == 0:
        result_file.write_text(json.dumps({"config_hash": digest, "metrics": record.metrics,
                                           "wall_s": record.wall_s, "cpu_s": record.cpu_s}, indent=2))
    return record


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """(mean, sample standard deviation with ddof=1; 0 for a single value)."""
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


@dataclasses.dataclass
class AblationRow:
    variant: str
    params: int
    values: list[float]           # the metric, one per seed
    mean: float
    std: float
    delta: float                  # mean - the reference variant's mean
    wall_s: float                 # summed over the variant's seeds
    cpu_s: float


def _log(message: str) -> None:
    print(f"[ablate] {message}", file=sys.stderr, flush=True)


def run_ablation(config: ml_collections.ConfigDict, workdir: str | Path, *,
                 experiment: Experiment | str | None = None, force: bool = False,
                 progress: bool = False) -> list[AblationRow]:
    """Checks every variant, trains every (variant, seed) not yet finished, writes the reports.

    Returns one row per variant, in the config's order (the first is the reference).
    """
    workdir = Path(workdir)
    exp = resolve_experiment(config, experiment)
    variants, seeds, metric = parse_variants(config)
    params = {}
    for v in variants:   # everything is checked before anything trains
        try:
            params[v.name] = check_variant(v.config, exp, metric)[0]
        except ConfigError:
            raise
        except (ValueError, TypeError, KeyError) as e:
            raise ConfigError(f"ablation variant {v.name!r} ({v.overrides}) does not build: {e}") from e
    rows = []
    for v in variants:
        records = []
        for seed in seeds:
            run_config = copy.deepcopy(v.config)
            run_config.seed = seed
            _log(f"{v.name} seed {seed}")
            records.append(train_or_skip(run_config, workdir / v.name / f"seed{seed}", exp,
                                         force=force, progress=progress))
            if records[-1].skipped:
                _log(f"{v.name} seed {seed}: finished before, skipped")
        values = [r.metrics[metric] for r in records]
        mean, std = mean_std(values)
        rows.append(AblationRow(v.name, params[v.name], values, mean, std, 0.0,
                                sum(r.wall_s for r in records), sum(r.cpu_s for r in records)))
    for row in rows:
        row.delta = row.mean - rows[0].mean
    if jax.process_index() == 0:
        write_reports(rows, workdir, metric)
    return rows


def markdown_table(rows: Sequence[AblationRow], metric: str) -> str:
    """The ablation table in markdown (metric as mean ± std over seeds, change vs the first row)."""
    ref = rows[0].variant
    lines = [f"| variant | params | {metric} (mean ± std) | seeds | Δ vs {ref} | wall s | CPU s |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.variant} | {r.params:,} | {r.mean:.4f} ± {r.std:.4f} | {len(r.values)} | "
                     f"{r.delta:+.4f} | {r.wall_s:.1f} | {r.cpu_s:.1f} |")
    return "\n".join(lines)


def write_reports(rows: Sequence[AblationRow], workdir: Path, metric: str) -> None:
    """Writes ``ablation.csv``, ``ablation.md`` and ``ablation.png`` into ``workdir``."""
    from jaxvision import viz
    workdir.mkdir(parents=True, exist_ok=True)
    with open(workdir / "ablation.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["variant", "params", "seeds", f"{metric}_mean", f"{metric}_std", "delta",
                    "per_seed", "wall_s", "cpu_s"])
        for r in rows:
            w.writerow([r.variant, r.params, len(r.values), f"{r.mean:.6f}", f"{r.std:.6f}",
                        f"{r.delta:.6f}", " ".join(f"{x:.6f}" for x in r.values),
                        f"{r.wall_s:.2f}", f"{r.cpu_s:.2f}"])
    (workdir / "ablation.md").write_text(
        f"# Ablation: {metric}\n\nMean ± sample std (ddof=1) over seeds; Δ is the change of the "
        f"mean vs `{rows[0].variant}`; times are summed over seeds.\n\n"
        + markdown_table(rows, metric) + "\n")
    viz.plot_bars([r.variant for r in rows], [r.mean for r in rows], str(workdir / "ablation.png"),
                  errors=[r.std for r in rows], ylabel=metric,
                  title=f"{metric} (mean ± std over {len(rows[0].values)} seed(s))")


def summary_json(rows: Sequence[AblationRow], metric: str) -> dict:
    """The JSON line of ``ablate``: the metric name and one entry per variant."""
    return {"metric": metric, "reference": rows[0].variant,
            "variants": [dataclasses.asdict(r) for r in rows]}
