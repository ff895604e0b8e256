"""nms / batched_nms / top_k against a plain numpy loop, hand cases, jit and vmap."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision.ops import nms as N

PAD = 64  # random cases are padded to PAD boxes (valid False) so one compilation serves them all

_nms = jax.jit(N.nms, static_argnames=("iou_threshold", "max_output", "score_threshold"))
_batched = jax.jit(N.batched_nms, static_argnames=("iou_threshold", "max_output", "score_threshold"))
_top_k = jax.jit(N.top_k, static_argnames="k")


def iou_pair(a, b):
    """IoU of two [y0, x0, y1, x1] boxes in float32, in torchvision's order of operations."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    f = np.float32
    area_a = max(a[2] - a[0], f(0)) * max(a[3] - a[1], f(0))
    area_b = max(b[2] - b[0], f(0)) * max(b[3] - b[1], f(0))
    h = max(min(a[2], b[2]) - max(a[0], b[0]), f(0))
    w = max(min(a[3], b[3]) - max(a[1], b[1]), f(0))
    inter = h * w
    union = area_a + area_b - inter
    return f(inter / union) if union > 0 else f(0)


def nms_loop(boxes, scores, thr, max_output, score_threshold=-np.inf, valid=None, classes=None):
    """Greedy NMS: stable descending order, suppress when IoU > thr (compared as exact reals)."""
    n = len(boxes)
    valid = np.ones(n, bool) if valid is None else valid
    kept = []
    for i in sorted(range(n), key=lambda i: (-float(scores[i]), i)):
        if not valid[i] or not float(scores[i]) > score_threshold:
            continue
        rivals = [j for j in kept if classes is None or classes[j] == classes[i]]
        if any(float(iou_pair(boxes[i], boxes[j])) > thr for j in rivals):
            continue
        kept.append(i)
    return kept[:max_output]


def random_case(rng, n_max=60, degenerate=0.1, invalid=0.1):
    """Boxes on a half-pixel grid in a 30 x 30 plane (many overlaps, exact IoUs such as 1/2) with
    scores from a few values (many ties), padded to PAD with valid False."""
    n = int(rng.integers(0, n_max + 1))
    y0, x0 = rng.integers(0, 50, (2, n)) / 2
    h, w = rng.integers(1, 24, (2, n)) / 2
    h[rng.random(n) < degenerate] = 0
    w[rng.random(n) < degenerate] = 0
    boxes = np.zeros((PAD, 4), np.float32)
    boxes[:n] = np.stack([y0, x0, y0 + h, x0 + w], -1)
    scores = np.zeros(PAD, np.float32)
    scores[:n] = rng.integers(0, 10, n) / 10
    valid = np.zeros(PAD, bool)
    valid[:n] = rng.random(n) >= invalid
    classes = rng.integers(0, 3, PAD).astype(np.int32)
    return boxes, scores, valid, classes


def as_list(indices, keep):
    indices, keep = np.asarray(indices), np.asarray(keep)
    assert indices.dtype == np.int32 and keep.dtype == bool
    assert np.all(keep[:-1] >= keep[1:]), "kept entries must come first"
    assert np.all(indices[~keep] == 0), "padding must use index 0"
    return indices[keep].tolist()


@pytest.mark.parametrize("thr,score_thr,max_output,seed", [
    (0.5, -np.inf, PAD, 0), (0.3, -np.inf, 7, 1), (0.7, 0.35, PAD, 2), (0.0, 0.5, 3, 3)])
def test_nms_matches_loop_vmapped(thr, score_thr, max_output, seed):
    rng = np.random.default_rng(seed)
    cases = [random_case(rng) for _ in range(12)]
    boxes, scores, valid, _ = (np.stack(x) for x in zip(*cases))
    run = jax.jit(jax.vmap(functools.partial(N.nms, iou_threshold=thr, max_output=max_output,
                                             score_threshold=score_thr)))
    indices, keep = run(boxes, scores, valid=valid)
    assert indices.shape == keep.shape == (12, max_output)
    for c in range(12):
        want = nms_loop(boxes[c], scores[c], thr, max_output, score_thr, valid[c])
        assert as_list(indices[c], keep[c]) == want, f"case {c}"


@pytest.mark.parametrize("thr,seed", [(0.5, 10), (0.2, 11)])
def test_batched_nms_matches_loop(thr, seed):
    rng = np.random.default_rng(seed)
    for c in range(8):
        boxes, scores, valid, classes = random_case(rng)
        indices, keep = _batched(boxes, scores, classes, iou_threshold=thr, max_output=PAD, valid=valid)
        want = nms_loop(boxes, scores, thr, PAD, valid=valid, classes=classes)
        assert as_list(indices, keep) == want, f"case {c}"


def kept(boxes, scores, thr=0.5, max_output=8, valid=None, classes=None, **kw):
    """Runs the jitted nms (batched_nms when classes are given) on up to 8 boxes padded to 8, so
    that the hand cases share compilations; returns the kept indices as a list."""
    boxes, scores = np.asarray(boxes, np.float32), np.asarray(scores, np.float32)
    n = len(boxes)
    valid = np.ones(n, bool) if valid is None else np.asarray(valid)
    pad = lambda a: np.concatenate([a, np.zeros((8 - n,) + a.shape[1:], a.dtype)])  # noqa: E731
    if classes is None:
        out = _nms(pad(boxes), pad(scores), iou_threshold=thr, max_output=max_output, valid=pad(valid), **kw)
    else:
        out = _batched(pad(boxes), pad(scores), pad(np.asarray(classes, np.int32)), iou_threshold=thr,
                       max_output=max_output, valid=pad(valid), **kw)
    return as_list(*out)


def test_iou_equal_to_threshold_does_not_suppress():
    # Intersection 50, union 100: IoU exactly 0.5 in float32.
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 5]], np.float32)
    assert N._boxes.iou(boxes[:1], boxes[1:])[0, 0] == 0.5
    assert kept(boxes, [0.9, 0.8], 0.5) == [0, 1]
    assert kept(boxes, [0.9, 0.8], 0.4999) == [0]


def test_threshold_compared_exactly_like_torchvision():
    # IoU 3/10 rounds to float32(0.3) > 0.3: torchvision compares in double, so this suppresses;
    # a threshold equal to float32(0.3) does not.
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 3]], np.float32)
    assert float(N._boxes.iou(boxes[:1], boxes[1:])[0, 0]) > 0.3
    assert kept(boxes, [0.9, 0.8], 0.3) == [0]
    assert kept(boxes, [0.9, 0.8], float(np.float32(0.3))) == [0, 1]
    # score_threshold is exact too: float32(0.3) > 0.3 is a candidate, float32(0.3) > float32(0.3) not.
    far = np.array([[0, 0, 1, 1], [5, 5, 6, 6]], np.float32)
    assert kept(far, [0.3, 0.2], score_threshold=0.3) == [0]
    assert kept(far, [0.3, 0.2], score_threshold=float(np.float32(0.3))) == []


def test_ties_go_to_lower_index_and_suppression_order():
    box = [0, 0, 4, 4]
    boxes = np.array([box, [20, 20, 24, 24], box, box], np.float32)
    assert kept(boxes, [0.5, 0.5, 0.5, 0.7]) == [3, 1]
    assert kept(boxes, [0.5, 0.5, 0.5, 0.5]) == [0, 1]
    assert kept(boxes, [-0.0, 0.0, 0.0, 0.0]) == [0, 1]  # -0.0 and 0.0 tie as well
    # With threshold 1 nothing can be suppressed (IoU <= 1), but each box is kept only once.
    assert kept(boxes, [0.5, 0.5, 0.5, 0.7], 1.0) == [3, 0, 1, 2]


def test_empty_all_invalid_and_degenerate():
    indices, keep = _nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), iou_threshold=0.5,
                         max_output=8)
    assert indices.shape == keep.shape == (8,) and not np.any(keep) and not np.any(indices)
    boxes = np.array([[0, 0, 2, 2]] * 3, np.float32)
    assert kept(boxes, [1, 1, 1]) == [0]
    assert kept(boxes, [1, 1, 1], valid=[False] * 3) == []
    indices, keep = jax.jit(N.nms, static_argnums=(2, 3))(boxes, np.ones(3), 0.5, 0)
    assert indices.shape == keep.shape == (0,)
    # Zero-area boxes (a point, lines) overlap nothing, even identical copies: all kept.
    boxes = np.array([[1, 1, 1, 1], [1, 1, 1, 1], [0, 0, 0, 5], [0, 0, 5, 5]], np.float32)
    assert kept(boxes, [0.1, 0.2, 0.3, 0.4], 0.0) == [3, 2, 1, 0]
    # NaN and -inf scores are never candidates with the default score_threshold.
    assert kept(boxes, [np.nan, -np.inf, 0.3, 0.4], 0.0) == [3, 2]


def test_max_output_truncates_in_score_order():
    boxes = np.array([[10 * i, 0, 10 * i + 5, 5] for i in range(6)], np.float32)
    scores = [0.1, 0.6, 0.3, 0.5, 0.2, 0.4]
    assert kept(boxes, scores, max_output=3) == [1, 3, 5]
    assert kept(boxes, scores, max_output=3, score_threshold=0.45) == [1, 3]


def test_batched_nms_classes_do_not_suppress_each_other():
    boxes = np.array([[0, 0, 4, 4]] * 4, np.float32)
    scores = [0.9, 0.8, 0.7, 0.6]
    assert kept(boxes, scores, classes=[0, 1, 0, 2]) == [0, 1, 3]
    assert kept(boxes, scores) == [0]
    # Far-apart coordinates (where an offset trick loses precision) stay exact.
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 5], [1e6, 1e6, 1e6 + 10, 1e6 + 10]], np.float32)
    assert kept(boxes, scores[:3], classes=[7, 7, 3]) == [0, 1, 2]


def test_vmap_batched_nms_and_top_k():
    # (nms under vmap is covered by test_nms_matches_loop_vmapped.)
    rng = np.random.default_rng(7)
    boxes, scores, valid, classes = (np.stack(x) for x in zip(*[random_case(rng) for _ in range(3)]))
    f_bat = functools.partial(N.batched_nms, iou_threshold=0.5, max_output=PAD)
    f_top = functools.partial(N.top_k, k=10)
    got_bat = jax.jit(jax.vmap(f_bat))(boxes, scores, classes, valid=valid)
    got_top = jax.jit(jax.vmap(f_top))(scores, valid=valid)
    for c in range(3):
        want = nms_loop(boxes[c], scores[c], 0.5, PAD, valid=valid[c], classes=classes[c])
        assert as_list(got_bat[0][c], got_bat[1][c]) == want
        want = sorted(np.flatnonzero(valid[c]).tolist(), key=lambda i: (-scores[c, i], i))[:10]
        assert as_list(got_top[0][c], got_top[1][c]) == want


def test_top_k():
    scores = np.array([0.3, 0.9, 0.3, -np.inf, np.nan, 0.9, 0.5], np.float32)
    valid = np.array([1, 1, 1, 1, 1, 1, 0], bool)
    indices, keep = _top_k(scores, k=4, valid=valid)
    assert indices.tolist() == [1, 5, 0, 2] and keep.all()
    indices, keep = _top_k(scores, k=9, valid=valid)
    # Valid -inf still counts; NaN and invalid do not; k > N pads.
    assert indices.tolist() == [1, 5, 0, 2, 3, 0, 0, 0, 0]
    assert keep.tolist() == [True] * 5 + [False] * 4
    indices, keep = _top_k(jnp.zeros((0,)), k=3)
    assert indices.tolist() == [0, 0, 0] and not keep.any()
    # Random: the k best valid scores, ties by lower index.
    rng = np.random.default_rng(3)
    for _ in range(3):
        s = (rng.integers(0, 5, PAD) / 4).astype(np.float32)
        v = rng.random(PAD) < 0.8
        want = sorted(np.flatnonzero(v).tolist(), key=lambda i: (-s[i], i))[:10]
        indices, keep = _top_k(s, k=10, valid=v)
        assert indices[keep].tolist() == want


def test_bad_input_raises():
    boxes, scores = np.zeros((3, 4), np.float32), np.zeros(3, np.float32)
    with pytest.raises(ValueError, match=r"boxes.*\(N, 4\)"):
        N.nms(np.zeros((3, 5)), scores, 0.5, 2)
    with pytest.raises(ValueError, match=r"scores.*\(3,\)"):
        N.nms(boxes, np.zeros(4), 0.5, 2)
    with pytest.raises(ValueError, match="valid"):
        N.nms(boxes, scores, 0.5, 2, valid=np.ones(2, bool))
    with pytest.raises(ValueError, match="max_output"):
        N.nms(boxes, scores, 0.5, 2.0)
    with pytest.raises(ValueError, match="classes"):
        N.batched_nms(boxes, scores, np.zeros(3, np.float32), 0.5, 2)
    with pytest.raises(ValueError, match="k must"):
        N.top_k(scores, -1)


def test_matches_torchvision():
    torch = pytest.importorskip("torch")
    tv = pytest.importorskip("torchvision")
    rng = np.random.default_rng(21)
    for c in range(10):
        n = int(rng.integers(1, 60))
        yx = rng.integers(0, 50, (n, 2)) / 2
        hw = rng.integers(1, 24, (n, 2)) / 2
        boxes = np.concatenate([yx, yx + hw], 1).astype(np.float32)
        scores = rng.permutation(n).astype(np.float32) / n  # distinct: torch's sort is not stable
        classes = rng.integers(0, 3, n).astype(np.int32)
        xyxy = torch.from_numpy(boxes[:, [1, 0, 3, 2]].copy())
        # Padded to PAD (valid False) so the jitted functions compile once.
        pad = lambda a: np.concatenate([a, np.zeros((PAD - n,) + a.shape[1:], a.dtype)])  # noqa: E731
        valid = np.arange(PAD) < n
        for thr in (0.3, 0.5):
            want = tv.ops.nms(xyxy, torch.from_numpy(scores), thr).tolist()
            got = _nms(pad(boxes), pad(scores), iou_threshold=thr, max_output=PAD, valid=valid)
            assert as_list(*got) == want, c
            want = tv.ops.batched_nms(xyxy, torch.from_numpy(scores), torch.from_numpy(classes).long(),
                                      thr).tolist()
            got = _batched(pad(boxes), pad(scores), pad(classes), iou_threshold=thr, max_output=PAD,
                           valid=valid)
            assert as_list(*got) == want, c
