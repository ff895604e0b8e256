"""The trivial detection baseline: random boxes shaped like the training set's objects.

``random_boxes(config)`` reads the ground truth of ``data.train_split`` and of
``data.eval_split`` through the run's pipeline (``data.eval_pp``, so at the resolution the
detectors are scored at), then gives every eval image ``detections`` boxes whose (height,
width) and class are drawn from the training objects (jointly: one training object per box),
placed uniformly inside the image, scored uniformly at random, and scores them with the same
COCO and VOC code the evaluators use. A detector must beat this by a margin to have learned
anything about where objects are.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxvision.data.pipeline import make_loader
from jaxvision.mean_ap import coco_metrics, voc_ap


def _ground_truth(config: Any, split: str, limit: int) -> dict[str, np.ndarray]:
    """Valid boxes of the first ``limit`` examples of ``split`` after ``data.eval_pp``, with the
    image size of each: rows of ``image``, ``class``, ``boxes``, ``crowd``, ``area``,
    ``difficult`` plus ``sizes`` (images, 2)."""
    loader = make_loader(config.data, split, global_batch=int(config.train.eval_batch_size),
                         mode="eval", seed=0)
    rows: dict[str, list] = {k: [] for k in ("image", "class", "boxes", "crowd", "area", "difficult")}
    sizes, seen = [], 0
    for batch in loader:
        for i in np.flatnonzero(batch["valid"]):
            if seen >= limit:
                break
            v = batch["box_valid"][i]
            n = int(v.sum())
            rows["image"].append(np.full(n, int(batch["index"][i])))
            rows["class"].append(batch["box_classes"][i][v])
            rows["boxes"].append(batch["boxes"][i][v])
            b = batch["boxes"][i][v]
            rows["area"].append(batch["box_area"][i][v] if "box_area" in batch else
                                (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))
            rows["crowd"].append(batch["box_crowd"][i][v] if "box_crowd" in batch else np.zeros(n, bool))
            rows["difficult"].append(batch["box_difficult"][i][v] if "box_difficult" in batch
                                     else np.zeros(n, bool))
            sizes.append((int(batch["index"][i]),) + tuple(batch["image"].shape[1:3]))
            seen += 1
        if seen >= limit:
            break
    out = {k: np.concatenate(v) if v else np.zeros((0, 4) if k == "boxes" else 0) for k, v in rows.items()}
    out["sizes"] = np.asarray(sizes).reshape(-1, 3)
    return out


def random_boxes(config: Any, *, detections: int = 10, seed: int = 0, max_train: int = 2000,
                 max_eval: int = 100_000) -> dict[str, Any]:
    """COCO metrics (``AP``, ``AP50``, ...) and ``voc_mAP`` of the random-box baseline on
    ``data.eval_split`` (see the module docstring); ``num_classes`` from the data."""
    train = _ground_truth(config, str(config.data.train_split), max_train)
    gt = _ground_truth(config, str(config.data.eval_split), max_eval)
    if not len(train["boxes"]):
        raise ValueError(f"{config.data.train_split}: no training boxes to draw sizes from.")
    rng = np.random.default_rng(seed)
    hw = train["boxes"][:, 2:] - train["boxes"][:, :2]
    rows: dict[str, list] = {k: [] for k in ("image", "class", "boxes", "score")}
    for image, h, w in gt["sizes"]:
        pick = rng.integers(0, len(hw), detections)
        bh, bw = np.minimum(hw[pick, 0], h), np.minimum(hw[pick, 1], w)
        y0, x0 = rng.uniform(0, h - bh), rng.uniform(0, w - bw)
        rows["image"].append(np.full(detections, image))
        rows["class"].append(train["class"][pick])
        rows["boxes"].append(np.stack([y0, x0, y0 + bh, x0 + bw], -1))
        rows["score"].append(rng.random(detections))
    dt = {k: np.concatenate(v) for k, v in rows.items()}
    classes = int(max(gt["class"].max(initial=-1), train["class"].max(initial=-1)) + 1)
    classes = max(classes, int(config.data.get("num_classes", 0) or 0))
    out = coco_metrics(gt, dt, classes)
    out["voc_mAP"] = voc_ap(gt, dt, classes)["mAP"]
    out["eval_images"] = len(gt["sizes"])
    return out
