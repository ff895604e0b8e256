"""Detection losses and targets against hand computations and numpy loops; decoders against
known boxes."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision import losses
from jaxvision.models import detection as det
from jaxvision.ops import targets as T


def test_sigmoid_focal_loss_matches_torchvision_formula():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 3, (50,)).astype(np.float32)
    t = (rng.random(50) < 0.3).astype(np.float32)
    for alpha, gamma in ((0.25, 2.0), (-1.0, 2.0), (0.5, 0.0)):
        p = 1 / (1 + np.exp(-x.astype(np.float64)))
        ce = -(t * np.log(p) + (1 - t) * np.log(1 - p))
        p_t = p * t + (1 - p) * (1 - t)
        want = ce * (1 - p_t) ** gamma
        if alpha >= 0:
            want = (alpha * t + (1 - alpha) * (1 - t)) * want
        np.testing.assert_allclose(losses.sigmoid_focal_loss(x, t, alpha=alpha, gamma=gamma), want,
                                   rtol=1e-5, atol=1e-6)


def test_smooth_l1_and_giou_loss_by_hand():
    x = jnp.asarray([-2.0, -0.05, 0.0, 0.05, 3.0])
    np.testing.assert_allclose(losses.smooth_l1(x, 0.1), [1.95, 0.0125, 0.0, 0.0125, 2.95], rtol=1e-6)
    np.testing.assert_allclose(losses.smooth_l1(x, 0.0), np.abs(np.asarray(x)), rtol=1e-6)
    a = jnp.asarray([[0.0, 0, 2, 2], [0, 0, 2, 2]])
    b = jnp.asarray([[0.0, 0, 2, 2], [0, 4, 2, 6]])
    np.testing.assert_allclose(losses.giou_loss(a, b), [0.0, 1 + 1 / 3], rtol=1e-6)


def test_centernet_focal_loss_by_hand():
    logits = jnp.asarray([0.0, 2.0, -1.0])
    heat = jnp.asarray([1.0, 0.5, 0.0])
    p = 1 / (1 + np.exp(-np.asarray([0.0, 2.0, -1.0])))
    want = [-(1 - p[0]) ** 2 * np.log(p[0]),
            -(1 - 0.5) ** 4 * p[1] ** 2 * np.log(1 - p[1]),
            -(p[2] ** 2) * np.log(1 - p[2])]
    np.testing.assert_allclose(losses.centernet_focal_loss(logits, heat), want, rtol=1e-5)


def _yolo_loop(pred, boxes, classes, valid, size, s, b, lc, ln):
    """The YOLOv1 loss of one image written out cell by cell."""
    h, w = size
    c = pred.shape[-1] - 5 * b
    owner = {}
    for m in range(len(boxes)):
        if not valid[m]:
            continue
        y0, x0, y1, x1 = boxes[m]
        cell = (min(int((y0 + y1) / 2 / h * s), s - 1), min(int((x0 + x1) / 2 / w * s), s - 1))
        area = (y1 - y0) * (x1 - x0)
        if cell not in owner or area >= owner[cell][1]:
            owner[cell] = (m, area)
    terms = dict(coord=0.0, size=0.0, obj=0.0, noobj=0.0, cls=0.0)
    for i in range(s):
        for j in range(s):
            preds = [pred[i, j, 5 * k:5 * k + 5] for k in range(b)]
            if (i, j) not in owner:
                terms["noobj"] += ln * sum(p[4] ** 2 for p in preds)
                continue
            m = owner[(i, j)][0]
            y0, x0, y1, x1 = boxes[m]
            ty, tx = (y0 + y1) / 2 / h * s - i, (x0 + x1) / 2 / w * s - j
            th, tw = math.sqrt((y1 - y0) / h), math.sqrt((x1 - x0) / w)
            ious = []
            for p in preds:
                cy, cx = (i + p[0]) * h / s, (j + p[1]) * w / s
                ph, pw = p[2] ** 2 * h, p[3] ** 2 * w
                iy = max(0, min(cy + ph / 2, y1) - max(cy - ph / 2, y0))
                ix = max(0, min(cx + pw / 2, x1) - max(cx - pw / 2, x0))
                union = ph * pw + (y1 - y0) * (x1 - x0) - iy * ix
                ious.append(iy * ix / union if union > 0 else 0.0)
            r = int(np.argmax(ious))
            for k, p in enumerate(preds):
                if k == r:
                    terms["coord"] += lc * ((p[0] - ty) ** 2 + (p[1] - tx) ** 2)
                    terms["size"] += lc * ((p[2] - th) ** 2 + (p[3] - tw) ** 2)
                    terms["obj"] += (p[4] - ious[k]) ** 2
                else:
                    terms["noobj"] += ln * p[4] ** 2
            onehot = np.eye(c)[classes[m]]
            terms["cls"] += float(np.sum((pred[i, j, 5 * b:] - onehot) ** 2))
    return terms


def test_yolo_v1_loss_terms_equal_a_cell_by_cell_loop():
    rng = np.random.default_rng(1)
    s, b, c, size = 2, 2, 3, (20, 30)
    pred = rng.uniform(0, 1, (2, s, s, 5 * b + c)).astype(np.float32)
    # Image 0: two objects in one cell (the larger owns it) and one elsewhere; image 1: none.
    boxes = np.array([[[1, 1, 6, 9], [0, 0, 9, 14], [12, 18, 19, 29], [0, 0, 0, 0]],
                      [[0, 0, 0, 0]] * 4], np.float32)
    classes = np.array([[0, 1, 2, 0], [0, 0, 0, 0]], np.int32)
    valid = np.array([[True, True, True, False], [False] * 4])
    got = jax.jit(losses.yolo_v1_loss, static_argnums=4, static_argnames="num_boxes")(
        jnp.asarray(pred), jnp.asarray(boxes), jnp.asarray(classes), jnp.asarray(valid), size, num_boxes=b)
    for n in range(2):
        want = _yolo_loop(pred[n], boxes[n], classes[n], valid[n], size, s, b, 5.0, 0.5)
        for k, v in want.items():
            assert float(getattr(got, k)[n]) == pytest.approx(v, rel=1e-5, abs=1e-6), (n, k)
    assert float(got.obj[1] + got.coord[1] + got.cls[1]) == 0.0
    np.testing.assert_allclose(got.total(), sum(got), rtol=1e-6)


def test_yolo_targets_decode_back_to_the_boxes():
    boxes = jnp.asarray([[[2.0, 3.0, 10.0, 20.0], [30, 30, 60, 50]]])
    t = jax.jit(T.yolo_v1_targets, static_argnums=(3, 4, 5))(
        boxes, jnp.asarray([[1, 0]]), jnp.asarray([[True, True]]), (64, 64), 4, 2)
    pred = jnp.concatenate([t.offset, t.sqrt_size, jnp.ones_like(t.offset[..., :1])], -1)[:, :, :, None, :]
    decoded = np.asarray(T.yolo_v1_boxes(pred, (64, 64)))[0, :, :, 0]
    has = np.asarray(t.has_object[0]) > 0
    assert has.sum() == 2
    np.testing.assert_allclose(np.sort(decoded[has], axis=0), np.sort(np.asarray(boxes[0]), axis=0),
                               atol=1e-4)


def test_gaussian_radius_matches_cornernet_and_heatmap_peaks_at_centres():
    def radius(h, w, o=0.7):  # CornerNet's gaussian_radius, as published
        b1, c1 = h + w, w * h * (1 - o) / (1 + o)
        r1 = (b1 + math.sqrt(b1 ** 2 - 4 * c1)) / 2
        b2, c2 = 2 * (h + w), (1 - o) * w * h
        r2 = (b2 + math.sqrt(b2 ** 2 - 16 * c2)) / 2
        a3, b3, c3 = 4 * o, -2 * o * (h + w), (o - 1) * w * h
        r3 = (b3 + math.sqrt(b3 ** 2 - 4 * a3 * c3)) / 2
        return min(r1, r2, r3)

    for h, w in ((4.0, 4.0), (10.0, 3.0), (25.0, 40.0)):
        assert float(T.gaussian_radius(jnp.asarray(h), jnp.asarray(w))) == pytest.approx(radius(h, w), rel=1e-5)
    boxes = jnp.asarray([[[8.0, 8.0, 40.0, 40.0], [0.0, 40.0, 20.0, 64.0], [0, 0, 0, 0]]])
    t = jax.jit(T.centernet_targets, static_argnums=(3, 4, 5))(
        boxes, jnp.asarray([[2, 0, 1]]), jnp.asarray([[True, True, False]]), (16, 16), 4, 3)
    heat = np.asarray(t.heatmap[0])
    assert heat[6, 6, 2] == 1.0 and heat[2, 13, 0] == 1.0   # centres (24, 24) / 4 and (10, 52) / 4
    assert heat[..., 1].max() == 0.0                       # the padding row paints nothing
    assert (heat <= 1).all() and np.sum(heat == 1) == 2
    np.testing.assert_allclose(np.asarray(t.offset[0, :2]), [[0, 0], [0.5, 0]])
    np.testing.assert_allclose(np.asarray(t.size[0, :2]), [[8, 8], [5, 6]])
    assert t.cell[0, :2].tolist() == [6 * 16 + 6, 2 * 16 + 13]


def test_sample_balanced_counts():
    labels = jnp.asarray([1] * 10 + [0] * 100 + [-1] * 20)
    for seed in range(3):
        m = np.asarray(T.sample_balanced(labels, jax.random.key(seed), 32, 0.25))
        lab = np.asarray(labels)
        assert m.sum() == 32 and (lab[m] == 1).sum() == 8 and (lab[m] == -1).sum() == 0
    few = jnp.asarray([1, 1, 0, -1])
    m = np.asarray(T.sample_balanced(few, jax.random.key(0), 32, 0.5))
    assert m.tolist() == [True, True, True, False]


def test_decode_centernet_recovers_planted_objects():
    h = w = 8
    heat = np.full((1, h, w, 2), -10.0, np.float32)
    heat[0, 2, 3, 1] = 3.0
    heat[0, 5, 5, 0] = 2.0
    heat[0, 5, 6, 0] = 1.0      # next to a higher peak: not a local maximum
    off = np.zeros((1, h, w, 2), np.float32)
    off[0, 2, 3] = (0.5, 0.25)
    size = np.zeros((1, h, w, 2), np.float32)
    size[0, 2, 3] = (2.0, 4.0)
    size[0, 5, 5] = (1.0, 1.0)
    out = det.decode_centernet({"heatmap": jnp.asarray(heat), "offset": jnp.asarray(off),
                                "size": jnp.asarray(size)}, 4.0, (32, 32), max_detections=3,
                               score_threshold=0.5)
    assert out["det_valid"][0].tolist() == [True, True, False]
    assert out["det_classes"][0, :2].tolist() == [1, 0]
    np.testing.assert_allclose(out["det_boxes"][0, 0], [(2.5 - 1) * 4, (3.25 - 2) * 4,
                                                        (2.5 + 1) * 4, (3.25 + 2) * 4])
    np.testing.assert_allclose(out["det_scores"][0, 0], 1 / (1 + np.exp(-3.0)), rtol=1e-6)
    many = det.decode_centernet({"heatmap": jnp.asarray(heat), "offset": jnp.asarray(off),
                                 "size": jnp.asarray(size)}, 4.0, (32, 32), max_detections=200)
    assert many["det_boxes"].shape == (1, 200, 4)      # more than h * w * C: padded


def test_retinanet_loss_equals_a_numpy_version():
    rng = np.random.default_rng(3)
    anchors = np.array([[0, 0, 10, 10], [0, 0, 10, 20], [20, 20, 30, 30], [40, 40, 48, 48]], np.float32)
    boxes = np.array([[[0, 0, 10, 11], [21, 20, 30, 31]]], np.float32)
    classes, valid = np.array([[1, 0]]), np.array([[True, True]])
    out = {"logits": jnp.asarray(rng.normal(size=(1, 4, 2)), jnp.float32),
           "deltas": jnp.asarray(rng.normal(0, 0.1, (1, 4, 4)), jnp.float32), "anchors": jnp.asarray(anchors)}
    got = jax.jit(losses.retinanet_loss)(out, jnp.asarray(boxes), jnp.asarray(classes), jnp.asarray(valid))
    from jaxvision.ops import boxes as B
    ious = B.iou(anchors, boxes[0])
    best, matched = ious.max(1), ious.argmax(1)
    label = np.where(best >= 0.5, 1, np.where(best < 0.4, 0, -1))  # every object already has a >= 0.5 anchor
    assert label.tolist() == [1, 1, 1, 0]
    t = np.zeros((4, 2))
    t[label == 1, classes[0][matched[label == 1]]] = 1
    fl = np.asarray(losses.sigmoid_focal_loss(out["logits"][0], t))
    npos = (label == 1).sum()
    assert float(got["cls"][0]) == pytest.approx(fl[label >= 0].sum() / npos, rel=1e-5)
    enc = B.encode(boxes[0][matched], anchors)
    sl1 = np.asarray(losses.smooth_l1(out["deltas"][0] - enc, 1 / 9)).sum(-1)
    assert float(got["box"][0]) == pytest.approx(sl1[label == 1].sum() / npos, rel=1e-5)


def test_two_stage_rois_include_the_objects_and_respect_the_positive_fraction():
    from jaxvision.models.rcnn import ROI_BOX_WEIGHTS, _sample_rois
    from jaxvision.ops import boxes as B
    rng = np.random.default_rng(5)
    y, x = rng.uniform(0, 40, (2, 30))
    proposals = np.stack([y, x, y + rng.uniform(4, 20, 30), x + rng.uniform(4, 20, 30)], -1).astype(np.float32)
    boxes = np.array([[5, 5, 20, 20], [30, 30, 50, 45], [0, 0, 0, 0]], np.float32)
    classes, valid = np.array([2, 0, 0]), np.array([True, True, False])
    out = jax.jit(_sample_rois, static_argnums=(6, 7, 8))(
        jax.random.key(0), proposals, np.ones(30, bool), boxes, classes, valid, 16, 0.25, 0.5)
    rois, used, labels, targets, objects = map(np.asarray, out)
    assert used.sum() == 16 and 2 <= (labels[used] > 0).sum() <= 4 and (labels[~used] == -1).all()
    # The ground-truth boxes are candidates too, so both objects can be sampled as positives.
    ious = B.iou(rois, boxes[:2])
    fg = used & (ious.max(1) >= 0.5)
    np.testing.assert_array_equal(labels[fg], classes[ious[fg].argmax(1)] + 1)
    np.testing.assert_array_equal(objects[fg], ious[fg].argmax(1))  # the mask head's object
    assert (labels[used & ~fg] == 0).all()
    want = B.encode(boxes[ious[fg].argmax(1)], rois[fg], ROI_BOX_WEIGHTS)
    np.testing.assert_allclose(targets[fg], want, rtol=1e-5, atol=1e-5)


def test_paste_masks_matches_a_pixel_loop():
    from jaxvision.ops.roi import paste_masks
    rng = np.random.default_rng(2)
    masks = rng.random((3, 4, 5)).astype(np.float32)
    boxes = np.array([[2.0, 3.0, 10.0, 8.0], [0.0, 0.0, 3.5, 12.0], [-2.0, 5.0, 6.0, 20.0]], np.float32)
    paste = jax.jit(paste_masks, static_argnums=2)
    got = np.asarray(paste(masks, boxes, (9, 11)))
    want = np.zeros((3, 9, 11))
    for k, (y0, x0, y1, x1) in enumerate(boxes):
        mh, mw = masks.shape[1:]
        for y in range(9):
            for x in range(11):
                cy, cx = y + 0.5, x + 0.5
                if not (y0 <= cy < y1 and x0 <= cx < x1):
                    continue
                u = min(max((cy - y0) / (y1 - y0) * mh - 0.5, 0), mh - 1)
                v = min(max((cx - x0) / (x1 - x0) * mw - 0.5, 0), mw - 1)
                i, j = int(np.floor(u)), int(np.floor(v))
                i1, j1 = min(i + 1, mh - 1), min(j + 1, mw - 1)
                a, b = u - i, v - j
                want[k, y, x] = ((1 - a) * (1 - b) * masks[k, i, j] + (1 - a) * b * masks[k, i, j1]
                                 + a * (1 - b) * masks[k, i1, j] + a * b * masks[k, i1, j1])
    np.testing.assert_allclose(got, want, atol=1e-6)
    # A constant map fills exactly the pixels whose centres are inside its box.
    ones = np.asarray(paste(np.ones((1, 2, 2), np.float32), boxes[:1], (9, 11)))[0]
    assert ones.sum() == 7 * 5 and ones[2:9, 3:8].min() == 1.0  # rows 2..8: the image ends at 9
