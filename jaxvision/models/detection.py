"""One-stage object detectors on zoo backbones: YOLOv1, CenterNet and RetinaNet, with decoders.

Each detector holds a zoo classifier as ``backbone`` (its parameters live under ``backbone/``,
so a classification run transfers with ``transfer.map=(('^', 'backbone/'),)``) and reads the
feature maps named by ``taps`` (``return_features=True``; e.g. ``('stage3', 'stage4')`` of
``small_cnn``, ``('layer2', 'layer3', 'layer4')`` of a ResNet). Strides come from the shapes:
input side / feature side. Every ``decode_*`` turns raw outputs into fixed-size detections,
the format every detection evaluator and ``predict`` read:

``det_boxes`` (N, K, 4) ``[y0, x0, y1, x1]`` pixels of the input, clipped to it; ``det_scores``
(N, K) float32; ``det_classes`` (N, K) int32; ``det_valid`` (N, K) bool (padding False), best
first.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxvision.models import layers
from jaxvision.ops import anchors as anchor_ops
from jaxvision.ops import boxes as box_ops
from jaxvision.ops import nms as nms_ops
from jaxvision.ops.targets import yolo_v1_boxes

Array = jax.Array


def backbone_features(backbone: nn.Module, x: Array, train: bool, taps: Sequence[str]) -> list[Array]:
    """The feature maps ``taps`` of zoo model ``backbone`` on ``x``, finest first as listed."""
    if not taps:
        raise ValueError("a detector needs model.taps: the backbone feature maps it reads, e.g. "
                         "('stage3', 'stage4') for small_cnn or ('layer2', 'layer3', 'layer4') for resnet.")
    _, feats = backbone(x, train=train, return_features=True)
    missing = [t for t in taps if t not in feats]
    if missing:
        raise ValueError(f"model.taps {missing} are not feature maps of the backbone; it has "
                         f"{[k for k, v in feats.items() if v.ndim == 4]}.")
    out = [feats[t] for t in taps]
    if any(f.ndim != 4 for f in out):
        raise ValueError(f"model.taps must name spatial (N, H, W, C) feature maps; got shapes "
                         f"{[f.shape for f in out]}.")
    return out


def stride_of(x: Array, feature: Array) -> float:
    """Input pixels per feature cell (static: from the shapes)."""
    return x.shape[1] / feature.shape[1]


class FPN(nn.Module):
    """Feature pyramid (Lin et al., 2017): 1x1 laterals to ``width`` channels, a top-down path
    (nearest upsampling, added), then a 3x3 convolution per level. Returns one map per input,
    same sizes, finest first."""

    width: int = 64
    kernel_init: str = "he"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, feats: Sequence[Array]) -> list[Array]:
        lat = [layers.conv(self.width, 1, f"lateral{i}", self.dtype, jnp.float32, self.kernel_init)(f)
               for i, f in enumerate(feats)]
        for i in range(len(lat) - 2, -1, -1):
            up = jax.image.resize(lat[i + 1], lat[i].shape[:3] + lat[i + 1].shape[3:], "nearest")
            lat[i] = lat[i] + up
        return [layers.conv(self.width, 3, f"output{i}", self.dtype, jnp.float32, self.kernel_init)(h)
                for i, h in enumerate(lat)]


def _image_size(x: Array) -> tuple[int, int]:
    return int(x.shape[1]), int(x.shape[2])


def _detections(boxes: Array, scores: Array, classes: Array, keep: Array) -> dict:
    return {"det_boxes": boxes.astype(jnp.float32), "det_scores": scores.astype(jnp.float32),
            "det_classes": classes.astype(jnp.int32), "det_valid": keep}


def select_detections(boxes: Array, scores: Array, classes: Array, image_size: tuple[int, int], *,
                      max_detections: int, iou_threshold: float, score_threshold: float,
                      pre_nms: int = 1000, return_index: bool = False) -> dict:
    """Per image: candidates (N, P, 4) boxes, (N, P) scores and classes -> the
    ``max_detections`` best after clipping to the image, ``top_k`` pre-selection of ``pre_nms``
    and class-aware NMS (``iou_threshold``); ``score > score_threshold`` only. With
    ``return_index`` also ``det_index`` (N, K): each detection's candidate index."""
    def one(b, s, c):
        b = box_ops.clip(b, *image_size)
        idx, keep = nms_ops.top_k(s, min(pre_nms, s.shape[0]), valid=s > score_threshold)
        b, s, c = b[idx], s[idx], c[idx]
        sel, ok = nms_ops.batched_nms(b, s, c, iou_threshold, max_detections, valid=keep,
                                      score_threshold=score_threshold)
        out = _detections(b[sel], jnp.where(ok, s[sel], 0.0), c[sel], ok)
        if return_index:
            out["det_index"] = idx[sel]
        return out
    return jax.vmap(one)(boxes, scores, classes)


# ----------------------------------------------------------------------------- YOLOv1


class YOLOv1(nn.Module):
    """YOLOv1 (Redmon et al., 2016): backbone -> 3x3 convolution -> pooled to a ``grid`` x
    ``grid`` map -> with ``head='fc'`` (the paper's) fully connected ``hidden`` -> dropout ->
    fully connected ``grid * grid * (5 * num_boxes + num_classes)``; with ``head='conv'`` a
    3x3 convolution of ``hidden`` channels and a 1x1 one to ``5B + C`` per cell (each cell sees
    its own neighbourhood, as YOLOv2 onwards). Leaky ReLU (slope 0.1) throughout, a linear
    output. Returns (N, S, S, 5B + C) float32: per cell, B predictors ``[ty, tx, sqrt_h, sqrt_w,
    confidence]`` then C class probabilities (see ``losses.yolo_v1_loss``)."""

    backbone: nn.Module
    num_classes: int
    taps: tuple[str, ...] = ()
    grid: int = 7
    num_boxes: int = 2
    head_width: int = 128
    hidden: int = 512
    dropout: float = 0.5
    head: str = "fc"
    kernel_init: str = "he"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        if self.head not in ("fc", "conv"):
            raise ValueError(f"YOLOv1 head must be 'fc' (the paper's) or 'conv', got {self.head!r}.")
        feat = backbone_features(self.backbone, x, train, self.taps)[-1]
        act = lambda h: nn.leaky_relu(h, 0.1)  # noqa: E731
        h = act(layers.conv(self.head_width, 3, "head_conv", self.dtype, jnp.float32, self.kernel_init)(feat))
        h = layers.adaptive_avg_pool(h, (self.grid, self.grid))
        depth = 5 * self.num_boxes + self.num_classes
        if self.head == "conv":
            h = act(layers.conv(self.hidden, 3, "conv1", self.dtype, jnp.float32, self.kernel_init)(h))
            out = layers.Conv(depth, (1, 1), dtype=self.dtype, name="conv2",
                          kernel_init=nn.initializers.normal(0.01))(h)
            return layers.logits(out)
        h = h.reshape(h.shape[0], -1)
        h = act(layers.dense(self.hidden, "fc1", self.dtype, jnp.float32, self.kernel_init)(h))
        h = layers.Dropout(self.dropout)(h, deterministic=not train)
        out = nn.Dense(self.grid * self.grid * depth, dtype=self.dtype, name="fc2",
                       kernel_init=nn.initializers.normal(0.01))(h)
        return layers.logits(out).reshape(-1, self.grid, self.grid, depth)


def decode_yolo_v1(pred: Array, image_size: tuple[int, int], num_boxes: int, *, max_detections: int = 100,
                   iou_threshold: float = 0.5, score_threshold: float = 0.01) -> dict:
    """Detections from YOLOv1 outputs: each predictor's box with its best class-specific
    confidence ``confidence * P(class)`` (both clipped to [0, 1]), then ``select_detections``."""
    n, s, _, depth = pred.shape
    b = num_boxes
    box_p = pred[..., :5 * b].reshape(n, s, s, b, 5)
    boxes = yolo_v1_boxes(box_p, image_size).reshape(n, -1, 4)
    conf = jnp.clip(box_p[..., 4], 0, 1)[..., None]                       # (N, S, S, B, 1)
    probs = jnp.clip(pred[..., 5 * b:], 0, 1)[:, :, :, None, :]          # (N, S, S, 1, C)
    scores = (conf * probs).reshape(n, s * s * b, depth - 5 * b)
    return select_detections(boxes, jnp.max(scores, -1), jnp.argmax(scores, -1), image_size,
                             max_detections=max_detections, iou_threshold=iou_threshold,
                             score_threshold=score_threshold)


# ----------------------------------------------------------------------------- CenterNet


class CenterNet(nn.Module):
    """CenterNet, "Objects as Points" (Zhou et al., 2019): the tapped maps merged top-down
    (``FPN``) to the finest tap, whose stride R is the output stride; three heads (3x3 conv
    ``head_width`` -> ReLU -> 1x1): ``heatmap`` (N, h, w, C) logits (bias set for a 0.1 prior),
    ``offset`` (N, h, w, 2) and ``size`` (N, h, w, 2) (height, width) in output cells."""

    backbone: nn.Module
    num_classes: int
    taps: tuple[str, ...] = ()
    width: int = 64
    head_width: int = 64
    kernel_init: str = "he"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> dict:
        feats = backbone_features(self.backbone, x, train, self.taps)
        h = FPN(self.width, self.kernel_init, self.dtype, name="fpn")(feats)[0]
        out = {}
        for name, depth, bias in (("heatmap", self.num_classes, -math.log((1 - 0.1) / 0.1)),
                                  ("offset", 2, 0.0), ("size", 2, 0.0)):
            g = nn.relu(layers.conv(self.head_width, 3, f"{name}_conv", self.dtype, jnp.float32,
                                    self.kernel_init)(h))
            out[name] = layers.logits(layers.Conv(depth, (1, 1), dtype=self.dtype, name=f"{name}_out",
                                              bias_init=nn.initializers.constant(bias))(g))
        return out


def decode_centernet(out: dict, stride: float, image_size: tuple[int, int], *, max_detections: int = 100,
                     score_threshold: float = 0.01) -> dict:
    """Detections from CenterNet outputs without NMS: peaks of the sigmoid heat maps (a cell
    equal to its 3x3 maximum), the ``max_detections`` best over every class and cell, boxes
    ``(cell + offset) * R`` +- ``size * R / 2`` clipped to the image."""
    heat = jax.nn.sigmoid(out["heatmap"])
    n, h, w, c = heat.shape
    pooled = nn.max_pool(heat, (3, 3), strides=(1, 1), padding="SAME")
    heat = jnp.where(heat == pooled, heat, 0.0).reshape(n, -1)
    k = min(int(max_detections), h * w * c)
    scores, idx = jax.lax.top_k(heat, k)
    cell, cls = idx // c, idx % c
    y, x = (cell // w).astype(jnp.float32), (cell % w).astype(jnp.float32)
    off = jnp.take_along_axis(out["offset"].reshape(n, h * w, 2), cell[..., None], axis=1)
    size = jnp.maximum(jnp.take_along_axis(out["size"].reshape(n, h * w, 2), cell[..., None], axis=1), 0)
    cy, cx = (y + off[..., 0]) * stride, (x + off[..., 1]) * stride
    bh, bw = size[..., 0] * stride, size[..., 1] * stride
    boxes = box_ops.clip(jnp.stack([cy - bh / 2, cx - bw / 2, cy + bh / 2, cx + bw / 2], -1), *image_size)
    keep = scores > score_threshold
    pad = int(max_detections) - k
    if pad:
        boxes, scores = jnp.pad(boxes, ((0, 0), (0, pad), (0, 0))), jnp.pad(scores, ((0, 0), (0, pad)))
        cls, keep = jnp.pad(cls, ((0, 0), (0, pad))), jnp.pad(keep, ((0, 0), (0, pad)))
    return _detections(boxes, jnp.where(keep, scores, 0.0), cls, keep)


# ----------------------------------------------------------------------------- RetinaNet


class RetinaNet(nn.Module):
    """RetinaNet (Lin et al., 2017): ``FPN`` over the taps, one anchor grid per level
    (``anchor_scale * stride`` times each of ``octave_scales``, each of ``aspect_ratios``),
    a classification and a box subnet shared over the levels (``head_depth`` x (3x3 conv
    ``width`` -> ReLU), then 3x3 to ``A * C`` logits with a ``prior`` bias, or ``A * 4`` R-CNN
    offsets). Returns ``logits`` (N, P, C), ``deltas`` (N, P, 4) and ``anchors`` (P, 4), P
    anchors over every level (finest first)."""

    backbone: nn.Module
    num_classes: int
    taps: tuple[str, ...] = ()
    width: int = 64
    head_depth: int = 2
    anchor_scale: float = 4.0
    octave_scales: tuple[float, ...] = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    prior: float = 0.01
    kernel_init: str = "he"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> dict:
        feats = FPN(self.width, self.kernel_init, self.dtype, name="fpn")(
            backbone_features(self.backbone, x, train, self.taps))
        a = len(self.octave_scales) * len(self.aspect_ratios)
        c = self.num_classes

        def subnet(name: str, depth: int, bias: float) -> list:
            convs = [layers.conv(self.width, 3, f"{name}_conv{i}", self.dtype, jnp.float32,
                                 self.kernel_init) for i in range(self.head_depth)]
            last = layers.Conv(depth, (3, 3), dtype=self.dtype, name=f"{name}_out",
                           kernel_init=nn.initializers.normal(0.01),
                           bias_init=nn.initializers.constant(bias))
            outs = []
            for f in feats:
                h = f
                for conv in convs:
                    h = nn.relu(conv(h))
                outs.append(layers.logits(last(h)).reshape(f.shape[0], -1, depth // a))
            return outs

        logits = subnet("cls", a * c, -math.log((1 - self.prior) / self.prior))
        deltas = subnet("box", a * 4, 0.0)
        anchors = np.concatenate([
            anchor_ops.anchor_grid(f.shape[1], f.shape[2], stride_of(x, f),
                                   [self.anchor_scale * stride_of(x, f) * s for s in self.octave_scales],
                                   self.aspect_ratios) for f in feats])
        return {"logits": jnp.concatenate(logits, 1), "deltas": jnp.concatenate(deltas, 1),
                "anchors": jnp.asarray(anchors)}


def decode_retinanet(out: dict, image_size: tuple[int, int], *, max_detections: int = 100,
                     iou_threshold: float = 0.5, score_threshold: float = 0.05,
                     pre_nms: int = 1000) -> dict:
    """Detections from RetinaNet outputs: every (anchor, class) pair scored by its sigmoid, the
    ``pre_nms`` best above ``score_threshold`` decoded, then class-aware NMS."""
    n, p, c = out["logits"].shape
    scores = jax.nn.sigmoid(out["logits"]).reshape(n, p * c)
    anchor_idx = jnp.arange(p * c) // c
    classes = jnp.broadcast_to(jnp.arange(p * c) % c, (n, p * c))
    k = min(pre_nms, p * c)
    top, idx = jax.lax.top_k(scores, k)
    a = anchor_idx[idx]
    boxes = box_ops.decode(jnp.take_along_axis(out["deltas"], a[..., None], axis=1), out["anchors"][a])
    return select_detections(boxes, top, jnp.take_along_axis(classes, idx, 1), image_size,
                             max_detections=max_detections, iou_threshold=iou_threshold,
                             score_threshold=score_threshold, pre_nms=k)
