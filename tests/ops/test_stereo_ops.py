"""Stereo ops (``jaxvision.ops.stereo``) against plain numpy loops, closed forms and finite
differences, and the warp against the procedural scenes' exact correspondences."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision.data.procedural import ProceduralScenes
from jaxvision.ops import stereo


def _pair(seed=0, b=2, h=7, w=11, c=3):
    rng = np.random.default_rng(seed)
    return (rng.random((b, h, w, c)).astype(np.float32), rng.random((b, h, w, c)).astype(np.float32))


def _patch(img, y, x, r):
    h, w = img.shape[:2]
    return img[max(y - r, 0):min(y + r + 1, h), max(x - r, 0):min(x + r + 1, w)]


def _cost_loop(left, right, max_d, cost, window, view):
    b, h, w, _ = left.shape
    r = window // 2
    out = np.full((b, h, w, max_d + 1), np.inf)
    ref, other = (left, right) if view == "left" else (right, left)
    for i in range(b):
        for d in range(max_d + 1):
            # The other image moved by d, its edge column repeated beyond the border.
            cols = np.arange(w) - d if view == "left" else np.arange(w) + d
            moved = other[i][:, np.clip(cols, 0, w - 1)]
            for y in range(h):
                for x in range(w):
                    if not 0 <= cols[x] < w:
                        continue
                    p, q = _patch(ref[i], y, x, r).astype(np.float64), _patch(moved, y, x, r).astype(np.float64)
                    if cost == "sad":
                        out[i, y, x, d] = np.abs(p - q).sum(-1).mean()
                    elif cost == "ssd":
                        out[i, y, x, d] = ((p - q) ** 2).sum(-1).mean()
                    else:
                        pc, qc = p - p.mean((0, 1)), q - q.mean((0, 1))
                        n = pc.shape[0] * pc.shape[1]
                        cov = (pc * qc).sum() / n
                        out[i, y, x, d] = 1 - cov / np.sqrt((pc ** 2).sum() / n * (qc ** 2).sum() / n + 1e-6)
    return out


@pytest.mark.parametrize("cost", stereo.COSTS)
@pytest.mark.parametrize("view", ["left", "right"])
def test_cost_volume_matches_numpy_loop(cost, view):
    left, right = _pair(1)
    got = np.asarray(jax.jit(stereo.cost_volume, static_argnums=(2, 3, 4, 5))(left, right, 4, cost, 3, view))
    want = _cost_loop(left, right, 4, cost, 3, view)
    assert np.array_equal(np.isinf(got), np.isinf(want))
    fin = np.isfinite(want)
    np.testing.assert_allclose(got[fin], want[fin], rtol=2e-4, atol=2e-5)


def test_cost_volume_errors():
    left, right = _pair()
    with pytest.raises(ValueError, match="cost must be one of"):
        stereo.cost_volume(left, right, 2, "census")
    with pytest.raises(ValueError, match="one shape"):
        stereo.cost_volume(left, right[:, :, :5], 2)
    with pytest.raises(ValueError, match="odd"):
        stereo.cost_volume(left, right, 2, window=4)


def _wta_loop(cost):
    out = np.full(cost.shape[:-1], -1.0)
    n = cost.shape[-1]
    for idx in np.ndindex(cost.shape[:-1]):
        c = cost[idx]
        if not np.isfinite(c).any():
            continue
        d = int(np.argmin(c))
        v = float(d)
        if 0 < d < n - 1 and np.isfinite(c[d - 1]) and np.isfinite(c[d + 1]):
            curv = c[d - 1] - 2 * c[d] + c[d + 1]
            if curv > 0:
                v += float(np.clip((c[d - 1] - c[d + 1]) / (2 * curv), -0.5, 0.5))
        out[idx] = v
    return out


def test_winner_takes_all_with_subpixel_matches_loop():
    rng = np.random.default_rng(2)
    cost = rng.random((2, 4, 5, 6)).astype(np.float32)
    cost[0, 0, :, :3] = np.inf                      # the first columns' invalid candidates
    cost[1, 2, 3] = np.inf                          # no valid candidate: invalid
    got = np.asarray(stereo.winner_takes_all(jnp.asarray(cost)))
    np.testing.assert_allclose(got, _wta_loop(cost.astype(np.float64)), atol=1e-5)
    assert got[1, 2, 3] == stereo.INVALID
    np.testing.assert_array_equal(np.asarray(stereo.winner_takes_all(jnp.asarray(cost), subpixel=False)),
                                  np.where(np.isfinite(cost).any(-1), np.argmin(cost, -1), -1))
    # A parabola sampled at integers: the refinement finds its exact vertex.
    d = np.arange(8, dtype=np.float32)
    parabola = (d - 3.3) ** 2
    assert float(stereo.winner_takes_all(jnp.asarray(parabola)[None, None, None])[0, 0, 0]) == pytest.approx(3.3, abs=1e-5)


def test_left_right_check_matches_loop():
    rng = np.random.default_rng(3)
    dl = rng.integers(0, 4, (2, 3, 9)).astype(np.float32) + rng.choice([0.0, 0.4], (2, 3, 9))
    dr = rng.integers(0, 4, (2, 3, 9)).astype(np.float32)
    dl[0, 0, 0] = -1
    got = np.asarray(stereo.left_right_check(jnp.asarray(dl), jnp.asarray(dr), 1.0))
    want = np.full(dl.shape, -1.0, np.float32)
    for i, y, x in np.ndindex(*dl.shape):
        d = dl[i, y, x]
        xr = int(np.round(x - d))
        if d >= 0 and 0 <= xr < 9 and dr[i, y, xr] >= 0 and abs(d - dr[i, y, xr]) <= 1.0:
            want[i, y, x] = d
    np.testing.assert_array_equal(got, want)


def test_correlation_and_concat_volume_match_loops():
    left, right = _pair(4, c=5)
    got = np.asarray(stereo.correlation(jnp.asarray(left), jnp.asarray(right), 6, stride=2))
    b, h, w, c = left.shape
    want = np.zeros((b, h, w, 4))
    for k, d in enumerate(range(0, 7, 2)):
        for x in range(d, w):
            want[:, :, x, k] = (left[:, :, x] * right[:, :, x - d]).mean(-1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    vol = np.asarray(stereo.concat_volume(jnp.asarray(left), jnp.asarray(right), 4))
    assert vol.shape == (b, 4, h, w, 2 * c)
    want = np.zeros_like(vol)
    for d in range(4):
        for x in range(d, w):
            want[:, d, :, x] = np.concatenate([left[:, :, x], right[:, :, x - d]], -1)
    np.testing.assert_array_equal(vol, want)


def test_soft_argmin_closed_form_and_gradient():
    rng = np.random.default_rng(5)
    cost = rng.normal(size=(2, 3, 4, 7)).astype(np.float64)
    with jax.enable_x64(True):
        got = np.asarray(stereo.soft_argmin(jnp.asarray(cost)))
        p = np.exp(-cost) / np.exp(-cost).sum(-1, keepdims=True)
        np.testing.assert_allclose(got, (p * np.arange(7)).sum(-1), rtol=1e-10)
        # Along another axis (GC-Net's (B, D, H, W) volumes).
        np.testing.assert_allclose(np.asarray(stereo.soft_argmin(jnp.moveaxis(jnp.asarray(cost), -1, 1), axis=1)),
                                   got, rtol=1e-10)
        f = lambda c: jnp.sum(stereo.soft_argmin(c) ** 2)  # noqa: E731
        c0 = jnp.asarray(cost[0, 0, 0])
        g = np.asarray(jax.grad(f)(c0))
        eps = 1e-6
        for k in range(7):
            e = np.zeros(7)
            e[k] = eps
            fd = (f(c0 + e) - f(c0 - e)) / (2 * eps)
            assert g[k] == pytest.approx(float(fd), rel=1e-5, abs=1e-9)
    # +inf costs get no weight.
    inf = jnp.array([[[[0.0, jnp.inf, 0.0]]]])
    assert float(stereo.soft_argmin(inf)[0, 0, 0]) == pytest.approx(1.0)


def test_warp_matches_loop_and_its_gradient_matches_finite_differences():
    rng = np.random.default_rng(6)
    right = rng.random((2, 3, 8, 2))
    disp = rng.uniform(-1, 9, (2, 3, 8))
    with jax.enable_x64(True):
        for view in ("left", "right"):
            got, valid = stereo.warp(jnp.asarray(right), jnp.asarray(disp), view)
            want, ok = np.zeros_like(right), np.zeros(disp.shape, bool)
            for i, y, x in np.ndindex(*disp.shape):
                pos = x - disp[i, y, x] if view == "left" else x + disp[i, y, x]
                ok[i, y, x] = 0 <= pos <= 7
                pos = min(max(pos, 0), 7)
                x0 = min(int(np.floor(pos)), 6)
                f = pos - x0
                want[i, y, x] = right[i, y, x0] * (1 - f) + right[i, y, x0 + 1] * f
            np.testing.assert_allclose(np.asarray(got), want, atol=1e-12)
            np.testing.assert_array_equal(np.asarray(valid), ok)
        # d(sum warp * w)/d disparity by central differences, away from integer positions.
        disp = np.floor(rng.uniform(1, 6, (1, 3, 8))) + 0.3
        weights = rng.normal(size=(1, 3, 8, 2))
        f = lambda d, img: jnp.sum(stereo.warp(img, d)[0] * weights)  # noqa: E731
        gd, gi = jax.grad(f, argnums=(0, 1))(jnp.asarray(disp), jnp.asarray(right[:1]))
        eps = 1e-6
        for idx in [(0, 0, 3), (0, 2, 7), (0, 1, 5)]:
            e = np.zeros_like(disp)
            e[idx] = eps
            fd = (f(disp + e, right[:1]) - f(disp - e, right[:1])) / (2 * eps)
            assert float(gd[idx]) == pytest.approx(float(fd), rel=1e-6, abs=1e-9)
        e = np.zeros_like(right[:1])
        e[0, 1, 2, 1] = eps
        fd = (f(disp, right[:1] + e) - f(disp, right[:1] - e)) / (2 * eps)
        assert float(gi[0, 1, 2, 1]) == pytest.approx(float(fd), rel=1e-6, abs=1e-9)


def test_warp_with_true_disparity_reproduces_the_left_view_on_matchable_pixels():
    src = ProceduralScenes(image_size=48, num_examples=3, max_disparity=9.0)
    for i in range(3):
        ex = src[i]
        ok = stereo.left_right_consistency(ex["disparity"], ex["disparity_right"])
        rec, valid = stereo.warp(jnp.asarray(ex["image_right"][None], jnp.float32),
                                 jnp.asarray(ex["disparity"][None]))
        keep = ok & np.asarray(valid[0])
        assert keep.mean() > 0.5
        np.testing.assert_allclose(np.asarray(rec[0])[keep], ex["image"][keep].astype(np.float32), atol=1e-4)
        # The same pixels of the right view from the left with the right view's disparity.
        ok_r = stereo.left_right_consistency(ex["disparity_right"][:, ::-1], ex["disparity"][:, ::-1])[:, ::-1]
        rec_r, _ = stereo.warp(jnp.asarray(ex["image"][None], jnp.float32),
                               jnp.asarray(ex["disparity_right"][None]), view="right")
        np.testing.assert_allclose(np.asarray(rec_r[0])[ok_r], ex["image_right"][ok_r].astype(np.float32), atol=1e-4)


def test_ncc_winner_takes_all_recovers_procedural_disparity():
    src = ProceduralScenes(image_size=48, num_examples=2, max_disparity=9.0, noise=12.0)
    ex = src[0]
    left = jnp.asarray(ex["image"][None], jnp.float32) / 255
    right = jnp.asarray(ex["image_right"][None], jnp.float32) / 255
    disp = np.asarray(stereo.winner_takes_all(stereo.cost_volume(left, right, 9, "ncc", 5)))[0]
    ok = stereo.left_right_consistency(ex["disparity"], ex["disparity_right"])
    assert np.mean(np.abs(disp - ex["disparity"])[ok] <= 1) > 0.8


def _ssim_loop(x, y, c1=1e-4, c2=9e-4):
    b, h, w, c = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    yp = np.pad(y, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    out = np.zeros_like(x)
    for i, r, s, k in np.ndindex(b, h, w, c):
        p, q = xp[i, r:r + 3, s:s + 3, k], yp[i, r:r + 3, s:s + 3, k]
        mx, my = p.mean(), q.mean()
        vx, vy, cov = (p * p).mean() - mx ** 2, (q * q).mean() - my ** 2, (p * q).mean() - mx * my
        out[i, r, s, k] = (2 * mx * my + c1) * (2 * cov + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return out


def test_ssim_photometric_and_smoothness_match_loops():
    x, y = _pair(7, h=5, w=6, c=2)
    np.testing.assert_allclose(np.asarray(stereo.ssim(x, y)), _ssim_loop(x.astype(np.float64), y.astype(np.float64)),
                               rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(np.asarray(stereo.ssim(x, x)), 1.0, atol=1e-5)
    s = np.clip((1 - _ssim_loop(x.astype(np.float64), y.astype(np.float64))) / 2, 0, 1)
    want = (0.85 * s + 0.15 * np.abs(x - y)).mean(-1)
    np.testing.assert_allclose(np.asarray(stereo.photometric_error(x, y)), want, rtol=1e-3, atol=1e-5)
    d = np.random.default_rng(8).random(x.shape[:3]).astype(np.float32)
    want = np.zeros(len(d))
    b, h, w = d.shape
    for i in range(b):
        tx = [abs(d[i, r, s + 1] - d[i, r, s]) * np.exp(-np.abs(x[i, r, s + 1] - x[i, r, s]).mean())
              for r in range(h) for s in range(w - 1)]
        ty = [abs(d[i, r + 1, s] - d[i, r, s]) * np.exp(-np.abs(x[i, r + 1, s] - x[i, r, s]).mean())
              for r in range(h - 1) for s in range(w)]
        want[i] = np.mean(tx) + np.mean(ty)
    np.testing.assert_allclose(np.asarray(stereo.edge_aware_smoothness(d, x)), want, rtol=1e-5)


def test_left_right_error_of_consistent_maps_is_zero():
    src = ProceduralScenes(image_size=32, num_examples=1, max_disparity=6.0)
    ex = src[0]
    err, valid = stereo.left_right_error(jnp.asarray(ex["disparity"][None]), jnp.asarray(ex["disparity_right"][None]))
    ok = stereo.left_right_consistency(ex["disparity"], ex["disparity_right"]) & np.asarray(valid[0])
    assert float(np.abs(np.asarray(err[0])[ok]).max()) == 0.0
    assert np.asarray(err[0])[~stereo.left_right_consistency(ex["disparity"], ex["disparity_right"])
                              & np.asarray(valid[0])].max(initial=1) > 0


def test_depth_disparity_round_trip_and_invalid():
    d = jnp.array([[[-1.0, 0.0, 2.0, 8.0]]])
    z = stereo.disparity_to_depth(d, baseline=0.5, focal=400.0)
    np.testing.assert_allclose(np.asarray(z), [[[0.0, 0.0, 100.0, 25.0]]])
    back = stereo.depth_to_disparity(z, 0.5, 400.0)
    np.testing.assert_allclose(np.asarray(back), [[[-1.0, -1.0, 2.0, 8.0]]])
    assert np.isfinite(np.asarray(jax.grad(lambda v: stereo.disparity_to_depth(v, 1.0, 1.0).sum())(d))).all()


@pytest.mark.parametrize("window", [1, 3, 7, 11])
def test_box_mean_is_the_mean_of_the_pixels_inside_each_window(window):
    from jaxvision.ops.stereo import box_mean
    x = np.random.default_rng(window).normal(size=(2, 9, 13, 3)).astype(np.float32)
    r = window // 2
    want = np.zeros_like(x)
    for y in range(9):
        for xx in range(13):
            want[:, y, xx] = x[:, max(y - r, 0):y + r + 1, max(xx - r, 0):xx + r + 1].mean((1, 2))
    np.testing.assert_allclose(np.asarray(box_mean(jnp.asarray(x), window)), want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="odd"):
        box_mean(jnp.asarray(x), 4)
