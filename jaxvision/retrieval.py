"""Host-side retrieval and verification metrics over embeddings (numpy, float64 distances).

What the ``retrieval`` and ``verification`` evaluators (``jaxvision/evaluators.py``) compute
once they have gathered every embedding of a split; conventions as in
``../shared/reference/conventions.md`` (metric learning; face verification, LFW protocol).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def _nearest(emb: np.ndarray, ranks: int, distance: str, chunk: int = 1024) -> np.ndarray:
    """(N, ranks) int64: for every row of ``emb`` the indices of its ``ranks`` nearest other rows,
    nearest first, ties broken by the lower index; distances in float64."""
    x = np.asarray(emb, np.float64)
    if distance == "cosine":
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    sq = np.sum(x * x, axis=1)
    n = len(x)
    out = np.empty((n, ranks), np.int64)
    cols = np.arange(n)
    for start in range(0, n, chunk):
        q = x[start:start + chunk]
        d = sq[start:start + chunk, None] - 2.0 * (q @ x.T) + sq[None, :]
        d[np.arange(len(q)), start + np.arange(len(q))] = np.inf   # the query itself
        kth = np.partition(d, ranks - 1, axis=1)[:, ranks - 1:ranks]
        for i in range(len(q)):
            cand = cols[d[i] <= kth[i, 0]]                 # every tie at the cut is kept
            order = np.lexsort((cand, d[i, cand]))         # by distance, then index
            out[start + i] = cand[order[:ranks]]
    return out


def retrieval_metrics(embeddings: np.ndarray, labels: np.ndarray, ks: Sequence[int] = (1, 2, 4, 8),
                      distance: str = "euclidean") -> dict:
    """Recall@K, R-precision and MAP@R of every item queried against all the others.

    ``embeddings`` (N, D), ``labels`` (N,) ints; ``distance`` 'euclidean' or 'cosine'. Recall@K
    (metric-learning sense): the fraction of queries with at least one item of their class among
    their K nearest neighbours, the query excluded. R-precision and MAP@R as in
    pytorch-metric-learning: R = the number of other items of the query's class, MAP@R =
    mean over queries of (1/R) sum_{i<=R} P(i) rel(i). Queries without another item of their class
    (R = 0) can retrieve nothing and are left out of every metric (``retrieval_queries`` counts
    the rest). Neighbours tie-break by index. Returns floats ``recall_at_<k>``,
    ``precision_at_1`` (the nearest neighbour's class is right: Recall@1 by another name, as
    pytorch-metric-learning reports both), ``r_precision``, ``map_at_r``, ``retrieval_queries``.
    """
    labels = np.asarray(labels).reshape(-1)
    emb = np.asarray(embeddings).reshape(len(labels), -1) if len(labels) else np.zeros((0, 1))
    if distance not in ("euclidean", "cosine"):
        raise ValueError(f"retrieval distance must be 'euclidean' or 'cosine', got {distance!r}.")
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    r = counts[inverse] - 1
    queries = r > 0
    out = {f"recall_at_{int(k)}": float("nan") for k in ks}
    out.update(precision_at_1=float("nan"), r_precision=float("nan"), map_at_r=float("nan"),
               retrieval_queries=0.0)
    if not queries.any():
        return out
    ranks = int(min(len(labels) - 1, max(max(ks), r.max())))
    nn = _nearest(emb, ranks, distance)
    rel = labels[nn] == labels[:, None]                       # (N, ranks)
    rel, r_q = rel[queries], r[queries]
    for k in ks:
        out[f"recall_at_{int(k)}"] = float(np.mean(rel[:, :int(k)].any(axis=1)))
    out["precision_at_1"] = float(np.mean(rel[:, 0]))
    within = np.arange(ranks)[None, :] < r_q[:, None]         # the first R neighbours
    rel_r = rel & within
    out["r_precision"] = float(np.mean(rel_r.sum(1) / r_q))
    precision_at_i = np.cumsum(rel_r, axis=1) / np.arange(1, ranks + 1)[None, :]
    out["map_at_r"] = float(np.mean(np.sum(precision_at_i * rel_r, axis=1) / r_q))
    out["retrieval_queries"] = float(queries.sum())
    return out


def knn_accuracy(embeddings: np.ndarray, labels: np.ndarray, k: int = 5,
                 distance: str = "euclidean") -> float:
    """Leave-one-out k-nearest-neighbour classification accuracy over every item: the majority
    class among the ``k`` nearest other items (a tie goes to the tied class whose first member
    ranks nearest). ``embeddings`` (N, D), ``labels`` (N,); N >= 2."""
    labels = np.asarray(labels).reshape(-1)
    if len(labels) < 2:
        return float("nan")
    if int(k) < 1:
        raise ValueError(f"knn_accuracy: k={k} must be >= 1.")
    k = int(min(k, len(labels) - 1))
    nn = _nearest(np.asarray(embeddings).reshape(len(labels), -1), k, distance)
    votes = labels[nn]                                          # (N, k), nearest first
    correct = 0
    for row, truth in zip(votes, labels):
        classes, first, counts = np.unique(row, return_index=True, return_counts=True)
        best = counts == counts.max()
        correct += int(classes[best][np.argmin(first[best])] == truth)
    return correct / len(labels)


def kmeans(x: np.ndarray, k: int, *, seed: int = 0, iters: int = 100, n_init: int = 4
           ) -> np.ndarray:
    """Lloyd's k-means with k-means++ seeding, the best of ``n_init`` starts by inertia;
    returns the (N,) cluster of every row of ``x`` (N, D)."""
    x = np.asarray(x, np.float64)
    n = len(x)
    k = int(min(k, n))
    rng = np.random.default_rng(seed)
    best, best_inertia = np.zeros(n, np.int64), np.inf
    sq = np.sum(x * x, 1)
    for _ in range(n_init):
        centres = [x[rng.integers(n)]]
        d2 = np.sum((x - centres[0]) ** 2, 1)
        for _ in range(1, k):
            p = d2 / d2.sum() if d2.sum() > 0 else np.full(n, 1.0 / n)
            centres.append(x[rng.choice(n, p=p)])
            d2 = np.minimum(d2, np.sum((x - centres[-1]) ** 2, 1))
        c = np.asarray(centres)
        assign = np.full(n, -1)
        for _ in range(iters):
            dist = sq[:, None] - 2.0 * x @ c.T + np.sum(c * c, 1)[None, :]
            new = np.argmin(dist, 1)
            if np.array_equal(new, assign):
                break
            assign = new
            for j in range(k):
                members = x[assign == j]
                if len(members):
                    c[j] = members.mean(0)
        inertia = float(np.sum(np.min(sq[:, None] - 2.0 * x @ c.T + np.sum(c * c, 1)[None, :], 1)))
        if inertia < best_inertia:
            best, best_inertia = assign.copy(), inertia
    return best


def nmi(a: np.ndarray, b: np.ndarray) -> float:
    """Normalized mutual information of two labelings (N,), arithmetic normalization
    ``I(a; b) / mean(H(a), H(b))`` as scikit-learn's ``normalized_mutual_info_score``; 1.0 when
    both are a single cluster."""
    _, ia = np.unique(a, return_inverse=True)
    _, ib = np.unique(b, return_inverse=True)
    n = len(ia)
    table = np.zeros((ia.max(initial=-1) + 1, ib.max(initial=-1) + 1))
    np.add.at(table, (ia, ib), 1.0)
    if table.shape[0] <= 1 and table.shape[1] <= 1:
        return 1.0
    pa, pb, pab = table.sum(1) / n, table.sum(0) / n, table / n
    nz = pab > 0
    mi = float(np.sum(pab[nz] * np.log(pab[nz] / (pa[:, None] * pb[None, :])[nz])))
    ha = -float(np.sum(pa[pa > 0] * np.log(pa[pa > 0])))
    hb = -float(np.sum(pb[pb > 0] * np.log(pb[pb > 0])))
    denom = (ha + hb) / 2
    return mi / denom if denom > 0 else 1.0


def kmeans_nmi(embeddings: np.ndarray, labels: np.ndarray, *, seed: int = 0) -> float:
    """NMI between the classes and a k-means clustering of the embeddings with one cluster per
    class present (the clustering quality of metric-learning papers)."""
    labels = np.asarray(labels).reshape(-1)
    if len(labels) == 0:
        return float("nan")
    clusters = kmeans(np.asarray(embeddings).reshape(len(labels), -1), len(np.unique(labels)),
                      seed=seed)
    return nmi(labels, clusters)


def verification_pairs(labels: np.ndarray, num_pairs: int = 6000, *, seed: int = 0
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Face-verification pairs from a labelled split: ``(i, j, same)`` (P,) arrays with i < j,
    half of one identity and half of two (as LFW's 3,000 + 3,000), each half drawn uniformly
    without repetition among all such pairs (fewer when there are not enough of either)."""
    labels = np.asarray(labels).reshape(-1)
    n = len(labels)
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    # Same-identity pairs are enumerated per identity (sum of c^2, not n^2, in memory).
    pos = [np.stack(np.triu_indices(len(g), 1)) for g in groups]
    pos = np.concatenate([g[p] for g, p in zip(groups, pos)], axis=1) if pos else np.zeros((2, 0), int)
    n_neg = (n * n - sum(len(g) ** 2 for g in groups)) // 2
    half = int(min(num_pairs // 2, pos.shape[1], n_neg))
    pos = pos[:, np.sort(rng.choice(pos.shape[1], size=half, replace=False))]
    if n_neg <= 4 * half:    # few negative pairs: enumerate them all, then choose
        neg = np.concatenate([np.stack(np.meshgrid(a, b, indexing="ij")).reshape(2, -1)
                              for k, a in enumerate(groups) for b in groups[k + 1:]]
                             or [np.zeros((2, 0), int)], axis=1)
        neg = np.sort(neg, axis=0)[:, rng.choice(neg.shape[1], size=half, replace=False)]
    else:                    # many: draw random pairs until enough distinct ones differ
        chosen: dict[tuple[int, int], None] = {}
        while len(chosen) < half:
            i, j = rng.integers(0, n, (2, 2 * (half - len(chosen)) + 16))
            for a, b in zip(np.minimum(i, j).tolist(), np.maximum(i, j).tolist()):
                if labels[a] != labels[b] and len(chosen) < half:
                    chosen[(a, b)] = None
        neg = np.asarray(list(chosen), int).reshape(-1, 2).T
    i = np.concatenate([pos[0], neg[0]]).astype(np.int64)
    j = np.concatenate([pos[1], neg[1]]).astype(np.int64)
    return i, j, np.concatenate([np.ones(half, bool), np.zeros(half, bool)])


def _best_threshold(d: np.ndarray, same: np.ndarray) -> float:
    """The distance threshold (accept ``d <= t``) with the highest accuracy on ``(d, same)``;
    candidates are midpoints between consecutive distinct distances and both ends; ties go to
    the smallest threshold."""
    u = np.unique(d)
    cands = np.concatenate([[u[0] - 1.0], (u[:-1] + u[1:]) / 2, [u[-1] + 1.0]]) if len(u) else [0.0]
    acc = [np.mean((d <= t) == same) for t in cands]
    return float(cands[int(np.argmax(acc))])


def verification_metrics(distances: np.ndarray, same: np.ndarray, *, folds: int = 10,
                         far: float = 1e-3, seed: int = 0) -> dict:
    """Verification scores of pair ``distances`` (P,) (smaller = more alike) against ``same``
    (P,) bool, the LFW protocol:

    * ``verification_accuracy`` (and ``_std``): ``folds``-fold, the threshold chosen on the other
      folds only (``_best_threshold``), accuracy on the held-out fold, mean over folds (pairs
      shuffled with ``seed`` first); ``verification_threshold``: the mean chosen threshold;
    * ``verification_auc``: area under the ROC curve, P(d_negative > d_positive) with ties half;
    * ``tar_at_far_<far>``: the true accept rate at the largest threshold whose false accept rate
      on all negative pairs is <= ``far`` (strictly below the next negative distance);
    * ``roc_fpr``, ``roc_tpr``: the ROC curve (at most 201 points) for plots.
    """
    if int(folds) < 2:
        raise ValueError(f"verification_metrics: folds={folds} must be >= 2 (the threshold is "
                         "chosen on the other folds).")
    d = np.asarray(distances, np.float64).reshape(-1)
    same = np.asarray(same, bool).reshape(-1)
    npos, nneg = int(same.sum()), int((~same).sum())
    key = f"tar_at_far_{far:g}"
    out = {"verification_accuracy": float("nan"), "verification_accuracy_std": float("nan"),
           "verification_threshold": float("nan"), "verification_auc": float("nan"),
           key: float("nan"), "verification_pairs": float(len(d)),
           "roc_fpr": np.zeros(0), "roc_tpr": np.zeros(0)}
    if npos == 0 or nneg == 0:
        return out
    order = np.random.default_rng(seed).permutation(len(d))
    parts = np.array_split(order, min(int(folds), len(d)))
    accs, thresholds = [], []
    for f, test in enumerate(parts):
        train = np.concatenate([p for g, p in enumerate(parts) if g != f])
        t = _best_threshold(d[train], same[train])
        thresholds.append(t)
        accs.append(float(np.mean((d[test] <= t) == same[test])))
    pos, neg = np.sort(d[same]), np.sort(d[~same])
    # Mann-Whitney: count negatives above each positive, ties half.
    above = nneg - np.searchsorted(neg, pos, side="right")
    ties = np.searchsorted(neg, pos, side="right") - np.searchsorted(neg, pos, side="left")
    allowed = int(np.floor(far * nneg + 1e-9))   # false accepts tolerated
    cut = neg[allowed] if allowed < nneg else np.inf
    thresholds_roc = np.unique(np.concatenate([pos, neg]))
    tpr = np.searchsorted(pos, thresholds_roc, side="right") / npos
    fpr = np.searchsorted(neg, thresholds_roc, side="right") / nneg
    keep = np.unique(np.linspace(0, len(thresholds_roc) - 1, 201).round().astype(int))
    out.update({
        "verification_accuracy": float(np.mean(accs)),
        "verification_accuracy_std": float(np.std(accs)),
        "verification_threshold": float(np.mean(thresholds)),
        "verification_auc": float((above.sum() + 0.5 * ties.sum()) / (npos * nneg)),
        key: float(np.mean(pos < cut)),
        "roc_fpr": np.concatenate([[0.0], fpr[keep]]),
        "roc_tpr": np.concatenate([[0.0], tpr[keep]]),
    })
    return out
