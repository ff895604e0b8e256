"""Metrics as exact sums.

On device, a metric is a pair ``(total, count)`` summed over the valid examples of a batch (a
padded eval example has weight 0). On the host, ``Accumulator`` adds the pairs of every batch in
float64 and reports ``total / count``: the exact mean over all examples, never a mean of batch
means. Array metrics (a confusion matrix) are summed the same way and reported as arrays.
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

Metrics = dict[str, tuple[jax.Array, jax.Array]]


def mean(values: jax.Array, weights: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The pair ``(sum(values * w), sum(w))`` of a per-example quantity."""
    w = weights.astype(jnp.float32)
    return jnp.sum(values.astype(jnp.float32) * w), jnp.sum(w)


def topk_correct(logits: jax.Array, labels: jax.Array, k: int = 1) -> jax.Array:
    """(N,) float32: 1 where ``labels`` is among the ``k`` largest logits (ties count for the label)."""
    k = min(k, logits.shape[-1])
    label_logit = jnp.take_along_axis(logits, labels[:, None], axis=-1)
    # Rank = number of classes strictly better than the label's; correct if rank < k.
    rank = jnp.sum(logits > label_logit, axis=-1)
    return (rank < k).astype(jnp.float32)


def confusion_matrix(predictions: jax.Array, labels: jax.Array, num_classes: int,
                     weights: jax.Array) -> jax.Array:
    """(C, C) float32 counts; row = true class, column = predicted class; weight-0 rows ignored."""
    idx = labels * num_classes + predictions
    counts = jnp.zeros((num_classes * num_classes,), jnp.float32).at[idx].add(weights.astype(jnp.float32))
    return counts.reshape(num_classes, num_classes)


def precision_recall_f1(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class precision, recall and F1 (C,) from a confusion matrix; 0 where undefined."""
    cm = np.asarray(cm, np.float64)
    tp = np.diag(cm)
    predicted, actual = cm.sum(0), cm.sum(1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": actual}


class Accumulator:
    """Adds ``(total, count)`` pairs over batches in float64; ``result()`` gives the means."""

    def __init__(self):
        self._totals: dict[str, np.ndarray] = {}
        self._counts: dict[str, np.ndarray] = {}

    def add(self, metrics: Mapping[str, tuple]) -> None:
        for name, (total, count) in jax.device_get(dict(metrics)).items():
            total, count = np.asarray(total, np.float64), np.asarray(count, np.float64)
            if name in self._totals:
                self._totals[name] = self._totals[name] + total
                self._counts[name] = self._counts[name] + count
            else:
                self._totals[name], self._counts[name] = total, count

    def result(self) -> dict[str, float | np.ndarray]:
        """Scalar metrics as floats (total / count); array metrics as their summed totals."""
        out: dict[str, float | np.ndarray] = {}
        for name, total in self._totals.items():
            if total.ndim:
                out[name] = total
            else:
                count = float(self._counts[name])
                out[name] = float(total) / count if count else float("nan")
        return out

    def count(self, name: str) -> float:
        return float(self._counts.get(name, 0.0))
