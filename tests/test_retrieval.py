"""Host-side retrieval / clustering / verification metrics (jaxvision.retrieval) and the
``Retrieval`` / ``Verification`` evaluators, against plain Python brute force and scikit-learn.

The oracles are written from the docstrings and the reference conventions (kNN: leave-one-out,
neighbours ranked by (distance, index), a vote tie to the tied class ranked nearest; NMI:
arithmetic normalization; LFW protocol: threshold chosen on the other folds only, AUC with ties
counted half, TAR at FAR = the largest threshold with FAR <= far, accept strictly below it).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from sklearn import metrics as skm
from sklearn.model_selection import LeaveOneOut, cross_val_score
from sklearn.neighbors import KNeighborsClassifier

from jaxvision import evaluators as E
from jaxvision import retrieval as R
from jaxvision.config import ConfigError


# ----------------------------------------------------------------------------- oracles


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def knn_oracle(emb, labels, k, distance="euclidean") -> float:
    """Leave-one-out kNN accuracy by a plain loop: others sorted by (squared distance, index),
    the first k vote, a vote tie goes to the tied class whose first vote ranks nearest."""
    x = _unit(emb) if distance == "cosine" else np.asarray(emb, np.float64)
    labels = list(np.asarray(labels).reshape(-1))
    n = len(labels)
    k = min(k, n - 1)
    correct = 0
    for i in range(n):
        ranked = sorted((float(np.sum((x[i] - x[j]) ** 2)), j) for j in range(n) if j != i)[:k]
        votes, first = {}, {}
        for rank, (_, j) in enumerate(ranked):
            votes[labels[j]] = votes.get(labels[j], 0) + 1
            first.setdefault(labels[j], rank)
        top = max(votes.values())
        pred = min((first[c], c) for c in votes if votes[c] == top)[1]
        correct += pred == labels[i]
    return correct / n


def tar_oracle(d, same, far) -> float:
    """Max TPR over every threshold c in the distances + inf (accept d < c) with FPR <= far."""
    pos, neg = d[same], d[~same]
    best = 0.0
    for c in sorted(set(d.tolist())) + [math.inf]:
        if np.mean(neg < c) <= far:
            best = max(best, float(np.mean(pos < c)))
    return best


def folds_oracle(d, same, folds, seed):
    """(mean accuracy, std, mean threshold) of the LFW protocol by plain loops: per fold, every
    candidate (midpoints of the other folds' distinct distances and both ends, +-1) scored on the
    other folds only; the first (smallest) best one is applied to the held-out fold."""
    order = np.random.default_rng(seed).permutation(len(d))
    parts = np.array_split(order, min(folds, len(d)))
    accs, ts = [], []
    for f, test in enumerate(parts):
        train = [int(i) for g, p in enumerate(parts) if g != f for i in p]
        vals = sorted(set(float(d[i]) for i in train))
        cands = [vals[0] - 1.0] + [(a + b) / 2 for a, b in zip(vals, vals[1:])] + [vals[-1] + 1.0]
        best_t, best_acc = None, -1.0
        for t in cands:
            acc = sum(bool(d[i] <= t) == bool(same[i]) for i in train) / len(train)
            if acc > best_acc:
                best_t, best_acc = t, acc
        ts.append(best_t)
        accs.append(sum(bool(d[i] <= best_t) == bool(same[i]) for i in test) / len(test))
    return float(np.mean(accs)), float(np.std(accs)), float(np.mean(ts))


def blobs(rng, sizes, dim=5, spread=30.0, sigma=0.5):
    """Well-separated Gaussian blobs: (x, labels)."""
    centres = rng.normal(size=(len(sizes), dim)) * spread
    labels = np.repeat(np.arange(len(sizes)), sizes)
    return centres[labels] + sigma * rng.normal(size=(len(labels), dim)), labels


# ----------------------------------------------------------------------------- kNN


@settings(max_examples=15, deadline=None)
@given(n=st.integers(2, 30), dim=st.integers(1, 3), grid=st.integers(1, 4),
       classes=st.integers(1, 4), k=st.integers(1, 9), seed=st.integers(0, 10_000))
def test_knn_accuracy_matches_brute_force_on_integer_grids_with_ties(n, dim, grid, classes, k,
                                                                      seed):
    """Euclidean on small integer grids (many exact distance ties, ranks by index, vote ties)."""
    r = np.random.default_rng(seed)
    emb = r.integers(0, grid + 1, size=(n, dim)).astype(np.float32)
    labels = r.integers(0, classes, n)
    assert R.knn_accuracy(emb, labels, k, "euclidean") == pytest.approx(
        knn_oracle(emb, labels, k), abs=1e-12)


@settings(max_examples=12, deadline=None)
@given(n=st.integers(2, 30), dim=st.integers(2, 4), classes=st.integers(1, 4),
       k=st.integers(1, 9), seed=st.integers(0, 10_000))
def test_knn_accuracy_cosine_matches_brute_force(n, dim, classes, k, seed):
    """Cosine = euclidean on L2-normalized rows (continuous embeddings: no rounding ties)."""
    r = np.random.default_rng(seed)
    emb = r.normal(size=(n, dim)) * r.uniform(0.1, 10.0, size=(n, 1))
    labels = r.integers(0, classes, n)
    assert R.knn_accuracy(emb, labels, k, "cosine") == pytest.approx(
        knn_oracle(emb, labels, k, "cosine"), abs=1e-12)


def test_knn_tie_rules_by_hand():
    """Equal distances rank by index; a 1-1 vote goes to the nearer class (not the smaller id)."""
    emb = np.array([[0.0], [-1.0], [1.0], [10.0]])
    labels = np.array([0, 1, 0, 1])
    # k=1: item 0 has items 1 and 2 at distance 1 -> item 1 (label 1): wrong; only item 2 right.
    assert R.knn_accuracy(emb, labels, 1) == 0.25
    # k=2: item 0 votes {1 (rank 0), 0 (rank 1)} -> class 1 (a smallest-label rule would say 0).
    assert R.knn_accuracy(emb, labels, 2) == 0.25
    # k larger than N - 1 is clamped to N - 1 (every other item votes).
    assert R.knn_accuracy(emb, labels, 50) == R.knn_accuracy(emb, labels, 3)
    assert np.isnan(R.knn_accuracy(emb[:1], labels[:1], 1))


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
@pytest.mark.parametrize("k", [1, 3, 7])
def test_knn_accuracy_matches_sklearn_leave_one_out(distance, k):
    """Tie-free continuous data, two classes and odd k (no vote ties): sklearn's
    KNeighborsClassifier under LeaveOneOut cross-validation gives the same accuracy."""
    r = np.random.default_rng(k)
    x = r.normal(size=(60, 3))
    y = (x[:, 0] + 0.8 * r.normal(size=60) > 0).astype(int)
    # A precomputed distance matrix (sliced per fold by sklearn) keeps the 60 fits fast.
    dist = skm.pairwise_distances(x, metric=distance)
    clf = KNeighborsClassifier(n_neighbors=k, algorithm="brute", metric="precomputed")
    expected = cross_val_score(clf, dist, y, cv=LeaveOneOut()).mean()
    assert R.knn_accuracy(x, y, k, distance) == pytest.approx(expected, abs=1e-12)


# ----------------------------------------------------------------------------- NMI and k-means


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 60), ca=st.integers(1, 6), cb=st.integers(1, 6),
       seed=st.integers(0, 10_000))
def test_nmi_matches_sklearn(n, ca, cb, seed):
    """Random labelings (single-cluster ones included when ca or cb is 1), arbitrary label ids,
    and invariance to relabelling either side."""
    r = np.random.default_rng(seed)
    a = r.integers(0, ca, n) * 7 - 3          # sparse, negative ids
    b = r.integers(0, cb, n) + 100
    expected = skm.normalized_mutual_info_score(a, b)
    got = R.nmi(a, b)
    assert got == pytest.approx(expected, abs=1e-12)
    perm_a, perm_b = r.permutation(ca) + 50, r.permutation(cb)
    assert R.nmi(perm_a[(a + 3) // 7], perm_b[b - 100]) == pytest.approx(expected, abs=1e-12)
    assert R.nmi(b, a) == pytest.approx(expected, abs=1e-12)   # symmetric


def test_nmi_limit_cases():
    """Both single clusters -> 1; one single cluster against a split -> 0; identical -> 1."""
    one = np.zeros(10, int)
    split = np.arange(10) % 3
    assert R.nmi(one, one + 5) == 1.0 == skm.normalized_mutual_info_score(one, one + 5)
    assert R.nmi(one, split) == 0.0 == skm.normalized_mutual_info_score(one, split)
    assert R.nmi(split, one) == 0.0
    assert R.nmi(split, (split + 1) % 3) == pytest.approx(1.0, abs=1e-12)
    assert R.nmi(np.array([4]), np.array([9])) == 1.0
    assert R.nmi(np.array(["a", "b", "a"]), np.array([1, 0, 1])) == pytest.approx(1.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kmeans_recovers_separated_blobs_deterministically(seed):
    """Unequal, well-separated blobs are recovered exactly; a seed fixes the result."""
    r = np.random.default_rng(100 + seed)
    x, labels = blobs(r, [40, 10, 25, 5, 20])
    got = R.kmeans(x, 5, seed=seed)
    assert got.shape == (len(x),) and got.min() >= 0 and got.max() < 5
    assert R.nmi(labels, got) == pytest.approx(1.0, abs=1e-12)
    assert skm.adjusted_rand_score(labels, got) == 1.0
    np.testing.assert_array_equal(got, R.kmeans(x, 5, seed=seed))
    # k above the number of points is clamped; every point its own cluster.
    assert len(np.unique(R.kmeans(x[:4], 10, seed=seed))) == 4


def test_kmeans_nmi_on_blobs_and_on_noise():
    """1.0 on separated blobs (one cluster per class present); low on label-free noise."""
    r = np.random.default_rng(7)
    x, labels = blobs(r, [30, 30, 30, 30])
    assert R.kmeans_nmi(x, labels * 3 + 11) == pytest.approx(1.0, abs=1e-12)
    noise = r.normal(size=(400, 8))
    random_labels = r.integers(0, 5, 400)
    assert R.kmeans_nmi(noise, random_labels) < 0.05
    assert np.isnan(R.kmeans_nmi(np.zeros((0, 3)), np.zeros(0, int)))


# ----------------------------------------------------------------------------- verification pairs


def test_verification_pairs_counts_uniqueness_and_labels():
    """Half same-label, half different, i < j, no pair twice, ``same`` right, seed-deterministic."""
    r = np.random.default_rng(0)
    labels = r.integers(0, 6, 50)
    i, j, same = R.verification_pairs(labels, 101, seed=3)
    assert len(i) == len(j) == len(same) == 100          # 101 // 2 of each
    assert same.dtype == bool and same[:50].all() and not same[50:].any()
    assert (i < j).all() and i.min() >= 0 and j.max() < 50
    assert len(set(zip(i.tolist(), j.tolist()))) == 100
    np.testing.assert_array_equal(same, labels[i] == labels[j])
    for a, b in zip(R.verification_pairs(labels, 101, seed=3), (i, j, same)):
        np.testing.assert_array_equal(a, b)
    other = R.verification_pairs(labels, 101, seed=4)
    assert not (np.array_equal(other[0], i) and np.array_equal(other[1], j))


def test_verification_pairs_capped_by_the_rarer_kind():
    """Few positives: as many negatives as positives, and every positive pair is used."""
    labels = np.array([0, 0, 1, 2, 3, 4, 5, 1])      # positives: (0, 1), (2, 7)
    i, j, same = R.verification_pairs(labels, 6000, seed=0)
    assert len(i) == 4 and same.sum() == 2
    assert set(zip(i[same].tolist(), j[same].tolist())) == {(0, 1), (2, 7)}
    # All one identity: no negatives, so no pairs at all (and no error).
    i, j, same = R.verification_pairs(np.zeros(5, int), 10, seed=0)
    assert len(i) == len(j) == len(same) == 0
    i, j, same = R.verification_pairs(np.arange(5), 10, seed=0)   # no positives
    assert len(same) == 0


# ----------------------------------------------------------------------------- verification metrics


def _pairs_data(seed, n, grid=None):
    """Distances (integer grid -> many ties, else continuous) and ``same`` with both kinds."""
    r = np.random.default_rng(seed)
    same = r.random(n) < r.uniform(0.2, 0.8)
    same[:2] = [True, False]
    if grid:
        d = r.integers(0, grid, n) + np.where(same, 0, r.integers(0, 3, n))
        d = d.astype(np.float64) / 2
    else:
        d = r.normal(size=n) + np.where(same, 0.0, 1.0)
    return d, same


@settings(max_examples=15, deadline=None)
@given(n=st.integers(2, 150), grid=st.sampled_from([None, 2, 4, 10]),
       far=st.sampled_from([1e-3, 0.01, 0.05, 0.1, 0.25, 0.3, 0.5]), seed=st.integers(0, 10_000))
def test_verification_auc_roc_and_tar_match_references(n, grid, far, seed):
    """AUC = sklearn roc_auc_score(same, -d) with ties; the ROC is sklearn's roc_curve (at most
    201 distinct distances here: every point kept) from (0, 0) to (1, 1); TAR@FAR = brute force."""
    d, same = _pairs_data(seed, n, grid)
    out = R.verification_metrics(d, same, folds=10, far=far, seed=seed)
    assert out["verification_auc"] == pytest.approx(skm.roc_auc_score(same, -d), abs=1e-12)
    fpr, tpr, _ = skm.roc_curve(same, -d, drop_intermediate=False)
    np.testing.assert_allclose(out["roc_fpr"], fpr, atol=1e-12)
    np.testing.assert_allclose(out["roc_tpr"], tpr, atol=1e-12)
    assert out[f"tar_at_far_{far:g}"] == pytest.approx(tar_oracle(d, same, far), abs=1e-12)
    assert out["verification_pairs"] == float(n)


def test_verification_roc_is_subsampled_for_many_thresholds():
    """More than 201 distinct distances: at most 202 points, (0,0) to (1,1), monotone, each on
    sklearn's full curve."""
    d, same = _pairs_data(5, 3000)
    out = R.verification_metrics(d, same)
    fpr, tpr = out["roc_fpr"], out["roc_tpr"]
    assert len(fpr) == len(tpr) <= 202 and len(fpr) > 150
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert (np.diff(fpr) >= 0).all() and (np.diff(tpr) >= 0).all()
    full = set(zip(*[np.round(a, 12).tolist() for a in skm.roc_curve(same, -d)[:2]]))
    full_all = set(zip(*[np.round(a, 12).tolist()
                         for a in skm.roc_curve(same, -d, drop_intermediate=False)[:2]]))
    assert full <= full_all
    assert set(zip(np.round(fpr, 12).tolist(), np.round(tpr, 12).tolist())) <= full_all


def test_tar_at_far_by_hand():
    """1,000 negatives, far 1e-3: one false accept tolerated, accept strictly below the second
    smallest negative; tied negatives at the cut are all rejected."""
    neg = np.concatenate([[0.5, 2.0], np.full(998, 10.0)])
    pos = np.array([0.1, 1.0, 1.9, 2.0, 3.0])
    d = np.concatenate([pos, neg])
    same = np.arange(len(d)) < len(pos)
    out = R.verification_metrics(d, same)
    assert "tar_at_far_0.001" in out
    assert out["tar_at_far_0.001"] == pytest.approx(3 / 5)       # 0.1, 1.0, 1.9 < 2.0
    neg[1] = 0.5                                                  # two negatives tie at 0.5
    out = R.verification_metrics(np.concatenate([pos, neg]), same)
    assert out["tar_at_far_0.001"] == pytest.approx(1 / 5)       # only 0.1 < 0.5


@settings(max_examples=12, deadline=None)
@given(n=st.integers(2, 80), folds=st.integers(2, 12), grid=st.sampled_from([None, 3, 8]),
       seed=st.integers(0, 10_000))
def test_verification_fold_accuracy_matches_brute_force(n, folds, grid, seed):
    """Mean / std of the held-out accuracies and the mean threshold, by plain loops over the folds
    (same shuffle: default_rng(seed).permutation, array_split into min(folds, P) parts)."""
    d, same = _pairs_data(seed, n, grid)
    out = R.verification_metrics(d, same, folds=folds, seed=seed)
    acc, std, thr = folds_oracle(d, same, folds, seed)
    assert out["verification_accuracy"] == pytest.approx(acc, abs=1e-12)
    assert out["verification_accuracy_std"] == pytest.approx(std, abs=1e-12)
    assert out["verification_threshold"] == pytest.approx(thr, abs=1e-12)


def test_verification_threshold_is_chosen_on_the_other_folds_only():
    """Two folds, each separable on its own but at different thresholds (fold A: positives at 1,
    negatives at 3; fold B: 5 and 7). Training on A gives t=2, which rejects all of B; training on
    B gives t=6, which accepts all of A: 0.5 on each held-out fold. A threshold fitted on all the
    data (or on the held-out fold) would score 0.75 (or 1.0)."""
    n, seed = 40, 11
    order = np.random.default_rng(seed).permutation(n)
    fold_a, fold_b = np.array_split(order, 2)
    d, same = np.zeros(n), np.zeros(n, bool)
    for fold, (p, q) in ((fold_a, (1.0, 3.0)), (fold_b, (5.0, 7.0))):
        same[fold[::2]] = True
        d[fold] = np.where(same[fold], p, q)
    out = R.verification_metrics(d, same, folds=2, seed=seed)
    assert out["verification_accuracy"] == 0.5
    assert out["verification_accuracy_std"] == 0.0
    assert out["verification_threshold"] == 4.0               # mean of 2 and 6
    assert out["verification_auc"] == pytest.approx(skm.roc_auc_score(same, -d))
    # A different shuffle mixes the two kinds into both folds: each training set then sees both.
    assert R.verification_metrics(d, same, folds=2, seed=seed + 1)["verification_accuracy"] > 0.5


@pytest.mark.parametrize("same", [np.ones(7, bool), np.zeros(7, bool), np.zeros(0, bool)])
def test_verification_metrics_degenerate_inputs_are_nan(same):
    """No negatives / no positives / no pairs: NaN scores, empty ROC, no error."""
    d = np.linspace(0, 1, len(same))
    out = R.verification_metrics(d, same, far=1e-3)
    for key in ("verification_accuracy", "verification_accuracy_std", "verification_threshold",
                "verification_auc", "tar_at_far_0.001"):
        assert np.isnan(out[key]), key
    assert out["verification_pairs"] == float(len(same))
    assert out["roc_fpr"].shape == out["roc_tpr"].shape == (0,)


def test_verification_more_folds_than_pairs_and_perfect_separation():
    """folds > P uses P folds (leave-one-out); perfectly separated distances score 1.0 on every
    metric."""
    d = np.array([0.1, 0.2, 0.3, 0.9, 1.0, 1.1])
    same = np.array([True, True, True, False, False, False])
    out = R.verification_metrics(d, same, folds=10, far=0.1)
    assert out["verification_accuracy"] == 1.0 and out["verification_auc"] == 1.0
    assert out["tar_at_far_0.1"] == 1.0
    assert out["verification_accuracy"] == folds_oracle(d, same, 10, 0)[0]


# ----------------------------------------------------------------------------- evaluators


def _feed(ev, emb, labels, sizes):
    """reset, then update in batches of the given sizes (the core's host side)."""
    ev.reset()
    start = 0
    for size in sizes:
        ev.update({"embedding": emb[start:start + size], "label": labels[start:start + size]})
        start += size
    assert start == len(labels)


def _assert_same(got: dict, expected: dict):
    assert list(got) == list(expected)
    for key, value in expected.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-12, atol=1e-12, err_msg=key)


def _check_names(ev, out):
    """metric_names lists exactly the keys compute returns; every non-ROC value is a float."""
    assert list(ev.metric_names({})) == list(out)
    for key, value in out.items():
        if key.startswith("roc_"):
            assert isinstance(value, np.ndarray) and value.ndim == 1
        else:
            assert isinstance(value, float), key


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_retrieval_evaluator_with_knn_and_nmi_matches_the_functions(distance):
    """Several uneven batches, then compute: recall/MAP as retrieval_metrics, knn_accuracy,
    and NMI of k-means (on the normalized embeddings for cosine), equal to the functions."""
    r = np.random.default_rng(1)
    emb = r.normal(size=(130, 4)).astype(np.float32)
    labels = r.integers(0, 6, 130)
    ev = E.Retrieval("ret", split="test", batch_size=32, every=0, ks=(1, 3), knn=5, nmi=True,
                     distance=distance)
    _feed(ev, emb, labels, [32, 32, 32, 32, 2])
    out = ev.compute()
    clusters = R.kmeans(_unit(emb) if distance == "cosine" else emb, 6, seed=0)
    expected = {**R.retrieval_metrics(emb, labels, (1, 3), distance),
                "knn_accuracy": R.knn_accuracy(emb, labels, 5, distance),
                "nmi": R.nmi(labels, clusters)}
    assert out["knn_accuracy"] == pytest.approx(knn_oracle(emb, labels, 5, distance), abs=1e-12)
    _assert_same({k: v for k, v in out.items() if k != "nmi"},
                 {k: v for k, v in expected.items() if k != "nmi"})
    assert out["nmi"] == pytest.approx(expected["nmi"], abs=1e-6)
    _check_names(ev, out)
    # Off by default: neither key appears.
    plain = E.Retrieval("ret", split="test", batch_size=32, every=0, ks=(1, 3), distance=distance)
    _feed(plain, emb, labels, [130])
    _check_names(plain, plain.compute())
    assert "knn_accuracy" not in plain.compute() and "nmi" not in plain.compute()


def test_retrieval_evaluator_cosine_clusters_by_direction():
    """Classes are rays from the origin with magnitudes 1..100: cosine kNN and NMI are perfect,
    euclidean k-means (which splits by magnitude) is not."""
    r = np.random.default_rng(2)
    dirs = np.eye(3)
    labels = np.repeat(np.arange(3), 40)
    emb = (dirs[labels] + 0.05 * r.normal(size=(120, 3))) * r.uniform(1, 100, (120, 1))
    emb = emb.astype(np.float32)
    outs = {}
    for distance in ("cosine", "euclidean"):
        ev = E.Retrieval("ret", split="t", batch_size=50, every=0, knn=3, nmi=True,
                         distance=distance)
        _feed(ev, emb, labels, [50, 50, 20])
        outs[distance] = ev.compute()
    assert outs["cosine"]["knn_accuracy"] == 1.0
    assert outs["cosine"]["nmi"] == pytest.approx(1.0, abs=1e-12)
    assert outs["euclidean"]["nmi"] < 0.9


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_verification_evaluator_matches_the_functions(distance):
    """Pairs from verification_pairs(labels, pairs, seed), distances between the gathered
    embeddings (unit rows for cosine), scored by verification_metrics; the same at every
    evaluation whatever the batching."""
    r = np.random.default_rng(3)
    labels = r.integers(0, 15, 200)
    emb = (r.normal(size=(15, 8))[labels] + 0.9 * r.normal(size=(200, 8))).astype(np.float32)
    ev = E.Verification("ver", split="test", batch_size=64, every=0, distance=distance,
                        pairs=300, folds=5, far=0.01, seed=3)
    _feed(ev, emb, labels, [64, 64, 64, 8])
    out = ev.compute()
    i, j, same = R.verification_pairs(labels, 300, seed=3)
    x = _unit(emb) if distance == "cosine" else emb.astype(np.float64)
    d = np.linalg.norm(x[i] - x[j], axis=1)
    expected = R.verification_metrics(d, same, folds=5, far=0.01, seed=3)
    _assert_same(out, expected)
    assert out["verification_pairs"] == 300.0
    assert 0.6 < out["verification_auc"] <= 1.0
    _check_names(ev, out)
    _feed(ev, emb, labels, [1, 150, 49])
    _assert_same(ev.compute(), out)


def test_evaluators_degenerate_splits_give_nan():
    """One identity (no negative pairs), nothing gathered, a single item: NaN, no error."""
    ver = E.Verification("ver", split="t", batch_size=4, every=0)
    _feed(ver, np.ones((6, 2), np.float32), np.zeros(6, int), [4, 2])
    out = ver.compute()
    assert np.isnan(out["verification_accuracy"]) and out["verification_pairs"] == 0.0
    _check_names(ver, out)
    ver.reset()
    assert np.isnan(ver.compute()["verification_auc"])
    ret = E.Retrieval("ret", split="t", batch_size=4, every=0, knn=3, nmi=True)
    _feed(ret, np.ones((1, 2), np.float32), np.zeros(1, int), [1])
    out = ret.compute()
    assert np.isnan(out["knn_accuracy"]) and np.isnan(out["recall_at_1"])
    assert out["nmi"] == 1.0 and out["retrieval_queries"] == 0.0
    _check_names(ret, out)


def test_retrieval_evaluator_with_nothing_gathered_gives_nan():
    """Nothing gathered (``_gathered`` falls back to (0, 1) embeddings): NaN metrics, as
    knn_accuracy and kmeans_nmi already give on their own."""
    ret = E.Retrieval("ret", split="t", batch_size=4, every=0, knn=3, nmi=True)
    ret.reset()
    out = ret.compute()
    assert np.isnan(out["recall_at_1"]) and np.isnan(out["knn_accuracy"])
    assert np.isnan(out["nmi"]) and out["retrieval_queries"] == 0.0


@pytest.mark.parametrize("cls, options, match", [
    (E.Retrieval, dict(distance="manhattan"), "distance"),
    (E.Retrieval, dict(knn=-1), "knn"),
    (E.Retrieval, dict(ks=(0, 1)), "ks"),
    (E.Verification, dict(distance="manhattan"), "distance"),
    (E.Verification, dict(pairs=1), "pairs"),
    (E.Verification, dict(far=0), "far"),
    (E.Verification, dict(far=1.0), "far"),
    (E.Verification, dict(folds=1), "folds"),
])
def test_bad_options_raise_config_error(cls, options, match):
    """Out-of-range options are ConfigErrors when the names are asked for (at build)."""
    ev = cls("bad", split="t", batch_size=1, every=0, **options)
    with pytest.raises(ConfigError, match=match):
        ev.metric_names({})


def test_verification_is_a_registered_type():
    """'verification' builds through eval_config with its defaults; unknown keys are rejected."""
    cfg = E.eval_config("verification", far=0.01)
    assert cfg.type == "verification" and cfg.pairs == 6000 and cfg.folds == 10
    assert E.EVALUATORS["verification"] is E.Verification
    assert E.Verification.type_name() == "verification"
    assert "tar_at_far_0.01" in E.Verification("v", split="t", batch_size=1, every=0,
                                               far=0.01).metric_names({})
    with pytest.raises(ConfigError, match="unknown key.*knn"):
        E.Verification("v", split="t", batch_size=1, every=0, knn=3)
