"""Evaluators: metrics over a whole split, computed on the host from what the device predicts.

An evaluator has two halves (the big_vision pattern):

* on the device, ``device_fn(exp, model, config, static)`` gives a traced
  ``fn(variables, batch, setup_data) -> outputs`` that the core compiles over the device mesh;
* on the host, ``reset()``, ``update(outputs)`` for every batch, then ``compute() -> dict``.

Two kinds, by how the core brings ``outputs`` back (``Evaluator.kind``):

* ``'sums'``: ``outputs`` are ``(total, count)`` pairs already reduced over the batch (``psum``-ed
  under pmap, replicated under jit). O(1) memory. ``MeanMetrics`` is the one built in: it runs the
  experiment's ``evaluate`` and reports exact means (float64 sums over every example), the
  default evaluator of every experiment.
* ``'gather'``: ``outputs`` are per-example arrays with a leading batch axis, sharded along the
  mesh's data axis and never reduced. The core gathers them to every process
  (``Strategy.gather``: across processes too), drops the padded examples (``valid`` False) and
  passes numpy arrays of the valid examples to ``update``. Built in: ``Confusion`` (streaming,
  O(C^2)), ``Retrieval`` and ``Verification`` (keep every embedding: 4 * (D + 1) bytes per
  example; the math is in ``jaxvision/retrieval.py``).

How the evaluators of the task issues plug in (each a ``GatherEvaluator`` subclass naming the
``predict`` outputs and batch keys it reads):

* COCO/VOC mAP (``coco``, ``voc``, built in): ``predict`` returns fixed-size detections per
  image (``det_boxes`` (N, K, 4), ``det_scores``, ``det_classes``, ``det_valid``); the evaluator
  reads those plus the batch's ``boxes``, ``box_classes``, ``box_valid`` (and ``box_crowd``,
  ``box_area``, ``box_difficult`` where present), keeps the valid rows (about 24 bytes per
  detection), then matches and integrates precision/recall per class in ``compute``
  (``jaxvision/mean_ap.py``).
* mIoU (``segmentation``, built in): ``predict`` returns per-pixel logits (N, h, w, C); on the
  device the evaluator resizes them bilinearly to the batch ``mask``'s (H, W) when they differ
  (scoring is at the label's resolution), takes the argmax and counts each example's (C, C) pixel
  confusion matrix (ignore pixels left out), so only C^2 int32 per example leave the device; the
  host adds them into one matrix over the whole split and computes mIoU, pixel / mean accuracy
  and frequency-weighted IoU from it (``metrics.segmentation_scores``; streaming, O(C^2)).
* EPE / bad-k / D1 (``stereo``, built in): ``predict`` returns the disparity ``pred_disparity``
  (N, h, w) in input pixels; the evaluator resizes it to the batch ``disparity``'s (H, W) with
  its values scaled, and sends per-example sums of errors and counts over the valid (and the
  non-occluded) pixels; the host pools them (``metrics.stereo_scores``).

Metric names are bare keys (``accuracy``, ``recall_at_1``, ``AP50``, ``mIoU``, ``EPE``); when two
evaluators of a run produce the same key, the later one (evaluators run in the order of their
names) is written ``<evaluator name>/<key>`` (``metric_names``).

Configs (``config.evals``): name -> ``eval_config(type, ...)``: ``type`` in ``EVALUATORS``,
``split`` ('' = ``data.eval_split``), ``batch_size`` (0 = ``train.eval_batch_size``), ``every``
(steps; -1 = ``train.eval_every``, 0 = only at the end of training) and the type's own keys.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxvision.config import ConfigError
from jaxvision.data.example import IGNORE_LABEL
from jaxvision.metrics import (Accumulator, pixel_confusion_matrix, precision_recall_f1,
                               segmentation_scores, stereo_counts, stereo_scores)
from jaxvision.retrieval import (knn_accuracy, kmeans_nmi, retrieval_metrics, verification_metrics,
                                 verification_pairs)


class Evaluator:
    """Base class: a name, where it reads (split, batch size), how often, and the two halves."""

    kind = "gather"
    options: dict = {}   # the type's own config keys and their defaults

    def __init__(self, name: str, *, split: str, batch_size: int, every: int, **options: Any):
        self.name, self.split, self.batch_size, self.every = name, split, int(batch_size), int(every)
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise ConfigError(f"evals.{name}: unknown key(s) {', '.join(unknown)} for type "
                              f"{type(self).type_name()!r}; it takes: split, batch_size, every"
                              + "".join(f", {k}" for k in self.options) + ".")
        for key, default in self.options.items():
            setattr(self, key, options.get(key, default))

    @classmethod
    def type_name(cls) -> str:
        return next((k for k, v in EVALUATORS.items() if v is cls), cls.__name__)

    def device_fn(self, exp: Any, model: Any, config: Any, static: Mapping) -> Callable:
        """Traced ``fn(variables, batch, setup_data) -> outputs`` (see the module docstring)."""
        raise NotImplementedError

    def metric_names(self, output_shapes: Mapping[str, Any]) -> list[str]:
        """The keys ``compute`` returns (scalars and arrays), given ``jax.eval_shape`` of the
        device outputs; raises ``ConfigError`` when those outputs cannot serve this evaluator."""
        raise NotImplementedError

    def reset(self) -> None:
        raise NotImplementedError

    def update(self, outputs: Mapping[str, np.ndarray]) -> None:
        raise NotImplementedError

    def compute(self) -> dict:
        raise NotImplementedError


class MeanMetrics(Evaluator):
    """Exact means of the experiment's ``evaluate`` sums (and summed array metrics).

    ``evaluate(config, model, variables, batch)`` returns ``(total, count)`` pairs over the
    batch's valid examples; the totals and counts of every batch are added in float64, so a
    metric is the mean over all examples, never a mean of batch means."""

    kind = "sums"

    def device_fn(self, exp, model, config, static):
        def fn(variables, batch, setup_data):
            return exp.evaluate(config, model, variables, batch,
                                **exp.setup_kwargs(static, setup_data))
        return fn

    def metric_names(self, output_shapes):
        bad = [k for k, v in output_shapes.items() if not (isinstance(v, (tuple, list)) and len(v) == 2)]
        if bad:
            raise ConfigError(f"evals.{self.name}: the experiment's evaluate must return "
                              f"(total, count) pairs; {', '.join(bad)} are not.")
        return sorted(output_shapes)

    def reset(self):
        self._acc = Accumulator()

    def update(self, outputs):
        self._acc.add(outputs)

    def compute(self):
        return self._acc.result()


class GatherEvaluator(Evaluator):
    """Reads per-example outputs: ``predict_keys`` of the experiment's ``predict`` and
    ``batch_keys`` of the batch (the names of the options that hold those keys), plus the batch
    keys of ``optional_batch_keys`` that the batch has."""

    predict_keys: tuple[str, ...] = ()
    batch_keys: tuple[str, ...] = ()
    optional_batch_keys: tuple[str, ...] = ()

    def _keys(self) -> tuple[list[str], list[str]]:
        return ([getattr(self, k) for k in self.predict_keys],
                [getattr(self, k) for k in self.batch_keys])

    def transform(self, outputs: dict) -> dict:
        """On the device, per example: shrink what the host needs (e.g. logits -> argmax)."""
        return outputs

    def device_fn(self, exp, model, config, static):
        if exp.predict is None:
            raise ConfigError(f"evals.{self.name} ({self.type_name()}) reads the experiment's "
                              f"per-example predictions, but {exp.spec or 'the experiment'} "
                              "defines no predict(config, model, variables, batch) hook.")
        pkeys, bkeys = self._keys()

        def fn(variables, batch, setup_data):
            pred = exp.predict(config, model, variables, batch,
                               **exp.setup_kwargs(static, setup_data))
            missing = [k for k in pkeys if k not in pred]
            if missing:
                raise ConfigError(f"evals.{self.name} ({self.type_name()}) reads predict() "
                                  f"output(s) {missing}; predict returns {sorted(pred)}. Set "
                                  f"evals.{self.name}.{self.predict_keys[pkeys.index(missing[0])]}"
                                  " to one of them.")
            missing = [k for k in bkeys if k not in batch]
            if missing:
                raise ConfigError(f"evals.{self.name} ({self.type_name()}) reads batch key(s) "
                                  f"{missing}; the batch has {sorted(batch)} (data.keys).")
            keys = bkeys + [k for k in self.optional_batch_keys if k in batch]
            out = self.transform({**{k: pred[k] for k in pkeys}, **{k: batch[k] for k in keys}})
            return {**out, "valid": batch["valid"]}
        return fn


class Confusion(GatherEvaluator):
    """Confusion matrix, per-class precision / recall / F1 / support, macro F1, balanced accuracy.

    Reads ``predict()[logits]`` (N, C) (argmax taken on the device) and ``batch[label]`` (N,).
    Streaming: the state is the (C, C) int64 matrix, rows = true class, columns = predicted.
    Outputs: ``confusion_matrix`` (C, C), ``precision``, ``recall``, ``f1``, ``support`` (C,)
    and the scalars ``macro_f1`` (mean F1 over classes with support or predictions, as
    scikit-learn's ``f1_score(average='macro')`` over the labels present) and
    ``balanced_accuracy`` (mean recall over the classes present)."""

    options = {"logits": "logits", "label": "label"}
    predict_keys = ("logits",)
    batch_keys = ("label",)

    num_classes: int | None = None

    def transform(self, outputs):
        # The class count is static: recorded when the core traces this (at build, before any
        # update), so an absent class still gets its row and column.
        self.num_classes = int(outputs[self.logits].shape[-1])
        return {"prediction": jnp.argmax(outputs[self.logits], -1).astype(jnp.int32),
                "label": outputs[self.label].astype(jnp.int32)}

    def metric_names(self, output_shapes):
        return ["confusion_matrix", "precision", "recall", "f1", "support", "macro_f1",
                "balanced_accuracy"]

    def reset(self):
        self._cm = None

    def update(self, outputs):
        pred, label = np.asarray(outputs["prediction"]), np.asarray(outputs["label"])
        c = self.num_classes or int(max(pred.max(initial=0), label.max(initial=0)) + 1)
        if self._cm is None:
            self._cm = np.zeros((c, c), np.int64)
        if label.size and (label.min() < 0 or label.max() >= self._cm.shape[0]):
            raise ValueError(f"evals.{self.name}: labels must lie in [0, {self._cm.shape[0]}); "
                             f"got [{label.min()}, {label.max()}].")
        np.add.at(self._cm, (label, pred), 1)

    def compute(self):
        cm = self._cm if self._cm is not None else np.zeros((self.num_classes or 0,) * 2, np.int64)
        prf = precision_recall_f1(cm)
        present = (prf["support"] > 0) | (cm.sum(0) > 0)
        return {"confusion_matrix": cm, **prf,
                "macro_f1": float(prf["f1"][present].mean()) if present.any() else float("nan"),
                "balanced_accuracy": float(prf["recall"][prf["support"] > 0].mean())
                if (prf["support"] > 0).any() else float("nan")}


class Segmentation(GatherEvaluator):
    """Semantic segmentation from one pixel confusion matrix over the whole split
    (``metrics.segmentation_scores``): ``mIoU`` (mean over the classes in ground truth or
    prediction), ``pixel_accuracy``, ``mean_accuracy`` (over the classes in the ground truth),
    ``fw_iou``, and ``iou``, ``class_accuracy`` (C,) and ``confusion_matrix`` (C, C) (rows =
    ground truth, columns = prediction). A scalar is nan when no pixel was scored.

    Reads ``predict()[logits]`` (N, h, w, C) and ``batch[mask]`` (N, H, W) int class ids
    (``IGNORE_LABEL`` pixels are left out). On the device, logits of another size are resized
    bilinearly to (H, W) (``jax.image.resize``: half-pixel centres as torch's
    ``align_corners=False``, antialiased when shrinking), so scores are at the label's resolution;
    then argmax and, per example, the (C, C) int32 confusion matrix. Per example because the core
    gathers arrays with a leading batch axis, sharded over the devices, and drops the padded
    examples on the host: a per-batch matrix has no such axis, and a per-example one needs no
    padding logic of its own. It costs 4 * C^2 bytes per example (1.7 kB at C = 21, 90 kB at
    C = 150), far below the 8 * H * W bytes of sending class maps and masks. The host adds them
    into an int64 matrix. The class count is the logits' last axis, fixed at trace time. A mask id
    outside [0, C) other than ``IGNORE_LABEL`` (e.g. VOC's 255 not converted) is an error.

    Labels at the file's resolution: with ``mask='mask_full'`` and the ``full_res_mask``
    transform first in ``data.eval_pp``, each example's logits are resized to its own
    ``mask_size`` (H_i, W_i) in the top-left of the mask canvas (the rest is ``IGNORE_LABEL``),
    so images of different sizes are scored at their original resolution in one batch."""

    options = {"logits": "mask_logits", "mask": "mask"}
    predict_keys = ("logits",)
    batch_keys = ("mask",)
    optional_batch_keys = ("mask_size",)

    num_classes: int | None = None

    def transform(self, outputs):
        logits, mask = outputs[self.logits], outputs[self.mask]
        if logits.ndim != 4 or mask.ndim != 3 or logits.shape[0] != mask.shape[0]:
            raise ConfigError(f"evals.{self.name}: needs predict()[{self.logits!r}] (N, h, w, C) "
                              f"logits (evals.{self.name}.logits) and batch[{self.mask!r}] (N, H, "
                              f"W) class ids (evals.{self.name}.mask); got {logits.shape} and "
                              f"{mask.shape}.")
        # Static: recorded when the core traces this, so an absent class keeps its row/column.
        self.num_classes = c = int(logits.shape[-1])
        n, h, w = mask.shape
        logits = logits.astype(jnp.float32)
        if "mask_size" in outputs:
            logits = _resize_each(logits, outputs["mask_size"], (h, w))
        elif logits.shape[1:3] != (h, w):
            logits = jax.image.resize(logits, (n, h, w, c), "bilinear")
        pred = jnp.argmax(logits, -1).astype(jnp.int32)
        mask = mask.astype(jnp.int32)
        cm = jax.vmap(lambda p, m: pixel_confusion_matrix(p[None], m[None], c, jnp.ones(1, bool)))(
            pred, mask)
        bad = jnp.sum((mask != IGNORE_LABEL) & ((mask < 0) | (mask >= c)), (1, 2), dtype=jnp.int32)
        return {"confusion": cm, "bad_labels": bad}

    def metric_names(self, output_shapes):
        return ["mIoU", "pixel_accuracy", "mean_accuracy", "fw_iou", "iou", "class_accuracy",
                "confusion_matrix"]

    def reset(self):
        self._cm = None

    def update(self, outputs):
        cm, bad = np.asarray(outputs["confusion"]), np.asarray(outputs["bad_labels"])
        if bad.sum():
            raise ValueError(f"evals.{self.name}: {int(bad.sum())} pixel(s) of batch[{self.mask!r}] "
                             f"hold a class id outside [0, {cm.shape[-1]}) that is not "
                             f"IGNORE_LABEL ({IGNORE_LABEL}); convert other ignore values (VOC's "
                             "255) at the source, or give the model as many classes.")
        if self._cm is None:
            self._cm = np.zeros(cm.shape[-2:], np.int64)
        self._cm += cm.sum(0, dtype=np.int64)

    def compute(self):
        cm = self._cm if self._cm is not None else np.zeros((self.num_classes or 0,) * 2, np.int64)
        scores = segmentation_scores(cm)
        return {**{k: scores[k] for k in self.metric_names({}) if k != "confusion_matrix"},
                "confusion_matrix": cm}


def _resize_each(logits: jax.Array, sizes: jax.Array, canvas: tuple[int, int]) -> jax.Array:
    """(N, h, w, C) logits -> (N, *canvas, C): example i bilinearly resized to ``sizes[i]``
    (H_i, W_i) in the top-left corner (as ``jax.image.resize`` to that size would give; the
    rest of the canvas holds edge values that only ``IGNORE_LABEL`` pixels meet)."""
    h, w = logits.shape[1:3]

    def one(x, size):
        scale = size.astype(jnp.float32) / jnp.array([h, w], jnp.float32)
        return jax.image.scale_and_translate(x, canvas + x.shape[-1:], (0, 1), scale,
                                             jnp.zeros(2, jnp.float32), "linear")
    return jax.vmap(one)(logits, sizes)


class _Embeddings(GatherEvaluator):
    """Base of the evaluators that keep every embedding of the split with its label: 4 * (D + 1)
    bytes per example on the host."""

    predict_keys = ("embedding",)
    batch_keys = ("label",)

    def transform(self, outputs):
        e = outputs[self.embedding]
        return {"embedding": e.reshape(e.shape[0], -1).astype(jnp.float32),
                "label": outputs[self.label].astype(jnp.int32)}

    def _check_distance(self):
        if self.distance not in ("euclidean", "cosine"):
            raise ConfigError(f"evals.{self.name}.distance must be 'euclidean' or 'cosine', got "
                              f"{self.distance!r}.")

    def reset(self):
        self._emb, self._labels = [], []

    def update(self, outputs):
        self._emb.append(np.asarray(outputs["embedding"], np.float32))
        self._labels.append(np.asarray(outputs["label"]))

    def _gathered(self) -> tuple[np.ndarray, np.ndarray]:
        emb = np.concatenate(self._emb) if self._emb else np.zeros((0, 1), np.float32)
        labels = np.concatenate(self._labels) if self._labels else np.zeros((0,), np.int32)
        return emb, labels


class Retrieval(_Embeddings):
    """Every item of the split queried against all the others (``retrieval_metrics``): Recall@K
    (K in ``ks``), precision@1, R-precision, MAP@R; with ``knn`` > 0 the leave-one-out kNN
    classification accuracy (``knn_accuracy``); with ``nmi`` the NMI of a k-means clustering
    with one cluster per class (``kmeans_nmi``).

    Reads ``predict()[embedding]`` (N, D) and ``batch[label]`` (default ``identity``).
    ``compute`` works in chunks of 1,024 queries (1024 * N * 8 bytes at a time)."""

    options = {"embedding": "embedding", "label": "identity", "ks": (1, 2, 4, 8),
               "distance": "euclidean", "knn": 0, "nmi": False}

    def metric_names(self, output_shapes):
        self._check_distance()
        if not self.ks or any(int(k) < 1 for k in self.ks):
            raise ConfigError(f"evals.{self.name}.ks must be positive integers, got {self.ks!r}.")
        if int(self.knn) < 0:
            raise ConfigError(f"evals.{self.name}.knn must be >= 0 (0 = off), got {self.knn!r}.")
        return ([f"recall_at_{int(k)}" for k in self.ks]
                + ["precision_at_1", "r_precision", "map_at_r", "retrieval_queries"]
                + (["knn_accuracy"] if int(self.knn) else []) + (["nmi"] if self.nmi else []))

    def compute(self):
        emb, labels = self._gathered()
        out = retrieval_metrics(emb, labels, tuple(int(k) for k in self.ks), self.distance)
        if int(self.knn):
            out["knn_accuracy"] = knn_accuracy(emb, labels, int(self.knn), self.distance)
        if self.nmi:
            x = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12) \
                if self.distance == "cosine" else emb
            out["nmi"] = kmeans_nmi(x, labels)
        return out


class Verification(_Embeddings):
    """Face verification on pairs of the split (``verification_pairs``: ``pairs`` of them, half
    of one identity), scored by embedding distance (``verification_metrics``): ``folds``-fold
    accuracy with the threshold chosen on the other folds, ROC AUC, TAR at FAR = ``far``, and the
    ROC curve (``roc_fpr``, ``roc_tpr``) for plots. The pairs are the same at every evaluation
    (``seed``)."""

    options = {"embedding": "embedding", "label": "identity", "distance": "euclidean",
               "pairs": 6000, "folds": 10, "far": 1e-3, "seed": 0}

    def metric_names(self, output_shapes):
        self._check_distance()
        if int(self.pairs) < 2 or int(self.folds) < 2 or not 0 < float(self.far) < 1:
            raise ConfigError(f"evals.{self.name}: pairs >= 2, folds >= 2 and 0 < far < 1 are "
                              f"needed; got pairs={self.pairs}, folds={self.folds}, far={self.far}.")
        return ["verification_accuracy", "verification_accuracy_std", "verification_threshold",
                "verification_auc", f"tar_at_far_{float(self.far):g}", "verification_pairs",
                "roc_fpr", "roc_tpr"]

    def compute(self):
        emb, labels = self._gathered()
        i, j, same = verification_pairs(labels, int(self.pairs), seed=int(self.seed))
        x = np.asarray(emb, np.float64)
        if self.distance == "cosine":
            x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        d = np.linalg.norm(x[i] - x[j], axis=1)
        return verification_metrics(d, same, folds=int(self.folds), far=float(self.far),
                                    seed=int(self.seed))


class _Detections(GatherEvaluator):
    """Base of the detection evaluators: keeps every image's valid detections and ground truth
    (about 24 bytes per detection and per object on the host).

    Reads ``predict()``'s fixed-size detections ``det_boxes`` (N, K, 4), ``det_scores`` (N, K),
    ``det_classes`` (N, K) and ``det_valid`` (N, K), and the batch's padded ground truth
    ``boxes`` (N, M, 4), ``box_classes``, ``box_valid`` and, where the source has them,
    ``box_crowd``, ``box_area``, ``box_difficult`` (``jaxvision/data/example.py``). The image id
    is the batch's ``index``. Boxes are scored at the eval pipeline's resolution (so COCO's
    area ranges apply to the resized objects). The class count is the model's ``num_classes``
    (or the ``num_classes`` option)."""

    predict_keys = ("det_boxes", "det_scores", "det_classes", "det_valid")
    batch_keys = ("boxes", "box_classes", "box_valid", "index")
    optional_batch_keys = ("box_crowd", "box_area", "box_difficult")

    def _keys(self):
        pk, bk = list(self.predict_keys), list(self.batch_keys)  # fixed names, not options
        if getattr(self, "iou_type", "bbox") == "segm":
            pk, bk = pk + ["det_masks"], bk + ["instance_mask"]
        return pk, bk

    def transform(self, outputs):
        if "det_masks" in outputs:  # host memory: one bit per pixel is all the metric needs
            outputs = {**outputs, "det_masks": outputs["det_masks"] > 0.5}
        return outputs

    def device_fn(self, exp, model, config, static):
        self.classes = int(self.num_classes or getattr(model, "num_classes", 0) or 0)
        if self.classes < 1:
            raise ConfigError(f"evals.{self.name}: the model has no num_classes attribute; set "
                              f"evals.{self.name}.num_classes to the number of object classes.")
        return super().device_fn(exp, model, config, static)

    def metric_names(self, output_shapes):
        shape = output_shapes.get("det_boxes")
        if shape is None or len(shape.shape) != 3 or shape.shape[-1] != 4:
            raise ConfigError(f"evals.{self.name}: predict() must return det_boxes (N, K, 4); got "
                              f"{getattr(shape, 'shape', None)}.")
        return self._names()

    def reset(self):
        self._gt: dict[str, list] = {}
        self._dt: dict[str, list] = {}

    def update(self, outputs):
        o = {k: np.asarray(v) for k, v in outputs.items()}
        image = o["index"].astype(np.int64)
        dv, gv = o["det_valid"].astype(bool), o["box_valid"].astype(bool)
        rows = {"image": np.broadcast_to(image[:, None], dv.shape)[dv],
                "class": o["det_classes"][dv].astype(np.int64),
                "boxes": o["det_boxes"][dv].astype(np.float64),
                "score": o["det_scores"][dv].astype(np.float64)}
        for k, v in rows.items():
            self._dt.setdefault(k, []).append(v)
        rows = {"image": np.broadcast_to(image[:, None], gv.shape)[gv],
                "class": o["box_classes"][gv].astype(np.int64),
                "boxes": o["boxes"][gv].astype(np.float64)}
        for key, name in (("box_crowd", "crowd"), ("box_area", "area"), ("box_difficult", "difficult")):
            if key in o:
                rows[name] = o[key][gv]
        if "det_masks" in o:
            self._dt.setdefault("masks", []).append(o["det_masks"][dv].astype(bool))
            # Object k of an image is its instance_mask pixels equal to k + 1.
            ids = np.arange(1, gv.shape[1] + 1)[None, :, None, None]
            rows["masks"] = (o["instance_mask"][:, None] == ids)[gv]
        for k, v in rows.items():
            self._gt.setdefault(k, []).append(v)

    def _gathered(self) -> tuple[dict, dict]:
        gt = {k: np.concatenate(v) for k, v in self._gt.items()}
        dt = {k: np.concatenate(v) for k, v in self._dt.items()}
        if not gt:
            gt = {"image": np.zeros(0, np.int64), "class": np.zeros(0, np.int64),
                  "boxes": np.zeros((0, 4))}
        if not dt:
            dt = {"image": np.zeros(0, np.int64), "class": np.zeros(0, np.int64),
                  "boxes": np.zeros((0, 4)), "score": np.zeros(0)}
        return gt, dt


class CocoDetection(_Detections):
    """COCO box AP/AR (``jaxvision.mean_ap.coco_metrics``, equal to pycocotools): ``AP`` (IoU
    0.50:0.95), ``AP50``, ``AP75``, ``APs``, ``APm``, ``APl``, ``AR1``, ``AR10``, ``AR100``,
    ``ARs``, ``ARm``, ``ARl`` (-1 where COCO averages nothing, e.g. ``APl`` without a large
    object), ``AP_per_class`` (C,) and ``pr_curve50`` (C, 101), precision at IoU 0.5 over the
    recall points 0, 0.01, ..., 1 (for plots). ``max_dets``: detections per image and class.
    ``iou_type='segm'`` scores masks instead (instance segmentation): predict()'s ``det_masks``
    (N, K, H, W) (> 0.5 is the object) against the batch's ``instance_mask`` (object k of an
    image = its pixels equal to k + 1), mask IoU and mask areas, as COCO's ``segm``."""

    options = {"num_classes": 0, "max_dets": (1, 10, 100), "iou_type": "bbox"}

    def _names(self):
        if self.iou_type not in ("bbox", "segm"):
            raise ConfigError(f"evals.{self.name}.iou_type must be 'bbox' or 'segm' (masks: reads "
                              f"predict()'s det_masks (N, K, H, W) and the batch's instance_mask), "
                              f"got {self.iou_type!r}.")
        md = tuple(int(m) for m in self.max_dets)
        if len(md) < 1 or min(md) < 1:
            raise ConfigError(f"evals.{self.name}.max_dets must be positive ints, got {self.max_dets!r}.")
        return (["AP", "AP50", "AP75", "APs", "APm", "APl"] + [f"AR{m}" for m in md]
                + ["ARs", "ARm", "ARl", "AP_per_class", "pr_curve50"])

    def compute(self):
        from jaxvision.mean_ap import coco_metrics
        gt, dt = self._gathered()
        out = coco_metrics(gt, dt, self.classes, max_dets=tuple(int(m) for m in self.max_dets))
        return {k: out[k] for k in self._names()}


class VocDetection(_Detections):
    """PASCAL VOC AP (``jaxvision.mean_ap.voc_ap``): ``voc_mAP`` at IoU > ``iou_threshold``
    with difficult objects ignored, all-point (VOC2010+) or ``eleven_point`` (VOC2007), and
    ``voc_AP_per_class`` (C,) (nan for a class without a non-difficult object)."""

    options = {"num_classes": 0, "iou_threshold": 0.5, "eleven_point": False}

    def _names(self):
        return ["voc_mAP", "voc_AP_per_class"]

    def compute(self):
        from jaxvision.mean_ap import voc_ap
        gt, dt = self._gathered()
        out = voc_ap(gt, dt, self.classes, iou_threshold=float(self.iou_threshold),
                     eleven_point=bool(self.eleven_point))
        return {"voc_mAP": out["mAP"], "voc_AP_per_class": out["AP_per_class"]}


class Stereo(GatherEvaluator):
    """Disparity errors (``metrics.stereo_scores``, ``../shared/reference/conventions.md``):
    ``EPE`` (px), ``bad0.5``, ``bad1``, ``bad2``, ``bad3`` and KITTI's ``D1`` (percent), pooled
    over every valid ground-truth pixel of the split, or the mean of per-image scores with
    ``per_image``; plus ``EPE_per_image`` and ``bad2_per_image`` (N,) in eval order (e.g. one
    row per Middlebury pair). The same scores on the non-occluded pixels (``EPE_noc``, ...) when
    the batch has ``disparity_noc`` (KITTI: its valid pixels) or else the right view's ground
    truth ``disparity_right``: the pixels whose left-right check of the two ground-truth maps
    passes within ``occlusion_tolerance``
    (an image whose right map is all invalid, like Middlebury's tsukuba, counts whole).

    Reads ``predict()[prediction]`` (N, h, w) and ``batch[target]`` (N, H, W) (negative = no
    ground truth). A prediction of another size is resized bilinearly to (H, W) and its values
    scaled by W / w. A negative (invalid) prediction is scored as disparity 0, so a sparse
    method pays for its holes (the density is not reported separately)."""

    options = {"prediction": "pred_disparity", "target": "disparity", "per_image": False,
               "occlusion_tolerance": 1.0}
    predict_keys = ("prediction",)
    batch_keys = ("target",)
    optional_batch_keys = ("disparity_right", "disparity_noc")

    def transform(self, outputs):
        from jaxvision.ops.stereo import left_right_check
        pred, gt = outputs[self.prediction], outputs[self.target]
        if pred.ndim != 3 or gt.ndim != 3 or pred.shape[0] != gt.shape[0]:
            raise ConfigError(f"evals.{self.name}: needs predict()[{self.prediction!r}] (N, h, w) "
                              f"disparities (evals.{self.name}.prediction) and batch[{self.target!r}] "
                              f"(N, H, W) (evals.{self.name}.target); got {pred.shape} and {gt.shape}.")
        n, h, w = gt.shape
        pred = pred.astype(jnp.float32)
        if pred.shape[1:] != (h, w):
            pred = jax.image.resize(pred, (n, h, w), "bilinear") * (w / pred.shape[2])
        pred = jnp.maximum(pred, 0.0)
        valid = gt >= 0
        out = stereo_counts(pred, gt, valid)
        if "disparity_noc" in outputs and outputs["disparity_noc"].shape == gt.shape:
            noc = outputs["disparity_noc"] >= 0
            out.update({f"{k}_noc": v for k, v in stereo_counts(pred, gt, valid & noc).items()})
        elif "disparity_right" in outputs and outputs["disparity_right"].shape == gt.shape:
            right = outputs["disparity_right"].astype(jnp.float32)
            noc = left_right_check(gt.astype(jnp.float32), right, float(self.occlusion_tolerance)) >= 0
            # An image without the right view's ground truth (Middlebury's tsukuba: all invalid)
            # has no occlusion information: all its valid pixels count as non-occluded.
            noc = jnp.where(jnp.any(right >= 0, (1, 2))[:, None, None], noc, True)
            out.update({f"{k}_noc": v for k, v in stereo_counts(pred, gt, valid & noc).items()})
        return out

    def metric_names(self, output_shapes):
        names = ["EPE", "bad0.5", "bad1", "bad2", "bad3", "D1"]
        noc = [f"{k}_noc" for k in names] if "pixels_noc" in output_shapes else []
        return names + noc + ["EPE_per_image", "bad2_per_image"]

    def reset(self):
        self._counts: dict[str, list] = {}

    def update(self, outputs):
        for k, v in outputs.items():
            self._counts.setdefault(k, []).append(np.asarray(v, np.float64))

    def compute(self):
        counts = {k: np.concatenate(v) for k, v in self._counts.items()}
        if not counts:
            counts = {k: np.zeros(0) for k in ("pixels", "abs_error", "bad0.5", "bad1", "bad2",
                                               "bad3", "d1")}
        out = stereo_scores(counts, per_image=bool(self.per_image))
        if "pixels_noc" in counts:
            noc = {k[:-4]: v for k, v in counts.items() if k.endswith("_noc")}
            out.update({f"{k}_noc": v for k, v in stereo_scores(noc, bool(self.per_image)).items()})
        with np.errstate(invalid="ignore", divide="ignore"):
            out["EPE_per_image"] = counts["abs_error"] / counts["pixels"]
            out["bad2_per_image"] = 100 * counts["bad2"] / counts["pixels"]
        return out


EVALUATORS: dict[str, type[Evaluator]] = {
    "metrics": MeanMetrics,
    "confusion": Confusion,
    "segmentation": Segmentation,
    "retrieval": Retrieval,
    "verification": Verification,
    "coco": CocoDetection,
    "voc": VocDetection,
    "stereo": Stereo,
}

DEFAULT_NAME = "eval"


def eval_config(type: str = "metrics", *, split: str = "", batch_size: int = 0, every: int = -1,
                **options: Any) -> ml_collections.ConfigDict:
    """One entry of ``config.evals`` (see the module docstring for the keys)."""
    if type not in EVALUATORS:
        raise ConfigError(f"unknown evaluator type {type!r}; types: {', '.join(EVALUATORS)}.")
    cls = EVALUATORS[type]
    fields = dict(cls.options)
    fields.update(options)
    return ml_collections.ConfigDict(dict(type=type, split=split, batch_size=batch_size,
                                          every=every, **fields))


def build_evaluators(config: Any) -> list[Evaluator]:
    """The evaluators ``config.evals`` names (in name order), defaults filled in from
    ``config.data`` and ``config.train``; the single default ``metrics`` evaluator when empty."""
    evals = config.get("evals") or {}
    entries = [(name, dict(cfg)) for name, cfg in evals.items()] or [(DEFAULT_NAME, {})]
    out = []
    for name, cfg in entries:
        kind = str(cfg.pop("type", "metrics"))
        if kind not in EVALUATORS:
            raise ConfigError(f"evals.{name}.type={kind!r} is not an evaluator; types: "
                              f"{', '.join(EVALUATORS)}.")
        split = str(cfg.pop("split", "") or config.data.eval_split)
        batch = int(cfg.pop("batch_size", 0) or config.train.eval_batch_size)
        every = int(cfg.pop("every", -1))
        if every < 0:
            every = int(config.train.eval_every)
        if "/" in name:
            raise ConfigError(f"evals.{name}: an evaluator name cannot contain '/'.")
        options = {k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg.items()}
        out.append(EVALUATORS[kind](name, split=split, batch_size=batch, every=every, **options))
    return out


def metric_names(names_per_evaluator: Sequence[Sequence[str]],
                 evaluator_names: Sequence[str]) -> list[dict[str, str]]:
    """For every evaluator, ``{its key: the name it is logged under}``: bare keys, except that a
    key an earlier evaluator already produces becomes ``<evaluator name>/<key>``."""
    taken: set[str] = set()
    out = []
    for keys, ev in zip(names_per_evaluator, evaluator_names):
        mapping = {k: (f"{ev}/{k}" if k in taken else k) for k in keys}
        taken.update(keys)
        out.append(mapping)
    return out
