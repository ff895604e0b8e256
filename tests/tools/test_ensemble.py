"""Ensembles: probability averaging against numpy, the cosine-restarts schedule against its
closed form, and tiny 16x16 runs ensembled (two runs, and the snapshots of one)."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil

import ml_collections
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jaxvision import optim
from jaxvision.tools import ensemble
from jaxvision.__main__ import main
from jaxvision.config import get_config
from jaxvision.experiment import load_experiment
from jaxvision.train import loop

CLS = "experiments/classification.py"


# ------------------------------------------------------------------------------ averaging


def _reference(member_logits: list[np.ndarray], labels: np.ndarray) -> dict:
    """Per-example loops in float64: softmax, average, count correct, mean NLL."""
    def softmax(z):
        e = np.exp(z - z.max())
        return e / e.sum()

    def score(rows):
        correct = nll = 0.0
        for p, y in zip(rows, labels):
            correct += all(p[j] <= p[y] for j in range(len(p)))
            nll += -math.log(p[y])
        return {"accuracy": correct / len(labels), "nll": nll / len(labels)}
    members = [[softmax(z) for z in logits] for logits in member_logits]
    averaged = [sum(m[i] for m in members) / len(members) for i in range(len(labels))]
    return {**score(averaged), "members": [score(m) for m in members]}


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), m=st.integers(1, 4), n=st.integers(1, 9),
       c=st.integers(2, 5), ties=st.booleans())
def test_ensemble_metrics_match_a_numpy_loop(seed, m, n, c, ties):
    r = np.random.default_rng(seed)
    # Small integer logits make exact ties; ties count for the label, as in metrics.topk_correct.
    logits = [r.integers(-2, 3, (n, c)).astype(np.float64) if ties else r.normal(0, 2, (n, c))
              for _ in range(m)]
    labels = r.integers(0, c, n)
    probs = [np.exp(z - z.max(-1, keepdims=True)) for z in logits]
    probs = [p / p.sum(-1, keepdims=True) for p in probs]
    got, want = ensemble.ensemble_metrics(probs, labels), _reference(logits, labels)
    assert got["accuracy"] == pytest.approx(want["accuracy"], abs=1e-12)
    assert got["nll"] == pytest.approx(want["nll"], rel=1e-9)
    for g, w in zip(got["members"], want["members"]):
        assert g == pytest.approx(w, rel=1e-9)


def test_ensemble_metrics_refuses_mismatched_members():
    with pytest.raises(ValueError, match=r"member 1: probabilities of shape \(3, 4\)"):
        ensemble.ensemble_metrics([np.full((3, 2), 0.5), np.full((3, 4), 0.25)], np.zeros(3, int))


# ----------------------------------------------------------------------- cosine restarts


@pytest.mark.parametrize("lr,end,cycles,warm,total", [(0.1, 0.0, 1, 0, 10), (0.1, 0.01, 3, 0, 30),
                                                      (0.5, 0.05, 4, 4, 36)])
def test_cosine_restarts_matches_its_formula(lr, end, cycles, warm, total):
    config = optim.optim_config()
    config.update(dict(schedule="cosine_restarts", lr=lr, end_lr=end, cycles=cycles,
                       warmup_steps=warm, warmup_init_lr=0.0))
    schedule = optim.make_schedule(config, total)
    got = [float(schedule(np.int32(t))) for t in range(total + 3)]  # int32: as in training
    length = (total - warm) // cycles
    assert optim.cycle_length(config, total) == length
    for t, value in enumerate(got):
        if t < warm:
            want = lr * t / warm
        else:
            u = t - warm
            tau = length if u >= cycles * length else u % length
            want = end + (lr - end) * 0.5 * (1 + math.cos(math.pi * tau / length))
        assert value == pytest.approx(want, rel=1e-5, abs=1e-7), t
    ends = [warm + k * length for k in range(1, cycles)]
    assert all(got[s] == pytest.approx(lr) for s in ends)  # each cycle restarts at lr


def test_cosine_restarts_needs_cycles_that_divide_the_steps():
    config = optim.optim_config()
    config.update(dict(schedule="cosine_restarts", cycles=3))
    with pytest.raises(ValueError, match=r"optim.cycles=3 does not divide the 10 steps"):
        optim.make_schedule(config, 10)


# ------------------------------------------------------------------------------- end to end


def tiny(seed: int) -> ml_collections.ConfigDict:
    config = get_config("tests/train/tiny_experiment.py:tiny")
    config.seed = seed
    config.model = ml_collections.ConfigDict(dict(name="small_cnn", widths=(4, 8)))
    # 40 eval examples in batches of 32: the last batch is padded.
    config.data.procedural.num_train, config.data.procedural.num_eval = 64, 40
    config.train.steps, config.train.eval_every, config.train.checkpoint_every = 4, 0, 0
    return config


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run B: 2 cosine cycles with a checkpoint at each cycle end (steps 2 and 4). Run A: a copy
    of B without its step 4, i.e. another workdir whose latest checkpoint is step 2."""
    exp = dataclasses.replace(load_experiment(CLS), report=None)  # no plots: tests need none
    b = tmp_path_factory.mktemp("b")
    config = tiny(1)
    config.optim.schedule, config.optim.cycles = "cosine_restarts", 2
    config.train.checkpoint_every, config.train.keep_checkpoints = 2, 2
    results = loop.train(config, b, experiment=exp, progress=False)
    a = tmp_path_factory.mktemp("a") / "run"
    shutil.copytree(b, a)
    shutil.rmtree(a / "checkpoints" / "4")
    return config, a, b, results


def test_snapshot_ensemble_uses_the_cycle_end_checkpoints(runs):
    config, _, b, results = runs
    members = ensemble.snapshot_members(config, b)
    assert [m.checkpoint for m in members] == [2, 4]
    out = ensemble.evaluate_ensemble(members, experiment=CLS)
    assert out["num_examples"] == 40
    assert [m["step"] for m in out["members"]] == [2, 4]
    # The last snapshot agrees with the training loop's own final evaluation, exactly.
    assert out["members"][1]["accuracy"] == pytest.approx(results["accuracy"], abs=1e-12)
    assert out["members"][1]["nll"] == pytest.approx(results["loss"], rel=1e-5)
    with pytest.raises(ValueError, match="optim.schedule='cosine_restarts'"):
        ensemble.snapshot_members(tiny(0), b)
    four = config.copy_and_resolve_references()
    four.optim.cycles = 4
    with pytest.raises(FileNotFoundError, match=r"cycle end\(s\) \[1, 3\].*checkpoint_every=1"):
        ensemble.snapshot_members(four, b)


def test_cli_ensemble_of_two_workdirs(runs, capsys):
    config, a, b, results = runs
    snapshots = ensemble.evaluate_ensemble(ensemble.snapshot_members(config, b), experiment=CLS)
    # The CLI rebuilds each member's config from the plain spec and the run's config.json.
    assert main(["ensemble", "--config", f"{CLS}:default", "--workdir", str(a),
                 "--workdir", str(b)]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [(m["workdir"], m["step"]) for m in out["members"]] == [(str(a), 2), (str(b), 4)]
    assert out["members"][1]["accuracy"] == pytest.approx(results["accuracy"], abs=1e-12)
    for key in ("num_examples", "accuracy", "nll"):   # the same members as the snapshots
        assert out[key] == pytest.approx(snapshots[key], rel=1e-12)
    assert main(["ensemble", "--config", f"{CLS}:default", "--workdir", str(a), "--snapshots"]) == 2
    assert "no checkpoint at cycle end(s) [4]" in capsys.readouterr().err
