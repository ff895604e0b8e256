"""Evaluators through the training core: a non-classification experiment scored by retrieval.

The retrieval test experiment (``retrieval_experiment.py``) trains through the core with three
evaluator types; its Recall@K must equal a one-shot numpy computation over the whole eval split
(90 examples: the last eval batch of 48 is padded) under every way of running it.
"""

import json

import jax
import numpy as np
import pytest

from jaxvision.__main__ import main
from jaxvision.config import ConfigError, get_config
from jaxvision.data.pipeline import make_transform
from jaxvision.data.source import build_source
from jaxvision.experiment import default_prepare, load_experiment
from jaxvision.train import loop
from jaxvision.train.checkpoint import Checkpointer

SPEC = "tests/train/retrieval_experiment.py:retrieval"
KS = (1, 2, 4, 8)


def config(*overrides):
    return get_config(SPEC, overrides)


def _oracle(emb: np.ndarray, labels: np.ndarray) -> dict:
    """Recall@K by brute force, in float64: every query against every other item."""
    emb = np.asarray(emb, np.float64)
    d = np.sum((emb[:, None, :] - emb[None, :, :]) ** 2, -1)
    np.fill_diagonal(d, np.inf)
    out = {}
    order = np.lexsort((np.broadcast_to(np.arange(len(d)), d.shape), d), axis=1)
    same = labels[order] == labels[:, None]
    has_positive = np.array([np.sum(labels == y) > 1 for y in labels])
    for k in KS:
        out[f"recall_at_{k}"] = float(np.mean(same[has_positive, :k].any(1)))
    return out


def one_shot(cfg, workdir, checkpoint="latest") -> dict:
    """The whole eval split through the model in one call, outside the core (no loader, no
    padding, no mesh), then the brute-force Recall@K."""
    exp = load_experiment(SPEC)
    run = loop.build(cfg, exp, abstract=True)
    (restored,) = loop.restore_checkpoints(run, workdir, [checkpoint])
    source = build_source(cfg.data, cfg.data.eval_split)
    transform = make_transform(cfg.data, cfg.data.eval_pp)
    examples = [transform(source[i], np.random.default_rng(0)) for i in range(len(source))]
    images = np.stack([e["image"] for e in examples])
    labels = np.array([e["identity"] for e in examples])
    variables = jax.device_get(restored.state.eval_variables())
    _, emb = run.model.apply(variables, default_prepare(cfg, {"image": images}), train=False)
    return _oracle(np.asarray(emb), labels)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("retrieval")
    results = loop.train(config(), workdir, progress=False)
    return workdir, results


def test_logged_names_schedules_and_best_checkpoint_on_recall(trained):
    workdir, results = trained
    records = [r for r in loop.read_metrics(workdir) if r["split"] == "eval"]
    assert [r["step"] for r in records] == [4, 8, 12]
    for r in records:
        # bare names; the second retrieval evaluator's clash is prefixed
        assert {"loss", "accuracy", "recall_at_1", "recall_at_8", "map_at_r",
                "retrieval_cosine/recall_at_1"} <= set(r)
    # the confusion evaluator runs only at the end (every=0)
    assert "macro_f1" not in records[0] and "macro_f1" in records[-1]
    assert results["confusion_matrix"].shape == (36, 36)
    assert results["confusion_matrix"].sum() == 90
    source = build_source(config().data, config().data.eval_split)
    ids = np.array([source[i]["identity"] for i in range(len(source))])
    counts = np.bincount(ids)
    assert results["retrieval_queries"] == np.sum(counts[ids] > 1)   # singletons are no queries
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["experiment"].endswith("tests/train/retrieval_experiment.py:retrieval")
    with Checkpointer(workdir / "checkpoints", async_save=False, best_metric="recall_at_1") as c:
        best = c.best_step()
    by_step = {r["step"]: r["recall_at_1"] for r in records}
    assert by_step[best] == max(by_step.values())


def test_recall_matches_one_shot_numpy_for_jit_and_pmap_on_1_2_4_devices(trained):
    workdir, results = trained
    want = one_shot(config(), workdir)
    for k in KS:
        assert results[f"recall_at_{k}"] == pytest.approx(want[f"recall_at_{k}"], abs=1e-12)
    for overrides in (("parallel.num_devices=1",), ("parallel.num_devices=2",),
                      ("parallel.num_devices=4",),
                      ("parallel.strategy='pmap'", "parallel.num_devices=2")):
        got = loop.evaluate_checkpoint(config(*overrides), workdir)
        for k in KS:
            assert got[f"recall_at_{k}"] == pytest.approx(want[f"recall_at_{k}"], abs=1e-12), \
                overrides


def test_resume_gives_the_same_recall(trained, tmp_path):
    _, results = trained
    out = loop.train(config(), tmp_path, progress=False, stop_at=6)
    assert out == {"preempted": True, "step": 6}
    resumed = loop.train(config(), tmp_path, progress=False)
    for k in ("recall_at_1", "recall_at_8", "map_at_r", "loss", "macro_f1"):
        assert resumed[k] == results[k], k


def test_eval_from_the_workdir_alone_and_best_checkpoint(trained, capsys):
    workdir, _ = trained
    assert main(["eval", "--workdir", str(workdir), "--checkpoint", "best"]) == 0
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    want = one_shot(config(), workdir, "best")
    assert got["recall_at_1"] == pytest.approx(want["recall_at_1"], abs=1e-12)
    assert "confusion_matrix" not in got     # arrays stay out of the JSON line


def test_bad_best_metric_and_evaluator_keys_fail_before_training(tmp_path, capsys):
    with pytest.raises(ConfigError, match="recall_at_3.*they log: .*recall_at_1.*Did you mean"):
        loop.train(config("train.best_metric='recall_at_3'"), tmp_path / "a", progress=False)
    with pytest.raises(ConfigError, match="predict returns"):
        loop.train(config("evals.retrieval.embedding='features'"), tmp_path / "b", progress=False)
    assert main(["eval", "--workdir", str(tmp_path / "nothing")]) == 2
    assert "config.json not found" in capsys.readouterr().err


def test_a_config_without_experiment_is_an_error_not_classification(tmp_path):
    cfg = config()
    cfg.experiment = ""
    with pytest.raises(ConfigError, match="config.experiment is not set"):
        loop.train(cfg, tmp_path, progress=False)


def test_old_workdirs_without_experiment_or_evals_keep_resuming(tmp_path, capsys):
    """Configs and checkpoints written before ``experiment``, ``evals``, ``data.bad_examples``,
    ``data.max_pixels`` and ``Setup`` existed."""
    tiny = get_config("tests/train/tiny_experiment.py:tiny", ["train.steps=4"])
    saved = json.loads(json.dumps(__import__("jaxvision.config").config.to_dict(tiny)))
    saved.pop("experiment")
    saved.pop("evals")
    saved["data"].pop("bad_examples")
    saved["data"].pop("max_pixels")
    loop._check_resume_config(tiny, {"config": saved}, force=False)   # no diff, no refusal
    # An old checkpoint: the state as a dict with the always-None 'aux' field it used to have.
    run = loop.build(tiny, load_experiment("tests/train/tiny_experiment.py"))
    old = {f: getattr(run.state, f) for f in ("step", "params", "model_state", "opt_state", "rng",
                                              "ema_params", "bad_step")}
    with Checkpointer(tmp_path / "checkpoints", async_save=False) as c:
        c.save(3, {**old, "aux": None}, meta={"config": saved}, force=True)
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with Checkpointer(tmp_path / "checkpoints", async_save=False) as c:
        restored = c.restore(run.state)
    assert int(restored.state.step) == int(run.state.step)
    for a, b in zip(jax.tree.leaves(restored.state.params), jax.tree.leaves(run.state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Its workdir names no experiment: eval says to pass --config, and works with it.
    assert main(["eval", "--workdir", str(tmp_path)]) == 2
    assert "records no experiment" in capsys.readouterr().err
    assert main(["eval", "--workdir", str(tmp_path), "--config",
                 "tests/train/tiny_experiment.py:tiny", "--config.train.steps=4"]) == 0
