"""Ensembles of trained classifiers: average the predicted probabilities of several runs.

Each member is a finished run (a config and its workdir, plus which checkpoint); its model gives
class logits ``(N, C)`` on the prepared image, and the members' softmax probabilities are
averaged over the eval split, every example once (the eval loader's padding is dropped). The
report holds each member's accuracy and NLL and the ensemble's.

Snapshot ensembles (Huang et al., 2017) take the members from one run: train with
``optim.schedule='cosine_restarts'`` and ``optim.cycles=K`` (the lr restarts K times), save a
checkpoint at the end of every cycle and keep them all::

    --config.optim.schedule=cosine_restarts --config.optim.cycles=4
    --config.train.checkpoint_every=<steps / 4> --config.train.keep_checkpoints=4
    --config.train.eval_every=0          (or a multiple of the cycle length)

then ``python -m jaxvision ensemble --config SPEC --workdir DIR --snapshots``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxvision import optim
from jaxvision.config import split_spec
from jaxvision.experiment import Experiment, resolve_experiment
from jaxvision.train.checkpoint import Checkpointer
from jaxvision.train.transfer import run_config


@dataclasses.dataclass(frozen=True)
class Member:
    """One ensemble member: a run's config, its workdir and which checkpoint (None = latest,
    'best' or a step)."""

    config: Any
    workdir: str
    checkpoint: int | str | None = None


def ensemble_metrics(member_probs: Sequence[np.ndarray], labels: np.ndarray) -> dict:
    """Accuracy and NLL of each member and of their average.

    ``member_probs``: M arrays (N, C) of class probabilities over the same N examples;
    ``labels`` (N,) ints. Returns ``{'accuracy', 'nll', 'members': [{'accuracy', 'nll'}, ...]}``.
    An example counts as correct when no class has a strictly higher probability than its
    label's (the rule of ``metrics.topk_correct``).
    """
    if not member_probs:
        raise ValueError("ensemble_metrics needs at least one member's probabilities.")
    labels = np.asarray(labels)
    probs = [np.asarray(p, np.float64) for p in member_probs]
    for i, p in enumerate(probs):
        if p.ndim != 2 or p.shape[0] != labels.shape[0] or p.shape != probs[0].shape:
            raise ValueError(f"member {i}: probabilities of shape {p.shape}; expected "
                             f"(N={labels.shape[0]}, C) like member 0 {probs[0].shape}: members "
                             "must predict the same classes for the same examples.")

    def scores(p: np.ndarray) -> dict:
        label_p = p[np.arange(len(labels)), labels]
        correct = np.sum(p > label_p[:, None], axis=-1) == 0
        return {"accuracy": float(np.mean(correct)),
                "nll": float(np.mean(-np.log(np.clip(label_p, 1e-12, None))))}

    return {**scores(np.mean(probs, axis=0)), "members": [scores(p) for p in probs]}


def _probabilities(run: Any) -> Any:
    """``fn(variables, batch, setup_data)`` -> class probabilities (N, C) and ``label`` (N,),
    from the experiment's ``predict`` (its ``probabilities``, else the softmax of ``logits``)."""
    exp, config = run.exp, run.config
    if exp.predict is None:
        raise ValueError(f"ensembles read per-example class probabilities, but "
                         f"{exp.spec or 'the experiment'} has no predict hook.")

    def fn(variables, batch, setup_data):
        out = exp.predict(config, run.model, variables, batch, **exp.setup_kwargs(
            run.setup.static, setup_data))
        if "probabilities" in out:
            probs = out["probabilities"]
        elif "logits" in out:
            probs = jax.nn.softmax(out["logits"].astype(jnp.float32), axis=-1)
        else:
            raise ValueError(f"ensembles need predict() to return 'probabilities' or 'logits'; "
                             f"{exp.spec} returns {sorted(out)}.")
        return {"probabilities": probs.astype(jnp.float32), "label": batch["label"]}
    return fn


def predict_checkpoints(config: Any, workdir: str | Path, checkpoints: Sequence[int | str | None],
                        *, experiment: Experiment | str | None = None
                        ) -> tuple[list[tuple[int, np.ndarray]], np.ndarray]:
    """Class probabilities of several checkpoints of one run over its eval split.

    Returns ``([(step, probs (N, C) float32), ...], labels (N,))`` in ``checkpoints`` order;
    the model and data are built once from ``config`` (which must match the run's model), and
    every checkpoint goes through the core's prediction path (``loop.predict``: the device mesh,
    every process).
    """
    from jaxvision.train import loop
    run = loop.build(config, resolve_experiment(config, experiment), abstract=True)
    restored = loop.restore_checkpoints(run, workdir, list(checkpoints))
    fn = _probabilities(run)
    out, labels = [], None
    for r in restored:
        pred = loop.predict(run, run.strategy.put_state(r.state), fn, run.eval_loader)
        out.append((int(r.step), pred["probabilities"]))
        labels = pred["label"]
    return out, labels


def evaluate_ensemble(members: Sequence[Member], *, experiment: Experiment | str | None = None
                      ) -> dict:
    """Evaluates each member and the average of their probabilities over the eval split.

    Members of one workdir share one build (snapshots). Returns ``ensemble_metrics`` plus
    ``num_examples`` and, per member, ``workdir`` and ``step``. Every member must see the same
    eval examples in the same order (same data config), else ValueError.
    """
    if not members:
        raise ValueError("an ensemble needs at least one member (a workdir).")
    groups: dict[tuple[str, int], list[int]] = {}
    for i, m in enumerate(members):
        groups.setdefault((str(m.workdir), id(m.config)), []).append(i)
    probs: list[np.ndarray | None] = [None] * len(members)
    steps: list[int] = [0] * len(members)
    labels = None
    for (workdir, _), indices in groups.items():
        config = members[indices[0]].config
        preds, member_labels = predict_checkpoints(
            config, workdir, [members[i].checkpoint for i in indices], experiment=experiment)
        if labels is None:
            labels = member_labels
        elif member_labels.shape != labels.shape or not np.array_equal(member_labels, labels):
            raise ValueError(f"member {workdir} sees other eval examples ({len(member_labels)} "
                             f"labels vs {len(labels)}, or in another order) than the first "
                             "member; ensemble members must share data.name, data.eval_split.")
        for i, (step, p) in zip(indices, preds):
            probs[i], steps[i] = p, step
    result = ensemble_metrics(probs, labels)  # type: ignore[arg-type]
    for i, row in enumerate(result["members"]):
        row.update(workdir=str(members[i].workdir), step=steps[i])
    return {"num_examples": int(len(labels)), **result}  # type: ignore[arg-type]


def snapshot_steps(config: Any) -> list[int]:
    """The steps that end the cycles of ``optim.schedule='cosine_restarts'`` (ascending)."""
    if config.optim.schedule != "cosine_restarts":
        raise ValueError(f"snapshot ensembles need optim.schedule='cosine_restarts' (got "
                         f"{config.optim.schedule!r}); set it and optim.cycles, then retrain.")
    total = int(config.train.steps)
    length = optim.cycle_length(config.optim, total)
    warm = int(config.optim.warmup_steps)
    return [warm + k * length for k in range(1, int(config.optim.cycles) + 1)]


def snapshot_members(config: Any, workdir: str | Path) -> list[Member]:
    """One member per cycle end of the run in ``workdir``; fails naming the missing checkpoints."""
    steps = snapshot_steps(config)
    with Checkpointer(Path(workdir) / "checkpoints", async_save=False, max_to_keep=None) as ckpt:
        have = set(ckpt.all_steps())
    missing = [s for s in steps if s not in have]
    if missing:
        length = steps[1] - steps[0] if len(steps) > 1 else steps[0]
        raise FileNotFoundError(
            f"snapshots: no checkpoint at cycle end(s) {missing} in "
            f"{Path(workdir) / 'checkpoints'} "
            f"(it has {sorted(have)}). Train with train.checkpoint_every={length}, "
            f"train.keep_checkpoints>={len(steps)}, optim.warmup_steps a multiple of {length} "
            "(or 0) and train.eval_every 0 or a multiple of it.")
    return [Member(config, str(workdir), s) for s in steps]


def ensemble_from_specs(spec: str | None, workdirs: Sequence[str], *, overrides: Sequence[str] = (),
                        snapshots: bool = False, checkpoint: int | str | None = None) -> dict:
    """The CLI's ensemble: each workdir's config is its saved config (started from ``spec`` when
    given, else from the experiment config it recorded) + ``overrides``. Members must share one
    experiment module.

    With ``snapshots``, every workdir contributes its cycle-end checkpoints; otherwise its
    ``checkpoint`` (None = latest).
    """
    if not workdirs:
        raise ValueError("ensemble: give at least one --workdir.")
    members: list[Member] = []
    experiments = {}
    for workdir in workdirs:
        config = run_config(spec, workdir, overrides)
        experiments[str(workdir)] = split_spec(str(config.experiment))[0]
        if len(set(experiments.values())) > 1:
            listing = ", ".join(f"{w}: {e}" for w, e in experiments.items())
            raise ValueError(f"ensemble members must come from one experiment, so that one input "
                             f"preparation and one prediction serve them all; got {listing}.")
        members.extend(snapshot_members(config, workdir) if snapshots
                       else [Member(config, str(workdir), checkpoint)])
    return evaluate_ensemble(members)
