"""Semantic segmentation: ``metrics.segmentation_scores`` / ``pixel_confusion_matrix``, the
``segmentation`` evaluator, and the pixel losses, against scikit-learn and numpy loops."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import accuracy_score, jaccard_score
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from jaxvision import losses
from jaxvision.data.example import IGNORE_LABEL
from jaxvision.evaluators import EVALUATORS, Segmentation, eval_config
from jaxvision.metrics import pixel_confusion_matrix, segmentation_scores


def _random_masks(rng, n, h, w, c, absent=(), ignore=0.2):
    """Masks and predictions with ignore pixels; classes in ``absent`` in neither."""
    allowed = np.array([k for k in range(c) if k not in absent])
    mask = rng.choice(allowed, (n, h, w)).astype(np.int32)
    pred = np.where(rng.random((n, h, w)) < 0.6, mask, rng.choice(allowed, (n, h, w))).astype(np.int32)
    mask[rng.random((n, h, w)) < ignore] = IGNORE_LABEL
    return pred, mask


def _numpy_scores(pred, mask, c):
    keep = mask != IGNORE_LABEL
    y, p = mask[keep], pred[keep]
    cm = sk_confusion_matrix(y, p, labels=list(range(c)))
    present = np.isin(np.arange(c), np.concatenate([y, p]))
    labelled = np.isin(np.arange(c), y)
    iou = np.full(c, np.nan)
    iou[present] = jaccard_score(y, p, labels=np.flatnonzero(present), average=None)
    acc = np.array([np.mean(p[y == k] == k) if (y == k).any() else np.nan for k in range(c)])
    freq = np.array([np.mean(y == k) for k in range(c)])
    return cm, {"iou": iou, "mIoU": np.mean(iou[present]), "pixel_accuracy": accuracy_score(y, p),
                "class_accuracy": acc, "mean_accuracy": np.mean(acc[labelled]),
                "fw_iou": np.sum(freq[labelled] * iou[labelled])}


def _assert_scores(got, want):
    for key, value in want.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-12, err_msg=key)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scores_and_pixel_confusion_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    c = 6
    pred, mask = _random_masks(rng, 3, 7, 9, c, absent=(2, 5))
    valid = np.array([True, True, False])
    cm, want = _numpy_scores(pred[valid], mask[valid], c)
    got_cm = jax.jit(pixel_confusion_matrix, static_argnums=2)(pred, mask, c, valid)
    assert got_cm.dtype == jnp.int32
    np.testing.assert_array_equal(got_cm, cm)
    got = segmentation_scores(np.asarray(got_cm))
    _assert_scores(got, want)
    assert np.isnan(got["iou"][[2, 5]]).all() and np.isnan(got["class_accuracy"][[2, 5]]).all()


def test_absent_class_left_out_of_miou_and_prediction_only_class_counts_zero():
    # Class 2 absent from both; class 1 only predicted (IoU 0, in mIoU, not in mean accuracy).
    cm = np.array([[3, 1, 0], [0, 0, 0], [0, 0, 0]])
    s = segmentation_scores(cm)
    np.testing.assert_allclose(s["iou"][:2], [0.75, 0.0])
    assert np.isnan(s["iou"][2])
    assert s["mIoU"] == pytest.approx(0.375)                      # (0.75 + 0) / 2, not / 3
    assert s["pixel_accuracy"] == pytest.approx(0.75)
    assert s["mean_accuracy"] == pytest.approx(0.75)              # class 0 only: 3 / 4
    assert s["fw_iou"] == pytest.approx(1.0 * 0.75)


def test_all_ignore_masks_give_nan_not_a_crash():
    mask = np.full((2, 4, 4), IGNORE_LABEL, np.int32)
    cm = pixel_confusion_matrix(jnp.zeros((2, 4, 4), jnp.int32), mask, 3, jnp.ones(2, bool))
    assert int(cm.sum()) == 0
    s = segmentation_scores(np.asarray(cm))
    for key in ("mIoU", "pixel_accuracy", "mean_accuracy", "fw_iou"):
        assert np.isnan(s[key]), key
    assert np.isnan(s["iou"]).all()


def _feed(ev, logits, mask, batch):
    """The core's path: the transform under jit per batch (padded to ``batch``), padded rows
    dropped on the host, then ``update``."""
    ev.reset()
    step = jax.jit(lambda o: {**ev.transform(o), "valid": o["valid"]})
    for lo in range(0, len(mask), batch):
        lg, m = logits[lo:lo + batch], mask[lo:lo + batch]
        pad = batch - len(m)
        out = step({"mask_logits": np.concatenate([lg, np.zeros((pad,) + lg.shape[1:], lg.dtype)]),
                    "mask": np.concatenate([m, np.zeros((pad,) + m.shape[1:], m.dtype)]),
                    "valid": np.arange(batch) < len(m)})
        out = jax.device_get(out)
        keep = out.pop("valid")
        ev.update({k: v[keep] for k, v in out.items()})
    return ev.compute()


def test_evaluator_batches_with_padding_equal_one_confusion():
    assert EVALUATORS["segmentation"] is Segmentation
    cfg = eval_config("segmentation")
    assert (cfg.logits, cfg.mask) == ("mask_logits", "mask")
    rng = np.random.default_rng(3)
    c, n = 5, 7
    _, mask = _random_masks(rng, n, 6, 8, c, absent=(4,))
    logits = rng.normal(size=(n, 6, 8, c)).astype(np.float32)
    ev = Segmentation("seg", split="test", batch_size=3, every=0)
    got = _feed(ev, logits, mask, batch=3)                        # 3 + 3 + 1 (2 padded)
    assert ev.num_classes == c
    cm, want = _numpy_scores(logits.argmax(-1), mask, c)
    np.testing.assert_array_equal(got["confusion_matrix"], cm)
    _assert_scores(got, want)
    assert set(got) == set(ev.metric_names({}))
    assert isinstance(got["mIoU"], float) and got["iou"].shape == (c,)


def test_evaluator_upsamples_low_resolution_logits_before_argmax():
    rng = np.random.default_rng(4)
    c, n, h, w = 4, 3, 8, 10
    _, mask = _random_masks(rng, n, h, w, c)
    logits = rng.normal(size=(n, h // 2, w // 2, c)).astype(np.float32)
    got = _feed(Segmentation("seg", split="test", batch_size=2, every=0), logits, mask, batch=2)
    up = np.asarray(jax.image.resize(jnp.asarray(logits), (n, h, w, c), "bilinear")).argmax(-1)
    cm, want = _numpy_scores(up, mask, c)
    np.testing.assert_array_equal(got["confusion_matrix"], cm)
    # Not the same as nearest-neighbour upsampling of the low-resolution argmax.
    nearest = logits.argmax(-1).repeat(2, 1).repeat(2, 2)
    assert not np.array_equal(_numpy_scores(nearest, mask, c)[0], cm)


def _bilinear_up(x, h, w):
    """Half-pixel-centre bilinear upsampling of (h0, w0, C) to (h, w, C), edges clamped: a
    plain loop (torch's align_corners=False; no antialiasing applies when enlarging)."""
    h0, w0 = x.shape[:2]
    out = np.zeros((h, w, x.shape[2]))
    for i in range(h):
        for j in range(w):
            sy, sx = (i + 0.5) * h0 / h - 0.5, (j + 0.5) * w0 / w - 0.5
            y0, x0 = int(np.floor(sy)), int(np.floor(sx))
            fy, fx = sy - y0, sx - x0
            for dy, wy in ((0, 1 - fy), (1, fy)):
                for dx, wx in ((0, 1 - fx), (1, fx)):
                    yy, xx = min(max(y0 + dy, 0), h0 - 1), min(max(x0 + dx, 0), w0 - 1)
                    out[i, j] += wy * wx * x[yy, xx]
    return out


def test_full_res_mask_scores_each_image_at_its_own_resolution():
    """Masks of three sizes: ``full_res_mask`` pads them onto one canvas, the evaluator resizes
    each prediction to its own size; equal to scoring every image alone at its size."""
    from jaxvision.data.transforms import TRANSFORMS, resize
    rng = np.random.default_rng(7)
    c, sizes, low = 3, [(13, 9), (8, 8), (11, 16)], (6, 6)
    pp = TRANSFORMS["full_res_mask"](16)
    batch = {"mask_logits": [], "mask_full": [], "mask_size": []}
    preds, masks = [], []
    for h, w in sizes:
        _, mask = _random_masks(rng, 1, h, w, c)
        ex = pp({"image": np.zeros((h, w, 3), np.uint8), "mask": mask[0]}, rng)
        ex = resize(ex, *low)                                   # the model input; mask_full stays
        assert ex["mask"].shape == low and ex["mask_full"].shape == (16, 16)
        logits = rng.normal(size=low + (c,)).astype(np.float32)
        batch["mask_logits"].append(logits)
        batch["mask_full"].append(ex["mask_full"])
        batch["mask_size"].append(ex["mask_size"])
        preds.append(_bilinear_up(logits, h, w).argmax(-1).ravel())
        masks.append(mask[0].ravel())
    batch = {k: np.stack(v) for k, v in batch.items()}
    ev = Segmentation("seg", split="test", batch_size=3, every=0, mask="mask_full")
    out = jax.jit(ev.transform)(batch)
    ev.reset()
    ev.update(jax.device_get(out))
    got = ev.compute()
    cm, want = _numpy_scores(np.concatenate(preds), np.concatenate(masks), c)
    np.testing.assert_array_equal(got["confusion_matrix"], cm)
    _assert_scores(got, want)
    assert got["confusion_matrix"].sum() == sum((m != IGNORE_LABEL).sum() for m in masks)
    with pytest.raises(ValueError, match=r"full_res_mask\(20\)"):
        pp({"image": np.zeros((20, 4, 3), np.uint8), "mask": np.zeros((20, 4), np.int32)}, rng)
    assert pp({"image": np.zeros((20, 4, 3), np.uint8)}, rng).keys() == {"image"}


def test_evaluator_rejects_out_of_range_ids_and_bad_shapes():
    from jaxvision.config import ConfigError
    ev = Segmentation("seg", split="test", batch_size=2, every=0)
    mask = np.zeros((2, 4, 4), np.int32)
    mask[0, 0, 0] = 255
    with pytest.raises(ValueError, match="255"):
        _feed(ev, np.zeros((2, 4, 4, 3), np.float32), mask, batch=2)
    with pytest.raises(ConfigError, match="evals.seg"):
        ev.transform({"mask_logits": jnp.zeros((2, 4, 3)), "mask": jnp.zeros((2, 4, 4), jnp.int32)})


# ------------------------------------------------------------------------ losses

def _log_softmax(z):
    z = z - z.max()
    return z - np.log(np.exp(z).sum())


def _loss_data(seed=5, c=4):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(3, 4, 5, c)).astype(np.float32) * 2
    mask = rng.integers(0, c, (3, 4, 5)).astype(np.int32)
    mask[rng.random(mask.shape) < 0.25] = IGNORE_LABEL
    mask[2] = IGNORE_LABEL                                         # an image with only ignore
    return logits, mask


def _per_pixel(logits, mask, fn):
    values, pixels = np.zeros(len(mask)), np.zeros(len(mask))
    for i in range(mask.shape[0]):
        for y in range(mask.shape[1]):
            for x in range(mask.shape[2]):
                k = mask[i, y, x]
                if k == IGNORE_LABEL:
                    continue
                values[i] += fn(_log_softmax(logits[i, y, x].astype(np.float64)), k)
                pixels[i] += 1
    return values, pixels


def _check_pair(got, values, pixels):
    np.testing.assert_allclose(got.values, values, rtol=2e-5, atol=1e-6)
    np.testing.assert_array_equal(got.pixels, pixels)
    assert got.values[2] == 0 and got.pixels[2] == 0
    assert float(got.mean) == pytest.approx(values.sum() / pixels.sum(), rel=2e-5)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("weighted", [False, True])
def test_pixel_cross_entropy_matches_numpy_loop(smoothing, weighted):
    logits, mask = _loss_data()
    w = np.array([0.5, 2.0, 1.0, 3.0], np.float32) if weighted else None
    got = losses.pixel_cross_entropy(jnp.asarray(logits), jnp.asarray(mask), class_weights=w,
                                     label_smoothing=smoothing)

    def ce(logp, k):
        c = len(logp)
        target = (1 - smoothing) * np.eye(c)[k] + smoothing / c
        return (1.0 if w is None else w[k]) * -np.sum(target * logp)

    _check_pair(got, *_per_pixel(logits, mask, ce))


def test_pixel_cross_entropy_equals_torch_style_weighted_sum():
    # Without smoothing: sum over pixels of w[y] * -log p_y (torch's weight=, reduction='sum').
    logits, mask = _loss_data(seed=6)
    w = np.array([1.0, 0.2, 4.0, 1.0], np.float32)
    got = losses.pixel_cross_entropy(jnp.asarray(logits), jnp.asarray(mask), class_weights=w)
    keep = mask >= 0
    logp = np.asarray(jax.nn.log_softmax(logits.astype(np.float64)))
    ref = -(w[np.where(keep, mask, 0)] * np.take_along_axis(logp, np.maximum(mask, 0)[..., None], -1)[..., 0])
    assert float(got.values.sum()) == pytest.approx(float((ref * keep).sum()), rel=1e-5)


@pytest.mark.parametrize("gamma,alpha", [(2.0, None), (0.5, [0.25, 1.0, 0.5, 2.0]), (0.0, 0.3)])
def test_softmax_focal_loss_matches_numpy_loop(gamma, alpha):
    logits, mask = _loss_data(seed=7)
    got = losses.softmax_focal_loss(jnp.asarray(logits), jnp.asarray(mask), gamma=gamma,
                                    alpha=None if alpha is None else np.asarray(alpha, np.float32))

    def focal(logp, k):
        a = 1.0 if alpha is None else (alpha if np.isscalar(alpha) else alpha[k])
        return a * -(1 - np.exp(logp[k])) ** gamma * logp[k]

    _check_pair(got, *_per_pixel(logits, mask, focal))
    if gamma == 0.0:
        ce = losses.pixel_cross_entropy(jnp.asarray(logits), jnp.asarray(mask))
        np.testing.assert_allclose(got.values, 0.3 * ce.values, rtol=1e-6)


@pytest.mark.parametrize("smooth", [1.0, 0.0])
def test_dice_loss_matches_numpy_loop(smooth):
    logits, mask = _loss_data(seed=8)
    c = logits.shape[-1]
    got = losses.dice_loss(jnp.asarray(logits), jnp.asarray(mask), smooth=smooth)
    want = []
    for i in range(len(mask)):
        inter, psum, tsum = np.zeros(c), np.zeros(c), np.zeros(c)
        for y in range(mask.shape[1]):
            for x in range(mask.shape[2]):
                k = mask[i, y, x]
                if k == IGNORE_LABEL:
                    continue
                p = np.exp(_log_softmax(logits[i, y, x].astype(np.float64)))
                t = np.eye(c)[k]
                inter += p * t
                psum += p
                tsum += t
        denom = psum + tsum + smooth
        dice = np.where(denom > 0, (2 * inter + smooth) / np.where(denom > 0, denom, 1), 1.0)
        want.append(1 - dice.mean())
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert float(got[2]) == 0.0


@pytest.mark.parametrize("name", ["ce", "focal", "focal_half", "dice", "dice0"])
def test_losses_finite_gradient_with_ignore_only_image(name):
    logits, mask = _loss_data(seed=9)
    fns = {"ce": lambda z: losses.pixel_cross_entropy(z, mask, label_smoothing=0.1).mean,
           "focal": lambda z: losses.softmax_focal_loss(z, mask).mean,
           "focal_half": lambda z: losses.softmax_focal_loss(z, mask, gamma=0.5).mean,
           "dice": lambda z: jnp.mean(losses.dice_loss(z, mask)),
           "dice0": lambda z: jnp.mean(losses.dice_loss(z, mask, smooth=0.0))}
    # Saturated logits too (p_t == 1 in float32), where (1 - p_t)^gamma has an infinite slope.
    for z in (logits, logits * 1e3):
        g = jax.grad(fns[name])(jnp.asarray(z))
        assert np.isfinite(np.asarray(g)).all()
        assert not np.asarray(g[2]).any()                          # the ignore-only image
        assert not np.asarray(g)[mask == IGNORE_LABEL].any()       # ignore pixels get no gradient


def test_losses_nan_on_class_id_beyond_num_classes():
    logits, mask = _loss_data(seed=10)
    mask[0, 0, 0] = 4                                              # C = 4
    out = losses.pixel_cross_entropy(jnp.asarray(logits), jnp.asarray(mask))
    assert np.isnan(out.values[0]) and np.isfinite(out.values[1:]).all()
    assert np.isnan(losses.dice_loss(jnp.asarray(logits), jnp.asarray(mask))[0])
