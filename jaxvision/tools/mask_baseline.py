"""The trivial segmentation baselines: one class for every pixel, scored like a model.

``constant_class(config, cls)`` predicts class ``cls`` everywhere on ``data.eval_split`` (the
labels the ``segmentation`` evaluator reads: ``evals.segmentation.mask``, e.g. ``mask_full`` at
the files' resolution, else ``mask`` after ``data.eval_pp``) and returns the ``segmentation``
evaluator's scores (``mIoU``, ``pixel_accuracy``, ``mean_accuracy``, ``fw_iou``, ``iou``) from
one confusion matrix over the split. ``constant_baselines(config)`` does it for every class
(on the pets: all-background and all-pet).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxvision.data.pipeline import make_loader
from jaxvision.metrics import segmentation_scores


def _confusions(config: Any, num_classes: int) -> np.ndarray:
    """(C, C) confusion of each constant prediction: row = true class; returned as the true
    class counts (C,), since a constant prediction's matrix has one non-zero column."""
    counts = np.zeros(num_classes, np.int64)
    evals = config.get("evals") or {}
    key = str(evals["segmentation"].get("mask", "mask")) if "segmentation" in evals else "mask"
    loader = make_loader(config.data, str(config.data.eval_split),
                         global_batch=int(config.train.eval_batch_size), mode="eval", seed=0)
    for batch in loader:
        mask = batch[key][batch["valid"]]
        known = mask[(mask >= 0) & (mask < num_classes)]
        counts += np.bincount(known.reshape(-1), minlength=num_classes)[:num_classes]
    return counts


def constant_baselines(config: Any, num_classes: int | None = None) -> dict[int, dict]:
    """``{class: scores}`` of predicting that class for every pixel of the eval split."""
    c = int(num_classes or config.data.get("num_classes", 0) or 0)
    if c < 1:
        raise ValueError("constant_baselines: give num_classes (or declare data.num_classes).")
    truth = _confusions(config, c)
    out = {}
    for k in range(c):
        cm = np.zeros((c, c), np.int64)
        cm[:, k] = truth
        out[k] = segmentation_scores(cm)
    return out
