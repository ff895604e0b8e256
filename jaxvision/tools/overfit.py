"""``python -m jaxvision overfit``: can the experiment fit a handful of training examples?

The course's first check of a new model and loss: train on ``num`` fixed training examples (the
first of ``data.train_split``) with the eval pipeline instead of the augmentations, no weight
decay, dropout, label smoothing or EMA, one batch of all of them per step, and evaluate on the
same examples. A working experiment drives its loss below ``LOSS_FRACTION`` (20%) of where it
started and its eval metric to (near) its best: accuracy 1, mIoU / AP50 / Recall@1 near 1, EPE near 0.
When it does not, ``overfit`` says what it measured that points to a cause:

* the loss is not finite (the run stops at that step);
* no parameter changed (``optim.freeze`` covers everything, or the learning rate is 0);
* the loss rose (learning rate too high) or fell only a little (too low, or too few steps);
* the loss does not depend on the input (the same value with the images zeroed: a loss that
  reads only the targets, or a model that ignores its input);
* the loss fell but the metric did not reach its goal (the metric reads another output than the
  loss trains, or a decoding step is wrong).
"""

from __future__ import annotations

import copy
import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

# train.best_metric -> (goal, larger is better). Metrics not listed are reported without a goal.
GOALS = {"accuracy": (0.99, True), "mIoU": (0.9, True), "AP50": (0.9, True), "AP": (0.7, True),
         "recall_at_1": (0.99, True), "EPE": (0.5, False), "loss": (0.05, False)}
LOSS_FRACTION = 0.2  # the loss must fall below this fraction of its first logged value


@dataclasses.dataclass
class OverfitResult:
    """What ``overfit`` measured; ``passed`` when the loss fell below ``LOSS_FRACTION`` of its
    start and the metric reached its goal (when it has one)."""

    num: int
    steps: int
    loss_start: float
    loss_end: float
    metric: str
    value: float | None
    goal: float | None
    passed: bool
    diagnosis: list[str]
    workdir: str

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def overfit_config(config: Any, num: int = 8, steps: int = 200) -> Any:
    """A copy of ``config`` set up to fit its first ``num`` training examples (module docstring)."""
    c = copy.deepcopy(config)
    with c.unlocked():
        split = str(c.data.train_split).split("[")[0]
        c.data.train_split = c.data.eval_split = f"{split}[:{int(num)}]"
        c.data.train_pp = c.data.eval_pp
        if "sampler" in c.data:
            c.data.sampler = "random"
        c.train.batch_size = c.train.eval_batch_size = int(num)
        c.train.steps = c.train.eval_every = c.train.checkpoint_every = int(steps)
        c.train.log_every = max(1, int(steps) // 20)
        c.train.early_stopping_patience = 0
        c.optim.weight_decay = 0.0
        c.optim.ema_decay = 0.0
        c.optim.warmup_steps = min(int(c.optim.warmup_steps), int(steps) // 10)
        for key in ("dropout", "drop_rate", "stochastic_depth"):
            if key in c.model:
                c.model[key] = 0.0
        if "loss" in c and "label_smoothing" in c.loss:
            c.loss.label_smoothing = 0.0
        for ev in (c.get("evals") or {}).values():
            ev.split, ev.batch_size, ev.every = "", 0, -1
    return c


def _params_changed(start: Any, end: Any) -> tuple[int, int]:
    """(leaves that changed, leaves) between two parameter trees."""
    a, b = jax.tree.leaves(start), jax.tree.leaves(end)
    changed = sum(not np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))
    return changed, len(a)


def _input_blind(config: Any, run: Any, variables: dict) -> bool:
    """Whether the loss on one training batch is the same with every image zeroed."""
    batch = next(iter(run.train_loader))
    blank = {k: (np.zeros_like(v) if k in ("image", "image_right") else v) for k, v in batch.items()}
    loss = run.exp.loss
    kwargs = run.exp.setup_kwargs(run.setup.static, run.setup.data)
    key = jax.random.key(0)
    a = float(loss(config, run.model, variables, batch, key, train=False, **kwargs)[0])
    b = float(loss(config, run.model, variables, blank, key, train=False, **kwargs)[0])
    return abs(a - b) <= 1e-7 * max(1.0, abs(a))


def overfit(config: Any, num: int = 8, steps: int = 200, workdir: str | Path | None = None,
            progress: bool = False) -> OverfitResult:
    """Trains ``config`` on its first ``num`` training examples for ``steps`` steps in
    ``workdir`` (a temporary folder by default, kept) and diagnoses the result."""
    from jaxvision.experiment import resolve_experiment
    from jaxvision.train import loop
    from jaxvision.train.transfer import read_variables
    c = overfit_config(config, num, steps)
    workdir = Path(workdir or tempfile.mkdtemp(prefix="jaxvision_overfit_"))
    exp = resolve_experiment(c)
    metric = str(c.train.best_metric or "loss")
    goal, larger = GOALS.get(metric, (None, True))
    diagnosis: list[str] = []
    try:
        results = loop.train(c, workdir, experiment=exp, progress=progress)
    except loop.TrainingError as e:
        return OverfitResult(num, steps, float("nan"), float("nan"), metric, None, goal, False,
                             [f"the loss is not finite: {e}. Lower optim.lr (now {c.optim.lr:g}) "
                              "or look for a log / division of something that can reach 0."],
                             str(workdir))
    records = loop.read_metrics(workdir)
    train = [r for r in records if r.get("split") == "train" and "loss" in r]
    start, end = float(train[0]["loss"]), float(train[-1]["loss"])
    if not np.isfinite(end):
        # The run finished, so the training loss was finite: a logged nan is a mean over no
        # terms (no active triplet, no positive anchor), i.e. nothing left to fit.
        diagnosis.append("note: the last logged loss is a mean over no terms (nan; e.g. no "
                         "active triplet): counted as 0.")
        end = 0.0
    value = results.get(metric)
    value = float(value) if value is not None and np.ndim(value) == 0 else None
    run = loop.build(c, exp)
    final, _ = read_variables(workdir)
    changed, leaves = _params_changed(run.state.params, final["params"])
    loss_ok = end <= LOSS_FRACTION * start if start > 0 else end <= start
    metric_ok = goal is None or (value is not None and (value >= goal if larger else value <= goal))
    if leaves and changed == 0:
        diagnosis.append("no parameter changed: optim.freeze may cover every parameter, or the "
                         f"learning rate is 0 (optim.lr={c.optim.lr:g}, schedule {c.optim.schedule}).")
    elif end > start:
        diagnosis.append(f"the loss rose ({start:.4g} -> {end:.4g}): the learning rate may be too "
                         f"high; try --config.optim.lr={float(c.optim.lr) / 10:g}.")
    elif not loss_ok:
        diagnosis.append(f"the loss fell only to {end / start:.0%} of its start ({start:.4g} -> "
                         f"{end:.4g}): the learning rate may be too low, or the steps too few; try "
                         f"--config.optim.lr={float(c.optim.lr) * 3:g} or --steps {2 * steps}.")
    if not loss_ok and _input_blind(c, run, final):
        diagnosis.append("the loss does not depend on the input: it is the same with every image "
                         "zeroed (a loss that reads only the targets, or a model that ignores its input).")
    if loss_ok and not metric_ok:
        diagnosis.append(f"the loss fell ({start:.4g} -> {end:.4g}) but {metric} = {value} missed "
                         f"{goal}: the metric may read another output than the loss trains, or a "
                         "decoding / post-processing step is wrong.")
    if leaves and 0 < changed < leaves:
        diagnosis.append(f"note: {leaves - changed} of {leaves} parameter arrays did not change "
                         "(frozen, or unused by the loss).")
    return OverfitResult(num, steps, start, end, metric, value, goal, loss_ok and metric_ok,
                         diagnosis, str(workdir))


def report(result: OverfitResult) -> str:
    """Human-readable lines for the command line."""
    verdict = "PASSED" if result.passed else "FAILED"
    goal = f" (goal {'>=' if GOALS.get(result.metric, (0, True))[1] else '<='} {result.goal})" if result.goal is not None else ""
    lines = [f"overfit {verdict}: {result.num} examples, {result.steps} steps, loss "
             f"{result.loss_start:.4g} -> {result.loss_end:.4g}; {result.metric} = {result.value}{goal}",
             *(f"  - {d}" for d in result.diagnosis), f"  run: {result.workdir}"]
    return "\n".join(lines)


