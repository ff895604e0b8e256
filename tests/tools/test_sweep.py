"""The ``sweep`` tool: search-space parsing and its errors, a study interrupted and resumed,
pruning through the training loop's evaluation callback."""

from __future__ import annotations

import csv
import json

import pytest

from jaxvision.__main__ import main
from jaxvision.config import ConfigError, get_config
from jaxvision.tools.sweep import Dimension, parse_dimension, parse_space, sweep

optuna = pytest.importorskip("optuna")
TINY = "tests/train/tiny_experiment.py:tiny"


@pytest.mark.parametrize("text, kind, args", [
    ("uniform(0, 1)", "uniform", (0.0, 1.0)),
    ("loguniform(1e-4, 1e-2)", "loguniform", (1e-4, 1e-2)),
    ("int(2, 8)", "int", (2, 8)),
    ("choice('adam', 'sgd')", "choice", ("adam", "sgd")),
    (" choice( 0.1 ) ", "choice", (0.1,)),
])
def test_distributions_parse(text, kind, args):
    assert parse_dimension("optim.lr", text) == Dimension("optim.lr", kind, args)


@pytest.mark.parametrize("text, words", [
    ("normal(0, 1)", "a distribution is one of"),
    ("uniform(1)", "two numbers"),
    ("uniform(2, 1)", "low must be below high"),
    ("loguniform(0, 1)", "low > 0"),
    ("int(1.5, 3)", "whole numbers"),
    ("choice()", "at least one value"),
    ("choice((1, 2))", "choice values must be"),
    ("uniform(a, b)", "Python literals"),
])
def test_bad_distributions_are_clear_errors(text, words):
    with pytest.raises(ConfigError, match=words):
        parse_dimension("optim.lr", text)


def test_space_keys_and_values_are_checked_against_the_config():
    config = get_config(TINY)
    with pytest.raises(ConfigError, match="unknown config key 'optim.lrr'"):
        parse_space({"optim.lrr": "uniform(0, 1)"}, config)
    with pytest.raises(ConfigError, match="train.steps"):
        parse_space({"train.steps": "uniform(1, 2)"}, config)   # an int key given floats
    with pytest.raises(ConfigError, match="empty"):
        parse_space({}, config)
    dims = parse_space({"space.optim.lr": "loguniform(0.01, 0.1)"}, config)
    assert dims[0].key == "optim.lr"


def test_an_invalid_space_fails_before_any_training(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key"):
        sweep(get_config(TINY), tmp_path / "s", {"model.widthz": "int(1, 2)"}, 2)
    with pytest.raises(ConfigError, match="not a metric"):
        sweep(get_config(TINY), tmp_path / "s", {"optim.lr": "uniform(0.01, 0.1)"}, 2,
              metric="mAP")
    assert not (tmp_path / "s").exists()


def test_interrupted_sweep_resumes_to_its_trial_count(tmp_path, capsys):
    directory = tmp_path / "sweep"
    space = {"optim.lr": "loguniform(0.01, 0.3)"}
    config = get_config(TINY, ["train.steps=6", "train.eval_every=3"])
    # The first call stops its first trial after step 2, as a SIGTERM would.
    first = sweep(config, directory, space, 3, stop_at=2)
    assert first.interrupted and first.rows[0]["state"] == "RUNNING"
    lr = first.rows[0]["params"]["optim.lr"]
    code = main(["sweep", "--config", TINY, "--workdir", str(directory), "--trials", "3",
                 "--space.optim.lr=loguniform(0.01, 0.3)", "--config.train.steps=6",
                 "--config.train.eval_every=3"])
    out = capsys.readouterr().out
    summary = json.loads(out.strip().splitlines()[-1])
    assert code == 0, out
    assert summary["complete"] + summary["pruned"] == 3 and summary["trials"] == 3
    assert not summary["interrupted"] and summary["best_trial"] is not None
    rows = list(csv.DictReader(open(directory / "sweep.csv")))
    assert len(rows) == 3 and sum(int(r["best"]) for r in rows) == 1
    # The interrupted trial continued in its own workdir with its own learning rate.
    resumed = [r for r in rows if r["workdir"].endswith("trial_0")]
    assert len(resumed) == 1 and float(resumed[0]["optim.lr"]) == pytest.approx(lr)
    study = optuna.load_study(study_name="jaxvision", storage=f"sqlite:///{directory / 'study.db'}")
    states = [t.state.name for t in study.trials]
    assert len(states) == 4 and states[0] == "FAIL" and study.trials[0].user_attrs["superseded"]
    log = (directory / "trial_0" / "metrics.jsonl").read_text()
    steps = [json.loads(x)["step"] for x in log.splitlines() if '"train"' in x]
    assert steps == sorted(steps) and steps[-1] == 6
    best = next(r for r in rows if r["best"] == "1")
    values = [float(r["accuracy"]) for r in rows if r["state"] == "COMPLETE"]
    assert float(best["accuracy"]) == max(values)
    assert (directory / "sweep.png").stat().st_size > 0
    # The same folder with another space is refused.
    with pytest.raises(ConfigError, match="another space"):
        sweep(config, directory, {"optim.lr": "uniform(0.01, 0.3)"}, 3)


def test_the_eval_callback_prunes_a_run(tmp_path):
    from jaxvision.train.loop import train
    config = get_config(TINY, ["train.steps=6", "train.eval_every=2"])
    seen = []

    def on_eval(step, results):
        seen.append((step, results["accuracy"]))
        return step >= 4

    result = train(config, tmp_path / "run", on_eval=on_eval, progress=False)
    assert result["stopped"] and result["step"] == 4 and [s for s, _ in seen] == [2, 4]
    assert result["accuracy"] == seen[-1][1]
    # The pruned run's checkpoint is there: training again continues it to the end.
    final = train(config, tmp_path / "run", progress=False)
    assert "stopped" not in final and "accuracy" in final


def test_failed_and_pruned_trials_are_recorded_and_the_study_goes_on(tmp_path, capsys):
    from jaxvision.tools.sweep import markdown_table
    config = get_config(TINY, ["train.steps=4", "train.eval_every=2"])
    # A learning rate that makes the loss non-finite: FAIL with the error kept.
    failed = sweep(config, tmp_path / "fail", {"optim.lr": "choice(1e30)"}, 1)
    assert [r["state"] for r in failed.rows] == ["FAIL"] and failed.best is None
    study = optuna.load_study(study_name="jaxvision", storage=f"sqlite:///{tmp_path / 'fail' / 'study.db'}")
    assert "TrainingError" in study.trials[0].user_attrs["error"]
    # A pruner that stops every trial at its first evaluation: PRUNED, with the value reported.
    pruned = sweep(config, tmp_path / "prune", {"optim.lr": "uniform(0.01, 0.1)"}, 2,
                   pruner=optuna.pruners.ThresholdPruner(lower=2.0))
    assert [r["state"] for r in pruned.rows] == ["PRUNED", "PRUNED"]
    assert all(r["steps"] == 2 and 0 <= r["value"] <= 1 for r in pruned.rows)
    assert "| 0 | PRUNED |" in markdown_table(pruned) and pruned.to_json()["pruned"] == 2
    log = (tmp_path / "prune" / "trial_0" / "metrics.jsonl").read_text()
    assert '"split": "train"' in log and '"step": 2' in log     # the pruned run's records kept
