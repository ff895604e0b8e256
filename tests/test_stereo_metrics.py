"""Stereo scores (``metrics.stereo_counts`` / ``stereo_scores``) and the ``stereo`` evaluator,
against hand-computed examples and a numpy loop."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision.evaluators import EVALUATORS, Stereo, eval_config
from jaxvision.metrics import stereo_counts, stereo_scores
from jaxvision.ops.stereo import left_right_consistency


def _scores(pred, gt, per_image=False):
    return stereo_scores(jax.device_get(stereo_counts(jnp.asarray(pred), jnp.asarray(gt),
                                                      jnp.asarray(gt) >= 0)), per_image)


def test_hand_worked_scores():
    # Errors 0.25, 1.5, 2.5, 4 (gt 10: 4 > 3 and > 0.5 -> D1), 4 (gt 100: 4 < 5 -> not D1);
    # one invalid pixel.
    gt = np.array([[[10.0, 10.0, 10.0, 10.0, 100.0, -1.0]]])
    pred = np.array([[[10.25, 11.5, 7.5, 14.0, 96.0, 3.0]]])
    s = _scores(pred, gt)
    assert s["EPE"] == pytest.approx((0.25 + 1.5 + 2.5 + 4 + 4) / 5)
    assert s["bad0.5"] == pytest.approx(80.0) and s["bad1"] == pytest.approx(80.0)
    assert s["bad2"] == pytest.approx(60.0) and s["bad3"] == pytest.approx(40.0)
    assert s["D1"] == pytest.approx(20.0)


def test_all_invalid_image_is_nan_pooled_and_left_out_per_image():
    gt = np.stack([np.full((2, 3), -1.0), np.full((2, 3), 4.0)])
    pred = np.stack([np.zeros((2, 3)), np.full((2, 3), 5.0)])
    s = _scores(pred, gt)
    assert s["EPE"] == pytest.approx(1.0) and s["bad0.5"] == pytest.approx(100.0)
    alone = _scores(pred[:1], gt[:1])
    assert all(np.isnan(v) for v in alone.values())          # no valid pixel: nan, no crash
    # Per image: the mean of image scores, the empty image left out.
    gt2 = np.stack([np.full((2, 3), 4.0), np.where(np.arange(3) < 1, 4.0, -1.0)[None].repeat(2, 0)])
    pred2 = np.stack([np.full((2, 3), 4.0), np.full((2, 3), 6.0)])
    assert _scores(pred2, gt2)["EPE"] == pytest.approx(4 / 8)
    assert _scores(pred2, gt2, per_image=True)["EPE"] == pytest.approx((0 + 2) / 2)


def _feed(ev, pred, batch):
    ev.reset()
    out = jax.jit(ev.transform)({"pred_disparity": pred, **batch})
    ev.update(jax.device_get(out))
    return ev.compute()


def test_evaluator_resizes_scales_and_scores_non_occluded_pixels():
    assert EVALUATORS["stereo"] is Stereo
    cfg = eval_config("stereo")
    assert (cfg.prediction, cfg.target) == ("pred_disparity", "disparity")
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 5, (3, 6, 8)).astype(np.float32)
    gt_r = rng.integers(0, 5, (3, 6, 8)).astype(np.float32)
    gt[0, 0, :3] = -1
    pred = rng.uniform(-1, 6, (3, 3, 4)).astype(np.float32)   # half size: values are half too
    ev = Stereo("stereo", split="test", batch_size=3, every=0)
    got = _feed(ev, jnp.asarray(pred), {"disparity": gt, "disparity_right": gt_r})
    up = np.asarray(jax.image.resize(jnp.asarray(pred), (3, 6, 8), "bilinear")) * 2.0
    up = np.maximum(up, 0)
    valid = gt >= 0
    err = np.abs(up - gt)
    assert got["EPE"] == pytest.approx(err[valid].mean(), rel=1e-5)
    assert got["bad1"] == pytest.approx(100 * (err[valid] > 1).mean(), rel=1e-5)
    noc = np.stack([left_right_consistency(gt[i], gt_r[i], 1.0) for i in range(3)]) & valid
    assert 0 < noc.sum() < valid.sum()
    assert got["EPE_noc"] == pytest.approx(err[noc].mean(), rel=1e-5)
    assert got["D1_noc"] == pytest.approx(100 * ((err > 3) & (err > 0.05 * gt))[noc].mean(), rel=1e-5)
    np.testing.assert_allclose(got["EPE_per_image"], [err[i][valid[i]].mean() for i in range(3)], rtol=1e-5)
    assert set(got) == set(ev.metric_names({"pixels_noc": None}))
    # Without the right view's ground truth there are no _noc scores.
    got = _feed(ev, jnp.asarray(pred), {"disparity": gt})
    assert "EPE_noc" not in got and got["EPE"] == pytest.approx(err[valid].mean(), rel=1e-5)


def test_evaluator_shape_errors_name_the_keys():
    from jaxvision.config import ConfigError
    ev = Stereo("st", split="test", batch_size=1, every=0)
    with pytest.raises(ConfigError, match="evals.st.*pred_disparity"):
        ev.transform({"pred_disparity": jnp.zeros((2, 4, 4, 1)), "disparity": jnp.zeros((2, 4, 4))})
