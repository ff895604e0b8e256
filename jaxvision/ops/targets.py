"""Training targets of the detectors, built on the device from padded ground truth (jittable).

Ground truth arrives as the loader pads it (``jaxvision/data/loader.py``): ``boxes`` (N, M, 4)
``[y0, x0, y1, x1]`` pixels, ``box_classes`` (N, M) int, ``box_valid`` (N, M) bool.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxvision.ops import boxes as box_ops


class YoloTargets(NamedTuple):
    """YOLOv1 targets per cell (N, S, S): ``has_object`` (float 0/1), the responsible object's
    ``box`` (.., 4) pixels, ``offset`` (.., 2) its centre inside the cell (cell units, y then
    x), ``sqrt_size`` (.., 2) square roots of its height and width over the image's, ``cls``."""

    has_object: jax.Array
    box: jax.Array
    offset: jax.Array
    sqrt_size: jax.Array
    cls: jax.Array


def yolo_v1_targets(boxes: jax.Array, box_classes: jax.Array, box_valid: jax.Array,
                    image_size: tuple[int, int], grid: int, num_classes: int) -> YoloTargets:
    """Assigns every valid object to the grid cell (of ``grid`` x ``grid``) holding its centre;
    when several share a cell, the largest (then the last) is that cell's object."""
    h, w = image_size
    n, m, _ = boxes.shape
    b = boxes.astype(jnp.float32)
    cy, cx = (b[..., 0] + b[..., 2]) / 2, (b[..., 1] + b[..., 3]) / 2
    gy = jnp.clip(jnp.floor(cy / h * grid), 0, grid - 1).astype(jnp.int32)
    gx = jnp.clip(jnp.floor(cx / w * grid), 0, grid - 1).astype(jnp.int32)
    cell = jnp.where(box_valid, gy * grid + gx, grid * grid)                   # (N, M)
    # Priority = area rank then index: the winner per cell by a scatter-max of the priority.
    area = box_ops.area(b)
    rank = jnp.argsort(jnp.argsort(area, axis=1, stable=True), axis=1)  # ties: later index higher
    rows = jnp.arange(n)[:, None]
    owner = jnp.full((n, grid * grid + 1), -1, jnp.int32).at[rows, cell].max(rank.astype(jnp.int32))
    owner = owner[:, :grid * grid]                                             # (N, S*S) rank
    winner = jnp.argmax(rank[:, None, :] == owner[:, :, None], axis=-1)        # (N, S*S) index
    has = (owner >= 0).astype(jnp.float32)
    box = jnp.take_along_axis(b, winner[..., None], axis=1)                    # (N, S*S, 4)
    cls = jnp.take_along_axis(box_classes.astype(jnp.int32), winner, axis=1)
    ii = (jnp.arange(grid * grid) // grid).astype(jnp.float32)
    jj = (jnp.arange(grid * grid) % grid).astype(jnp.float32)
    bcy, bcx = (box[..., 0] + box[..., 2]) / 2, (box[..., 1] + box[..., 3]) / 2
    offset = jnp.stack([bcy / h * grid - ii, bcx / w * grid - jj], -1)
    size = jnp.stack([jnp.sqrt(jnp.maximum(box[..., 2] - box[..., 0], 0) / h),
                      jnp.sqrt(jnp.maximum(box[..., 3] - box[..., 1], 0) / w)], -1)
    shape = (n, grid, grid)
    mask = has[..., None]
    return YoloTargets(has.reshape(shape), (box * mask).reshape(shape + (4,)),
                       (offset * mask).reshape(shape + (2,)), (size * mask).reshape(shape + (2,)),
                       jnp.where(has > 0, cls, 0).reshape(shape))


def yolo_v1_boxes(box_p: jax.Array, image_size: tuple[int, int]) -> jax.Array:
    """Pixel boxes (N, S, S, B, 4) of YOLOv1 predictors ``box_p`` (N, S, S, B, >= 4) =
    ``[ty, tx, sqrt_h, sqrt_w, ...]`` (the inverse of ``yolo_v1_targets``' coding)."""
    s = box_p.shape[1]
    h, w = image_size
    i = jnp.arange(s, dtype=jnp.float32)
    cy = (i[None, :, None, None] + box_p[..., 0]) * (h / s)
    cx = (i[None, None, :, None] + box_p[..., 1]) * (w / s)
    bh, bw = box_p[..., 2] ** 2 * h, box_p[..., 3] ** 2 * w
    return jnp.stack([cy - bh / 2, cx - bw / 2, cy + bh / 2, cx + bw / 2], axis=-1)


def gaussian_radius(height: jax.Array, width: jax.Array, min_overlap: float = 0.7) -> jax.Array:
    """CornerNet's radius (Law & Deng, 2018) used by CenterNet: the largest shift of a box's
    corners that keeps its IoU with the original above ``min_overlap``, the minimum of the
    three cases' quadratic roots. Same shape as ``height``."""
    h, w = height.astype(jnp.float32), width.astype(jnp.float32)
    b1 = h + w
    c1 = w * h * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + jnp.sqrt(jnp.maximum(b1 ** 2 - 4 * c1, 0))) / 2
    b2 = 2 * (h + w)
    c2 = (1 - min_overlap) * w * h
    r2 = (b2 + jnp.sqrt(jnp.maximum(b2 ** 2 - 16 * c2, 0))) / 2
    a3 = 4 * min_overlap
    b3 = -2 * min_overlap * (h + w)
    c3 = (min_overlap - 1) * w * h
    r3 = (b3 + jnp.sqrt(jnp.maximum(b3 ** 2 - 4 * a3 * c3, 0))) / 2
    return jnp.minimum(jnp.minimum(r1, r2), r3)


class CenterNetTargets(NamedTuple):
    """CenterNet targets at the output resolution (N, h, w): ``heatmap`` (.., C) Gaussian splats
    peaking at 1 on object centres, and per object (N, M): its centre ``cell`` index
    (``y * w + x``), sub-cell ``offset`` (.., 2), ``size`` (.., 2) (height, width in output
    cells) and ``valid``."""

    heatmap: jax.Array
    cell: jax.Array
    offset: jax.Array
    size: jax.Array
    valid: jax.Array


def centernet_targets(boxes: jax.Array, box_classes: jax.Array, box_valid: jax.Array,
                      output_size: tuple[int, int], stride: int, num_classes: int,
                      min_overlap: float = 0.7) -> CenterNetTargets:
    """Objects as points (Zhou et al., 2019): object k of class c puts
    ``exp(-((x - px)^2 + (y - py)^2) / (2 sigma^2))`` on channel c around its low-resolution
    centre ``p = floor(centre / stride)``, ``sigma = (2 r + 1) / 6`` with ``r`` the
    ``gaussian_radius`` of its size (at least 0), overlapping splats of a class combined by
    maximum."""
    oh, ow = output_size
    b = boxes.astype(jnp.float32) / stride
    cy, cx = (b[..., 0] + b[..., 2]) / 2, (b[..., 1] + b[..., 3]) / 2
    py = jnp.clip(jnp.floor(cy), 0, oh - 1)
    px = jnp.clip(jnp.floor(cx), 0, ow - 1)
    bh = jnp.maximum(b[..., 2] - b[..., 0], 0)
    bw = jnp.maximum(b[..., 3] - b[..., 1], 0)
    radius = jnp.maximum(jnp.floor(gaussian_radius(bh, bw, min_overlap)), 0)
    sigma = (2 * radius + 1) / 6
    yy = jnp.arange(oh, dtype=jnp.float32)[None, None, :, None]
    xx = jnp.arange(ow, dtype=jnp.float32)[None, None, None, :]
    d2 = (yy - py[..., None, None]) ** 2 + (xx - px[..., None, None]) ** 2    # (N, M, h, w)
    g = jnp.exp(-d2 / (2 * sigma[..., None, None] ** 2))
    # Like the reference implementation, the splat is cut to the (2r + 1)^2 square.
    inside = (jnp.abs(yy - py[..., None, None]) <= radius[..., None, None]) & \
             (jnp.abs(xx - px[..., None, None]) <= radius[..., None, None])
    g = jnp.where(inside & box_valid[..., None, None], g, 0.0)
    onehot = jax.nn.one_hot(box_classes, num_classes, dtype=jnp.float32)      # (N, M, C)
    heatmap = jnp.max(g[..., None] * onehot[:, :, None, None, :], axis=1)     # (N, h, w, C)
    cell = (py * ow + px).astype(jnp.int32)
    offset = jnp.stack([cy - py, cx - px], -1)
    return CenterNetTargets(heatmap, cell, offset, jnp.stack([bh, bw], -1), box_valid)


def sample_balanced(labels: jax.Array, key: jax.Array, total: int, positive_fraction: float
                    ) -> jax.Array:
    """Random minibatch of a 1-D label array (1 positive, 0 negative, -1 ignored), as Faster
    R-CNN samples anchors and RoIs: up to ``total * positive_fraction`` positives, negatives
    filling the rest. Returns a bool mask of the chosen entries, same shape (jittable: the
    draw is a random priority per entry, the chosen ones those with the highest)."""
    n = labels.shape[0]
    want_pos = int(total * positive_fraction)
    prio = jax.random.uniform(key, (n,))
    pos, neg = labels == 1, labels == 0
    num_pos = jnp.minimum(jnp.sum(pos), want_pos)
    num_neg = jnp.minimum(jnp.sum(neg), total - num_pos)
    # Rank of each entry among its kind by priority (0 = highest).
    order_pos = jnp.argsort(jnp.where(pos, -prio, 2.0))
    order_neg = jnp.argsort(jnp.where(neg, -prio, 2.0))
    rank_pos = jnp.zeros(n, jnp.int32).at[order_pos].set(jnp.arange(n, dtype=jnp.int32))
    rank_neg = jnp.zeros(n, jnp.int32).at[order_neg].set(jnp.arange(n, dtype=jnp.int32))
    return (pos & (rank_pos < num_pos)) | (neg & (rank_neg < num_neg))
