"""Linear probes: the fit against scikit-learn, feature taps with and without ``return_features``,
pooling, and ``probe`` end to end on a tiny trained model."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from jaxvision import models
from jaxvision.__main__ import main
from jaxvision.config import get_config, load_module
from jaxvision.tools.probe import feature_fn, fit_linear_probe, pool_features, subset_indices
from jaxvision.train import loop

SPEC = str(Path(__file__).resolve().parent / "tiny_ablation_experiment.py")


def blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Three well-separated classes in 5 features of different scales and offsets, one constant."""
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(0).normal(size=(3, 5)) * 4
    y = rng.integers(0, 3, n)
    x = centers[y] + rng.normal(size=(n, 5)) * [1.0, 2.0, 0.5, 3.0, 1.0] + [0, 10, 0, -5, 0]
    x[:, 2] = 4.0
    return x, y


def test_probe_fit_matches_sklearn_logistic_regression():
    x, y = blobs(150, 1)
    xt, yt = blobs(100, 2)
    l2 = 1e-2
    probe = fit_linear_probe(x, y, 3, l2=l2)
    # Same objective: sklearn minimizes C * sum(CE) + ||W||^2 / 2 = N C (mean CE + ||W||^2 / (2 N C)).
    ref = make_pipeline(StandardScaler(), LogisticRegression(C=1 / (l2 * len(y)), tol=1e-10,
                                                             max_iter=10_000)).fit(x, y)
    np.testing.assert_allclose(probe.predict_proba(x), ref.predict_proba(x), atol=2e-3)
    np.testing.assert_allclose(probe.predict_proba(xt), ref.predict_proba(xt), atol=2e-3)
    assert probe.accuracy(xt, yt) == pytest.approx(ref.score(xt, yt), abs=1 / len(yt))
    assert probe.accuracy(x, y) > 0.9


def test_probe_fit_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        fit_linear_probe(np.zeros((4, 2)), np.array([0, 1, 2, 3]), 3)
    with pytest.raises(ValueError, match="x \\(N, D\\)"):
        fit_linear_probe(np.zeros((4,)), np.zeros(4, int), 3)


def test_pool_features_averages_every_spatial_axis():
    x = np.random.default_rng(0).normal(size=(2, 3, 4, 5)).astype(np.float32)
    np.testing.assert_allclose(pool_features(jnp.asarray(x)), x.mean(axis=(1, 2)), rtol=1e-6)
    np.testing.assert_allclose(pool_features(jnp.asarray(x[:, 0])), x[:, 0].mean(axis=1), rtol=1e-6)
    assert pool_features(jnp.ones((2, 7))).shape == (2, 7)
    assert pool_features(jnp.ones((2,))).shape == (2, 1)


def dense(h: np.ndarray, params: dict) -> np.ndarray:
    return h @ np.asarray(params["kernel"], np.float64) + np.asarray(params["bias"], np.float64)


def test_layer_features_with_and_without_return_features():
    # Init and features compiled: eager flax dispatches (and compiles) every op separately.
    # References: the layers recomputed in numpy from the parameters.
    x = jax.random.uniform(jax.random.key(0), (3, 4, 4, 3))
    flat = np.asarray(x, np.float64).reshape(3, -1)
    mlp = models.build_model("mlp", num_classes=5, hidden=(8, 6))
    p = jax.jit(mlp.init)(jax.random.key(1), x)["params"]
    feats = feature_fn(mlp)({"params": p}, x)
    assert list(feats) == ["fc1", "fc2", "logits"]                       # the model's order
    fc1 = np.maximum(dense(flat, p["fc1"]), 0)
    fc2 = np.maximum(dense(fc1, p["fc2"]), 0)
    for name, ref in (("fc1", fc1), ("fc2", fc2), ("logits", dense(fc2, p["head"]))):
        np.testing.assert_allclose(feats[name], ref, rtol=1e-4, atol=1e-5)

    # TinyNet has no feature taps: every direct submodule's output, in call order.
    tiny = load_module(Path(__file__).resolve().parents[1] / "train" / "tiny_experiment.py").TinyNet(6)
    v = jax.jit(tiny.init)(jax.random.key(2), x)
    feats = feature_fn(tiny)(v, x)
    assert list(feats) == ["fc1", "bn1", "Dropout_0", "head"]
    p, stats = v["params"], v["batch_stats"]["bn1"]
    fc1 = dense(flat, p["fc1"])
    bn1 = ((fc1 - np.asarray(stats["mean"])) / np.sqrt(np.asarray(stats["var"]) + 1e-5)
           * np.asarray(p["bn1"]["scale"]) + np.asarray(p["bn1"]["bias"]))
    for name, ref in (("fc1", fc1), ("bn1", bn1), ("Dropout_0", np.maximum(bn1, 0)),
                      ("head", dense(np.maximum(bn1, 0), p["head"]))):
        np.testing.assert_allclose(feats[name], ref, rtol=1e-4, atol=1e-5)


def test_subset_indices_caps_deterministically():
    assert subset_indices(10, 20, 0) is None and subset_indices(10, 0, 0) is None
    a = subset_indices(100, 30, 3)
    assert len(a) == 30 and len(set(a.tolist())) == 30 and np.all(np.diff(a) > 0)
    np.testing.assert_array_equal(a, subset_indices(100, 30, 3))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("probe")
    # TinyNet: its taps come from capture_intermediates, in an order that is not alphabetical.
    loop.train(get_config(f"{SPEC}:tinynet"), workdir, experiment=SPEC, progress=False)
    return workdir


def test_probe_end_to_end(trained, capsys):
    rc = main(["probe", "--config", f"{SPEC}:tinynet", "--workdir", str(trained), "--max-examples", "48"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert list(summary["eval_accuracy"]) == ["fc1", "bn1", "Dropout_0", "head"]
    assert all(0.0 <= a <= 1.0 for a in summary["eval_accuracy"].values())
    report = json.loads((trained / "probe.json").read_text())
    assert report["train_examples"] == 48 and report["eval_examples"] == 32   # capped / whole split
    assert report["step"] == 4
    assert [(r["layer"], r["dim"]) for r in report["layers"]] == [
        ("fc1", 32), ("bn1", 32), ("Dropout_0", 32), ("head", 6)]
    assert (trained / "probe.png").stat().st_size > 0
    assert "| bn1 | 32 |" in (trained / "probe.md").read_text()


def test_knn_probe_matches_sklearn_on_the_same_features(trained, tmp_path):
    from sklearn.neighbors import KNeighborsClassifier
    from jaxvision.data.source import build_source
    from jaxvision.tools import probe
    config = get_config(f"{SPEC}:tinynet")
    rows = probe.run_probe(config, trained, max_examples=48, max_iter=20, knn=3, out_dir=tmp_path)
    run = loop.build(config, loop.resolve_experiment(config), abstract=True)
    (restored,) = loop.restore_checkpoints(run, trained, ["latest"])
    state = run.strategy.put_state(restored.state)
    tf, ty = probe.extract(run, state, build_source(config.data, config.data.train_split),
                           max_examples=48)
    ef, ey = probe.extract(run, state, build_source(config.data, config.data.eval_split),
                           max_examples=48)
    for row in rows:
        # scikit-learn's ties among equal distances may differ; these features have none.
        ref = KNeighborsClassifier(3).fit(tf[row.layer], ty).score(ef[row.layer], ey)
        assert row.knn_accuracy == pytest.approx(ref, abs=1.01 / len(ey)), row.layer
    assert "3-NN eval accuracy" in (tmp_path / "probe.md").read_text()


def test_probe_unknown_layer_and_missing_checkpoint(trained, tmp_path, capsys):
    rc = main(["probe", "--config", f"{SPEC}:tinynet", "--workdir", str(trained), "--layers", "fc9",
               "--out", str(tmp_path)])
    assert rc == 2 and "fc9" in capsys.readouterr().err
    rc = main(["probe", "--config", f"{SPEC}:tinynet", "--workdir", str(tmp_path / "none")])
    assert rc == 2 and "no checkpoint" in capsys.readouterr().err
