"""Stereo ops, jittable, NHWC: matching costs, cost volumes, winner-takes-all, correlation,
soft-argmin, warping, SSIM, smoothness and left-right consistency, disparity <-> depth.

Conventions (``jaxvision/data/example.py``): for the left view ``left[y, x] == right[y, x - d]``
with ``d = disparity[y, x] >= 0``; the right view's disparity ``d_r`` has ``right[y, x] ==
left[y, x + d_r]``. Negative disparity means invalid (``INVALID_DISPARITY`` = -1). Cost volumes
are (B, H, W, D) with ``D = max_disparity + 1`` candidates ``d = 0 .. max_disparity``; lower cost
is a better match. A candidate whose matching pixel falls outside the other image (``x - d < 0``
for the left view) is invalid: its cost is ``+inf`` (``cost_volume``), or its feature product /
feature pair is zero (``correlation``, ``concat_volume``).

``left_right_consistency`` (the last function) is host-side numpy: the mask of the left pixels
visible in both views, from the two ground-truth maps (the non-occluded pixels of an evaluation).
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxvision.data.example import disparity_valid

INVALID = -1.0
COSTS = ("sad", "ssd", "ncc")


def _float(x: jax.Array) -> jax.Array:
    """float32 at least (bfloat16 / ints promoted; float64 kept, for gradient checks)."""
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def shift_right_view(right: jax.Array, d: int, fill: float | None = None) -> jax.Array:
    """``right`` moved ``d`` pixels to the right: ``out[:, y, x] = right[:, y, x - d]`` for
    x >= d; columns x < d repeat column 0 (``fill=None``) or hold ``fill``. (B, H, W, ...)."""
    if d == 0:
        return right
    w = right.shape[2]
    if fill is None:
        pad = jnp.repeat(right[:, :, :1], d, axis=2)
    else:
        pad = jnp.full(right.shape[:2] + (d,) + right.shape[3:], fill, right.dtype)
    return jnp.concatenate([pad, right[:, :, :w - d]], axis=2)


def shift_left_view(left: jax.Array, d: int, fill: float | None = None) -> jax.Array:
    """``left`` moved ``d`` pixels to the left: ``out[:, y, x] = left[:, y, x + d]`` for
    x < W - d; the last d columns repeat column W-1 (``fill=None``) or hold ``fill``."""
    if d == 0:
        return left
    if fill is None:
        pad = jnp.repeat(left[:, :, -1:], d, axis=2)
    else:
        pad = jnp.full(left.shape[:2] + (d,) + left.shape[3:], fill, left.dtype)
    return jnp.concatenate([left[:, :, d:], pad], axis=2)


def box_mean(x: jax.Array, window: int) -> jax.Array:
    """Mean over the ``window`` x ``window`` neighbourhood of each pixel of (B, H, W, C), the
    window cut at the image border (the mean of the pixels inside). ``window`` must be odd."""
    if window % 2 != 1 or window < 1:
        raise ValueError(f"window must be a positive odd number of pixels; got {window}.")
    if window == 1:
        return x
    r = window // 2
    # Two 1-D sums (rows, then columns): 2 x window adds per pixel instead of window^2.
    total = lax.reduce_window(x, 0.0, lax.add, (1, window, 1, 1), (1, 1, 1, 1),
                              ((0, 0), (r, r), (0, 0), (0, 0)))
    total = lax.reduce_window(total, 0.0, lax.add, (1, 1, window, 1), (1, 1, 1, 1),
                              ((0, 0), (0, 0), (r, r), (0, 0)))

    def inside(n):  # pixels of each window along one axis that lie inside the image
        i = jnp.arange(n)
        return (jnp.minimum(i + r, n - 1) - jnp.maximum(i - r, 0) + 1).astype(x.dtype)
    count = inside(x.shape[1])[:, None] * inside(x.shape[2])[None, :]
    return total / count[None, :, :, None]


def _columns_valid(w: int, d: int, view: str) -> jax.Array:
    x = jnp.arange(w)
    return x >= d if view == "left" else x < w - d


def cost_volume(left: jax.Array, right: jax.Array, max_disparity: int,
                cost: Literal["sad", "ssd", "ncc"] = "sad", window: int = 5,
                view: Literal["left", "right"] = "left", eps: float = 1e-6) -> jax.Array:
    """The matching cost of every pixel at every disparity ``0 .. max_disparity``.

    ``left``, ``right``: (B, H, W, C) float images. For ``view='left'`` the candidate of pixel
    (y, x) at d is ``right[y, x - d]``; for ``view='right'`` pixel (y, x) of the right image is
    compared with ``left[y, x + d]``. Costs over a ``window`` x ``window`` patch (cut at the image
    border; columns beyond the other image's edge repeat its edge column):

    * ``'sad'``: mean over the patch of the sum over channels of |L - R|;
    * ``'ssd'``: the same with (L - R)^2;
    * ``'ncc'``: 1 - the normalized cross-correlation of the two patches (zero-mean per channel,
      the dot product over patch and channels divided by the product of the norms; ``eps``
      keeps flat patches finite), in [0, 2].

    Returns (B, H, W, max_disparity + 1) float32; ``+inf`` where the candidate pixel lies
    outside the other image (x - d < 0, resp. x + d >= W).
    """
    if cost not in COSTS:
        raise ValueError(f"cost must be one of {COSTS}; got {cost!r}.")
    if left.shape != right.shape or left.ndim != 4:
        raise ValueError(f"left and right must be (B, H, W, C) of one shape; got {left.shape} "
                         f"and {right.shape}.")
    left, right = left.astype(jnp.float32), right.astype(jnp.float32)
    ref, other = (left, right) if view == "left" else (right, left)
    shift = shift_right_view if view == "left" else shift_left_view
    w = left.shape[2]
    if cost == "ncc":
        mu_ref = box_mean(ref, window)
        var_ref = jnp.sum(box_mean(ref * ref, window) - mu_ref ** 2, -1)
    out = []
    for d in range(max_disparity + 1):
        o = shift(other, d)
        if cost == "ncc":
            # The moved image's own window statistics: near the border its windows hold the
            # repeated edge column, which the unmoved image's statistics would not.
            mu_o = box_mean(o, window)
            var_o = jnp.sum(box_mean(o * o, window) - mu_o ** 2, -1)
            cov = jnp.sum(box_mean(ref * o, window) - mu_ref * mu_o, -1)
            c = 1.0 - cov / jnp.sqrt(jnp.maximum(var_ref, 0) * jnp.maximum(var_o, 0) + eps)
        else:
            diff = jnp.abs(ref - o) if cost == "sad" else (ref - o) ** 2
            c = box_mean(jnp.sum(diff, -1, keepdims=True), window)[..., 0]
        out.append(jnp.where(_columns_valid(w, d, view), c, jnp.inf))
    return jnp.stack(out, -1)


def winner_takes_all(cost: jax.Array, subpixel: bool = True) -> jax.Array:
    """The disparity of least cost per pixel of a (B, H, W, D) cost volume -> (B, H, W)
    float32 (``INVALID`` where every candidate is ``+inf``). ``subpixel``: refined by the vertex
    of the parabola through the costs at d - 1, d, d + 1 (offset clipped to [-0.5, 0.5]; not
    refined at the range's ends, at an infinite neighbour or a non-convex triple)."""
    d = jnp.argmin(cost, -1)
    best = jnp.take_along_axis(cost, d[..., None], -1)[..., 0]
    disp = d.astype(jnp.float32)
    if subpixel:
        n = cost.shape[-1]
        lo = jnp.take_along_axis(cost, jnp.maximum(d - 1, 0)[..., None], -1)[..., 0]
        hi = jnp.take_along_axis(cost, jnp.minimum(d + 1, n - 1)[..., None], -1)[..., 0]
        curv = lo - 2 * best + hi
        ok = (d > 0) & (d < n - 1) & jnp.isfinite(lo) & jnp.isfinite(hi) & (curv > 0)
        offset = jnp.clip((lo - hi) / jnp.where(ok, 2 * curv, 1.0), -0.5, 0.5)
        disp = disp + jnp.where(ok, offset, 0.0)
    return jnp.where(jnp.isfinite(best), disp, INVALID)


def left_right_check(disp_left: jax.Array, disp_right: jax.Array, tolerance: float = 1.0) -> jax.Array:
    """``disp_left`` (B, H, W) with ``INVALID`` where it disagrees with the right view's map:
    pixel (y, x) with left disparity d keeps it when |d - disp_right[y, round(x - d)]| <=
    ``tolerance`` (and that right pixel exists and is valid); occlusions fail this check."""
    w = disp_left.shape[2]
    x = jnp.arange(w, dtype=jnp.float32)
    xr = jnp.round(x - disp_left).astype(jnp.int32)
    inside = (xr >= 0) & (xr < w) & (disp_left >= 0)
    dr = jnp.take_along_axis(disp_right, jnp.clip(xr, 0, w - 1), axis=2)
    ok = inside & (dr >= 0) & (jnp.abs(disp_left - dr) <= tolerance)
    return jnp.where(ok, disp_left, INVALID)


def correlation(left: jax.Array, right: jax.Array, max_displacement: int, stride: int = 1) -> jax.Array:
    """DispNet-C's 1-D correlation layer: ``out[b, y, x, k] = mean_c left[b, y, x, c] *
    right[b, y, x - d_k, c]`` for ``d_k = k * stride``, ``k = 0 .. max_displacement // stride``;
    0 where x - d_k < 0. (B, H, W, C) features -> (B, H, W, K) float32."""
    w = left.shape[2]
    out = []
    for d in range(0, max_displacement + 1, stride):
        prod = jnp.mean(left.astype(jnp.float32) * shift_right_view(right, d, 0.0).astype(jnp.float32), -1)
        out.append(jnp.where(jnp.arange(w) >= d, prod, 0.0))
    return jnp.stack(out, -1)


def concat_volume(left: jax.Array, right: jax.Array, num_disparities: int) -> jax.Array:
    """GC-Net's concatenation cost volume: (B, H, W, C) features -> (B, D, H, W, 2C) with
    ``out[b, d, y, x] = [left[b, y, x], right[b, y, x - d]]`` for ``d < num_disparities``, both
    halves zero where x - d < 0."""
    w = left.shape[2]
    out = []
    for d in range(num_disparities):
        pair = jnp.concatenate([left, shift_right_view(right, d, 0.0)], -1)
        out.append(jnp.where((jnp.arange(w) >= d)[None, None, :, None], pair, 0))
    return jnp.stack(out, 1)


def soft_argmin(cost: jax.Array, axis: int = -1) -> jax.Array:
    """``sum_d d * softmax(-cost)_d`` along ``axis`` (GC-Net's differentiable disparity): the
    expected disparity under the softmax of the negated costs; ``+inf`` costs get weight 0."""
    n = cost.shape[axis]
    p = jax.nn.softmax(-_float(cost), axis=axis)
    shape = [1] * cost.ndim
    shape[axis] = n
    return jnp.sum(p * jnp.arange(n, dtype=p.dtype).reshape(shape), axis=axis)


def warp(image: jax.Array, disparity: jax.Array, view: Literal["left", "right"] = "left"
         ) -> tuple[jax.Array, jax.Array]:
    """The other view sampled into this one, differentiable in both arguments.

    ``view='left'``: ``image`` is the right view and ``disparity`` the left view's; returns
    ``out[y, x] = image[y, x - d(y, x)]`` (linear interpolation between the two nearest columns),
    the left view reconstructed. ``view='right'``: ``image`` is the left view, ``out[y, x] =
    image[y, x + d(y, x)]``. (B, H, W, C), (B, H, W) -> ((B, H, W, C) float32, (B, H, W) bool
    valid: the sampled position lies inside [0, W - 1])."""
    w = image.shape[2]
    disparity = _float(disparity)
    x = jnp.arange(w, dtype=disparity.dtype)[None, None, :]
    pos = x - disparity if view == "left" else x + disparity
    valid = (pos >= 0) & (pos <= w - 1)
    pos = jnp.clip(pos, 0, w - 1)
    x0 = jnp.clip(jnp.floor(pos), 0, w - 2 if w > 1 else 0)
    frac = (pos - x0)[..., None]
    i0 = x0.astype(jnp.int32)
    i1 = jnp.minimum(i0 + 1, w - 1)
    img = _float(image)
    v0 = jnp.take_along_axis(img, i0[..., None], axis=2)
    v1 = jnp.take_along_axis(img, i1[..., None], axis=2)
    return v0 * (1 - frac) + v1 * frac, valid


def ssim(x: jax.Array, y: jax.Array, c1: float = 0.01 ** 2, c2: float = 0.03 ** 2) -> jax.Array:
    """Per-pixel SSIM of (B, H, W, C) images in [0, 1] over 3x3 windows (means, variances and
    covariance by box filtering with edge-reflected padding, as monodepth's ``SSIM``), with the
    usual ``c1 = 0.01^2``, ``c2 = 0.03^2``. Returns (B, H, W, C) float32 in [-1, 1]."""
    def pool(z):
        z = jnp.pad(z, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
        return lax.reduce_window(z, 0.0, lax.add, (1, 3, 3, 1), (1, 1, 1, 1), "VALID") / 9.0
    x, y = x.astype(jnp.float32), y.astype(jnp.float32)
    mx, my = pool(x), pool(y)
    sxx, syy, sxy = pool(x * x) - mx ** 2, pool(y * y) - my ** 2, pool(x * y) - mx * my
    return ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (sxx + syy + c2))


def photometric_error(x: jax.Array, y: jax.Array, alpha: float = 0.85) -> jax.Array:
    """Godard et al.'s appearance error per pixel: ``alpha * (1 - SSIM) / 2 + (1 - alpha) *
    |x - y|``, both averaged over channels. (B, H, W, C) in [0, 1] -> (B, H, W)."""
    s = jnp.clip((1 - ssim(x, y)) / 2, 0, 1)
    return jnp.mean(alpha * s + (1 - alpha) * jnp.abs(x.astype(jnp.float32) - y.astype(jnp.float32)), -1)


def edge_aware_smoothness(disparity: jax.Array, image: jax.Array) -> jax.Array:
    """Mean over pixels of ``|dx d| exp(-|dx I|) + |dy d| exp(-|dy I|)`` (image gradients
    averaged over channels; forward differences, so the last column / row has no term), for
    (B, H, W) disparity and (B, H, W, C) image. Returns (B,) float32."""
    d, img = disparity.astype(jnp.float32), image.astype(jnp.float32)
    dx, dy = jnp.abs(d[:, :, 1:] - d[:, :, :-1]), jnp.abs(d[:, 1:] - d[:, :-1])
    ix = jnp.mean(jnp.abs(img[:, :, 1:] - img[:, :, :-1]), -1)
    iy = jnp.mean(jnp.abs(img[:, 1:] - img[:, :-1]), -1)
    return jnp.mean(dx * jnp.exp(-ix), (1, 2)) + jnp.mean(dy * jnp.exp(-iy), (1, 2))


def left_right_error(disp_left: jax.Array, disp_right: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per pixel ``|d_l(y, x) - d_r(y, x - d_l(y, x))|`` (the right map sampled where the left
    pixel lands, linearly) and the mask of those samples inside the image; (B, H, W) each."""
    back, valid = warp(disp_right[..., None], disp_left, view="left")
    return jnp.abs(disp_left.astype(jnp.float32) - back[..., 0]), valid


def disparity_to_depth(disparity: jax.Array, baseline: float, focal: float) -> jax.Array:
    """``z = baseline * focal / d`` (units of ``baseline``; ``focal`` and d in pixels) where
    d > 0; 0 where d <= 0 (invalid, or at infinity)."""
    d = disparity.astype(jnp.float32)
    return jnp.where(d > 0, baseline * focal / jnp.where(d > 0, d, 1.0), 0.0)


def depth_to_disparity(depth: jax.Array, baseline: float, focal: float) -> jax.Array:
    """``d = baseline * focal / z`` where z > 0; ``INVALID`` where z <= 0."""
    z = depth.astype(jnp.float32)
    return jnp.where(z > 0, baseline * focal / jnp.where(z > 0, z, 1.0), INVALID)


# ----------------------------------------------------------------------------- host side


def left_right_consistency(disparity: np.ndarray, disparity_right: np.ndarray,
                           tol: float = 0.5) -> np.ndarray:
    """Returns an (H, W) bool mask of the left pixels that are visible in both views.

    A left pixel ``(y, x)`` with disparity ``d = disparity[y, x]`` passes when ``d`` is valid,
    its match column ``xr = round(x - d)`` (round half to even, as numpy's ``rint``) lies in
    ``[0, W)``, ``disparity_right[y, xr]`` is valid, and
    ``|disparity_right[y, xr] - d| <= tol``. Pixels failing the last test are occluded in the
    right view (the right view sees a nearer surface there); pixels whose match falls outside
    the image have no match at all.

    Args:
      disparity: (H, W) left-view disparity, pixels.
      disparity_right: (H, W) right-view disparity, pixels.
      tol: largest allowed disagreement between the two disparities, pixels (>= 0).
    """
    dl = np.asarray(disparity)
    dr = np.asarray(disparity_right)
    if dl.ndim != 2:
        raise ValueError(f"left_right_consistency: 'disparity' has shape {dl.shape}; expected "
                         "(H, W). Pass one example's map, not a batch (loop over the batch).")
    if dr.shape != dl.shape:
        raise ValueError(f"left_right_consistency: 'disparity_right' has shape {dr.shape} but "
                         f"'disparity' has shape {dl.shape}; both must be the same (H, W).")
    if not tol >= 0:
        raise ValueError(f"left_right_consistency: 'tol' is {tol}; expected a number >= 0 (pixels).")
    h, w = dl.shape
    valid = disparity_valid(dl)
    # Invalid pixels get a harmless placeholder column so the gather below stays in bounds.
    xr = np.rint(np.arange(w, dtype=np.float64)[None, :] - np.where(valid, dl, 0.0))
    inside = valid & (xr >= 0) & (xr < w)
    cols = np.where(inside, xr, 0).astype(np.intp)
    d_match = np.take_along_axis(dr, cols, axis=1)
    with np.errstate(invalid="ignore"):  # inf - inf on invalid pixels, masked out anyway
        ok = disparity_valid(d_match) & (np.abs(d_match.astype(np.float64) - dl) <= tol)
    return inside & ok
