"""A two-stage detector in the Faster R-CNN style (Ren et al., 2015), optionally with an FPN.

Stage one, the region proposal network (RPN), scores anchors for "object" and refines them;
its best boxes after NMS are the proposals. Stage two pools each proposal's features with
RoIAlign (one level, or the FPN level its size picks) and classifies it into C classes plus
background, with a per-class box refinement. In training the second stage sees a sampled
minibatch of RoIs (the proposals plus the ground-truth boxes, ``roi_positive_fraction``
positive), drawn from the ``dropout`` rng stream with one key per image
(``jaxvision.replica``), so results do not depend on the device count. The losses are
``jaxvision.losses.faster_rcnn_loss``.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxvision import replica
from jaxvision.models import layers
from jaxvision.models.detection import FPN, backbone_features, select_detections, stride_of
from jaxvision.ops import anchors as anchor_ops
from jaxvision.ops import boxes as box_ops
from jaxvision.ops import nms as nms_ops
from jaxvision.ops import roi as roi_ops
from jaxvision.ops.targets import sample_balanced

Array = jax.Array
ROI_BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)  # the Fast R-CNN head's offset weights (torchvision's)


class FasterRCNN(nn.Module):
    """Backbone (+ ``fpn``) -> RPN -> proposals -> RoIAlign -> two fully connected layers ->
    class logits (C + 1, background = 0) and per-class offsets.

    ``__call__(x, train=..., boxes=, box_classes=, box_valid=)`` returns ``rpn_logits`` (N, P),
    ``rpn_deltas`` (N, P, 4), ``anchors`` (P, 4), ``rois`` (N, R, 4), ``roi_valid`` (N, R),
    ``roi_logits`` (N, R, C + 1) and ``roi_deltas`` (N, R, C, 4); in training (ground truth
    given) R is ``roi_batch`` sampled RoIs and it adds their ``roi_labels`` (N, R) (0 =
    background, k + 1 = class k, -1 = unused slot) and ``roi_targets`` (N, R, 4) (offsets of the
    matched object, weighted by ``ROI_BOX_WEIGHTS``); otherwise R is ``post_nms_test``."""

    backbone: nn.Module
    num_classes: int
    taps: tuple[str, ...] = ()
    fpn: bool = True
    width: int = 64
    anchor_scale: float = 4.0
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    pre_nms: int = 300
    post_nms_train: int = 128
    post_nms_test: int = 64
    rpn_nms: float = 0.7
    roi_batch: int = 64
    roi_positive_fraction: float = 0.25
    roi_foreground: float = 0.5
    roi_size: int = 7
    sampling_ratio: int = 2
    canonical_size: float = 224.0
    canonical_level: int = 4
    hidden: int = 256
    mask_head: bool = False   # Mask R-CNN: a per-class mask for every RoI
    mask_size: int = 14       # RoIAlign size of the mask branch; masks are twice that
    mask_width: int = 64
    mask_convs: int = 4
    kernel_init: str = "he"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False, boxes: Array | None = None,
                 box_classes: Array | None = None, box_valid: Array | None = None) -> dict:
        feats = backbone_features(self.backbone, x, train, self.taps)
        if self.fpn:
            feats = FPN(self.width, self.kernel_init, self.dtype, name="fpn")(feats)
        else:
            feats = feats[-1:]
        strides = [stride_of(x, f) for f in feats]
        image = (int(x.shape[1]), int(x.shape[2]))
        # ---- RPN, shared over the levels.
        a = len(self.aspect_ratios)
        conv = layers.conv(self.width, 3, "rpn_conv", self.dtype, jnp.float32, self.kernel_init)
        obj = layers.Conv(a, (1, 1), dtype=self.dtype, name="rpn_objectness",
                      kernel_init=nn.initializers.normal(0.01))
        reg = layers.Conv(4 * a, (1, 1), dtype=self.dtype, name="rpn_deltas",
                      kernel_init=nn.initializers.normal(0.01))
        logits, deltas = [], []
        for f in feats:
            h = nn.relu(conv(f))
            logits.append(layers.logits(obj(h)).reshape(f.shape[0], -1))
            deltas.append(layers.logits(reg(h)).reshape(f.shape[0], -1, 4))
        rpn_logits, rpn_deltas = jnp.concatenate(logits, 1), jnp.concatenate(deltas, 1)
        anchors = jnp.asarray(np.concatenate([
            anchor_ops.anchor_grid(f.shape[1], f.shape[2], s, (self.anchor_scale * s,),
                                   self.aspect_ratios) for f, s in zip(feats, strides)]))
        training = boxes is not None
        post = self.post_nms_train if training else self.post_nms_test
        rois, roi_valid = jax.vmap(lambda lg, d: _proposals(
            lg, d, anchors, image, self.pre_nms, post, self.rpn_nms))(rpn_logits, rpn_deltas)
        rois = jax.lax.stop_gradient(rois)
        out = {"rpn_logits": rpn_logits, "rpn_deltas": rpn_deltas, "anchors": anchors}
        if training:
            keys = replica.example_keys(self.make_rng("dropout"), x.shape[0])
            sampled = jax.vmap(lambda k, r, rv, b, c, v: _sample_rois(
                k, r, rv, b, c, v, self.roi_batch, self.roi_positive_fraction,
                self.roi_foreground))(keys, rois, roi_valid, boxes, box_classes, box_valid)
            rois, roi_valid, out["roi_labels"], out["roi_targets"], out["roi_objects"] = sampled
        # ---- RoI head.
        n, r = rois.shape[:2]
        flat = rois.reshape(-1, 4)
        batch_of = jnp.repeat(jnp.arange(n), r)
        def pool(size: int) -> Array:
            if len(feats) > 1:
                return roi_ops.multilevel_roi_align(
                    feats, [int(round(s)) for s in strides], flat, batch_of, size,
                    sampling_ratio=self.sampling_ratio, canonical_size=self.canonical_size,
                    canonical_level=self.canonical_level)
            return roi_ops.roi_align(feats[0], flat, batch_of, size, spatial_scale=1.0 / strides[0],
                                     sampling_ratio=self.sampling_ratio)

        h = pool(self.roi_size).reshape(n * r, -1)
        for i in (1, 2):
            h = nn.relu(layers.dense(self.hidden, f"fc{i}", self.dtype, jnp.float32, self.kernel_init)(h))
        c = self.num_classes
        cls = nn.Dense(c + 1, dtype=self.dtype, name="cls",
                       kernel_init=nn.initializers.normal(0.01))(h)
        box = nn.Dense(4 * c, dtype=self.dtype, name="box",
                       kernel_init=nn.initializers.normal(0.001))(h)
        out.update(rois=rois, roi_valid=roi_valid,
                   roi_logits=layers.logits(cls).reshape(n, r, c + 1),
                   roi_deltas=layers.logits(box).reshape(n, r, c, 4))
        if self.mask_head:
            # He et al. (2017): 4 x (3x3 conv, ReLU) -> 2x2 stride-2 transposed conv -> 1x1 per class.
            m = pool(self.mask_size)
            for i in range(self.mask_convs):
                m = nn.relu(layers.conv(self.mask_width, 3, f"mask_conv{i + 1}", self.dtype, jnp.float32,
                                        self.kernel_init)(m))
            m = nn.relu(layers.ConvTranspose(self.mask_width, 2, 2, 0, use_bias=True, dtype=self.dtype,
                                             name="mask_up")(m))
            m = layers.Conv(c, (1, 1), dtype=self.dtype, name="mask_out")(m)
            out["roi_mask_logits"] = layers.logits(m).reshape(n, r, 2 * self.mask_size, 2 * self.mask_size, c)
        return out


def _proposals(logits: Array, deltas: Array, anchors: Array, image: tuple[int, int], pre_nms: int,
               post_nms: int, iou: float) -> tuple[Array, Array]:
    """One image's proposals: the ``pre_nms`` best anchors decoded and clipped, those with a side
    of at least 1 px, NMS at ``iou``, the ``post_nms`` best -> (post_nms, 4) boxes and validity."""
    idx, keep = nms_ops.top_k(logits, min(pre_nms, logits.shape[0]))
    b = box_ops.clip(box_ops.decode(deltas[idx], anchors[idx]), *image)
    keep = keep & box_ops.valid(b, 1.0)
    sel, ok = nms_ops.nms(b, logits[idx], iou, post_nms, valid=keep)
    return jnp.where(ok[:, None], b[sel], 0.0), ok


def _sample_rois(key, rois, roi_valid, boxes, classes, box_valid, batch: int, fraction: float,
                 foreground: float):
    """One image's training RoIs: proposals plus ground-truth boxes, matched to objects (IoU
    >= ``foreground``: the object's class, else background), ``sample_balanced`` to ``batch``
    slots (unused slots get label -1). Returns the RoIs, their use, labels, box targets and
    matched object indices."""
    cand = jnp.concatenate([rois, boxes.astype(rois.dtype)])
    valid = jnp.concatenate([roi_valid, box_valid])
    ious = jnp.where(box_valid[None, :], box_ops.iou(cand, boxes), -1.0)
    matched = jnp.argmax(ious, 1)
    fg = jnp.max(ious, 1) >= foreground
    labels = jnp.where(valid, fg.astype(jnp.int32), -1)
    chosen = sample_balanced(labels, key, batch, fraction)
    prio = jnp.where(chosen, 1.0, 0.0) + jnp.where(labels == 1, 0.5, 0.0)  # positives first
    _, idx = jax.lax.top_k(prio, batch)
    used = chosen[idx]
    roi_labels = jnp.where(used, jnp.where(fg[idx], classes[matched[idx]] + 1, 0), -1)
    targets = box_ops.encode(boxes[matched[idx]].astype(jnp.float32), cand[idx], ROI_BOX_WEIGHTS)
    return cand[idx], used, roi_labels.astype(jnp.int32), targets, matched[idx].astype(jnp.int32)


def decode_faster_rcnn(out: dict, image_size: tuple[int, int], *, max_detections: int = 100,
                       iou_threshold: float = 0.5, score_threshold: float = 0.05) -> dict:
    """Detections from ``FasterRCNN`` outputs (inference): each RoI's box for every class,
    scored by the class's softmax probability, then ``select_detections``. With a mask head,
    also ``det_masks`` (N, K, H, W): each detection's class mask (sigmoid) pasted into its box
    (``roi.paste_masks``), 0 for padding."""
    n, r, c1 = out["roi_logits"].shape
    c = c1 - 1
    probs = jax.nn.softmax(out["roi_logits"], -1)[..., 1:]                      # (N, R, C)
    probs = jnp.where(out["roi_valid"][..., None], probs, 0.0)
    rois = jnp.broadcast_to(out["rois"][:, :, None, :], (n, r, c, 4))
    boxes = box_ops.decode(out["roi_deltas"], rois, ROI_BOX_WEIGHTS).reshape(n, r * c, 4)
    classes = jnp.broadcast_to(jnp.arange(c), (n, r, c)).reshape(n, r * c)
    dets = select_detections(boxes, probs.reshape(n, r * c), classes, image_size,
                             max_detections=max_detections, iou_threshold=iou_threshold,
                             score_threshold=score_threshold, return_index=True)
    index = dets.pop("det_index")
    if "roi_mask_logits" in out:
        logits = out["roi_mask_logits"]                                         # (N, R, M, M, C)
        roi, cls = index // c, index % c
        chosen = jnp.take_along_axis(logits, roi[:, :, None, None, None], 1)   # (N, K, M, M, C)
        chosen = jnp.take_along_axis(chosen, cls[:, :, None, None, None], 4)[..., 0]
        masks = jax.vmap(lambda m, b: roi_ops.paste_masks(jax.nn.sigmoid(m), b, image_size))(
            chosen, dets["det_boxes"])
        dets["det_masks"] = jnp.where(dets["det_valid"][:, :, None, None], masks, 0.0)
    return dets


def level_for(size: float, canonical_size: float, canonical_level: int) -> int:
    """The FPN level a box of side ``size`` pools from (before clipping to the levels)."""
    return int(math.floor(canonical_level + math.log2(size / canonical_size) + 1e-6))
