"""Exact sums and every built-in evaluator against numpy brute force and scikit-learn."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from sklearn import metrics as skm

from jaxvision import evaluators as E
from jaxvision import metrics
from jaxvision.config import ConfigError, base_config


def _batches(n: int, batch: int):
    """(start, stop, valid mask) of an eval pass with a padded last batch."""
    for start in range(0, n, batch):
        valid = np.arange(start, start + batch) < n
        yield start, min(start + batch, n), valid


# ----------------------------------------------------------------------------- exact sums


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 40), batch=st.integers(1, 16), seed=st.integers(0, 10_000))
def test_mean_metrics_are_exact_means_over_every_example_padding_dropped(n, batch, seed):
    r = np.random.default_rng(seed)
    values = r.normal(size=n).astype(np.float32)
    ev = E.MeanMetrics("eval", split="test", batch_size=batch, every=0)
    ev.reset()
    for start, stop, valid in _batches(n, batch):
        padded = np.zeros(batch, np.float32)
        padded[:stop - start] = values[start:stop]
        padded[stop - start:] = 1e6          # garbage in the padding must not count
        ev.update({"x": metrics.mean(jnp.asarray(padded), jnp.asarray(valid))})
    want = np.mean(values.astype(np.float64))
    # Per batch the sum is float32 on the device; across batches float64 on the host.
    assert ev.compute()["x"] == pytest.approx(want, rel=1e-5, abs=1e-5)


def test_accumulator_adds_array_metrics_and_reports_nan_without_examples():
    acc = metrics.Accumulator()
    acc.add({"cm": (np.eye(2), np.float32(1)), "m": (np.float32(0), np.float32(0))})
    acc.add({"cm": (np.ones((2, 2)), np.float32(1)), "m": (np.float32(0), np.float32(0))})
    out = acc.result()
    np.testing.assert_array_equal(out["cm"], [[2, 1], [1, 2]])
    assert np.isnan(out["m"])


# ----------------------------------------------------------------------------- confusion


def _confusion(num_classes: int):
    ev = E.Confusion("cm", split="test", batch_size=8, every=0)
    ev.num_classes = num_classes    # what tracing the device function records
    return ev


@settings(max_examples=30, deadline=None)
@given(c=st.integers(2, 6), n=st.integers(1, 60), seed=st.integers(0, 10_000))
def test_confusion_evaluator_matches_sklearn(c, n, seed):
    r = np.random.default_rng(seed)
    labels = r.integers(0, c, n)
    pred = np.where(r.random(n) < 0.5, labels, r.integers(0, c, n))
    ev = _confusion(c)
    ev.reset()
    for start in range(0, n, 7):
        ev.update({"prediction": pred[start:start + 7], "label": labels[start:start + 7]})
    out = ev.compute()
    np.testing.assert_array_equal(out["confusion_matrix"],
                                  skm.confusion_matrix(labels, pred, labels=range(c)))
    p, rec, f1, support = skm.precision_recall_fscore_support(labels, pred, labels=range(c),
                                                              zero_division=0)
    np.testing.assert_allclose(out["precision"], p)
    np.testing.assert_allclose(out["recall"], rec)
    np.testing.assert_allclose(out["f1"], f1)
    np.testing.assert_array_equal(out["support"], support)
    present = sorted(set(labels) | set(pred))
    assert out["macro_f1"] == pytest.approx(
        skm.f1_score(labels, pred, labels=present, average="macro", zero_division=0))
    assert out["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(labels, pred))


def test_confusion_device_half_takes_the_argmax_and_records_the_class_count():
    ev = E.Confusion("cm", split="test", batch_size=4, every=0)

    class Exp:
        spec = "test"

        @staticmethod
        def predict(config, model, variables, batch):
            return {"logits": batch["x"]}

        @staticmethod
        def setup_kwargs(static, data):
            return {}

    fn = ev.device_fn(Exp, None, None, {})
    batch = {"x": jnp.asarray([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]]), "label": jnp.asarray([1, 2]),
             "valid": jnp.asarray([True, False])}
    out = jax.jit(fn)(None, batch, None)
    np.testing.assert_array_equal(out["prediction"], [1, 0])
    np.testing.assert_array_equal(out["valid"], [True, False])
    assert ev.num_classes == 3
    with pytest.raises(ConfigError, match="predict returns"):
        E.Confusion("cm", split="t", batch_size=4, every=0, logits="nope").device_fn(
            Exp, None, None, {})(None, batch, None)


# ----------------------------------------------------------------------------- retrieval


def retrieval_oracle(emb: np.ndarray, labels: np.ndarray, ks, distance="euclidean") -> dict:
    """Brute force straight from the definitions: one query at a time, every other item ranked
    by (distance, index)."""
    emb = np.asarray(emb, np.float64)
    if distance == "cosine":
        emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    n = len(labels)
    hits = {k: [] for k in ks}
    r_prec, ap, p1 = [], [], []
    for q in range(n):
        others = [i for i in range(n) if i != q]
        r = sum(labels[i] == labels[q] for i in others)
        if r == 0:
            continue
        d = [float(np.sum((emb[i] - emb[q]) ** 2)) for i in others]
        ranked = [others[j] for j in sorted(range(len(others)), key=lambda j: (d[j], others[j]))]
        rel = [labels[i] == labels[q] for i in ranked]
        for k in ks:
            hits[k].append(any(rel[:k]))
        r_prec.append(sum(rel[:r]) / r)
        p1.append(rel[0])
        ap.append(sum(sum(rel[:i + 1]) / (i + 1) for i in range(r) if rel[i]) / r)
    out = {f"recall_at_{k}": float(np.mean(hits[k])) if hits[k] else float("nan") for k in ks}
    out["precision_at_1"] = float(np.mean(p1)) if p1 else float("nan")
    out["r_precision"] = float(np.mean(r_prec)) if r_prec else float("nan")
    out["map_at_r"] = float(np.mean(ap)) if ap else float("nan")
    out["retrieval_queries"] = float(len(ap))
    return out


def _assert_same(got: dict, want: dict):
    assert set(got) == set(want)
    for k in want:
        if np.isnan(want[k]):
            assert np.isnan(got[k]), k
        else:
            assert got[k] == pytest.approx(want[k], abs=1e-12), k


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 30), d=st.integers(1, 4), classes=st.integers(1, 6),
       levels=st.integers(2, 4), seed=st.integers(0, 10_000),
       distance=st.sampled_from(["euclidean", "cosine"]))
def test_retrieval_metrics_match_a_brute_force_oracle_with_ties(n, d, classes, levels, seed,
                                                                distance):
    # Euclidean: integer embeddings on a small grid, so many exact ties (broken by index in
    # both). Cosine distances of such vectors tie only up to rounding, which the two formulas
    # round differently: continuous embeddings there.
    r = np.random.default_rng(seed)
    emb = (r.integers(0, levels, (n, d)).astype(np.float32) if distance == "euclidean"
           else r.normal(size=(n, d)).astype(np.float32))
    labels = r.integers(0, classes, n)
    ks = (1, 2, 4, 8)
    _assert_same(E.retrieval_metrics(emb, labels, ks, distance),
                 retrieval_oracle(emb, labels, ks, distance))


def test_retrieval_on_known_cases():
    # Two tight clusters, each one class: perfect retrieval.
    emb = np.array([[0.0], [0.1], [0.2], [10.0], [10.1], [10.2]])
    labels = np.array([0, 0, 0, 1, 1, 1])
    out = E.retrieval_metrics(emb, labels, (1, 2))
    assert out["recall_at_1"] == out["map_at_r"] == out["r_precision"] == 1.0
    # Alternating classes on a line: every nearest neighbour is of the other class; within two,
    # only the end items (0 and 3) reach their own class.
    emb = np.array([[0.0], [1.0], [2.2], [3.2]])
    labels = np.array([0, 1, 0, 1])
    out = E.retrieval_metrics(emb, labels, (1, 2, 4))
    assert out["recall_at_1"] == 0.0
    assert out["recall_at_2"] == pytest.approx(0.5)
    assert out["recall_at_4"] == 1.0
    # A singleton class is not a query: nothing of its class can be retrieved.
    out = E.retrieval_metrics(np.array([[0.0], [0.1], [5.0]]), np.array([0, 0, 1]), (1,))
    assert out["retrieval_queries"] == 2 and out["recall_at_1"] == 1.0
    assert np.isnan(E.retrieval_metrics(np.zeros((3, 2)), np.array([0, 1, 2]), (1,))["map_at_r"])


def test_retrieval_evaluator_streams_batches_and_chunks_queries():
    r = np.random.default_rng(0)
    emb = r.normal(size=(2100, 3)).astype(np.float32)   # > one chunk of 1,024 queries
    labels = r.integers(0, 40, 2100)
    ev = E.Retrieval("ret", split="test", batch_size=64, every=0)
    ev.reset()
    for start in range(0, 2100, 64):
        ev.update({"embedding": emb[start:start + 64], "label": labels[start:start + 64]})
    got = ev.compute()
    # The oracle is quadratic in Python: check it on a subset, and the full run against the
    # one-shot function (the chunking is the only difference).
    _assert_same(got, E.retrieval_metrics(emb, labels, (1, 2, 4, 8)))
    _assert_same(E.retrieval_metrics(emb[:150], labels[:150] % 5, (1, 2, 4, 8)),
                 retrieval_oracle(emb[:150], labels[:150] % 5, (1, 2, 4, 8)))


# ----------------------------------------------------------------------------- configs and names


def test_build_evaluators_defaults_and_errors():
    config = base_config()
    (ev,) = E.build_evaluators(config)
    assert isinstance(ev, E.MeanMetrics) and ev.name == "eval"
    assert (ev.split, ev.batch_size, ev.every) == (config.data.eval_split,
                                                   config.train.eval_batch_size,
                                                   config.train.eval_every)
    config.evals = ml_collections.ConfigDict(dict(
        b=E.eval_config("retrieval", ks=(1, 5), every=0, batch_size=8),
        a=E.eval_config("metrics", split="train[:10]")))
    a, b = E.build_evaluators(config)
    assert (a.name, a.split, b.name, b.ks, b.every, b.batch_size) == (
        "a", "train[:10]", "b", (1, 5), 0, 8)
    config.evals.b.type = "mAP"
    with pytest.raises(ConfigError, match="types: metrics, confusion, segmentation, retrieval"):
        E.build_evaluators(config)
    with pytest.raises(ConfigError, match="unknown key.*nearest"):
        E.Retrieval("r", split="t", batch_size=1, every=0, nearest=3)
    with pytest.raises(ConfigError, match="distance"):
        E.Retrieval("r", split="t", batch_size=1, every=0, distance="l1").metric_names({})


def test_metric_names_are_bare_unless_an_earlier_evaluator_has_the_key():
    names = E.metric_names([["accuracy", "loss"], ["recall_at_1", "accuracy"], ["loss"]],
                           ["eval", "ret", "other"])
    assert names == [{"accuracy": "accuracy", "loss": "loss"},
                     {"recall_at_1": "recall_at_1", "accuracy": "ret/accuracy"},
                     {"loss": "other/loss"}]
