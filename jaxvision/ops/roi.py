"""Region-of-interest pooling on NHWC features with ``[y0, x0, y1, x1]`` boxes (jax, jittable).

``roi_align`` and ``roi_pool`` follow ``torchvision.ops.roi_align`` / ``roi_pool`` (translated from
NCHW and ``[x0, y0, x1, y1]``); ``fpn_levels`` and ``multilevel_roi_align`` follow torchvision's
``LevelMapper`` / ``MultiScaleRoIAlign`` (Lin et al. 2017, "Feature Pyramid Networks", eq. 1).
Boxes are in the pixels of the image plane; ``spatial_scale`` (1 / stride) maps them onto a feature
map. ``box_batch`` (K,) says which image of the batch each box belongs to; it must lie in
``[0, B)`` (out-of-range values are clamped, as nothing can be raised under jit). Everything is
differentiable with respect to the features.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxvision.ops import boxes as _boxes

Array = Any  # jax.Array or anything jnp.asarray accepts

_FLT_MAX = float(np.finfo(np.float32).max)
_POOL_LIMIT = 2 ** 16  # roi_pool clips rounded coordinates to +-this many feature pixels


def _pair(output_size: int | Sequence[int]) -> tuple[int, int]:
    size = (output_size, output_size) if isinstance(output_size, (int, np.integer)) else tuple(output_size)
    if len(size) != 2 or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0
                                 for s in size):
        raise ValueError(f"output_size must be a positive int or a pair (oh, ow) of positive ints; "
                         f"got {output_size!r}.")
    return int(size[0]), int(size[1])


def _check_rois(boxes: Array, box_batch: Array) -> tuple[jax.Array, jax.Array]:
    boxes = jnp.asarray(boxes)
    if not jnp.issubdtype(boxes.dtype, jnp.floating):
        boxes = boxes.astype(jnp.float32)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes has shape {tuple(boxes.shape)}; expected (K, 4) as [y0, x0, y1, x1] "
                         "in image pixels.")
    box_batch = jnp.asarray(box_batch)
    if box_batch.shape != (boxes.shape[0],) or not jnp.issubdtype(box_batch.dtype, jnp.integer):
        raise ValueError(f"box_batch has shape {tuple(box_batch.shape)} and dtype {box_batch.dtype}; "
                         f"expected ({boxes.shape[0]},) integers, the batch index of each box.")
    return boxes, box_batch.astype(jnp.int32)


def _check_features(features: Array, name: str = "features") -> jax.Array:
    features = jnp.asarray(features)
    if features.ndim != 4:
        raise ValueError(f"{name} has shape {tuple(features.shape)}; expected (B, H, W, C) (NHWC).")
    return features


def _check_sampling_ratio(sampling_ratio: Any) -> int:
    if isinstance(sampling_ratio, bool) or not isinstance(sampling_ratio, (int, np.integer)) \
            or sampling_ratio <= 0:
        raise ValueError(f"sampling_ratio must be a positive int; got {sampling_ratio!r}. torchvision's "
                         "adaptive sampling_ratio <= 0 (ceil(roi size / output size) samples per bin) "
                         "depends on the data and cannot be jitted with static shapes.")
    return int(sampling_ratio)


def _bilinear_axis(c: jax.Array, size: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Splits sample coordinates ``c`` (pixel-centre units) along an axis of int length ``size``
    (broadcastable to ``c``) into ``(low, high, w_low, w_high)`` as torchvision's
    ``bilinear_interpolate`` does: zero weight outside ``[-1, size]``, clamped to 0 below and to
    the last pixel at the far edge."""
    size_f = size.astype(c.dtype)
    inside = (c >= -1) & (c <= size_f)
    # Clipping to size (weight 0 beyond anyway) keeps the integer conversion in range.
    c = jnp.clip(c, 0, size_f)
    low = jnp.floor(c).astype(jnp.int32)
    edge = low >= size - 1
    low = jnp.where(edge, size - 1, low)
    high = jnp.where(edge, size - 1, low + 1)
    frac = jnp.where(edge, 0, c - low.astype(c.dtype))
    return low, high, jnp.where(inside, 1 - frac, 0), jnp.where(inside, frac, 0)


def _align(flat: jax.Array, start: jax.Array, height: jax.Array, width: jax.Array, scale: Any,
           boxes: jax.Array, oh: int, ow: int, sampling_ratio: int, aligned: bool) -> jax.Array:
    """ROI Align of each box from the ``height[k] x width[k]`` map stored row-major at
    ``flat[start[k]:]`` (``flat`` (M, C)); returns (K, oh, ow, C) in ``flat.dtype``."""
    dtype = jnp.promote_types(boxes.dtype, jnp.float32)
    boxes = boxes.astype(dtype)
    scale = jnp.asarray(scale, dtype)
    scale = scale[:, None] if scale.ndim else scale
    offset = 0.5 if aligned else 0.0
    y0, x0, y1, x1 = jnp.moveaxis(boxes * scale - offset, -1, 0)
    roi_h, roi_w = y1 - y0, x1 - x0
    if not aligned:  # legacy: rois smaller than one pixel are stretched to one pixel
        roi_h, roi_w = jnp.maximum(roi_h, 1), jnp.maximum(roi_w, 1)
    s = sampling_ratio

    def samples(lo: jax.Array, extent: jax.Array, n: int) -> jax.Array:
        # Same association as torchvision: start + p * bin + ((i + .5) * bin) / s, shape (K, n, s).
        bin_size = (extent / n)[:, None, None]
        p = jnp.arange(n, dtype=dtype)[None, :, None]
        i = jnp.arange(s, dtype=dtype)[None, None, :]
        return lo[:, None, None] + p * bin_size + (i + 0.5) * bin_size / s

    ylo, yhi, wy_lo, wy_hi = _bilinear_axis(samples(y0, roi_h, oh), height[:, None, None])
    xlo, xhi, wx_lo, wx_hi = _bilinear_axis(samples(x0, roi_w, ow), width[:, None, None])
    # Index grids (K, oh, s, ow, s): rows broadcast over the x axes and columns over the y axes.
    row = lambda r: (start[:, None, None] + r * width[:, None, None])[:, :, :, None, None]  # noqa: E731
    col = lambda c: c[:, None, None, :, :]  # noqa: E731
    wy = lambda w: w[:, :, :, None, None]  # noqa: E731
    wx = lambda w: w[:, None, None, :, :]  # noqa: E731
    total = 0
    for r, w_r in ((ylo, wy_lo), (yhi, wy_hi)):
        for c, w_c in ((xlo, wx_lo), (xhi, wx_hi)):
            values = jnp.take(flat, row(r) + col(c), axis=0, mode="clip")  # (K, oh, s, ow, s, C)
            total = total + (wy(w_r) * wx(w_c))[..., None] * values
    out = jnp.sum(total, axis=(2, 4)) / (s * s)
    return out.astype(flat.dtype)


def roi_align(features: Array, boxes: Array, box_batch: Array, output_size: int | tuple[int, int], *,
              spatial_scale: float = 1.0, sampling_ratio: int = 2, aligned: bool = True) -> jax.Array:
    """ROI Align (He et al. 2017) of ``boxes`` (K, 4) from ``features`` (B, H, W, C).

    Returns (K, oh, ow, C): each output bin averages ``sampling_ratio`` x ``sampling_ratio``
    bilinear samples at regularly spaced points inside the bin, as ``torchvision.ops.roi_align``.
    Box coordinates are multiplied by ``spatial_scale``; with ``aligned`` (the correct half-pixel
    convention) 0.5 is then subtracted, since feature pixel ``i`` has its centre at ``i + 0.5``;
    with ``aligned=False`` (legacy) rois are at least 1 x 1. Samples outside ``[-1, H] x [-1, W]``
    contribute 0; others are clamped into the map. ``output_size``, ``sampling_ratio`` and
    ``aligned`` must be static (Python values) under jit; ``sampling_ratio`` must be positive
    (torchvision's adaptive ``<= 0`` is data-dependent and not jittable). Implemented with four
    gathers of ``K * oh * ow * sampling_ratio**2`` feature vectors each.
    """
    features = _check_features(features)
    boxes, box_batch = _check_rois(boxes, box_batch)
    oh, ow = _pair(output_size)
    s = _check_sampling_ratio(sampling_ratio)
    b, h, w, c = features.shape
    k = boxes.shape[0]
    if b == 0 or h == 0 or w == 0:
        return jnp.zeros((k, oh, ow, c), features.dtype)
    start = jnp.clip(box_batch, 0, b - 1) * (h * w)
    full = lambda v: jnp.full((k,), v, jnp.int32)  # noqa: E731
    return _align(features.reshape(b * h * w, c), start, full(h), full(w), spatial_scale, boxes,
                  oh, ow, s, aligned)


def _round_half_away(x: jax.Array) -> jax.Array:
    """C's ``round``: halves go away from zero (``jnp.round`` goes to even)."""
    return jnp.sign(x) * jnp.floor(jnp.abs(x) + 0.5)


def roi_pool(features: Array, boxes: Array, box_batch: Array, output_size: int | tuple[int, int], *,
             spatial_scale: float = 1.0) -> jax.Array:
    """ROI max pooling (Fast R-CNN) of ``boxes`` (K, 4) from ``features`` (B, H, W, C).

    Returns (K, oh, ow, C) with ``torchvision.ops.roi_pool`` semantics: scaled coordinates are
    rounded (halves away from zero) and taken as inclusive pixel indices, the roi is at least
    1 x 1, bin ``p`` spans pixels ``floor(p * size / n)`` to ``ceil((p + 1) * size / n)``
    (exclusive) clipped to the map, each output is the max over its bin (NaNs ignored, at least
    -FLT_MAX) and an empty bin gives 0. Scaled coordinates beyond +-65536 are clipped there.

    Bins have data-dependent sizes, so the max is taken over the whole map under a per-bin mask,
    separably (columns, then rows): the cost is about ``K * ow * H * W * C`` (plus
    ``K * oh * ow * H * C``), fine for small feature maps but not for large ones.
    """
    features = _check_features(features)
    boxes, box_batch = _check_rois(boxes, box_batch)
    oh, ow = _pair(output_size)
    b, h, w, c = features.shape
    k = boxes.shape[0]
    if b == 0 or h == 0 or w == 0:
        return jnp.zeros((k, oh, ow, c), features.dtype)
    dtype = jnp.promote_types(boxes.dtype, jnp.float32)
    rounded = _round_half_away(boxes.astype(dtype) * jnp.asarray(spatial_scale, dtype))
    # Clipped (far beyond any feature map) so that p * extent below cannot overflow an int32.
    y0, x0, y1, x1 = jnp.moveaxis(jnp.clip(rounded, -_POOL_LIMIT, _POOL_LIMIT).astype(jnp.int32), -1, 0)

    def bin_mask(lo: jax.Array, hi: jax.Array, n: int, size: int) -> jax.Array:
        # torchvision computes floor(p * (extent / n)) in float32; for integers of this size that
        # equals the exact floor(p * extent / n), which integer division gives on every backend
        # (XLA turns float division by a constant into an inexact multiply by its reciprocal).
        extent = jnp.maximum(hi - lo + 1, 1)[:, None]
        p = jnp.arange(n, dtype=jnp.int32)[None, :]
        first = jnp.clip(p * extent // n + lo[:, None], 0, size)
        last = jnp.clip(-(-(p + 1) * extent // n) + lo[:, None], 0, size)
        i = jnp.arange(size, dtype=jnp.int32)
        return (i >= first[..., None]) & (i < last[..., None])  # (K, n, size)

    mask_y = bin_mask(y0, y1, oh, h)
    mask_x = bin_mask(x0, x1, ow, w)
    f = features[jnp.clip(box_batch, 0, b - 1)]  # (K, H, W, C)
    neg_inf = jnp.asarray(-jnp.inf, features.dtype)
    f = jnp.where(jnp.isnan(f), neg_inf, f)
    # Columns: (K, H, ow, W, C) -> (K, H, ow, C); then rows: (K, oh, H, ow, C) -> (K, oh, ow, C).
    cols = jnp.max(jnp.where(mask_x[:, None, :, :, None], f[:, :, None, :, :], neg_inf), axis=3)
    out = jnp.max(jnp.where(mask_y[:, :, :, None, None], cols[:, None], neg_inf), axis=2)
    empty = ~jnp.any(mask_y, axis=2)[:, :, None] | ~jnp.any(mask_x, axis=2)[:, None, :]
    out = jnp.maximum(out, jnp.asarray(-_FLT_MAX, features.dtype))
    return jnp.where(empty[..., None], jnp.zeros((), features.dtype), out)


def fpn_levels(boxes: Array, *, k_min: int, k_max: int, canonical_size: float = 224.0,
               canonical_level: int = 4) -> jax.Array:
    """Returns the FPN level (K,) int32 of each box (K, 4), as torchvision's ``LevelMapper``:
    ``floor(canonical_level + log2(sqrt(area) / canonical_size) + 1e-6)`` clipped to
    ``[k_min, k_max]`` (Lin et al. 2017, eq. 1; the epsilon guards exact powers of two).
    Zero-area boxes get ``k_min``.
    """
    boxes = jnp.asarray(boxes)
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes has shape {tuple(boxes.shape)}; expected (K, 4) as [y0, x0, y1, x1].")
    if k_min > k_max:
        raise ValueError(f"k_min ({k_min}) must be <= k_max ({k_max}).")
    if not jnp.issubdtype(boxes.dtype, jnp.floating):
        boxes = boxes.astype(jnp.float32)
    size = jnp.sqrt(_boxes.area(boxes))
    level = jnp.floor(canonical_level + jnp.log2(size / canonical_size) + jnp.asarray(1e-6, size.dtype))
    level = jnp.where(jnp.isnan(level), k_min, level)
    return jnp.clip(level, k_min, k_max).astype(jnp.int32)


def multilevel_roi_align(features: Sequence[Array], strides: Sequence[int], boxes: Array,
                         box_batch: Array, output_size: int | tuple[int, int], *,
                         sampling_ratio: int = 2, aligned: bool = True, canonical_size: float = 224.0,
                         canonical_level: int = 4) -> jax.Array:
    """ROI Align of each box from its FPN level, as torchvision's ``MultiScaleRoIAlign``.

    ``features`` are (B, H_l, W_l, C) maps with ``strides`` (one power of two per map, increasing
    by 2x, so map ``l`` is FPN level ``log2(stride)``). Each box (K, 4) is assigned a level with
    :func:`fpn_levels` (``k_min``/``k_max`` = first/last level) and pooled with :func:`roi_align`
    at ``spatial_scale = 1 / stride``. Returns (K, oh, ow, C). All levels are flattened into one
    array and each box gathers from its own level, so the cost is that of a single ``roi_align``.
    """
    features = [_check_features(f, f"features[{i}]") for i, f in enumerate(features)]
    strides = [int(s) for s in strides]
    if not features or len(features) != len(strides):
        raise ValueError(f"features ({len(features)} maps) and strides ({len(strides)}) must be "
                         "non-empty and of the same length, one stride per map.")
    levels = [int(round(math.log2(s))) if s > 0 else -1 for s in strides]
    if any(s <= 0 or 2 ** lv != s for s, lv in zip(strides, levels)) \
            or levels != list(range(levels[0], levels[0] + len(levels))):
        raise ValueError(f"strides must be consecutive powers of two such as (4, 8, 16, 32); got {strides}.")
    b, _, _, c = features[0].shape
    if any(f.shape[0] != b or f.shape[3] != c for f in features):
        raise ValueError(f"feature maps must share B and C; got shapes {[tuple(f.shape) for f in features]}.")
    boxes, box_batch = _check_rois(boxes, box_batch)
    oh, ow = _pair(output_size)
    s = _check_sampling_ratio(sampling_ratio)
    k = boxes.shape[0]
    dtype = jnp.result_type(*features)
    if any(f.shape[1] * f.shape[2] == 0 for f in features) or b == 0:
        return jnp.zeros((k, oh, ow, c), dtype)
    level = fpn_levels(boxes, k_min=levels[0], k_max=levels[-1], canonical_size=canonical_size,
                       canonical_level=canonical_level) - levels[0]
    sizes = [f.shape[0] * f.shape[1] * f.shape[2] for f in features]
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    per_level = lambda values, dt: jnp.asarray(np.asarray(values), dt)[level]  # noqa: E731
    height = per_level([f.shape[1] for f in features], jnp.int32)
    width = per_level([f.shape[2] for f in features], jnp.int32)
    scale = per_level([1.0 / st for st in strides], jnp.promote_types(boxes.dtype, jnp.float32))
    start = per_level(offsets, jnp.int32) + jnp.clip(box_batch, 0, b - 1) * height * width
    flat = jnp.concatenate([f.astype(dtype).reshape(-1, c) for f in features], axis=0)
    return _align(flat, start, height, width, scale, boxes, oh, ow, s, aligned)


def paste_masks(masks: Array, boxes: Array, image_size: tuple[int, int]) -> jax.Array:
    """The inverse of ``roi_align`` for masks: each (M_h, M_w) map of ``masks`` (K, M_h, M_w)
    (e.g. Mask R-CNN's 28 x 28 probabilities) stretched over its box (K, 4) of an image of
    ``image_size`` (H, W). Returns (K, H, W): at every pixel whose centre lies inside the box,
    the bilinear sample of the map at the corresponding point (map pixel centres at ``(i + 0.5)
    / M`` of the box; samples beyond the outer centres take the edge value); 0 outside the box.
    """
    masks = jnp.asarray(masks)
    boxes = jnp.asarray(boxes, jnp.float32)
    if masks.ndim != 3 or boxes.shape != (masks.shape[0], 4):
        raise ValueError(f"paste_masks expects masks (K, M_h, M_w) and boxes (K, 4); got "
                         f"{masks.shape} and {boxes.shape}.")
    h, w = int(image_size[0]), int(image_size[1])
    k, mh, mw = masks.shape

    def axis(lo, hi, n, size):  # (K, size) low / high map index, weight of high, inside box
        centre = jnp.arange(size, dtype=jnp.float32)[None, :] + 0.5
        extent = jnp.maximum(hi - lo, 1e-6)[:, None]
        u = jnp.clip((centre - lo[:, None]) / extent * n - 0.5, 0, n - 1)
        low = jnp.floor(u).astype(jnp.int32)
        high = jnp.minimum(low + 1, n - 1)
        return low, high, u - low, (centre >= lo[:, None]) & (centre < hi[:, None])

    ylo, yhi, fy, iny = axis(boxes[:, 0], boxes[:, 2], mh, h)
    xlo, xhi, fx, inx = axis(boxes[:, 1], boxes[:, 3], mw, w)
    rows = jnp.arange(k)[:, None, None]

    def at(r, c):
        return masks[rows, r[:, :, None], c[:, None, :]].astype(jnp.float32)

    top = at(ylo, xlo) * (1 - fx[:, None, :]) + at(ylo, xhi) * fx[:, None, :]
    bottom = at(yhi, xlo) * (1 - fx[:, None, :]) + at(yhi, xhi) * fx[:, None, :]
    value = top * (1 - fy[:, :, None]) + bottom * fy[:, :, None]
    return jnp.where(iny[:, :, None] & inx[:, None, :], value, 0.0)
