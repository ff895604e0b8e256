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
                     weights: jax.Array, dtype: jnp.dtype = jnp.float32) -> jax.Array:
    """(C, C) counts in ``dtype``; row = true class, column = predicted class; weight-0 rows
    ignored. Integer ``dtype`` (int32) keeps pixel counts exact past float32's 2^24."""
    idx = labels * num_classes + predictions
    counts = jnp.zeros((num_classes * num_classes,), dtype).at[idx].add(weights.astype(dtype))
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


def pixel_confusion_matrix(pred: jax.Array, mask: jax.Array, num_classes: int, valid: jax.Array
                           ) -> jax.Array:
    """(C, C) int32 pixel counts (row = true class, column = predicted) of class maps ``pred``
    (N, H, W) against ``mask`` (N, H, W); jittable (``num_classes`` static). Pixels whose mask is
    outside [0, C) (``IGNORE_LABEL``) and every pixel of an example with ``valid`` (N,) False
    (eval padding) are not counted."""
    valid = jnp.asarray(valid, bool).reshape((-1,) + (1,) * (mask.ndim - 1))
    keep = (mask >= 0) & (mask < num_classes) & valid
    labels = jnp.where(keep, mask, 0).astype(jnp.int32).reshape(-1)
    return confusion_matrix(pred.astype(jnp.int32).reshape(-1), labels, num_classes,
                            keep.reshape(-1), dtype=jnp.int32)


def segmentation_scores(cm: np.ndarray) -> dict[str, float | np.ndarray]:
    """Semantic-segmentation scores of one (C, C) pixel confusion matrix accumulated over the
    whole eval set (rows = ground truth, columns = prediction; ignore pixels never in it).

    ``iou`` (C,): TP / (TP + FP + FN), nan for a class absent from both ground truth and
    prediction. ``mIoU``: mean IoU over the classes present in ground truth or prediction (an
    absent class is left out, neither 0 nor 1). ``pixel_accuracy``: trace / total.
    ``class_accuracy`` (C,): TP / (TP + FN), nan for a class without ground-truth pixels.
    ``mean_accuracy``: its mean over the classes present in the ground truth. ``fw_iou``:
    sum over classes of (ground-truth pixels / total) * IoU. Every scalar is nan for an empty
    matrix (no scored pixel)."""
    cm = np.asarray(cm, np.float64)
    tp, gt, pred = np.diag(cm), cm.sum(1), cm.sum(0)
    union = gt + pred - tp
    total = cm.sum()
    nan = np.full_like(tp, np.nan)
    iou = np.divide(tp, union, out=nan.copy(), where=union > 0)
    acc = np.divide(tp, gt, out=nan.copy(), where=gt > 0)
    present, labelled = union > 0, gt > 0
    return {"iou": iou,
            "mIoU": float(iou[present].mean()) if present.any() else float("nan"),
            "pixel_accuracy": float(tp.sum() / total) if total else float("nan"),
            "class_accuracy": acc,
            "mean_accuracy": float(acc[labelled].mean()) if labelled.any() else float("nan"),
            "fw_iou": float(np.sum(gt[labelled] * iou[labelled]) / total) if total else float("nan")}


BAD_THRESHOLDS = (0.5, 1.0, 2.0, 3.0)  # bad-k: error above k pixels


def stereo_counts(pred: jax.Array, gt: jax.Array, valid: jax.Array) -> dict[str, jax.Array]:
    """Per-image sums for the stereo scores (``stereo_scores``), (N,) float32 each: ``pixels``
    (valid ground truth), ``abs_error`` (sum of |pred - gt|), ``bad<k>`` (pixels with error >
    k for k in ``BAD_THRESHOLDS``, named ``bad0.5``, ``bad1``, ...) and ``d1`` (KITTI's outlier:
    error > 3 px and > 5% of the true disparity). ``pred``, ``gt`` (N, H, W) pixels, ``valid``
    (N, H, W) bool: the pixels to score."""
    v = valid.astype(jnp.float32)
    err = jnp.abs(pred.astype(jnp.float32) - gt.astype(jnp.float32))
    err = jnp.where(valid, err, 0.0)
    out = {"pixels": jnp.sum(v, (1, 2)), "abs_error": jnp.sum(err, (1, 2))}
    for k in BAD_THRESHOLDS:
        out[f"bad{k:g}"] = jnp.sum(v * (err > k), (1, 2))
    out["d1"] = jnp.sum(v * ((err > 3.0) & (err > 0.05 * jnp.abs(gt))), (1, 2))
    return out


def stereo_scores(counts: Mapping[str, np.ndarray], per_image: bool = False) -> dict[str, float]:
    """``EPE`` (px), ``bad0.5`` / ``bad1`` / ``bad2`` / ``bad3`` and ``D1`` (percent of pixels)
    from ``stereo_counts`` of a whole split (each (N,)). Pooled over all valid pixels of all
    images (the KITTI devkit's and Middlebury's rule), or with ``per_image`` the mean over
    images of each image's score (images without a valid pixel left out). nan without any."""
    pixels = np.asarray(counts["pixels"], np.float64)
    keys = [("EPE", "abs_error", 1.0)] + [(f"bad{k:g}", f"bad{k:g}", 100.0) for k in BAD_THRESHOLDS]
    keys.append(("D1", "d1", 100.0))
    out = {}
    for name, key, scale in keys:
        total = np.asarray(counts[key], np.float64)
        if per_image:
            has = pixels > 0
            out[name] = float(np.mean(total[has] / pixels[has]) * scale) if has.any() else float("nan")
        else:
            out[name] = float(total.sum() / pixels.sum() * scale) if pixels.sum() > 0 else float("nan")
    return out


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
