"""roi_align / roi_pool / fpn_levels / multilevel_roi_align against plain numpy loops and by hand."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision.ops import roi as R

_align = jax.jit(R.roi_align, static_argnames=("output_size", "spatial_scale", "sampling_ratio", "aligned"))
_pool = jax.jit(R.roi_pool, static_argnames=("output_size", "spatial_scale"))


def bilinear(fmap, y, x):
    """torchvision's bilinear_interpolate on one (H, W, C) map, written out."""
    h, w = fmap.shape[:2]
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return np.zeros(fmap.shape[2])
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= h - 1:
        y_high = y_low = h - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= w - 1:
        x_high = x_low = w - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1 - ly, 1 - lx
    return (hy * hx * fmap[y_low, x_low] + hy * lx * fmap[y_low, x_high]
            + ly * hx * fmap[y_high, x_low] + ly * lx * fmap[y_high, x_high])


def roi_align_loop(features, boxes, box_batch, output_size, scale, ratio, aligned):
    oh, ow = output_size
    out = np.zeros((len(boxes), oh, ow, features.shape[-1]))
    offset = 0.5 if aligned else 0.0
    for k, (y0, x0, y1, x1) in enumerate(np.asarray(boxes, np.float64).tolist()):
        y0, x0, y1, x1 = (v * scale - offset for v in (y0, x0, y1, x1))
        rh, rw = y1 - y0, x1 - x0
        if not aligned:
            rh, rw = max(rh, 1.0), max(rw, 1.0)
        bh, bw = rh / oh, rw / ow
        fmap = np.asarray(features[box_batch[k]], np.float64)
        for ph in range(oh):
            for pw in range(ow):
                acc = 0.0
                for iy in range(ratio):
                    for ix in range(ratio):
                        y = y0 + ph * bh + (iy + 0.5) * bh / ratio
                        x = x0 + pw * bw + (ix + 0.5) * bw / ratio
                        acc = acc + bilinear(fmap, y, x)
                out[k, ph, pw] = acc / ratio ** 2
    return out


def c_round(v):
    return math.copysign(math.floor(abs(v) + 0.5), v)


def roi_pool_loop(features, boxes, box_batch, output_size, scale):
    """torchvision's roi_pool CPU kernel, bin arithmetic in float32 like it."""
    oh, ow = output_size
    h, w = features.shape[1:3]
    f32 = np.float32
    out = np.zeros((len(boxes), oh, ow, features.shape[-1]))
    for k, box in enumerate(np.asarray(boxes, np.float32)):
        y0, x0, y1, x1 = (int(c_round(float(v * f32(scale)))) for v in box)
        rh, rw = max(y1 - y0 + 1, 1), max(x1 - x0 + 1, 1)
        bh, bw = f32(rh) / f32(oh), f32(rw) / f32(ow)
        for ph in range(oh):
            for pw in range(ow):
                hs = min(max(math.floor(f32(ph) * bh) + y0, 0), h)
                he = min(max(math.ceil(f32(ph + 1) * bh) + y0, 0), h)
                ws = min(max(math.floor(f32(pw) * bw) + x0, 0), w)
                we = min(max(math.ceil(f32(pw + 1) * bw) + x0, 0), w)
                if he <= hs or we <= ws:
                    continue
                out[k, ph, pw] = features[box_batch[k], hs:he, ws:we].max(axis=(0, 1))
    return out


def random_rois(rng, b=2, h=9, w=11, c=3, k=6, scale=1.0):
    """Features and boxes on a quarter-pixel grid of the image plane (the feature map times
    1 / scale), reaching up to 3 feature pixels outside it; one zero-size and one zero-width box."""
    features = rng.normal(size=(b, h, w, c)).astype(np.float32)
    hi_y, hi_x = (h + 3) / scale, (w + 3) / scale
    y = rng.integers(-12, int(4 * hi_y), (k, 2)) / 4
    x = rng.integers(-12, int(4 * hi_x), (k, 2)) / 4
    boxes = np.stack([y.min(1), x.min(1), y.max(1), x.max(1)], 1).astype(np.float32)
    boxes[0, 2:] = boxes[0, :2]
    boxes[1, 3] = boxes[1, 1]
    return features, boxes, rng.integers(0, b, k).astype(np.int32)


@pytest.mark.parametrize("aligned,ratio,scale,size", [
    (True, 2, 1.0, (3, 3)), (True, 1, 0.5, (2, 3)), (True, 4, 1.0, (3, 2)),
    (False, 2, 1.0, (2, 2)), (False, 3, 0.5, (3, 3))])
def test_roi_align_matches_loop(aligned, ratio, scale, size):
    rng = np.random.default_rng(int(100 * scale) + ratio)
    for _ in range(2):
        features, boxes, bb = random_rois(rng, scale=scale)
        got = _align(features, boxes, bb, size, spatial_scale=scale, sampling_ratio=ratio, aligned=aligned)
        assert got.shape == (len(boxes),) + size + (3,) and got.dtype == jnp.float32
        want = roi_align_loop(features, boxes, bb, size, scale, ratio, aligned)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scale,size", [(1.0, (3, 3)), (0.5, (2, 3))])
def test_roi_pool_matches_loop(scale, size):
    rng = np.random.default_rng(7 + int(scale))
    for _ in range(3):
        features, boxes, bb = random_rois(rng, scale=scale)
        got = _pool(features, boxes, bb, size, spatial_scale=scale)
        assert got.shape == (len(boxes),) + size + (3,)
        np.testing.assert_array_equal(got, roi_pool_loop(features, boxes, bb, size, scale))


def test_roi_pool_by_hand():
    f = np.arange(36, dtype=np.float32).reshape(1, 6, 6, 1)
    # [1.25, 0.5, 2.5, 2.5] * 2 = [2.5, 1, 5, 5]: halves round away from zero, so rows 3..5 and
    # columns 1..5 (inclusive); 2 x 2 bins of 1.5 x 2.5 pixels -> rows 3..4 / 4..5, cols 1..3 / 3..5.
    got = _pool(f, np.array([[1.25, 0.5, 2.5, 2.5]], np.float32), np.array([0]), (2, 2), spatial_scale=2.0)
    assert got[0, :, :, 0].tolist() == [[27, 29], [33, 35]]
    # Entirely outside: every bin is empty -> 0. All -inf / NaN inside: -FLT_MAX as torchvision.
    f = np.full((1, 4, 4, 1), -np.inf, np.float32)
    f[0, 0, 0, 0] = np.nan
    got = _pool(f, np.array([[10, 10, 12, 12], [0, 0, 1, 1]], np.float32), np.array([0, 0]), (1, 1),
                spatial_scale=1.0)
    assert got[:, 0, 0, 0].tolist() == [0, -np.finfo(np.float32).max]


def test_constant_and_linear_ramp_by_hand():
    h, w = 10, 12
    const = np.full((1, h, w, 2), 3.5, np.float32)
    boxes = np.array([[1, 2, 7, 9], [0, 0, h, w], [4, 4, 4.5, 6]], np.float32)
    bb = np.zeros(3, np.int32)
    for aligned in (True, False):
        got = _align(const, boxes, bb, (2, 2), spatial_scale=1.0, sampling_ratio=2, aligned=aligned)
        np.testing.assert_allclose(got, 3.5, rtol=1e-6)
    np.testing.assert_array_equal(_pool(const, boxes, bb, (2, 2), spatial_scale=1.0), 3.5)
    # Pixel (i, j) holds the ramp at its centre (i + 0.5, j + 0.5); bilinear sampling is exact for
    # a linear function, so with aligned=True each bin gives the ramp at the bin centre.
    ramp = lambda y, x: 2.0 * y - 0.5 * x + 1.0  # noqa: E731
    yy, xx = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
    fmap = ramp(yy, xx).astype(np.float32)[None, :, :, None]
    box = np.array([[2.0, 1.5, 8.0, 9.5]], np.float32)  # samples stay between pixel centres
    got = _align(fmap, box, np.zeros(1, np.int32), (3, 2), spatial_scale=1.0, sampling_ratio=2,
                 aligned=True)
    cy = 2.0 + (np.arange(3) + 0.5) * 6.0 / 3
    cx = 1.5 + (np.arange(2) + 0.5) * 8.0 / 2
    np.testing.assert_allclose(got[0, :, :, 0], ramp(cy[:, None], cx[None, :]), rtol=1e-6)


def test_roi_align_gradient_matches_finite_differences():
    rng = np.random.default_rng(0)
    features, boxes, bb = random_rois(rng, b=2, h=4, w=5, c=2, k=4)
    with jax.enable_x64(True):
        f64 = jnp.asarray(features, jnp.float64)
        weights = jnp.asarray(rng.normal(size=(4, 2, 3, 2)))
        loss = jax.jit(lambda f: jnp.sum(weights * R.roi_align(f, jnp.asarray(boxes, jnp.float64), bb, (2, 3),
                                                               sampling_ratio=2)))
        grad = jax.grad(loss)(f64)
        assert grad.dtype == jnp.float64
        eye = jnp.eye(f64.size, dtype=jnp.float64).reshape((-1,) + f64.shape)
        eps = 1e-3
        fd = (jax.vmap(loss)(f64 + eps * eye) - jax.vmap(loss)(f64 - eps * eye)) / (2 * eps)
        np.testing.assert_allclose(grad.reshape(-1), fd, rtol=1e-7, atol=1e-9)
        assert np.abs(grad).sum() > 0


def test_fpn_levels_by_hand():
    side = np.array([224, 112, 448, 223, 225, 10, 2000, 0], np.float32)
    boxes = np.stack([np.zeros_like(side), np.full_like(side, 5), side, side + 5], 1)
    got = jax.jit(functools.partial(R.fpn_levels, k_min=2, k_max=5))(boxes)
    assert got.dtype == jnp.int32
    assert got.tolist() == [4, 3, 5, 3, 4, 2, 5, 2]
    # sqrt(area) matters, not the sides: 448 x 112 has sqrt area 224.
    assert R.fpn_levels(np.array([[0, 0, 448, 112]]), k_min=2, k_max=5).tolist() == [4]
    assert R.fpn_levels(np.array([[0, 0, 64, 64]]), k_min=1, k_max=6, canonical_size=32,
                        canonical_level=2).tolist() == [3]


def test_multilevel_equals_roi_align_on_chosen_level():
    rng = np.random.default_rng(5)
    strides = (4, 8, 16)
    feats = [rng.normal(size=(2, 64 // s, 48 // s, 3)).astype(np.float32) for s in strides]
    sides = np.array([3, 9, 20, 33, 70, 5, 16], np.float32)
    y0, x0 = rng.uniform(-4, 40, (2, len(sides))).astype(np.float32)
    boxes = np.stack([y0, x0, y0 + sides, x0 + sides * 0.75], 1)
    bb = rng.integers(0, 2, len(sides)).astype(np.int32)
    kw = dict(canonical_size=16.0, canonical_level=3)

    @jax.jit
    def run(feats):
        # One compilation: the multilevel result, its gradient, and roi_align on every level.
        loss = lambda fs: (lambda out: (out.sum(), out))(  # noqa: E731
            R.multilevel_roi_align(fs, strides, boxes, bb, (2, 3), sampling_ratio=2, **kw))
        (_, out), grads = jax.value_and_grad(loss, has_aux=True)(feats)
        singles = [R.roi_align(f, boxes, bb, (2, 3), spatial_scale=1 / s, sampling_ratio=2)
                   for f, s in zip(feats, strides)]
        return out, grads, singles

    got, grads, singles = run(feats)
    assert got.shape == (len(sides), 2, 3, 3)
    levels = np.asarray(R.fpn_levels(boxes, k_min=2, k_max=4, **kw))
    assert set(levels.tolist()) == {2, 3, 4}
    for lv, want in enumerate(singles, start=2):
        np.testing.assert_allclose(got[levels == lv], want[levels == lv], rtol=1e-6, atol=1e-6)
    # Gradients reach every level that has a box.
    assert all(np.abs(g).sum() > 0 for g in grads)


def test_empty_and_bad_input():
    f = np.zeros((1, 4, 4, 2), np.float32)
    none = np.zeros((0, 4), np.float32), np.zeros(0, np.int32)
    shape = lambda fn, *args: jax.eval_shape(fn, *args).shape  # noqa: E731
    assert shape(functools.partial(R.roi_align, output_size=3), f, *none) == (0, 3, 3, 2)
    assert shape(functools.partial(R.roi_pool, output_size=(2, 3)), f, *none) == (0, 2, 3, 2)
    ml = lambda fs, b, bb: R.multilevel_roi_align(fs, (4, 8), b, bb, 2)  # noqa: E731
    assert shape(ml, [f, f[:, ::2, ::2]], *none) == (0, 2, 2, 2)
    boxes, bb = np.zeros((2, 4), np.float32), np.zeros(2, np.int32)
    with pytest.raises(ValueError, match="sampling_ratio.*adaptive"):
        R.roi_align(f, boxes, bb, 2, sampling_ratio=0)
    with pytest.raises(ValueError, match=r"features.*\(B, H, W, C\)"):
        R.roi_align(f[0], boxes, bb, 2)
    with pytest.raises(ValueError, match=r"boxes.*\(K, 4\)"):
        R.roi_pool(f, boxes[:, :3], bb, 2)
    with pytest.raises(ValueError, match=r"box_batch.*\(2,\)"):
        R.roi_align(f, boxes, bb[:1], 2)
    with pytest.raises(ValueError, match="output_size"):
        R.roi_align(f, boxes, bb, (2, 0))
    with pytest.raises(ValueError, match="strides"):
        R.multilevel_roi_align([f, f], (4, 16), boxes, bb, 2)
    with pytest.raises(ValueError, match="strides"):
        R.multilevel_roi_align([f], (4, 8), boxes, bb, 2)


def test_matches_torchvision():
    torch = pytest.importorskip("torch")
    tv = pytest.importorskip("torchvision")
    rng = np.random.default_rng(11)
    for aligned, ratio, scale in [(True, 2, 1.0), (False, 2, 0.5), (True, 3, 0.5)]:
        features, boxes, bb = random_rois(rng, scale=scale)
        x = torch.from_numpy(features.transpose(0, 3, 1, 2).copy())
        rois = torch.from_numpy(np.concatenate([bb[:, None], boxes[:, [1, 0, 3, 2]]], 1).astype(np.float32))
        want = tv.ops.roi_align(x, rois, (3, 2), scale, ratio, aligned).numpy().transpose(0, 2, 3, 1)
        got = _align(features, boxes, bb, (3, 2), spatial_scale=scale, sampling_ratio=ratio, aligned=aligned)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        want = tv.ops.roi_pool(x, rois, (3, 2), scale).numpy().transpose(0, 2, 3, 1)
        np.testing.assert_array_equal(_pool(features, boxes, bb, (3, 2), spatial_scale=scale), want)
