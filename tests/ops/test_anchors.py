"""Anchor grids and anchor matching against plain loops."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxvision.ops import anchors as A
from jaxvision.ops import boxes as B


def test_anchor_grid_by_hand():
    grid = A.anchor_grid(2, 3, 8, sizes=(4, 8), aspect_ratios=(0.25, 1.0))
    assert grid.shape == (2 * 3 * 4, 4)
    rows = []
    for i in range(2):
        for j in range(3):
            cy, cx = (i + 0.5) * 8, (j + 0.5) * 8
            for s in (4, 8):
                for r in (0.25, 1.0):
                    h, w = s * np.sqrt(r), s / np.sqrt(r)
                    rows.append([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2])
    np.testing.assert_allclose(grid, rows, rtol=1e-6)
    np.testing.assert_allclose(B.area(grid), np.tile([16, 16, 64, 64], 6), rtol=1e-5)
    levels = A.multilevel_anchors((20, 33), (8, 16), ((8,), (16, 24)), (1.0,))
    assert [len(a) for a in levels] == [3 * 5, 2 * 3 * 2]
    with pytest.raises(ValueError, match="one list of anchor sizes per level"):
        A.multilevel_anchors((20, 20), (8, 16), ((8,),))


def match_loop(anchors, boxes, valid, pos, neg, force):
    a_n = len(anchors)
    ious = B.iou(anchors, boxes) if len(boxes) else np.zeros((a_n, 0))
    ious = np.where(valid[None, :], ious, -1.0)
    matched, label = np.zeros(a_n, int), np.zeros(a_n, int)
    for a in range(a_n):
        if not ious.shape[1]:
            continue
        m = int(np.argmax(ious[a]))
        best = ious[a, m]
        matched[a] = m
        label[a] = 1 if best >= pos else (0 if best < neg else -1)
    if force:
        for m in range(len(boxes)):  # later objects overwrite earlier ones
            if valid[m] and ious[:, m].max() > 0:
                a = int(np.argmax(ious[:, m]))
                matched[a], label[a] = m, 1
    return matched, label


@st.composite
def scene(draw):
    anchors = A.anchor_grid(4, 4, 8, (8, 16), (0.5, 1.0, 2.0))
    n = draw(st.integers(0, 5))
    boxes = []
    for _ in range(n):
        y0, x0 = draw(st.integers(0, 28)), draw(st.integers(0, 28))
        boxes.append([y0, x0, y0 + draw(st.integers(1, 20)), x0 + draw(st.integers(1, 20))])
    boxes = np.asarray(boxes, np.float32).reshape(n, 4)
    valid = np.asarray([draw(st.booleans()) for _ in range(n)], bool)
    return anchors, boxes, valid


_match = jax.jit(A.match_anchors, static_argnames=("positive", "negative", "force_best"))


@settings(max_examples=30, deadline=None)
@given(scene(), st.booleans())
def test_match_anchors_matches_a_loop(sc, force):
    anchors, boxes, valid = sc
    matched, label, iou = _match(jnp.asarray(anchors), jnp.asarray(boxes), jnp.asarray(valid),
                                 positive=0.5, negative=0.4, force_best=force)
    want_m, want_l = match_loop(anchors, boxes, valid, 0.5, 0.4, force)
    np.testing.assert_array_equal(np.asarray(label), want_l)
    pos = want_l == 1
    np.testing.assert_array_equal(np.asarray(matched)[pos], want_m[pos])
    if len(boxes):
        ref = B.iou(anchors, boxes)[np.arange(len(anchors)), np.asarray(matched)]
        np.testing.assert_allclose(np.asarray(iou)[pos], ref[pos], rtol=1e-6)


def test_match_anchors_thresholds_are_inclusive_and_batched_by_vmap():
    anchors = jnp.asarray([[0, 0, 10, 10], [0, 0, 10, 20], [0, 0, 10, 25], [50, 50, 60, 60]], jnp.float32)
    boxes = jnp.asarray([[0, 0, 10, 10]], jnp.float32)
    _, label, iou = _match(anchors, boxes, jnp.asarray([True]), positive=0.5, negative=0.4,
                           force_best=False)
    np.testing.assert_allclose(iou[:3], [1.0, 0.5, 0.4])
    assert label.tolist() == [1, 1, -1, 0]  # IoU 0.5 >= positive; IoU 0.4 is in the band
    batched = jax.vmap(lambda b, v: A.match_anchors(anchors, b, v))(
        jnp.stack([boxes, boxes]), jnp.asarray([[True], [False]]))
    assert batched[1].tolist() == [[1, 1, -1, 0], [0, 0, 0, 0]]
