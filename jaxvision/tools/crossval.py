"""k-fold cross-validation over the training split: ``crossval(config, workdir, folds=K)``.

The training split (``data.train_split``, slices included) is shuffled with ``config.seed`` and
cut into K folds whose sizes differ by at most one. Fold ``k`` trains on the other K-1 folds and
evaluates on fold ``k`` (with ``data.eval_pp``, every example once); ``data.eval_split`` is not
used. Each fold trains in ``DIR/fold<k>`` through ``jaxvision.train.loop.train`` with the fold
sources injected, so it resumes and is skipped when finished exactly like the ablation runs.
Results: ``DIR/crossval.json`` and ``DIR/crossval.md`` (per-fold scalar metrics, their mean and
sample standard deviation, ddof=1).

Caveats: a bare ``normalize`` transform takes its statistics from the whole training split (all
folds), and ``train.best_metric`` / early stopping select on the held-out fold, which makes those
estimates slightly optimistic.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np

from jaxvision.tools.ablation import RunRecord, mean_std, train_or_skip
from jaxvision.config import ConfigError
from jaxvision.data.example import Example
from jaxvision.data.source import DataError, Source, build_source
from jaxvision.experiment import Experiment, resolve_experiment


class IndexSubset:
    """The examples of ``source`` at ``indices`` (in that order): example ``i`` is
    ``source[indices[i]]``. Picklable, so loader worker processes can use it."""

    def __init__(self, source: Source, indices: Sequence[int], split: str | None = None):
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(source)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise DataError(f"IndexSubset: indices must lie in [0, {n}) for {source.info.name}"
                            f"[{source.info.split}], got range [{idx.min()}, {idx.max()}].")
        self._source, self._indices = source, idx
        self.info = dataclasses.replace(
            source.info, split=split or f"{source.info.split}[{idx.size} of {n} examples]")

    @property
    def indices(self) -> np.ndarray:
        """The wrapped source's index of every example, (len(self),) int64."""
        return self._indices

    def __len__(self) -> int:
        return int(self._indices.size)

    def __getitem__(self, index: int) -> Example:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {self.info.name}[{self.info.split}] "
                             f"of length {len(self)}")
        return self._source[int(self._indices[index])]

    def __getattr__(self, name: str) -> Any:
        # The pk sampler reads every identity at once when the wrapped source can give them.
        if name == "identities" and hasattr(self._source, "identities"):
            return lambda: np.asarray(self._source.identities())[self._indices]
        raise AttributeError(name)


def kfold_indices(n: int, k: int, seed: int) -> list[np.ndarray]:
    """Splits ``range(n)`` into ``k`` disjoint folds covering it, after a shuffle seeded by ``seed``.

    Returns k sorted int64 arrays whose sizes differ by at most one (the first ``n % k`` folds
    get the extra example). Raises ``ValueError`` unless 2 <= k <= n.
    """
    if not 2 <= k <= n:
        raise ValueError(f"k-fold cross-validation needs 2 <= folds <= {n} (the training split's "
                         f"size), got folds={k}.")
    order = np.random.default_rng(seed).permutation(n)
    return [np.sort(f).astype(np.int64) for f in np.array_split(order, k)]


def fold_split(folds: Sequence[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """(training indices: every fold but ``k``, sorted; held-out indices: fold ``k``)."""
    train = np.sort(np.concatenate([f for i, f in enumerate(folds) if i != k]))
    return train, np.asarray(folds[k])


@dataclasses.dataclass
class CrossvalResult:
    """Per-fold scalar metrics, their mean and sample std (ddof=1), and the fold sizes."""

    folds: int
    examples: int
    fold_sizes: list[int]
    per_fold: list[dict]
    mean: dict
    std: dict

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def crossval(config: ml_collections.ConfigDict, workdir: str | Path, *, folds: int,
             experiment: Experiment | str | None = None, force: bool = False,
             progress: bool = False) -> CrossvalResult:
    """Trains and evaluates every fold (skipping finished ones); writes the JSON and markdown."""
    workdir = Path(workdir)
    exp = resolve_experiment(config, experiment)
    data = config.data
    full = build_source(data, data.train_split)
    try:
        fold_idx = kfold_indices(len(full), int(folds), int(config.seed))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    batch = int(config.train.batch_size)
    smallest = len(full) - max(len(f) for f in fold_idx)
    if smallest < batch:
        raise ConfigError(f"with {folds} folds the smallest training part has {smallest} examples, "
                          f"fewer than train.batch_size={batch}; use fewer folds or a smaller batch.")
    records: list[RunRecord] = []
    for k in range(len(fold_idx)):
        train_idx, held_idx = fold_split(fold_idx, k)
        split = str(data.train_split)
        sources = (IndexSubset(full, train_idx, f"{split} (fold {k}/{folds}: training part)"),
                   IndexSubset(full, held_idx, f"{split} (fold {k}/{folds}: held out)"))
        fold_config = copy.deepcopy(config)
        # Recorded in the run's config, so a workdir trained with other folds is never resumed.
        with fold_config.unlocked():
            fold_config.crossval = ml_collections.ConfigDict(dict(fold=k, folds=int(folds),
                                                                  examples=len(full)))
        print(f"[crossval] fold {k}/{folds}: train {len(train_idx)}, held out {len(held_idx)}",
              file=sys.stderr, flush=True)
        records.append(train_or_skip(fold_config, workdir / f"fold{k}", exp, force=force,
                                     progress=progress, sources=sources))
    names = sorted(set.intersection(*(set(r.metrics) for r in records)))
    stats = {n: mean_std([r.metrics[n] for r in records]) for n in names}
    result = CrossvalResult(
        folds=int(folds), examples=len(full), fold_sizes=[len(f) for f in fold_idx],
        per_fold=[{"fold": k, **r.metrics, "wall_s": r.wall_s} for k, r in enumerate(records)],
        mean={n: s[0] for n, s in stats.items()}, std={n: s[1] for n, s in stats.items()})
    if jax.process_index() == 0:
        write_reports(result, workdir)
    return result


def markdown(result: CrossvalResult) -> str:
    """Per-fold rows, then mean and std rows, one column per scalar metric."""
    names = list(result.mean)
    lines = ["| fold | held out | " + " | ".join(names) + " |",
             "|---|---:|" + "---:|" * len(names)]
    for row, size in zip(result.per_fold, result.fold_sizes):
        lines.append(f"| {row['fold']} | {size} | " + " | ".join(f"{row[n]:.4f}" for n in names) + " |")
    lines.append("| **mean** | | " + " | ".join(f"{result.mean[n]:.4f}" for n in names) + " |")
    lines.append("| **std** | | " + " | ".join(f"{result.std[n]:.4f}" for n in names) + " |")
    return "\n".join(lines)


def write_reports(result: CrossvalResult, workdir: Path) -> None:
    """Writes ``crossval.json`` and ``crossval.md`` into ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "crossval.json").write_text(json.dumps(result.to_json(), indent=2))
    (workdir / "crossval.md").write_text(
        f"# {result.folds}-fold cross-validation ({result.examples} training examples)\n\n"
        "Std is the sample standard deviation (ddof=1) over folds.\n\n" + markdown(result) + "\n")
