"""k-nearest-neighbour classification, batched over queries in JAX.

Works on raw pixels (any (N, ...) array is flattened to (N, D)) or on any feature vectors.
Neighbours are ordered by (distance, training index): among equidistant training points the one
that comes first in ``train_x`` is nearer. Memory per query batch is O(batch_size * N) for the
distance matrix (plus a bounded feature chunk for L1), so lower ``batch_size`` for huge N.
L2 uses ``|q|^2 - 2 q.t + |t|^2`` in float32 (one matmul): exact for small integer pixels, but
two real-valued points closer than float32 rounding of the norms may swap order.
"""

from __future__ import annotations

import functools
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Metric = Literal["l2", "l1"]
TieBreak = Literal["smallest", "nearest"]

# Upper bound on the (queries x train x feature-chunk) block materialised for L1 distances.
_L1_BLOCK_ELEMENTS = 1 << 24


def _as_matrix(x, name: str) -> Array:
    x = jnp.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"knn: {name} must be (N, D) or (N, ...) to flatten, got shape {tuple(x.shape)}")
    # Cast before any subtraction: uint8 pixels would wrap around.
    return x.reshape(x.shape[0], -1).astype(jnp.float32)


def _distances(q: Array, t: Array, metric: str) -> Array:
    """(B, D), (N, D) -> (B, N): squared L2 or L1 distances."""
    if metric == "l2":
        cross = jnp.matmul(q, t.T, precision=jax.lax.Precision.HIGHEST)
        sq = jnp.sum(q * q, axis=1)[:, None] + jnp.sum(t * t, axis=1)[None, :] - 2.0 * cross
        return jnp.maximum(sq, 0.0)
    b, d = q.shape
    n = t.shape[0]
    chunk = int(max(1, min(d, _L1_BLOCK_ELEMENTS // max(1, b * n))))
    n_chunks = -(-d // chunk)
    pad = n_chunks * chunk - d
    # Zero padding of both sides adds |0 - 0| = 0 to every distance.
    qc = jnp.pad(q, [(0, 0), (0, pad)]).reshape(b, n_chunks, chunk).transpose(1, 0, 2)
    tc = jnp.pad(t, [(0, 0), (0, pad)]).reshape(n, n_chunks, chunk).transpose(1, 0, 2)

    def step(acc, pair):
        qi, ti = pair
        return acc + jnp.sum(jnp.abs(qi[:, None, :] - ti[None, :, :]), axis=-1), None

    out, _ = jax.lax.scan(step, jnp.zeros((b, n), jnp.float32), (qc, tc))
    return out


@functools.partial(jax.jit, static_argnames=("k", "metric"))
def _neighbors_chunk(train_x: Array, query_x: Array, *, k: int, metric: str) -> tuple[Array, Array]:
    dist = _distances(query_x, train_x, metric)
    # top_k keeps the lower index first among equal values: ties go to the earlier train point.
    neg, idx = jax.lax.top_k(-dist, k)
    return -neg, idx.astype(jnp.int32)


def _vote(neighbor_labels: Array, num_classes: int, tie_break: str) -> Array:
    """(B, k) labels, nearest first -> (B,) int32 winning class."""
    b = neighbor_labels.shape[0]
    rows = jnp.broadcast_to(jnp.arange(b)[:, None], neighbor_labels.shape)
    counts = jnp.zeros((b, num_classes), jnp.int32).at[rows, neighbor_labels].add(1)
    if tie_break == "smallest":
        return jnp.argmax(counts, axis=1).astype(jnp.int32)  # argmax picks the first maximum
    is_top = counts == counts.max(axis=1, keepdims=True)
    top_here = jnp.take_along_axis(is_top, neighbor_labels, axis=1)  # (B, k)
    first = jnp.argmax(top_here, axis=1)
    return jnp.take_along_axis(neighbor_labels, first[:, None], axis=1)[:, 0].astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("k", "metric", "num_classes", "tie_break"))
def _predict_chunk(
    train_x: Array, train_y: Array, query_x: Array, *, k: int, metric: str, num_classes: int, tie_break: str
) -> Array:
    _, idx = _neighbors_chunk(train_x, query_x, k=k, metric=metric)
    return _vote(train_y[idx], num_classes, tie_break)


def _chunks(q: Array, batch_size: int):
    """Yields (chunk (bs, D), n_valid); the last chunk is zero-padded so one shape compiles."""
    bs = min(batch_size, q.shape[0])
    for start in range(0, q.shape[0], bs):
        chunk = q[start : start + bs]
        valid = chunk.shape[0]
        if valid < bs:
            chunk = jnp.pad(chunk, [(0, bs - valid), (0, 0)])
        yield chunk, valid


def _check(train_x, query_x, k: int, metric: str, batch_size: int) -> tuple[Array, Array]:
    """Validates the arguments; returns (train (N, D), queries (M, D)) as float32."""
    if metric not in ("l2", "l1"):
        raise ValueError(f"knn: metric must be 'l2' or 'l1', got {metric!r}")
    t = _as_matrix(train_x, "train_x")
    q = _as_matrix(query_x, "query_x")
    if q.shape[1] != t.shape[1]:
        raise ValueError(
            f"knn: query_x has {q.shape[1]} features per example but train_x has {t.shape[1]}; "
            "both must flatten to the same D"
        )
    if not 1 <= k <= t.shape[0]:
        raise ValueError(f"knn: k must be in [1, {t.shape[0]}] (the number of training points), got {k}")
    if batch_size < 1:
        raise ValueError(f"knn: batch_size must be >= 1, got {batch_size}")
    return t, q


def knn_neighbors(
    train_x, query_x, k: int, *, metric: Metric = "l2", batch_size: int = 256
) -> tuple[Array, Array]:
    """Returns ``(distances (M, k) float32, indices (M, k) int32)`` of each query's k nearest
    training points, nearest first (ties: lower training index first).

    ``distances`` are squared Euclidean for ``metric='l2'`` and sums of absolute differences for
    ``'l1'``. Queries are processed ``batch_size`` at a time (the last batch is zero-padded so
    only one shape is compiled).
    """
    t, q = _check(train_x, query_x, k, metric, batch_size)
    if q.shape[0] == 0:
        return jnp.zeros((0, k), jnp.float32), jnp.zeros((0, k), jnp.int32)
    dists, idxs = [], []
    for chunk, valid in _chunks(q, batch_size):
        d, i = _neighbors_chunk(t, chunk, k=k, metric=metric)
        dists.append(d[:valid])
        idxs.append(i[:valid])
    return jnp.concatenate(dists), jnp.concatenate(idxs)


def knn_predict(
    train_x,
    train_y,
    query_x,
    k: int,
    metric: Metric = "l2",
    num_classes: int | None = None,
    batch_size: int = 256,
    *,
    tie_break: TieBreak = "smallest",
) -> Array:
    """Returns the (M,) int32 majority-vote class of each query's k nearest training points.

    ``train_x`` (N, D) or (N, ...) (flattened), ``train_y`` (N,) ints in [0, num_classes),
    ``query_x`` (M, D) or (M, ...). ``num_classes`` defaults to ``max(train_y) + 1``. A vote tie
    goes to the smallest class id (``tie_break='smallest'``) or to the tied class whose member
    is nearest to the query (``'nearest'``). With k=1 both rules give the nearest point's class.
    """
    if tie_break not in ("smallest", "nearest"):
        raise ValueError(f"knn: tie_break must be 'smallest' or 'nearest', got {tie_break!r}")
    labels = np.asarray(train_y)
    if labels.ndim != 1 or labels.shape[0] != np.shape(train_x)[0]:
        raise ValueError(
            f"knn: train_y must be (N,) with N = len(train_x) = {np.shape(train_x)[0]}, got shape {labels.shape}"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"knn: train_y must hold integer class ids, got dtype {labels.dtype}")
    if num_classes is None:
        num_classes = int(labels.max()) + 1 if labels.size else 1
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"knn: train_y values must be in [0, {num_classes}), got range [{labels.min()}, {labels.max()}]; "
            "pass the right num_classes"
        )
    t, q = _check(train_x, query_x, k, metric, batch_size)
    if q.shape[0] == 0:
        return jnp.zeros((0,), jnp.int32)
    y = jnp.asarray(labels, jnp.int32)
    preds = [
        _predict_chunk(t, y, chunk, k=k, metric=metric, num_classes=num_classes, tie_break=tie_break)[:valid]
        for chunk, valid in _chunks(q, batch_size)
    ]
    return jnp.concatenate(preds)
