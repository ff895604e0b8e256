"""Box ops vs explicit loops and hand computations, on numpy and on jax arrays."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxvision.ops import boxes as B

SETTINGS = settings(max_examples=40, deadline=None)


@st.composite
def box_arrays(draw, min_n=0, max_n=6, nonempty=False):
    """(N, 4) float32 boxes on a half-pixel grid inside a 40 x 50 plane."""
    n = draw(st.integers(min_n, max_n))
    lo_size = 1 if nonempty else 0
    rows = []
    for _ in range(n):
        y0, x0 = draw(st.integers(0, 60)) / 2, draw(st.integers(0, 80)) / 2
        h, w = draw(st.integers(lo_size, 20)) / 2, draw(st.integers(lo_size, 20)) / 2
        rows.append([y0, x0, y0 + h, x0 + w])
    return np.asarray(rows, np.float32).reshape(n, 4)


def iou_loop(a, b):
    out = np.zeros((len(a), len(b)))
    for i, (ay0, ax0, ay1, ax1) in enumerate(a.tolist()):
        for j, (by0, bx0, by1, bx1) in enumerate(b.tolist()):
            ih = max(0.0, min(ay1, by1) - max(ay0, by0))
            iw = max(0.0, min(ax1, bx1) - max(ax0, bx0))
            inter = ih * iw
            union = (ay1 - ay0) * (ax1 - ax0) + (by1 - by0) * (bx1 - bx0) - inter
            out[i, j] = inter / union if union > 0 else 0.0
    return out


def test_area_and_iou_by_hand():
    a = np.array([[0, 0, 2, 2], [1, 1, 3, 4], [5, 5, 4, 6]], np.float32)  # last one is inverted
    np.testing.assert_array_equal(B.area(a), [4, 6, 0])
    b = np.array([[1, 1, 3, 3]], np.float32)
    # [0,0,2,2] vs [1,1,3,3]: intersection 1, union 4 + 4 - 1 = 7.
    np.testing.assert_allclose(B.iou(a, b)[:, 0], [1 / 7, 4 / 6, 0], rtol=1e-6)
    assert B.iou(a, b).dtype == np.float32
    assert B.iou(np.zeros((0, 4), np.float32), b).shape == (0, 1)
    # Two empty boxes: union 0 -> IoU 0, not NaN.
    assert B.iou(np.zeros((1, 4)), np.zeros((1, 4)))[0, 0] == 0


@SETTINGS
@given(box_arrays(), box_arrays())
def test_iou_matches_loop_and_is_symmetric_in_unit_interval(a, b):
    got = B.iou(a, b)
    np.testing.assert_allclose(got, iou_loop(a, b), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got, B.iou(b, a).T, rtol=1e-6)
    assert np.all((got >= 0) & (got <= 1))


@SETTINGS
@given(box_arrays(min_n=1, nonempty=True))
def test_iou_with_itself_is_one(b):
    np.testing.assert_allclose(np.diag(B.iou(b, b)), 1.0, rtol=1e-6)


@SETTINGS
@given(box_arrays(), st.integers(30, 60))
def test_flip_twice_is_identity_and_keeps_size(b, width):
    f = B.flip_lr(b, width)
    np.testing.assert_array_equal(B.flip_lr(f, width), b)
    np.testing.assert_allclose(B.area(f), B.area(b))
    np.testing.assert_array_equal(f[:, [0, 2]], b[:, [0, 2]])


def test_flip_clip_scale_translate_by_hand():
    b = np.array([[1, 2, 5, 9]], np.float32)
    np.testing.assert_array_equal(B.flip_lr(b, 10), [[1, 1, 5, 8]])
    np.testing.assert_array_equal(B.scale(b, 2, 0.5), [[2, 1, 10, 4.5]])
    np.testing.assert_array_equal(B.translate(b, -3, 4), [[-2, 6, 2, 13]])
    np.testing.assert_array_equal(B.clip(np.array([[-2, 6, 12, 13]], np.float32), 8, 10),
                                  [[0, 6, 8, 10]])
    assert B.scale(b, 2, 2).dtype == np.float32
    assert B.scale([[1, 2, 3, 4]], 1, 1).dtype == np.float32  # ints are promoted


def test_valid():
    b = np.array([[0, 0, 1, 1], [0, 0, 0.5, 3], [2, 2, 5, 2.9], [0, 0, np.inf, 2], [3, 3, 1, 5]],
                 np.float32)
    assert B.valid(b).tolist() == [True, False, False, False, False]
    assert B.valid(b, min_size=0.5).tolist() == [True, True, True, False, False]


def boxes_loop(mask, num):
    out = np.zeros((num, 4), np.float32)
    for k in range(1, num + 1):
        rows, cols = np.nonzero(mask == k)
        if rows.size:
            out[k - 1] = [rows.min(), cols.min(), rows.max() + 1, cols.max() + 1]
    return out


@SETTINGS
@given(st.integers(0, 2**31 - 1), st.integers(1, 12), st.integers(1, 12), st.integers(0, 5))
def test_from_instance_mask_matches_loop(seed, h, w, num):
    mask = np.random.default_rng(seed).integers(-1, num + 3, (h, w)).astype(np.int32)
    got = B.from_instance_mask(mask, num)
    assert got.shape == (num, 4) and got.dtype == np.float32
    np.testing.assert_array_equal(got, boxes_loop(mask, num))


def test_from_instance_mask_convention():
    m = np.zeros((6, 7), np.int32)
    m[1:4, 2:6] = 1  # rows 1..3, cols 2..5
    m[5, 0] = 3      # instance 2 is absent
    np.testing.assert_array_equal(B.from_instance_mask(m, 3), [[1, 2, 4, 6], [0, 0, 0, 0], [5, 0, 6, 1]])


def test_jax_arrays_give_the_same_results_under_jit():
    rng = np.random.default_rng(0)
    a = np.sort(rng.uniform(0, 30, (5, 4)).astype(np.float32).reshape(5, 2, 2), axis=1).reshape(5, 4)
    a = a[:, [0, 2, 1, 3]]  # [y0, x0, y1, x1] with y0 <= y1, x0 <= x1
    b = a[::-1] + 1.5
    mask = rng.integers(0, 5, (9, 11)).astype(np.int32)

    @jax.jit
    def run(a, b, mask):
        return (B.iou(a, b), B.area(a), B.clip(a, 20, 25), B.flip_lr(a, 30), B.scale(a, 2, 3),
                B.translate(a, 1, -1), B.valid(a, 2.0), B.from_instance_mask(mask, 6))

    got = run(jnp.asarray(a), jnp.asarray(b), jnp.asarray(mask))
    want = (B.iou(a, b), B.area(a), B.clip(a, 20, 25), B.flip_lr(a, 30), B.scale(a, 2, 3),
            B.translate(a, 1, -1), B.valid(a, 2.0), B.from_instance_mask(mask, 6))
    for g, w in zip(got, want):
        assert isinstance(g, jax.Array) and isinstance(w, np.ndarray)
        np.testing.assert_allclose(np.asarray(g), w, rtol=1e-6)


def test_bad_shapes_raise_clear_errors():
    with pytest.raises(ValueError, match=r"boxes has shape \(3, 5\).*\[y0, x0, y1, x1\]"):
        B.area(np.zeros((3, 5)))
    with pytest.raises(ValueError, match=r"iou expects a \(N, 4\)"):
        B.iou(np.zeros(4), np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"instance_mask has shape \(2, 3, 1\)"):
        B.from_instance_mask(np.zeros((2, 3, 1), np.int32), 2)


# ----------------------------------------------------------------------------- formats, GIoU


def test_convert_by_hand_and_round_trips():
    yxyx = np.array([[2.0, 3.0, 10.0, 7.0]], np.float32)
    want = {"xyxy": [[3, 2, 7, 10]], "xywh": [[3, 2, 4, 8]], "cxcywh": [[5, 6, 4, 8]],
            "yxyx": [[2, 3, 10, 7]]}
    for fmt, value in want.items():
        np.testing.assert_allclose(B.convert(yxyx, "yxyx", fmt), value)
        np.testing.assert_allclose(B.convert(np.asarray(value, np.float32), fmt, "yxyx"), yxyx)
    out = B.convert(jnp.asarray(yxyx), "yxyx", "xywh")
    assert isinstance(out, jax.Array)
    with pytest.raises(ValueError, match="formats: yxyx, xyxy, xywh, cxcywh"):
        B.convert(yxyx, "yxyx", "xyhw")


def giou_loop(a, b):
    out = np.zeros((len(a), len(b)))
    iou = iou_loop(a, b)
    for i, (ay0, ax0, ay1, ax1) in enumerate(a.tolist()):
        for j, (by0, bx0, by1, bx1) in enumerate(b.tolist()):
            ua = max(ay1 - ay0, 0) * max(ax1 - ax0, 0)
            ub = max(by1 - by0, 0) * max(bx1 - bx0, 0)
            ih = max(0.0, min(ay1, by1) - max(ay0, by0))
            iw = max(0.0, min(ax1, bx1) - max(ax0, bx0))
            union = ua + ub - ih * iw
            enclose = (max(ay1, by1) - min(ay0, by0)) * (max(ax1, bx1) - min(ax0, bx0))
            out[i, j] = iou[i, j] - ((enclose - union) / enclose if enclose > 0 else 0.0)
    return out


@SETTINGS
@given(box_arrays(), box_arrays())
def test_giou_and_paired_versions_match_a_loop(a, b):
    want = giou_loop(a, b)
    np.testing.assert_allclose(B.giou(a, b), want, atol=1e-6)
    if len(a) and len(b):
        n = min(len(a), len(b))
        np.testing.assert_allclose(B.paired_giou(a[:n], b[:n]), np.diag(want[:n, :n]), atol=1e-6)
        np.testing.assert_allclose(B.paired_iou(a[:n], b[:n]), np.diag(iou_loop(a, b)[:n, :n]),
                                   atol=1e-6)
    assert (want >= -1 - 1e-6).all() and (want <= 1 + 1e-6).all()


def test_giou_by_hand_and_finite_gradients_on_degenerate_boxes():
    a = np.array([[0, 0, 2, 2]], np.float32)
    b = np.array([[0, 4, 2, 6]], np.float32)  # disjoint, enclosing 2 x 6 = 12, union 8
    np.testing.assert_allclose(B.paired_giou(a, b), [0 - (12 - 8) / 12])
    np.testing.assert_allclose(np.asarray(B.giou(jnp.asarray(a), jnp.asarray(b))), [[-1 / 3]], rtol=1e-6)
    point = jnp.zeros((1, 4))
    g = jax.grad(lambda x: B.paired_giou(x, point).sum() + B.paired_iou(x, point).sum())(point)
    assert np.isfinite(np.asarray(g)).all()
    assert float(B.paired_giou(point, point)[0]) == 0.0


# ----------------------------------------------------------------------------- R-CNN coding


def encode_loop(boxes, anchors, weights):
    wy, wx, wh, ww = weights
    out = []
    for (y0, x0, y1, x1), (a0, b0, a1, b1) in zip(boxes.tolist(), anchors.tolist()):
        h, w, ah, aw = y1 - y0, x1 - x0, a1 - a0, b1 - b0
        out.append([wy * ((y0 + h / 2) - (a0 + ah / 2)) / ah, wx * ((x0 + w / 2) - (b0 + aw / 2)) / aw,
                    wh * np.log(h / ah), ww * np.log(w / aw)])
    return np.asarray(out).reshape(-1, 4)


@SETTINGS
@given(box_arrays(min_n=1, nonempty=True), st.sampled_from([(1, 1, 1, 1), (10, 10, 5, 5)]))
def test_encode_matches_a_loop_and_decode_inverts_it(boxes, weights):
    anchors = boxes[::-1] + np.float32(0.5)
    deltas = B.encode(boxes, anchors, weights)
    np.testing.assert_allclose(deltas, encode_loop(boxes, anchors, weights), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(B.decode(deltas, anchors, weights), boxes, rtol=1e-5, atol=1e-4)
    jd = B.decode(jnp.asarray(deltas), jnp.asarray(anchors), weights)
    np.testing.assert_allclose(np.asarray(jd), boxes, rtol=1e-5, atol=1e-4)


def test_decode_caps_log_sizes():
    anchors = np.array([[0, 0, 10, 10]], np.float32)
    out = B.decode(np.array([[0, 0, 1e4, 1e4]], np.float32), anchors)
    side = 10 * np.exp(B.BBOX_CLIP)
    np.testing.assert_allclose(out, [[5 - side / 2, 5 - side / 2, 5 + side / 2, 5 + side / 2]], rtol=1e-5)
    assert np.isfinite(B.encode(np.zeros((1, 4), np.float32), anchors)).all()
