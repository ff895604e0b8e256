"""kNN against a numpy brute-force reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxvision.models.knn import knn_neighbors, knn_predict


def _reference(train_x, train_y, query_x, k, metric, num_classes, tie_break):
    """Loop over queries: stable sort by distance (ties -> lower train index), then count votes."""
    t = train_x.reshape(len(train_x), -1).astype(np.float64)
    preds, neighbours = [], []
    for q in query_x.reshape(len(query_x), -1).astype(np.float64):
        diff = t - q
        d = (diff**2).sum(1) if metric == "l2" else np.abs(diff).sum(1)
        order = np.argsort(d, kind="stable")[:k]
        labels = train_y[order]
        counts = np.bincount(labels, minlength=num_classes)
        top = set(np.flatnonzero(counts == counts.max()))
        if tie_break == "smallest":
            preds.append(min(top))
        else:
            preds.append(next(lab for lab in labels if lab in top))
        neighbours.append(order)
    return np.array(preds), np.array(neighbours)


@settings(max_examples=20, deadline=None)
@given(
    n=st.integers(1, 30),
    m=st.integers(1, 12),
    d=st.integers(1, 6),
    k_frac=st.floats(0, 1),
    metric=st.sampled_from(["l2", "l1"]),
    tie_break=st.sampled_from(["smallest", "nearest"]),
    batch_size=st.sampled_from([1, 5, 64]),
    seed=st.integers(0, 2**16),
)
def test_matches_bruteforce(n, m, d, k_frac, metric, tie_break, batch_size, seed):
    rng = np.random.default_rng(seed)
    # Small integers make every distance exact in float32 and produce many exact ties, so the
    # tie rules are exercised, not just the easy cases.
    train_x = rng.integers(0, 4, size=(n, d)).astype(np.float32)
    query_x = rng.integers(0, 4, size=(m, d)).astype(np.float32)
    num_classes = 4
    train_y = rng.integers(0, num_classes, size=n)
    k = 1 + int(k_frac * (n - 1))
    ref_pred, ref_idx = _reference(train_x, train_y, query_x, k, metric, num_classes, tie_break)
    pred = knn_predict(train_x, train_y, query_x, k, metric, num_classes, batch_size, tie_break=tie_break)
    _, idx = knn_neighbors(train_x, query_x, k, metric=metric, batch_size=batch_size)
    assert pred.dtype == np.int32 and pred.shape == (m,)
    np.testing.assert_array_equal(np.asarray(idx), ref_idx)
    np.testing.assert_array_equal(np.asarray(pred), ref_pred)


@pytest.mark.parametrize("metric", ["l2", "l1"])
@pytest.mark.parametrize("k", [1, 5])
def test_raw_pixels_float_features(metric, k):
    rng = np.random.default_rng(k)
    train_x = rng.normal(size=(40, 4, 4, 3)).astype(np.float32)
    query_x = rng.normal(size=(9, 4, 4, 3)).astype(np.float32)
    train_y = rng.integers(0, 3, size=40)
    ref, _ = _reference(train_x, train_y, query_x, k, metric, 3, "smallest")
    np.testing.assert_array_equal(knn_predict(train_x, train_y, query_x, k, metric, 3, batch_size=4), ref)


def test_uint8_pixels_do_not_wrap_around():
    train_x = np.array([[0], [250]], np.uint8)
    query_x = np.array([[10]], np.uint8)
    # In uint8 arithmetic 10 - 250 wraps to 16, which would make 250 the nearer point.
    assert int(knn_predict(train_x, np.array([0, 1]), query_x, 1)[0]) == 0


def test_tie_rules_on_a_hand_example():
    train_x = np.array([[0.0], [1.0], [2.0], [3.0]])
    train_y = np.array([2, 1, 2, 1])
    query = np.array([[0.0]])
    # k=2: one vote each for classes 2 (nearest) and 1.
    assert int(knn_predict(train_x, train_y, query, 2, tie_break="smallest")[0]) == 1
    assert int(knn_predict(train_x, train_y, query, 2, tie_break="nearest")[0]) == 2
    # k=3: class 2 wins outright.
    assert int(knn_predict(train_x, train_y, query, 3)[0]) == 2


def test_distances_are_squared_l2_and_l1():
    train_x = np.array([[0.0, 0.0], [3.0, 4.0]])
    d2, i2 = knn_neighbors(train_x, np.array([[0.0, 0.0]]), 2, metric="l2")
    d1, _ = knn_neighbors(train_x, np.array([[0.0, 0.0]]), 2, metric="l1")
    np.testing.assert_allclose(d2, [[0.0, 25.0]])
    np.testing.assert_allclose(d1, [[0.0, 7.0]])
    np.testing.assert_array_equal(i2, [[0, 1]])


def test_bad_arguments_say_what_to_fix():
    x, y = np.zeros((5, 3)), np.zeros(5, int)
    with pytest.raises(ValueError, match=r"k must be in \[1, 5\]"):
        knn_predict(x, y, x, 6)
    with pytest.raises(ValueError, match="same D"):
        knn_predict(x, y, np.zeros((2, 4)), 1)
    with pytest.raises(ValueError, match="metric"):
        knn_predict(x, y, x, 1, metric="cosine")
    with pytest.raises(ValueError, match="num_classes"):
        knn_predict(x, np.array([0, 1, 2, 3, 4]), x, 1, num_classes=3)
    with pytest.raises(ValueError, match=r"train_y must be \(N,\)"):
        knn_predict(x, np.zeros(4, int), x, 1)
