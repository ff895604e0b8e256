"""Non-maximum suppression and top-k pre-selection on ``[y0, x0, y1, x1]`` boxes (jax, jittable).

Everything here has static output shapes (``max_output`` / ``k`` must be Python ints), stays on
device (no host round trip), and works under ``jax.vmap`` for a batch of images. The greedy loop
picks the best remaining candidate and suppresses with one row of IoU per iteration, so the work
is O(max_output * N) and no N x N matrix is ever built (10,000 boxes are fine).

Semantics follow ``torchvision.ops.nms``: candidates are visited in decreasing score, a box is
dropped when its IoU with an already kept box is strictly greater than ``iou_threshold``.
Unlike torchvision (whose sort is not stable), ties in score go to the lower index.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxvision.ops import boxes as _boxes

Array = Any  # jax.Array or anything jnp.asarray accepts


def _check_inputs(boxes: Array, scores: Array, valid: Array | None, classes: Array | None = None
                  ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array | None]:
    boxes = jnp.asarray(boxes)
    if not jnp.issubdtype(boxes.dtype, jnp.floating):
        boxes = boxes.astype(jnp.float32)
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes has shape {tuple(boxes.shape)}; expected (N, 4) as [y0, x0, y1, x1] "
                         "(use jax.vmap for a batch).")
    n = boxes.shape[0]
    scores = jnp.asarray(scores)
    if scores.shape != (n,):
        raise ValueError(f"scores has shape {tuple(scores.shape)}; expected ({n},), one per box.")
    if not jnp.issubdtype(scores.dtype, jnp.floating):
        scores = scores.astype(jnp.float32)
    if valid is None:
        valid = jnp.ones((n,), bool)
    else:
        valid = jnp.asarray(valid)
        if valid.shape != (n,):
            raise ValueError(f"valid has shape {tuple(valid.shape)}; expected ({n},) bool, one per box.")
        valid = valid.astype(bool)
    if classes is not None:
        classes = jnp.asarray(classes)
        if classes.shape != (n,) or not jnp.issubdtype(classes.dtype, jnp.integer):
            raise ValueError(f"classes has shape {tuple(classes.shape)} and dtype {classes.dtype}; "
                             f"expected ({n},) integers, one class id per box.")
    return boxes, scores, valid, classes


def _check_count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a non-negative Python int (it fixes the output shape); "
                         f"got {value!r}.")
    return int(value)


def _exact_threshold(threshold: Any, dtype: Any) -> Any:
    """Returns a threshold ``t'`` in ``dtype`` with ``x > t'`` iff ``x > threshold`` for every ``x``
    of that dtype.

    torchvision compares its float32 IoU with the threshold in double precision; rounding e.g. 0.3
    to the nearest float32 (which lies above 0.3) would keep a box whose IoU equals that float32.
    Rounding down instead gives the exact comparison. Traced thresholds are used as they are.
    """
    try:
        value = float(threshold)  # Python, numpy and concrete jax scalars
    except TypeError:  # a tracer (ConcretizationTypeError) or a non-scalar
        return threshold
    t = np.asarray(value, dtype)
    if np.isfinite(t) and float(t) > value:
        t = np.nextafter(t, np.asarray(-np.inf, dtype))
    return t


def _greedy(boxes: jax.Array, scores: jax.Array, candidate: jax.Array, iou_threshold: Any,
            max_output: int, classes: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    indices = jnp.zeros((max_output,), jnp.int32)
    keep = jnp.zeros((max_output,), bool)
    if boxes.shape[0] == 0 or max_output == 0:
        return indices, keep
    threshold = _exact_threshold(iou_threshold, boxes.dtype)
    y0, x0, y1, x1 = (boxes[:, i] for i in range(4))
    areas = _boxes.area(boxes)
    # Candidates all have score > score_threshold >= -inf, so with every other score set to -inf
    # argmax picks a candidate whenever one is left; argmax returns the first maximum, which gives
    # the stable (lower index first) tie order without sorting.
    remaining = jnp.where(candidate, scores, jnp.asarray(-jnp.inf, scores.dtype))
    arange = jnp.arange(boxes.shape[0], dtype=jnp.int32)

    def iou_row(b: jax.Array) -> jax.Array:
        # The operations of boxes.iou (and torchvision's kernel) in the same order, so the IoU is
        # bit-identical, but with coordinates and areas split out once instead of per iteration.
        h = jnp.maximum(jnp.minimum(y1[b], y1) - jnp.maximum(y0[b], y0), 0)
        w = jnp.maximum(jnp.minimum(x1[b], x1) - jnp.maximum(x0[b], x0), 0)
        inter = h * w
        union = areas[b] + areas - inter
        ok = union > 0
        return jnp.where(ok, inter / jnp.where(ok, union, 1), 0)

    def cond(state):
        i, _, best, _, _ = state
        return (i < max_output) & (best >= 0)

    def body(state):
        # ``best`` is the box kept in this iteration, found by the previous one (-1: none left).
        i, remaining, best, indices, keep = state
        suppress = iou_row(best) > threshold
        if classes is not None:
            suppress = suppress & (classes == classes[best])
        # The box itself may escape its own suppression (threshold >= 1, or zero area: IoU 0).
        suppress = suppress | (arange == best)
        remaining = jnp.where(suppress, -jnp.inf, remaining)
        nxt = jnp.argmax(remaining).astype(jnp.int32)
        nxt = jnp.where(remaining[nxt] > -jnp.inf, nxt, -1)
        return i + 1, remaining, nxt, indices.at[i].set(best), keep.at[i].set(True)

    first = jnp.argmax(remaining).astype(jnp.int32)
    first = jnp.where(remaining[first] > -jnp.inf, first, -1)
    state = (jnp.int32(0), remaining, first, indices, keep)
    _, _, _, indices, keep = jax.lax.while_loop(cond, body, state)
    return indices, keep


def nms(boxes: Array, scores: Array, iou_threshold: float, max_output: int, *,
        score_threshold: float = -np.inf, valid: Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Greedy non-maximum suppression of ``boxes`` (N, 4) with ``scores`` (N,).

    Visits boxes in decreasing score (ties: lower index first) and keeps a box unless its IoU with
    an already kept box is strictly greater than ``iou_threshold`` (a Python float is compared
    exactly, as torchvision does in double precision; a traced one in the boxes' dtype). A box is a candidate only if ``score > score_threshold``
    (exactly; so NaN scores never are) and ``valid`` (N,) bool is True (default: all valid). Zero-area boxes
    have IoU 0 with everything, so they are kept whenever their score allows.

    Returns ``(indices, keep)``, both (max_output,): int32 indices of the kept boxes in the order
    kept (decreasing score), padded with index 0 and ``keep`` False. ``max_output`` must be a
    Python int (static under jit); at most that many boxes are kept.
    """
    max_output = _check_count(max_output, "max_output")
    boxes, scores, valid, _ = _check_inputs(boxes, scores, valid)
    candidate = valid & (scores > _exact_threshold(score_threshold, scores.dtype))
    return _greedy(boxes, scores, candidate, iou_threshold, max_output, None)


def batched_nms(boxes: Array, scores: Array, classes: Array, iou_threshold: float, max_output: int, *,
                score_threshold: float = -np.inf, valid: Array | None = None
                ) -> tuple[jax.Array, jax.Array]:
    """Class-aware :func:`nms`: boxes whose ``classes`` (N,) int differ never suppress each other.

    Same arguments and outputs as :func:`nms`; the kept boxes of all classes come out together in
    decreasing score. Suppression is masked to same-class pairs rather than torchvision's
    coordinate-offset trick, so IoUs are not perturbed by rounding of large offsets.
    """
    max_output = _check_count(max_output, "max_output")
    boxes, scores, valid, classes = _check_inputs(boxes, scores, valid, classes)
    candidate = valid & (scores > _exact_threshold(score_threshold, scores.dtype))
    return _greedy(boxes, scores, candidate, iou_threshold, max_output, classes)


def top_k(scores: Array, k: int, valid: Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Selects the ``k`` best valid ``scores`` (N,), e.g. before :func:`nms`.

    Valid entries (``valid`` (N,) bool, default all; NaN scores count as invalid) come first in
    decreasing score, ties by lower index; ``k`` may exceed N. Returns ``(indices, keep)``, both
    (k,): int32 indices, and ``keep`` True where the entry is a valid score (padding and invalid
    entries: False; padding uses index 0). ``k`` must be a Python int (static under jit).
    """
    k = _check_count(k, "k")
    scores = jnp.asarray(scores)
    if scores.ndim != 1:
        raise ValueError(f"scores has shape {tuple(scores.shape)}; expected (N,) (use jax.vmap for a batch).")
    n = scores.shape[0]
    if valid is None:
        valid = jnp.ones((n,), bool)
    else:
        valid = jnp.asarray(valid)
        if valid.shape != (n,):
            raise ValueError(f"valid has shape {tuple(valid.shape)}; expected ({n},) bool, one per score.")
        valid = valid.astype(bool)
    ok = valid & ~jnp.isnan(scores)
    # Two sort keys, invalid last then descending score; the sort is stable so ties keep index
    # order. -inf scores that are valid still rank before any invalid entry.
    key = -jnp.where(ok, scores, 0)
    _, _, order = jax.lax.sort((~ok, key, jnp.arange(n, dtype=jnp.int32)), num_keys=2, is_stable=True)
    order = order[:k]
    kept = ok[order]
    pad = k - order.shape[0]
    if pad:
        order = jnp.concatenate([order, jnp.zeros((pad,), jnp.int32)])
        kept = jnp.concatenate([kept, jnp.zeros((pad,), bool)])
    return jnp.where(kept, order, 0), kept
