"""Box operations on ``[y0, x0, y1, x1]`` boxes in absolute pixels (see ``jaxvision/data/example.py``).

Every function works on numpy arrays (host, inside the data pipeline) and on jax arrays (device,
inside a jitted loss or metric): the array module is picked from the argument types, so jax is
never imported by host-only code. Boxes are ``(..., 4)``; integer input is promoted to float32.
"""

from __future__ import annotations

import math
import sys
from types import ModuleType
from typing import Any

import numpy as np

Array = Any  # np.ndarray or jax.Array


def _xp(*arrays: Any) -> ModuleType:
    """Returns ``jax.numpy`` if any argument is a jax array (or tracer), else ``numpy``."""
    jax = sys.modules.get("jax")  # a jax array cannot exist unless jax was imported
    if jax is not None and any(isinstance(a, jax.Array) for a in arrays):
        import jax.numpy as jnp
        return jnp
    return np


def _as_boxes(boxes: Array, name: str = "boxes") -> tuple[Array, ModuleType]:
    xp = _xp(boxes)
    boxes = xp.asarray(boxes)
    if not xp.issubdtype(boxes.dtype, xp.floating):
        boxes = boxes.astype(xp.float32)
    if boxes.ndim < 1 or boxes.shape[-1] != 4:
        raise ValueError(f"{name} has shape {tuple(boxes.shape)}; expected (..., 4) as "
                         "[y0, x0, y1, x1] in pixels.")
    return boxes, xp


def area(boxes: Array) -> Array:
    """Returns the area ``(y1 - y0) * (x1 - x0)`` of each box, shape ``boxes.shape[:-1]``.

    Inverted boxes (y1 < y0 or x1 < x0) have area 0, so they never produce a negative union.
    """
    boxes, xp = _as_boxes(boxes)
    h = xp.maximum(boxes[..., 2] - boxes[..., 0], 0)
    w = xp.maximum(boxes[..., 3] - boxes[..., 1], 0)
    return h * w


def iou(a: Array, b: Array) -> Array:
    """Returns the pairwise intersection-over-union of ``a`` (N, 4) and ``b`` (M, 4), shape (N, M).

    Pairs whose union is empty (two zero-area boxes) get IoU 0.
    """
    a, xp = _as_boxes(a, "a")
    b, _ = _as_boxes(b, "b")
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"iou expects a (N, 4) and b (M, 4); got {tuple(a.shape)} and {tuple(b.shape)}.")
    lo = xp.maximum(a[:, None, :2], b[None, :, :2])
    hi = xp.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = xp.maximum(hi - lo, 0)
    inter = wh[..., 0] * wh[..., 1]
    union = area(a)[:, None] + area(b)[None, :] - inter
    ok = union > 0
    return xp.where(ok, inter / xp.where(ok, union, 1), 0).astype(a.dtype)


def clip(boxes: Array, height: float, width: float) -> Array:
    """Returns ``boxes`` clipped to the image plane ``[0, height] x [0, width]``, same shape."""
    boxes, xp = _as_boxes(boxes)
    hi = xp.asarray([height, width, height, width], dtype=boxes.dtype)
    return xp.clip(boxes, 0, hi)


def flip_lr(boxes: Array, width: float) -> Array:
    """Returns the boxes of the horizontally mirrored image (``x -> width - x``), same shape."""
    boxes, xp = _as_boxes(boxes)
    y0, x0, y1, x1 = (boxes[..., i] for i in range(4))
    return xp.stack([y0, width - x1, y1, width - x0], axis=-1)


def scale(boxes: Array, sy: float, sx: float) -> Array:
    """Returns ``boxes`` with y multiplied by ``sy`` and x by ``sx`` (an image resize), same shape."""
    boxes, xp = _as_boxes(boxes)
    return boxes * xp.asarray([sy, sx, sy, sx], dtype=boxes.dtype)


def translate(boxes: Array, dy: float, dx: float) -> Array:
    """Returns ``boxes`` shifted by ``(dy, dx)`` pixels (e.g. ``(-top, -left)`` for a crop), same shape."""
    boxes, xp = _as_boxes(boxes)
    return boxes + xp.asarray([dy, dx, dy, dx], dtype=boxes.dtype)


def valid(boxes: Array, min_size: float = 1.0) -> Array:
    """Returns a bool array ``boxes.shape[:-1]``: True where both sides are >= ``min_size`` pixels
    and all coordinates are finite."""
    boxes, xp = _as_boxes(boxes)
    finite = xp.all(xp.isfinite(boxes), axis=-1)
    return finite & (boxes[..., 2] - boxes[..., 0] >= min_size) & (boxes[..., 3] - boxes[..., 1] >= min_size)


def from_instance_mask(instance_mask: Array, num: int) -> Array:
    """Returns the tight box of each instance ``k = 1..num`` of ``instance_mask`` (H, W), shape (num, 4).

    Row ``k - 1`` encloses the pixels equal to ``k``: rows ``r0..r1`` and columns ``c0..c1`` give
    ``[r0, c0, r1 + 1, c1 + 1]``. Instances with no pixel get ``[0, 0, 0, 0]``; ids outside
    ``1..num`` are ignored. ``num`` must be a Python int (it fixes the output shape under jit).
    """
    xp = _xp(instance_mask)
    m = xp.asarray(instance_mask)
    if m.ndim != 2:
        raise ValueError(f"instance_mask has shape {tuple(m.shape)}; expected (H, W) with "
                         "0 = background and k >= 1 = the object of boxes[k - 1].")
    num = int(num)
    h, w = m.shape
    ids = m.reshape(-1).astype(xp.int32)
    # Pixels outside 1..num go to the dummy slot 0, which keeps shapes static for jax.
    ids = xp.where((ids >= 1) & (ids <= num), ids, 0)
    rows = xp.repeat(xp.arange(h, dtype=xp.int32), w)
    cols = xp.tile(xp.arange(w, dtype=xp.int32), h)
    big = max(h, w)
    if xp is np:
        y0, x0 = np.full(num + 1, big, np.int32), np.full(num + 1, big, np.int32)
        y1, x1 = np.full(num + 1, -1, np.int32), np.full(num + 1, -1, np.int32)
        np.minimum.at(y0, ids, rows)
        np.minimum.at(x0, ids, cols)
        np.maximum.at(y1, ids, rows)
        np.maximum.at(x1, ids, cols)
    else:
        y0 = xp.full(num + 1, big, xp.int32).at[ids].min(rows)
        x0 = xp.full(num + 1, big, xp.int32).at[ids].min(cols)
        y1 = xp.full(num + 1, -1, xp.int32).at[ids].max(rows)
        x1 = xp.full(num + 1, -1, xp.int32).at[ids].max(cols)
    out = xp.stack([y0, x0, y1 + 1, x1 + 1], axis=-1)[1:].astype(xp.float32)
    present = (y1 >= 0)[1:]
    return xp.where(present[:, None], out, 0).astype(xp.float32)


# ----------------------------------------------------------------------------- formats

FORMATS = ("yxyx", "xyxy", "xywh", "cxcywh")


def convert(boxes: Array, src: str, dst: str) -> Array:
    """Returns ``boxes`` (..., 4) converted from format ``src`` to ``dst``, same shape.

    Formats (absolute pixels): ``yxyx`` = ``[y0, x0, y1, x1]`` (this project's), ``xyxy`` =
    ``[x0, y0, x1, y1]`` (torchvision), ``xywh`` = ``[x0, y0, width, height]`` (COCO files),
    ``cxcywh`` = ``[centre x, centre y, width, height]`` (YOLO files, unnormalized).
    """
    for name, fmt in (("src", src), ("dst", dst)):
        if fmt not in FORMATS:
            raise ValueError(f"convert: {name}={fmt!r} is not a box format; formats: {', '.join(FORMATS)}.")
    boxes, xp = _as_boxes(boxes)
    a, b, c, d = (boxes[..., i] for i in range(4))
    if src == "xyxy":
        y0, x0, y1, x1 = b, a, d, c
    elif src == "xywh":
        y0, x0, y1, x1 = b, a, b + d, a + c
    elif src == "cxcywh":
        y0, x0, y1, x1 = b - d / 2, a - c / 2, b + d / 2, a + c / 2
    else:
        y0, x0, y1, x1 = a, b, c, d
    if dst == "xyxy":
        out = (x0, y0, x1, y1)
    elif dst == "xywh":
        out = (x0, y0, x1 - x0, y1 - y0)
    elif dst == "cxcywh":
        out = ((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0)
    else:
        out = (y0, x0, y1, x1)
    return xp.stack(out, axis=-1)


# ----------------------------------------------------------------------------- overlaps


def _overlap(a: Array, b: Array, xp: ModuleType) -> tuple[Array, Array, Array]:
    """Intersection, union and enclosing-box area of broadcast boxes ``a``, ``b`` (..., 4)."""
    lo, hi = xp.maximum(a[..., :2], b[..., :2]), xp.minimum(a[..., 2:], b[..., 2:])
    wh = xp.maximum(hi - lo, 0)
    inter = wh[..., 0] * wh[..., 1]
    union = area(a) + area(b) - inter
    elo, ehi = xp.minimum(a[..., :2], b[..., :2]), xp.maximum(a[..., 2:], b[..., 2:])
    ewh = xp.maximum(ehi - elo, 0)
    return inter, union, ewh[..., 0] * ewh[..., 1]


def _safe_div(x: Array, y: Array, xp: ModuleType) -> Array:
    ok = y > 0
    return xp.where(ok, x / xp.where(ok, y, 1), 0)


def paired_iou(a: Array, b: Array) -> Array:
    """Returns the IoU of corresponding boxes of ``a`` and ``b`` (broadcast (..., 4)), shape
    ``(...)``; 0 where the union is empty. Differentiable (the gradient is 0 there)."""
    a, xp = _as_boxes(a, "a")
    b, _ = _as_boxes(b, "b")
    inter, union, _ = _overlap(a, b, xp)
    return _safe_div(inter, union, xp)


def paired_giou(a: Array, b: Array) -> Array:
    """Returns the generalized IoU (Rezatofighi et al., 2019) of corresponding boxes, shape
    ``(...)``, in [-1, 1]: ``IoU - (enclosing area - union) / enclosing area``. Safe on
    zero-area boxes: the IoU term is 0 where the union is empty and the penalty 0 where the
    enclosing box is empty."""
    a, xp = _as_boxes(a, "a")
    b, _ = _as_boxes(b, "b")
    inter, union, enclose = _overlap(a, b, xp)
    return _safe_div(inter, union, xp) - _safe_div(enclose - union, enclose, xp)


def giou(a: Array, b: Array) -> Array:
    """Returns the pairwise generalized IoU of ``a`` (N, 4) and ``b`` (M, 4), shape (N, M)."""
    a, xp = _as_boxes(a, "a")
    b, _ = _as_boxes(b, "b")
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"giou expects a (N, 4) and b (M, 4); got {tuple(a.shape)} and {tuple(b.shape)}.")
    return paired_giou(a[:, None, :], b[None, :, :])


# ----------------------------------------------------------------------------- R-CNN coding

BBOX_CLIP = math.log(1000.0 / 16)  # torchvision's cap on decoded log-size offsets


def encode(boxes: Array, anchors: Array, weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
           ) -> Array:
    """Returns the R-CNN offsets of ``boxes`` from ``anchors`` (broadcast (..., 4)), (..., 4).

    ``[dy, dx, dh, dw] = [wy (cy - acy) / ah, wx (cx - acx) / aw, wh log(h / ah), ww log(w / aw)]``
    with ``weights = (wy, wx, wh, ww)``: torchvision's ``BoxCoder`` in this project's y-first
    order (its ``(10, 10, 5, 5)`` for the Fast R-CNN head). Sides are floored at a tiny
    positive value so degenerate boxes give finite offsets.
    """
    boxes, xp = _as_boxes(boxes)
    anchors, _ = _as_boxes(anchors, "anchors")
    wy, wx, wh, ww = weights
    ah = xp.maximum(anchors[..., 2] - anchors[..., 0], 1e-6)
    aw = xp.maximum(anchors[..., 3] - anchors[..., 1], 1e-6)
    h = xp.maximum(boxes[..., 2] - boxes[..., 0], 1e-6)
    w = xp.maximum(boxes[..., 3] - boxes[..., 1], 1e-6)
    dy = wy * ((boxes[..., 0] + boxes[..., 2]) - (anchors[..., 0] + anchors[..., 2])) / (2 * ah)
    dx = wx * ((boxes[..., 1] + boxes[..., 3]) - (anchors[..., 1] + anchors[..., 3])) / (2 * aw)
    return xp.stack([dy, dx, wh * xp.log(h / ah), ww * xp.log(w / aw)], axis=-1)


def decode(deltas: Array, anchors: Array, weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
           clip: float = BBOX_CLIP) -> Array:
    """Returns the boxes (..., 4) that ``deltas`` (..., 4) encode against ``anchors`` (the
    inverse of ``encode``); log-size offsets are capped at ``clip`` so a wild prediction
    cannot overflow ``exp``."""
    deltas, xp = _as_boxes(deltas, "deltas")
    anchors, _ = _as_boxes(anchors, "anchors")
    wy, wx, wh, ww = weights
    ah = anchors[..., 2] - anchors[..., 0]
    aw = anchors[..., 3] - anchors[..., 1]
    cy = anchors[..., 0] + 0.5 * ah + deltas[..., 0] / wy * ah
    cx = anchors[..., 1] + 0.5 * aw + deltas[..., 1] / wx * aw
    h = ah * xp.exp(xp.minimum(deltas[..., 2] / wh, clip))
    w = aw * xp.exp(xp.minimum(deltas[..., 3] / ww, clip))
    return xp.stack([cy - 0.5 * h, cx - 0.5 * w, cy + 0.5 * h, cx + 0.5 * w], axis=-1)
