"""Anchors over feature maps and their matching to ground-truth boxes (Faster R-CNN, RetinaNet).

Anchors are ``[y0, x0, y1, x1]`` pixels of the input image (``jaxvision/data/example.py``). The
grid is fixed by the input size, so anchors are built once on the host (numpy) and enter the
compiled step as constants; matching runs on the device (jax, jittable, ``vmap`` over a batch).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxvision.ops import boxes as box_ops

POSITIVE, NEGATIVE, IGNORE = 1, 0, -1


def anchor_grid(height: int, width: int, stride: float, sizes: Sequence[float],
                aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0)) -> np.ndarray:
    """Returns the anchors of one feature map of ``height`` x ``width`` cells, (H * W * A, 4).

    Cell ``(i, j)`` is centred on the input pixel ``((i + 0.5) * stride, (j + 0.5) * stride)``
    and holds ``A = len(sizes) * len(aspect_ratios)`` anchors: for each size ``s`` and ratio
    ``r = height / width``, a box of ``s * sqrt(r)`` by ``s / sqrt(r)`` (area ``s^2``). Order:
    row-major cells, then sizes, then ratios (the layout of a ``(H, W, A * k)`` head output
    reshaped to ``(H * W * A, k)``).
    """
    if height < 1 or width < 1 or stride <= 0 or not sizes or not aspect_ratios:
        raise ValueError(f"anchor_grid: need height, width >= 1, stride > 0 and some sizes and "
                         f"ratios; got {height}x{width}, stride {stride}, sizes {sizes}, "
                         f"ratios {aspect_ratios}.")
    if min(sizes) <= 0 or min(aspect_ratios) <= 0:
        raise ValueError(f"anchor_grid: sizes {sizes} and aspect_ratios {aspect_ratios} must be > 0.")
    s = np.asarray(sizes, np.float64)[:, None]
    r = np.sqrt(np.asarray(aspect_ratios, np.float64))[None, :]
    hw = np.stack([(s * r).reshape(-1), (s / r).reshape(-1)], -1)  # (A, 2)
    cy = (np.arange(height) + 0.5) * stride
    cx = (np.arange(width) + 0.5) * stride
    centre = np.stack(np.meshgrid(cy, cx, indexing="ij"), -1).reshape(-1, 1, 2)
    return np.concatenate([centre - hw / 2, centre + hw / 2], -1).reshape(-1, 4).astype(np.float32)


def multilevel_anchors(image_size: tuple[int, int], strides: Sequence[int],
                       sizes: Sequence[Sequence[float]],
                       aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0)) -> list[np.ndarray]:
    """Returns one ``anchor_grid`` per pyramid level: level ``l`` has stride ``strides[l]``, a
    ``ceil(H / stride) x ceil(W / stride)`` grid (the output of stride-2 'SAME' convolutions)
    and the anchor sizes ``sizes[l]``."""
    if len(strides) != len(sizes):
        raise ValueError(f"multilevel_anchors: {len(strides)} strides but {len(sizes)} size lists; "
                         "give one list of anchor sizes per level.")
    h, w = image_size
    return [anchor_grid(-(-h // s), -(-w // s), s, sz, aspect_ratios) for s, sz in zip(strides, sizes)]


def match_anchors(anchors: jax.Array, boxes: jax.Array, box_valid: jax.Array, *,
                  positive: float = 0.5, negative: float = 0.4, force_best: bool = True
                  ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Matches anchors (A, 4) to one image's ground truth ``boxes`` (M, 4) (``box_valid`` (M,)).

    An anchor is POSITIVE (1) when its best IoU is ``>= positive``, NEGATIVE (0) when it is
    ``< negative``, IGNORE (-1) in between (the ignore band). With ``force_best`` every valid
    object is also given its best anchor (the first of equal IoUs), even below ``positive``,
    so no object goes without a positive (Ren et al., 2015); an object whose boxes overlap no
    anchor at all keeps none. When two objects force the same anchor, the later one wins.

    Returns ``(matched (A,) int32, label (A,) int32, iou (A,) float32)``: the matched object's
    index (0 where none), the label, and the anchor's IoU with its matched object.
    """
    if anchors.ndim != 2 or boxes.ndim != 2 or box_valid.shape != boxes.shape[:1]:
        raise ValueError(f"match_anchors expects anchors (A, 4), boxes (M, 4), box_valid (M,); got "
                         f"{anchors.shape}, {boxes.shape}, {box_valid.shape}.")
    ious = jnp.where(box_valid[None, :], box_ops.iou(anchors, boxes), -1.0)  # (A, M)
    if boxes.shape[0] == 0:
        a = anchors.shape[0]
        return jnp.zeros(a, jnp.int32), jnp.full(a, NEGATIVE, jnp.int32), jnp.zeros(a, jnp.float32)
    matched = jnp.argmax(ious, axis=1).astype(jnp.int32)
    best = jnp.max(ious, axis=1)
    label = jnp.where(best >= positive, POSITIVE, jnp.where(best < negative, NEGATIVE, IGNORE))
    if force_best:
        anchor_of = jnp.argmax(ious, axis=0)  # (M,) each object's best anchor
        forced = box_valid & (jnp.max(ious, axis=0) > 0)
        # Scatter the object ids (later ones win on collisions) onto their anchors.
        ids = jnp.arange(boxes.shape[0], dtype=jnp.int32)
        slot = jnp.where(forced, anchor_of, anchors.shape[0])  # out of range: dropped
        owner = jnp.full(anchors.shape[0], -1, jnp.int32).at[slot].max(ids, mode="drop")
        matched = jnp.where(owner >= 0, owner, matched)
        label = jnp.where(owner >= 0, POSITIVE, label)
    iou = jnp.take_along_axis(ious, matched[:, None], axis=1)[:, 0]
    return matched, label.astype(jnp.int32), jnp.maximum(iou, 0.0).astype(jnp.float32)
