"""Losses. Each returns per-example values (N,); the caller takes a masked mean."""

from __future__ import annotations

import math
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax


def smooth_labels(labels: jax.Array, num_classes: int, smoothing: float = 0.0) -> jax.Array:
    """One-hot targets (N, C) mixed with the uniform distribution: ``(1-s) * onehot + s / C``."""
    onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    return onehot * (1.0 - smoothing) + smoothing / num_classes


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array, *, label_smoothing: float = 0.0
                          ) -> jax.Array:
    """Cross-entropy of integer ``labels`` (N,) under ``logits`` (N, C), with label smoothing.

    Returns (N,) float32, computed in float32 whatever the logits' dtype.
    """
    chex.assert_rank(logits, 2)
    chex.assert_rank(labels, 1)
    targets = smooth_labels(labels, logits.shape[-1], label_smoothing)
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def distillation_loss(student_logits: jax.Array, teacher_logits: jax.Array, temperature: float
                      ) -> jax.Array:
    """KL(teacher_T || student_T) * T^2 per example (N,), with temperature-softened softmaxes."""
    t = jax.nn.softmax(teacher_logits.astype(jnp.float32) / temperature)
    log_s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature)
    log_t = jnp.log(jnp.clip(t, 1e-12))
    return jnp.sum(t * (log_t - log_s), axis=-1) * temperature**2


def masked_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
    """``sum(values * weights) / max(sum(weights), 1)``: the mean over valid examples."""
    w = weights.astype(jnp.float32)
    return jnp.sum(values * w) / jnp.maximum(jnp.sum(w), 1.0)


# ------------------------------------------------------------------------ metric learning
#
# Batch losses over embeddings (N, D) with integer ``labels`` (N,) and a ``valid`` mask (N,)
# (padding is never an anchor, a positive or a negative). They return a ``PairLoss``: the loss is
# ``sum(values) / max(sum(weights), 1)`` (``PairLoss.mean``), so the per-anchor parts sum exactly
# across devices.

DISTANCES = ("euclidean", "squared", "cosine")


class PairLoss(NamedTuple):
    """Per-anchor parts of a batch loss: ``values`` (N,) loss sums, ``weights`` (N,) how many
    terms each sums, ``active`` (N,) terms with a positive loss, ``total`` (N,) valid terms."""

    values: jax.Array
    weights: jax.Array
    active: jax.Array
    total: jax.Array

    @property
    def mean(self) -> jax.Array:
        """The loss: ``sum(values) / max(sum(weights), 1)`` (0 when there is no term)."""
        return jnp.sum(self.values) / jnp.maximum(jnp.sum(self.weights), 1.0)


def pairwise_distances(x: jax.Array, y: jax.Array | None = None, kind: str = "euclidean"
                       ) -> jax.Array:
    """Distances (N, M) between the rows of ``x`` (N, D) and ``y`` (M, D) (default ``x``), in
    float32: ``euclidean`` ||x - y|| (gradient 0, not NaN, where it is 0), ``squared``
    ||x - y||^2, or ``cosine`` 1 - cos(x, y)."""
    if kind not in DISTANCES:
        raise ValueError(f"distance {kind!r} is not one of {DISTANCES}.")
    x = x.astype(jnp.float32)
    y = x if y is None else y.astype(jnp.float32)
    if kind == "cosine":
        # sqrt(max(|x|^2, eps)), not max(|x|, eps): the norm's derivative is infinite at 0, and
        # 0 * inf would put NaN in the gradient of an all-zero (padding) row.
        xn = x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, -1, keepdims=True), 1e-24))
        yn = y * jax.lax.rsqrt(jnp.maximum(jnp.sum(y * y, -1, keepdims=True), 1e-24))
        return 1.0 - xn @ yn.T
    sq = jnp.maximum(jnp.sum(x * x, -1)[:, None] + jnp.sum(y * y, -1)[None, :] - 2.0 * x @ y.T, 0.0)
    if kind == "squared":
        return sq
    positive = sq > 1e-12
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def _pair_masks(labels: jax.Array, valid: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(positive (N, N): same label, i != j, both valid; negative (N, N): labels differ, both
    valid)."""
    v = valid.astype(bool)
    both = v[:, None] & v[None, :]
    same = labels[:, None] == labels[None, :]
    eye = jnp.eye(labels.shape[0], dtype=bool)
    return same & both & ~eye, ~same & both


def contrastive_loss(embeddings: jax.Array, labels: jax.Array, valid: jax.Array, *,
                     pos_margin: float = 0.0, neg_margin: float = 1.0,
                     distance: str = "euclidean") -> PairLoss:
    """Contrastive loss (Hadsell et al. 2006) over every ordered pair of the batch:
    ``relu(d - pos_margin)^2`` for a pair of one label, ``relu(neg_margin - d)^2`` for a pair
    of two, averaged over all valid pairs (``i != j``)."""
    d = pairwise_distances(embeddings, kind=distance)
    pos, neg = _pair_masks(labels, valid)
    loss = jnp.where(pos, jax.nn.relu(d - pos_margin) ** 2, 0.0) + \
        jnp.where(neg, jax.nn.relu(neg_margin - d) ** 2, 0.0)
    pairs = (pos | neg).astype(jnp.float32)
    return PairLoss(jnp.sum(loss, 1), jnp.sum(pairs, 1),
                    jnp.sum((loss > 0).astype(jnp.float32), 1), jnp.sum(pairs, 1))


def triplet_loss(embeddings: jax.Array, labels: jax.Array, valid: jax.Array, *,
                 margin: float = 0.2, mining: str = "batch_all", distance: str = "euclidean"
                 ) -> PairLoss:
    """Triplet loss ``relu(d(a, p) - d(a, n) + margin)`` with triplets mined inside the batch.

    ``mining``:

    * ``batch_all``: every valid triplet (a, p, n); the loss is the mean over the *active*
      ones (loss > 0), 0 when none is; ``active / total`` is the fraction of active triplets.
    * ``batch_hard`` (Hermans et al. 2017): per anchor the farthest positive and the closest
      negative; the mean over anchors that have both.
    * ``semi_hard``, the FaceNet rule as TensorFlow-Addons' ``triplet_semihard_loss`` implements
      it: per anchor-positive pair the closest negative still farther than the positive
      (``d(a, n) > d(a, p)``), or, when there is none, the farthest negative; the mean over the
      anchor-positive pairs that have a negative. (TFA's default is ``distance='euclidean'``;
      TensorFlow's original ``tf.contrib`` version used ``'squared'``.)
    """
    d = pairwise_distances(embeddings, kind=distance)
    pos, neg = _pair_masks(labels, valid)
    if mining == "batch_all":
        triplet = pos[:, :, None] & neg[:, None, :]
        loss = jnp.where(triplet, jax.nn.relu(d[:, :, None] - d[:, None, :] + margin), 0.0)
        active = jnp.sum((loss > 0).astype(jnp.float32), (1, 2))
        return PairLoss(jnp.sum(loss, (1, 2)), active, active,
                        jnp.sum(triplet.astype(jnp.float32), (1, 2)))
    big = jnp.finfo(jnp.float32).max
    if mining == "batch_hard":
        has = jnp.any(pos, 1) & jnp.any(neg, 1)
        hardest_pos = jnp.max(jnp.where(pos, d, -big), 1)
        hardest_neg = jnp.min(jnp.where(neg, d, big), 1)
        loss = jnp.where(has, jax.nn.relu(hardest_pos - hardest_neg + margin), 0.0)
        w = has.astype(jnp.float32)
        return PairLoss(loss, w, (loss > 0).astype(jnp.float32), w)
    if mining == "semi_hard":
        d_ap = d[:, :, None]                                  # (a, p, 1)
        d_an = d[:, None, :]                                  # (a, 1, n)
        outside = neg[:, None, :] & (d_an > d_ap)             # semi-hard or easy: d(a,n) > d(a,p)
        closest_outside = jnp.min(jnp.where(outside, d_an, big), 2)
        farthest = jnp.max(jnp.where(neg, d, -big), 1)[:, None]
        chosen = jnp.where(jnp.any(outside, 2), closest_outside, farthest)
        terms = pos & jnp.any(neg, 1)[:, None]
        loss = jnp.where(terms, jax.nn.relu(d - chosen + margin), 0.0)
        termsf = terms.astype(jnp.float32)
        return PairLoss(jnp.sum(loss, 1), jnp.sum(termsf, 1),
                        jnp.sum((loss > 0).astype(jnp.float32), 1), jnp.sum(termsf, 1))
    raise ValueError(f"triplet mining {mining!r} is not one of 'batch_all', 'batch_hard', "
                     "'semi_hard'.")


def margin_logits(cosines: jax.Array, labels: jax.Array, *, kind: str = "arcface",
                  scale: float = 64.0, margin: float = 0.5) -> jax.Array:
    """Additive-margin softmax logits (N, C) from ``cosines`` (N, C) = cos(theta) between the
    normalized embeddings and the normalized class weights.

    ``arcface`` (Deng et al. 2019): ``s * cos(theta + m)`` for the true class, where
    theta + m > pi falls back to ``cos(theta) - m sin(m)`` (monotone, as insightface);
    ``cosface`` (Wang et al. 2018): ``s * (cos(theta) - m)``; other classes ``s * cos(theta)``.
    Feed them to ``softmax_cross_entropy``."""
    c = jnp.clip(cosines.astype(jnp.float32), -1.0, 1.0)
    target = jax.nn.one_hot(labels, c.shape[-1], dtype=bool)
    if kind == "arcface":
        sin = jnp.sqrt(jnp.clip(1.0 - c * c, 1e-12, 1.0))
        shifted = c * math.cos(margin) - sin * math.sin(margin)
        # theta + m > pi  <=>  cos(theta) < cos(pi - m) = -cos(m)
        shifted = jnp.where(c > -math.cos(margin), shifted, c - margin * math.sin(margin))
    elif kind == "cosface":
        shifted = c - margin
    else:
        raise ValueError(f"margin logits kind {kind!r} is not 'arcface' or 'cosface'.")
    return scale * jnp.where(target, shifted, c)


# ------------------------------------------------------------------------ detection
#
# Element-wise losses return arrays of their input's shape; the detection experiment sums them
# over anchors / cells / RoIs and normalizes per image (the normalizer each paper uses).


def sigmoid_focal_loss(logits: jax.Array, targets: jax.Array, *, alpha: float = 0.25,
                       gamma: float = 2.0) -> jax.Array:
    """Focal loss (Lin et al., 2017) per element, as ``torchvision.ops.sigmoid_focal_loss(...,
    reduction='none')``: ``-alpha_t (1 - p_t)^gamma log(p_t)`` with ``p = sigmoid(logits)``,
    ``targets`` in {0, 1} (or soft), ``alpha_t = alpha`` for targets 1 and ``1 - alpha`` for 0;
    a negative ``alpha`` turns the weighting off. Float32, same shape as ``logits``."""
    x = logits.astype(jnp.float32)
    t = targets.astype(jnp.float32)
    p = jax.nn.sigmoid(x)
    ce = optax.sigmoid_binary_cross_entropy(x, t)
    p_t = p * t + (1 - p) * (1 - t)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * t + (1 - alpha) * (1 - t)) * loss
    return loss


def smooth_l1(x: jax.Array, beta: float = 1.0) -> jax.Array:
    """Smooth L1 per element (Girshick, 2015; torchvision's ``beta``): ``0.5 x^2 / beta`` for
    ``|x| < beta``, ``|x| - 0.5 beta`` beyond; ``beta = 0`` is plain L1."""
    a = jnp.abs(x.astype(jnp.float32))
    if beta <= 0:
        return a
    return jnp.where(a < beta, 0.5 * a * a / beta, a - 0.5 * beta)


def giou_loss(pred: jax.Array, target: jax.Array) -> jax.Array:
    """``1 - GIoU`` of corresponding ``[y0, x0, y1, x1]`` boxes (..., 4) -> (...), in [0, 2]."""
    from jaxvision.ops.boxes import paired_giou
    return 1.0 - paired_giou(pred.astype(jnp.float32), target.astype(jnp.float32))


def centernet_focal_loss(logits: jax.Array, heatmap: jax.Array, *, alpha: float = 2.0,
                         beta: float = 4.0) -> jax.Array:
    """CenterNet's penalty-reduced focal loss per element (Zhou et al., 2019, eq. 1, from
    CornerNet): ``-(1 - p)^alpha log p`` where the target ``heatmap == 1`` (object centres),
    ``-(1 - y)^beta p^alpha log(1 - p)`` elsewhere. The paper divides the sum by the number of
    objects. Float32, same shape."""
    x = logits.astype(jnp.float32)
    y = heatmap.astype(jnp.float32)
    log_p, log_q = jax.nn.log_sigmoid(x), jax.nn.log_sigmoid(-x)
    p = jnp.exp(log_p)
    centre = y >= 1.0
    return jnp.where(centre, -((1 - p) ** alpha) * log_p, -((1 - y) ** beta) * (p ** alpha) * log_q)


class YoloTerms(NamedTuple):
    """The five sums of the YOLOv1 loss for each image (N,), already weighted by the lambdas:
    ``coord`` (centres), ``size`` (square-root sides), ``obj`` (confidence of responsible
    predictors), ``noobj`` (confidence of the others), ``cls`` (class probabilities)."""

    coord: jax.Array
    size: jax.Array
    obj: jax.Array
    noobj: jax.Array
    cls: jax.Array

    def total(self) -> jax.Array:
        return self.coord + self.size + self.obj + self.noobj + self.cls


def yolo_v1_loss(pred: jax.Array, boxes: jax.Array, box_classes: jax.Array, box_valid: jax.Array,
                 image_size: tuple[int, int], *, num_boxes: int, lambda_coord: float = 5.0,
                 lambda_noobj: float = 0.5) -> YoloTerms:
    """The YOLOv1 sum-squared loss (Redmon et al., 2016, eq. 3) per image.

    ``pred`` (N, S, S, B * 5 + C): per cell, B predictors ``[ty, tx, sqrt_h, sqrt_w, conf]``
    (``ty, tx``: the centre's offset inside the cell in cell units; ``sqrt_h, sqrt_w``: square
    roots of the box sides over the image sides) then C class probabilities. Ground truth:
    ``boxes`` (N, M, 4) pixels, ``box_classes`` (N, M), ``box_valid`` (N, M). The cell holding
    an object's centre is responsible for it (of several objects in one cell, the largest);
    of its predictors, the one whose box has the highest IoU with the object is responsible
    (the first on ties). Confidence targets are that IoU (outside the gradient) for
    responsible predictors and 0 for every other predictor. Classes are regressed in cells
    with an object."""
    from jaxvision.ops.targets import yolo_v1_boxes, yolo_v1_targets
    from jaxvision.ops.boxes import paired_iou
    n, s, _, depth = pred.shape
    b = int(num_boxes)
    c = depth - 5 * b
    if c < 1:
        raise ValueError(f"yolo_v1_loss: the prediction has {depth} channels per cell, fewer than "
                         f"5 * num_boxes ({5 * b}) + 1 class.")
    p = pred.astype(jnp.float32)
    t = yolo_v1_targets(boxes, box_classes, box_valid, image_size, s, c)
    box_p = p[..., :5 * b].reshape(n, s, s, b, 5)
    decoded = yolo_v1_boxes(box_p, image_size)                    # (N, S, S, B, 4)
    ious = paired_iou(decoded, t.box[:, :, :, None, :])              # (N, S, S, B)
    best = jnp.argmax(ious, axis=-1)
    resp = jax.nn.one_hot(best, b, dtype=jnp.float32) * t.has_object[..., None]
    target_xy, target_wh = t.offset[:, :, :, None, :], t.sqrt_size[:, :, :, None, :]
    coord = lambda_coord * jnp.sum(resp[..., None] * (box_p[..., 0:2] - target_xy) ** 2, (1, 2, 3, 4))
    size = lambda_coord * jnp.sum(resp[..., None] * (box_p[..., 2:4] - target_wh) ** 2, (1, 2, 3, 4))
    conf = box_p[..., 4]
    obj = jnp.sum(resp * (conf - jax.lax.stop_gradient(ious)) ** 2, (1, 2, 3))
    noobj = lambda_noobj * jnp.sum((1 - resp) * conf ** 2, (1, 2, 3))
    onehot = jax.nn.one_hot(t.cls, c, dtype=jnp.float32)
    cls = jnp.sum(t.has_object[..., None] * (p[..., 5 * b:] - onehot) ** 2, (1, 2, 3))
    return YoloTerms(coord, size, obj, noobj, cls)



def centernet_loss(out: dict, boxes: jax.Array, box_classes: jax.Array, box_valid: jax.Array,
                   stride: float, *, size_weight: float = 0.1, offset_weight: float = 1.0
                   ) -> dict[str, jax.Array]:
    """CenterNet's loss per image (N,) (Zhou et al., 2019, eq. 2): ``heatmap``
    (``centernet_focal_loss``), ``offset`` and ``size`` (L1 at the object centres, weighted
    ``offset_weight`` and ``size_weight``), each divided by the image's object count (at
    least 1); ``out`` as ``CenterNet`` returns it."""
    from jaxvision.ops.targets import centernet_targets
    n, h, w, c = out["heatmap"].shape
    t = centernet_targets(boxes, box_classes, box_valid, (h, w), stride, c)
    num = jnp.maximum(jnp.sum(box_valid, 1).astype(jnp.float32), 1.0)
    heat = jnp.sum(centernet_focal_loss(out["heatmap"], t.heatmap), (1, 2, 3)) / num
    valid = box_valid.astype(jnp.float32)[..., None]

    def at_centres(x):  # (N, h, w, 2) -> (N, M, 2)
        return jnp.take_along_axis(x.reshape(n, h * w, 2).astype(jnp.float32), t.cell[..., None], 1)

    off = jnp.sum(valid * jnp.abs(at_centres(out["offset"]) - t.offset), (1, 2)) / num
    size = jnp.sum(valid * jnp.abs(at_centres(out["size"]) - t.size), (1, 2)) / num
    return {"heatmap": heat, "offset": offset_weight * off, "size": size_weight * size}


def retinanet_loss(out: dict, boxes: jax.Array, box_classes: jax.Array, box_valid: jax.Array, *,
                   positive: float = 0.5, negative: float = 0.4, alpha: float = 0.25,
                   gamma: float = 2.0, box_loss: str = "smooth_l1", beta: float = 1.0 / 9
                   ) -> dict[str, jax.Array]:
    """RetinaNet's loss per image (N,): ``cls``, the sigmoid focal loss summed over every
    (anchor, class) of the non-ignored anchors, and ``box``, smooth L1 (``beta``) on the R-CNN
    offsets or ``giou`` on the decoded boxes of the positive anchors; both divided by the
    image's positive count (at least 1). Anchors match objects by ``match_anchors``
    (``positive`` / ``negative`` IoU, every object forced to its best anchor)."""
    from jaxvision.ops.anchors import POSITIVE, match_anchors
    from jaxvision.ops.boxes import decode, encode
    anchors = out["anchors"]
    matched, label, _ = jax.vmap(lambda b, v: match_anchors(anchors, b, v, positive=positive,
                                                            negative=negative))(boxes, box_valid)
    pos = (label == POSITIVE).astype(jnp.float32)
    num = jnp.maximum(jnp.sum(pos, 1), 1.0)
    c = out["logits"].shape[-1]
    cls_t = jax.nn.one_hot(jnp.take_along_axis(box_classes, matched, 1), c) * pos[..., None]
    care = (label >= 0).astype(jnp.float32)[..., None]
    cls = jnp.sum(care * sigmoid_focal_loss(out["logits"], cls_t, alpha=alpha, gamma=gamma), (1, 2))
    target = jnp.take_along_axis(boxes.astype(jnp.float32), matched[..., None], 1)
    if box_loss == "giou":
        per = giou_loss(decode(out["deltas"], anchors), target)
    elif box_loss == "smooth_l1":
        per = jnp.sum(smooth_l1(out["deltas"] - encode(target, anchors), beta), -1)
    else:
        raise ValueError(f"box_loss={box_loss!r} must be 'smooth_l1' or 'giou'.")
    return {"cls": cls / num, "box": jnp.sum(pos * per, 1) / num}


def faster_rcnn_loss(out: dict, boxes: jax.Array, box_valid: jax.Array, keys: jax.Array, *,
                     rpn_batch: int = 256, rpn_positive_fraction: float = 0.5,
                     rpn_positive: float = 0.7, rpn_negative: float = 0.3,
                     beta: float = 1.0 / 9) -> dict[str, jax.Array]:
    """The two-stage detector's four losses per image (N,), as torchvision's Faster R-CNN:
    ``rpn_cls`` (binary cross-entropy) and ``rpn_box`` (smooth L1 on the offsets of the positive
    anchors), both over ``rpn_batch`` anchors sampled per image (``keys`` (N,) one each) with up
    to ``rpn_positive_fraction`` positive (IoU >= ``rpn_positive``; < ``rpn_negative``
    negative; every object's best anchor positive) and divided by the sampled count;
    ``roi_cls`` (cross-entropy over the sampled RoIs, background included) and ``roi_box``
    (smooth L1 on the matched class's offsets of the foreground RoIs), divided by the sampled
    RoI count. ``out`` as ``FasterRCNN`` returns it in training."""
    from jaxvision.ops.anchors import POSITIVE, match_anchors
    from jaxvision.ops.boxes import encode
    from jaxvision.ops.targets import sample_balanced
    anchors = out["anchors"]

    def rpn_one(key, b, v):
        matched, label, _ = match_anchors(anchors, b, v, positive=rpn_positive, negative=rpn_negative)
        return matched, label, sample_balanced(label, key, rpn_batch, rpn_positive_fraction)

    matched, label, sampled = jax.vmap(rpn_one)(keys, boxes, box_valid)
    w = sampled.astype(jnp.float32)
    count = jnp.maximum(jnp.sum(w, 1), 1.0)
    pos = w * (label == POSITIVE)
    bce = optax.sigmoid_binary_cross_entropy(out["rpn_logits"].astype(jnp.float32), pos)
    target = encode(jnp.take_along_axis(boxes.astype(jnp.float32), matched[..., None], 1), anchors)
    rpn_box = jnp.sum(pos * jnp.sum(smooth_l1(out["rpn_deltas"] - target, beta), -1), 1)
    labels = out["roi_labels"]
    used = (labels >= 0).astype(jnp.float32)
    rois = jnp.maximum(jnp.sum(used, 1), 1.0)
    ce = optax.softmax_cross_entropy_with_integer_labels(out["roi_logits"].astype(jnp.float32),
                                                          jnp.maximum(labels, 0))
    fg = (labels > 0).astype(jnp.float32)
    cls_idx = jnp.maximum(labels - 1, 0)
    deltas = jnp.take_along_axis(out["roi_deltas"], cls_idx[..., None, None], 2)[:, :, 0]
    roi_box = jnp.sum(fg * jnp.sum(smooth_l1(deltas - out["roi_targets"], beta), -1), 1)
    return {"rpn_cls": jnp.sum(w * bce, 1) / count, "rpn_box": rpn_box / count,
            "roi_cls": jnp.sum(used * ce, 1) / rois, "roi_box": roi_box / rois}


# ------------------------------------------------------------------------ segmentation
#
# Per-pixel losses over ``logits`` (N, H, W, C) and a semantic ``mask`` (N, H, W) of class ids
# (``jaxvision/data/example.py``): pixels with a negative id (``IGNORE_LABEL``) add nothing to the
# loss, its count or its gradient. An id >= C is a data error (``validate_example`` rejects it at
# the source): it makes its image's loss NaN, which stops training loudly, rather than being
# skipped in silence. Computed in float32 whatever the logits' dtype.


class PixelLoss(NamedTuple):
    """Per-image parts of a pixel loss: ``values`` (N,) the loss summed over the image's
    non-ignored pixels, ``pixels`` (N,) float32 how many there are. The batch loss is
    ``sum(values * valid) / max(sum(pixels * valid), 1)`` (``mean`` without padding): the mean
    over every non-ignored pixel of the batch, so large and small images, or images mostly
    ignored, weigh by their pixels (torch's ``reduction='mean'`` with ``ignore_index``)."""

    values: jax.Array
    pixels: jax.Array

    @property
    def mean(self) -> jax.Array:
        """``sum(values) / max(sum(pixels), 1)`` (0 when no pixel is scored)."""
        return jnp.sum(self.values) / jnp.maximum(jnp.sum(self.pixels), 1.0)


def _pixel_terms(logits: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array,
                                                               jax.Array]:
    """float32 log-softmax (N, H, W, C), safe class ids (N, H, W) (0 at ignore pixels), the
    float32 pixel weight (1 scored, 0 ignored) and a NaN-or-0 term for ids >= C."""
    chex.assert_rank(logits, 4)
    chex.assert_rank(mask, 3)
    c = logits.shape[-1]
    mask = mask.astype(jnp.int32)
    scored = mask >= 0
    safe = jnp.clip(mask, 0, c - 1)
    bad = jnp.where(mask >= c, jnp.nan, 0.0).astype(jnp.float32)
    return jax.nn.log_softmax(logits.astype(jnp.float32), -1), safe, scored.astype(jnp.float32), bad


def _class_weight(weights: jax.Array | float | None, safe: jax.Array) -> jax.Array | float:
    if weights is None:
        return 1.0
    w = jnp.asarray(weights, jnp.float32)
    return w[safe] if w.ndim else w


def pixel_cross_entropy(logits: jax.Array, mask: jax.Array, *, class_weights: jax.Array | None = None,
                        label_smoothing: float = 0.0) -> PixelLoss:
    """Per-pixel softmax cross-entropy of ``mask`` (N, H, W) under ``logits`` (N, H, W, C),
    summed per image over the non-ignored pixels (``PixelLoss``).

    A pixel of class y with smoothing s loses ``w[y] * ((1 - s) * -log p_y + s * mean_c -log p_c)``
    (targets ``(1 - s) * onehot + s / C``); ``class_weights`` (C,) ``w`` (default 1) scale each
    pixel's loss by its true class's weight, as torch's ``cross_entropy(weight=w,
    reduction='sum')`` without smoothing (with smoothing torch weights each class's smoothing term
    by its own weight instead). ``PixelLoss.pixels`` counts pixels, not weights: torch's weighted
    ``'mean'`` divides by ``sum(w[y])`` instead."""
    logp, safe, scored, bad = _pixel_terms(logits, mask)
    nll = -jnp.take_along_axis(logp, safe[..., None], -1)[..., 0]
    if label_smoothing:
        nll = (1.0 - label_smoothing) * nll - label_smoothing * jnp.mean(logp, -1)
    loss = scored * _class_weight(class_weights, safe) * nll + bad
    return PixelLoss(jnp.sum(loss, (1, 2)), jnp.sum(scored, (1, 2)))


def softmax_focal_loss(logits: jax.Array, mask: jax.Array, *, gamma: float = 2.0,
                       alpha: jax.Array | float | None = None) -> PixelLoss:
    """Per-pixel multi-class focal loss on the softmax (Lin et al.),
    ``alpha[y] * -(1 - p_y)^gamma * log p_y`` for a pixel of class y, summed per image over the
    non-ignored pixels (``PixelLoss``). ``alpha``: None (1), a scalar, or per-class weights (C,).
    ``gamma = 0`` is the (weighted) cross-entropy."""
    logp, safe, scored, bad = _pixel_terms(logits, mask)
    logpt = jnp.take_along_axis(logp, safe[..., None], -1)[..., 0]
    if gamma:
        # 1 - p_t accurately near p_t = 1; floored so that a gamma < 1 keeps a finite gradient.
        modulator = jnp.maximum(-jnp.expm1(logpt), 1e-12) ** gamma
    else:
        modulator = 1.0
    loss = scored * _class_weight(alpha, safe) * modulator * -logpt + bad
    return PixelLoss(jnp.sum(loss, (1, 2)), jnp.sum(scored, (1, 2)))


def dice_loss(logits: jax.Array, mask: jax.Array, *, smooth: float = 1.0) -> jax.Array:
    """Soft multi-class Dice loss per image (N,): with softmax probabilities p and one-hot
    targets t over the image's non-ignored pixels (ignore pixels left out of both),
    ``1 - mean_c (2 * sum p_c t_c + s) / (sum p_c + sum t_c + s)``, the mean over all C classes
    (a class absent from the target scores ``s / (sum p_c + s)``, so predicting it costs).
    An image with only ignore pixels has loss 0 and zero gradient (also with ``s = 0``)."""
    logp, safe, scored, bad = _pixel_terms(logits, mask)
    p = jnp.exp(logp) * scored[..., None]
    t = jax.nn.one_hot(safe, logits.shape[-1], dtype=jnp.float32) * scored[..., None]
    inter = jnp.sum(p * t, (1, 2))
    denom = jnp.sum(p, (1, 2)) + jnp.sum(t, (1, 2)) + smooth
    ok = denom > 0
    dice = jnp.where(ok, (2.0 * inter + smooth) / jnp.where(ok, denom, 1.0), 1.0)
    return 1.0 - jnp.mean(dice, -1) + jnp.sum(bad, (1, 2))


def mask_rcnn_loss(out: dict, instance_mask: jax.Array, num_objects: int) -> jax.Array:
    """Mask R-CNN's mask loss per image (N,) (He et al., 2017): on every sampled foreground RoI,
    the mean per-pixel sigmoid cross-entropy between the mask of its object's class
    (``roi_mask_logits`` (N, R, M, M, C)) and the object's ``instance_mask`` pixels (id k + 1
    for object k < ``num_objects``, the padded box count) cut out by RoIAlign to M x M (aligned,
    then thresholded at 0.5), averaged over the image's foreground RoIs (0 without any).
    ``out`` as ``FasterRCNN(mask_head=True)`` returns it in training."""
    from jaxvision.ops.roi import roi_align
    logits = out["roi_mask_logits"]
    n, r, m, _, _ = logits.shape
    h, w = instance_mask.shape[1:]
    ids = jnp.arange(1, num_objects + 1)[None, :, None, None]
    binary = (instance_mask[:, None] == ids).astype(jnp.float32).reshape(n * num_objects, h, w, 1)
    which = (jnp.arange(n)[:, None] * num_objects + out["roi_objects"]).reshape(-1)
    target = roi_align(binary, out["rois"].reshape(-1, 4), which, m, sampling_ratio=2,
                       aligned=True)[..., 0].reshape(n, r, m, m) >= 0.5
    labels = out["roi_labels"]
    chosen = jnp.take_along_axis(logits, jnp.maximum(labels - 1, 0)[:, :, None, None, None], 4)[..., 0]
    bce = optax.sigmoid_binary_cross_entropy(chosen.astype(jnp.float32), target.astype(jnp.float32))
    fg = (labels > 0).astype(jnp.float32)
    return jnp.sum(fg * jnp.mean(bce, (2, 3)), 1) / jnp.maximum(jnp.sum(fg, 1), 1.0)


def disparity_loss(pred: jax.Array, target: jax.Array, *, beta: float = 1.0) -> PixelLoss:
    """Smooth L1 (``beta`` px; 0 = L1) between predicted and true disparity (B, H, W) over the
    pixels with ground truth (``target >= 0``): per image the sum (``values``) and the count
    (``pixels``), (B,) each."""
    valid = target >= 0
    err = jnp.where(valid, smooth_l1(pred.astype(jnp.float32) - target.astype(jnp.float32), beta), 0.0)
    values, pixels = jnp.sum(err, (1, 2)), jnp.sum(valid, (1, 2)).astype(jnp.float32)
    return PixelLoss(values, pixels)


class StereoSelfSupervised(NamedTuple):
    """Godard et al. (2017)'s terms per image (B,): ``appearance`` (both views reconstructed
    from the other, photometric error averaged over the pixels whose sample lies inside the
    other image), ``smoothness`` (edge-aware, both maps) and ``left_right`` (consistency of the
    two maps, both directions); ``total`` weights them."""

    appearance: jax.Array
    smoothness: jax.Array
    left_right: jax.Array
    total: jax.Array


def stereo_self_supervised_loss(left: jax.Array, right: jax.Array, disp_left: jax.Array,
                                disp_right: jax.Array, *, alpha: float = 0.85,
                                smoothness_weight: float = 0.1, left_right_weight: float = 1.0,
                                normalize_smoothness: bool = True) -> StereoSelfSupervised:
    """The self-supervised stereo loss of Godard et al. (2017) for a rectified pair.

    ``left``, ``right`` (B, H, W, C) in [0, 1]; ``disp_left`` (B, H, W) the left view's
    disparity (left[x] = right[x - d]) and ``disp_right`` the right view's, in pixels. The left
    view is rebuilt by sampling the right at x - d_l and vice versa; the appearance error is
    ``alpha * (1 - SSIM) / 2 + (1 - alpha) * L1`` (``ops.stereo.photometric_error``). The
    smoothness term penalizes disparity gradients except at image edges; with
    ``normalize_smoothness`` each map is divided by its mean first (monodepth2's form, which
    makes the term independent of the disparity range). Returns per-image terms (B,)."""
    from jaxvision.ops import stereo
    rec_l, ok_l = stereo.warp(right, disp_left, "left")
    rec_r, ok_r = stereo.warp(left, disp_right, "right")

    def masked(err, ok):
        ok = ok.astype(jnp.float32)
        return jnp.sum(err * ok, (1, 2)) / jnp.maximum(jnp.sum(ok, (1, 2)), 1.0)
    appearance = (masked(stereo.photometric_error(left, rec_l, alpha), ok_l)
                  + masked(stereo.photometric_error(right, rec_r, alpha), ok_r))

    def norm(d):
        d = d.astype(jnp.float32)
        return d / (jnp.mean(d, (1, 2), keepdims=True) + 1e-3) if normalize_smoothness else d
    smooth = (stereo.edge_aware_smoothness(norm(disp_left), left)
              + stereo.edge_aware_smoothness(norm(disp_right), right))
    lr_l, okl = stereo.left_right_error(disp_left, disp_right)
    # The right map against the left one: the same check in the mirrored frame.
    lr_r, okr = stereo.left_right_error(disp_right[:, :, ::-1], disp_left[:, :, ::-1])
    left_right = masked(lr_l, okl) + masked(lr_r, okr)
    total = appearance + smoothness_weight * smooth + left_right_weight * left_right
    return StereoSelfSupervised(appearance, smooth, left_right, total)
