"""Metric-learning losses (jaxvision.losses) against plain float64 loop references.

Every batch loss is checked against a brute-force Python loop over all pairs / all triplets
(a, p, n), written from the docstrings and the reference conventions (semi-hard = FaceNet /
TensorFlow-Addons ``triplet_semihard_loss``, batch-hard = Hermans et al., batch-all = mean over
the active triplets, ArcFace with the ``cos(theta) - m sin(m)`` fallback past theta + m > pi).

All batches are padded to one fixed shape (NMAX, DMAX) so that each loss configuration compiles
once: the extra rows are invalid rows holding finite garbage (their labels collide with the valid
ones, so any leak shows), the extra columns are zeros (they change no distance).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from jaxvision import losses as L

NMAX, DMAX = 12, 8
DISTANCES = ("euclidean", "squared", "cosine")
MININGS = ("batch_all", "batch_hard", "semi_hard")
CONFIGS = [("contrastive", None)] + [("triplet", m) for m in MININGS]
SETTINGS = settings(max_examples=12, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


# ---------------------------------------------------------------------------- loop references

def ref_distance(u, v, kind):
    """Distance between two vectors, one coordinate at a time, in float64."""
    u, v = [float(t) for t in u], [float(t) for t in v]
    if kind in ("euclidean", "squared"):
        sq = 0.0
        for a, b in zip(u, v):
            sq += (a - b) ** 2
        return sq if kind == "squared" else math.sqrt(sq)
    if kind == "cosine":
        dot = nu = nv = 0.0
        for a, b in zip(u, v):
            dot += a * b
            nu += a * a
            nv += b * b
        if nu == 0.0 or nv == 0.0:
            return 1.0                       # a zero vector has cosine 0 with everything
        return 1.0 - dot / (math.sqrt(nu) * math.sqrt(nv))
    raise AssertionError(kind)


def ref_distance_matrix(x, y, kind):
    out = np.zeros((len(x), len(y)))
    for i in range(len(x)):
        for j in range(len(y)):
            out[i, j] = ref_distance(x[i], y[j], kind)
    return out


class Ref(NamedTuple):
    """Per-anchor values / weights / active / total, the loss, and the decision quantities
    (relu arguments, d(a,n) - d(a,p) comparisons) whose sign a float32 rounding could flip."""
    values: np.ndarray
    weights: np.ndarray
    active: np.ndarray
    total: np.ndarray
    mean: float
    gaps: list


def _zeros(n):
    return [np.zeros(n) for _ in range(4)]


def ref_contrastive(x, labels, valid, pos_margin, neg_margin, kind):
    """Every ordered pair (i, j), i != j, both valid: relu(d - pos_m)^2 if same label, else
    relu(neg_m - d)^2; the loss is the plain mean over those pairs (0 without any)."""
    n = len(x)
    values, weights, active, total = _zeros(n)
    terms, gaps = [], []
    for i in range(n):
        for j in range(n):
            if i == j or not valid[i] or not valid[j]:
                continue
            d = ref_distance(x[i], x[j], kind)
            arg = d - pos_margin if labels[i] == labels[j] else neg_margin - d
            term = max(arg, 0.0) ** 2
            terms.append(term)
            gaps.append(arg)
            values[i] += term
            weights[i] += 1
            total[i] += 1
            active[i] += term > 0
    mean = sum(terms) / len(terms) if terms else 0.0
    return Ref(values, weights, active, total, mean, gaps)


def ref_batch_all(x, labels, valid, margin, kind):
    """Every triplet (a, p, n) of valid rows, p != a of a's label, n of another label; the loss
    is the mean over the triplets with relu(d(a,p) - d(a,n) + margin) > 0 (0 when none)."""
    n_rows = len(x)
    values, weights, active, total = _zeros(n_rows)
    positive_terms, gaps = [], []
    for a in range(n_rows):
        for p in range(n_rows):
            for n in range(n_rows):
                if not (valid[a] and valid[p] and valid[n]):
                    continue
                if p == a or labels[p] != labels[a] or labels[n] == labels[a]:
                    continue
                arg = ref_distance(x[a], x[p], kind) - ref_distance(x[a], x[n], kind) + margin
                gaps.append(arg)
                total[a] += 1
                if arg > 0:
                    positive_terms.append(arg)
                    values[a] += arg
                    active[a] += 1
                    weights[a] += 1
    mean = sum(positive_terms) / len(positive_terms) if positive_terms else 0.0
    return Ref(values, weights, active, total, mean, gaps)


def ref_batch_hard(x, labels, valid, margin, kind):
    """Per valid anchor with a positive and a negative: relu(max_p d(a,p) - min_n d(a,n) + m);
    the loss is the mean over those anchors."""
    n_rows = len(x)
    values, weights, active, total = _zeros(n_rows)
    terms, gaps = [], []
    for a in range(n_rows):
        if not valid[a]:
            continue
        pos_d, neg_d = [], []
        for j in range(n_rows):
            if not valid[j] or j == a:
                continue
            d = ref_distance(x[a], x[j], kind)
            (pos_d if labels[j] == labels[a] else neg_d).append(d)
        if not pos_d or not neg_d:
            continue
        arg = max(pos_d) - min(neg_d) + margin
        gaps.append(arg)
        values[a] = max(arg, 0.0)
        terms.append(values[a])
        weights[a] = total[a] = 1
        active[a] = arg > 0
    mean = sum(terms) / len(terms) if terms else 0.0
    return Ref(values, weights, active, total, mean, gaps)


def ref_semi_hard(x, labels, valid, margin, kind, stats=None):
    """TFA triplet_semihard_loss: for each anchor-positive pair (a, p) the closest negative with
    d(a,n) > d(a,p) (strict), else the farthest negative; relu(d(a,p) - d(a,n*) + margin); the
    loss is the mean over the anchor-positive pairs whose anchor has a negative."""
    n_rows = len(x)
    values, weights, active, total = _zeros(n_rows)
    terms, gaps = [], []
    for a in range(n_rows):
        if not valid[a]:
            continue
        negatives = [n for n in range(n_rows) if valid[n] and labels[n] != labels[a]]
        if not negatives:
            continue
        for p in range(n_rows):
            if p == a or not valid[p] or labels[p] != labels[a]:
                continue
            d_ap = ref_distance(x[a], x[p], kind)
            outside = []
            for n in negatives:
                d_an = ref_distance(x[a], x[n], kind)
                if d_an != d_ap:
                    gaps.append(d_an - d_ap)
                if d_an > d_ap:
                    outside.append(d_an)
            if outside:
                chosen = min(outside)
            else:
                chosen = max(ref_distance(x[a], x[n], kind) for n in negatives)
                if stats is not None:
                    stats["fallback"] += 1
            arg = d_ap - chosen + margin
            gaps.append(arg)
            term = max(arg, 0.0)
            terms.append(term)
            values[a] += term
            weights[a] += 1
            total[a] += 1
            active[a] += term > 0
    mean = sum(terms) / len(terms) if terms else 0.0
    return Ref(values, weights, active, total, mean, gaps)


def reference(loss, mining, x, labels, valid, m1, m2, distance):
    x = np.asarray(x, np.float64)
    if loss == "contrastive":
        return ref_contrastive(x, labels, valid, m1, m2, distance)
    fn = {"batch_all": ref_batch_all, "batch_hard": ref_batch_hard,
          "semi_hard": ref_semi_hard}[mining]
    return fn(x, labels, valid, m1, distance)


def ref_margin_logits(cosines, labels, kind, scale, margin):
    """Target column: arcface s*cos(arccos(c) + m) when arccos(c) + m <= pi, else
    s*(c - m sin m); cosface s*(c - m). Other columns s*c. One entry at a time."""
    cosines = np.asarray(cosines, np.float64)
    out = np.zeros_like(cosines)
    for i in range(cosines.shape[0]):
        for j in range(cosines.shape[1]):
            c = min(max(float(cosines[i, j]), -1.0), 1.0)
            if j != labels[i]:
                out[i, j] = scale * c
            elif kind == "cosface":
                out[i, j] = scale * (c - margin)
            else:
                theta = math.acos(c)
                if theta + margin <= math.pi:
                    out[i, j] = scale * math.cos(theta + margin)
                else:
                    out[i, j] = scale * (c - margin * math.sin(margin))
    return out


# ---------------------------------------------------------------------------- jitted losses

@functools.lru_cache(maxsize=None)
def jitted(loss, mining, distance):
    """value_and_grad of ``.mean`` w.r.t. the embeddings, returning the PairLoss as aux.
    Margins are traced arguments, so one compile serves every margin."""
    def f(emb, labels, valid, m1, m2):
        if loss == "contrastive":
            out = L.contrastive_loss(emb, labels, valid, pos_margin=m1, neg_margin=m2,
                                     distance=distance)
        else:
            out = L.triplet_loss(emb, labels, valid, margin=m1, mining=mining, distance=distance)
        return out.mean, out
    return jax.jit(jax.value_and_grad(f, has_aux=True))


def run_loss(loss, mining, distance, emb, labels, valid, m1, m2=0.0):
    (mean, out), grad = jitted(loss, mining, distance)(
        jnp.asarray(emb, jnp.float32), jnp.asarray(labels, jnp.int32), jnp.asarray(valid),
        jnp.float32(m1), jnp.float32(m2))
    return float(mean), jax.tree.map(np.asarray, out), np.asarray(grad)


def pad_batch(emb, labels, valid=None, seed=0):
    """Pads (n, d) rows to (NMAX, DMAX): zero columns, then invalid rows of finite garbage
    whose labels repeat the real ones."""
    emb = np.asarray(emb, np.float32)
    n, d = emb.shape
    rng = np.random.default_rng(seed)
    out = (rng.normal(size=(NMAX, DMAX)) * 40 + 5).astype(np.float32)
    out[:n] = 0.0
    out[:n, :d] = emb
    lab = np.zeros(NMAX, np.int32)
    lab[:n] = labels
    lab[n:] = rng.choice(np.asarray(labels).tolist() or [0], NMAX - n)
    v = np.zeros(NMAX, bool)
    v[:n] = True if valid is None else np.asarray(valid, bool)
    out[:n][~v[:n]] = (rng.normal(size=(int((~v[:n]).sum()), DMAX)) * 40 - 3)
    return out, lab, v


def stable(gaps, tol=1e-4):
    """True when no decision quantity is within ``tol`` of 0 (exact zeros are exact ties, which
    the integer-grid batches reproduce exactly in float32)."""
    return all(abs(g) > tol for g in gaps if g != 0.0)


# ---------------------------------------------------------------------------- random batches

class Batch(NamedTuple):
    emb: np.ndarray
    labels: np.ndarray
    valid: np.ndarray
    grid: bool


@st.composite
def batches(draw, allow_grid=True):
    """A (NMAX, DMAX) batch: n <= NMAX real rows of dimension 2..DMAX with 1..4 labels, some
    dropped by ``valid``; invalid rows (dropped and padding) hold large finite garbage and are
    shuffled in between. ``grid`` batches are small integers (exact float32 distances, with
    duplicate rows and tied distances)."""
    n = draw(st.integers(1, NMAX))
    dim = draw(st.integers(2, DMAX))
    k = draw(st.integers(1, 4))
    keep = draw(st.sampled_from([0.6, 0.85, 1.0]))
    grid = allow_grid and draw(st.booleans())
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    emb = np.zeros((NMAX, DMAX), np.float32)
    emb[:n, :dim] = rng.integers(-2, 3, (n, dim)) if grid else rng.normal(size=(n, dim))
    valid = np.zeros(NMAX, bool)
    valid[:n] = rng.random(n) < keep
    emb[~valid] = rng.normal(size=(int((~valid).sum()), DMAX)) * 50 + 7
    labels = rng.integers(0, k, NMAX).astype(np.int32)
    perm = rng.permutation(NMAX)
    return Batch(emb[perm], labels[perm], valid[perm], grid)


def check_against_reference(loss, mining, distance, batch, m1, m2):
    if distance == "euclidean" and not batch.grid:
        # float32 ||x||^2 + ||y||^2 - 2 x.y loses digits on nearly coincident points
        idx = np.flatnonzero(batch.valid)
        dmin = min((np.linalg.norm(batch.emb[i].astype(np.float64) - batch.emb[j])
                    for i in idx for j in idx if i < j), default=1.0)
        assume(dmin > 0.05)
    ref = reference(loss, mining, batch.emb, batch.labels, batch.valid, m1, m2, distance)
    assume(stable(ref.gaps))
    mean, out, grad = run_loss(loss, mining, distance, batch.emb, batch.labels, batch.valid,
                               m1, m2)
    np.testing.assert_allclose(mean, ref.mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out.values, ref.values, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(out.weights, ref.weights)
    np.testing.assert_array_equal(out.active, ref.active)
    np.testing.assert_array_equal(out.total, ref.total)
    # float32 sums in another order: a few ulps apart (1.3e-6 relative seen on one draw)
    np.testing.assert_allclose(float(out.values.sum() / max(out.weights.sum(), 1.0)), mean,
                               rtol=1e-5, atol=1e-6)
    assert np.isfinite(grad).all()
    # a padding row is never an anchor, a positive or a negative: no gradient reaches it
    np.testing.assert_array_equal(grad[~batch.valid], 0.0)


# ---------------------------------------------------------------------------- pairwise distances

@pytest.mark.parametrize("kind", DISTANCES)
def test_pairwise_distances_match_loop(kind):
    """pairwise_distances(x, y) and (x) equal the per-pair float64 loop, in float32."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5, 4)).astype(np.float32)
    y = rng.normal(size=(7, 4)).astype(np.float32) * 2
    got = L.pairwise_distances(jnp.asarray(x), jnp.asarray(y), kind=kind)
    assert got.shape == (5, 7) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, ref_distance_matrix(x, y, kind), rtol=1e-5, atol=1e-5)
    self_d = L.pairwise_distances(jnp.asarray(x), kind=kind)
    np.testing.assert_allclose(self_d, ref_distance_matrix(x, x, kind), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.diag(self_d), 0.0, atol=1e-5)
    half = L.pairwise_distances(jnp.asarray(x, jnp.bfloat16), kind=kind)
    assert half.dtype == jnp.float32


@pytest.mark.parametrize("kind", DISTANCES)
def test_pairwise_distance_gradients_match_finite_differences(kind):
    """grad of sum(W * D(x, y)) w.r.t. x and y equals float64 central differences of the loop
    reference, for distinct points (away from the euclidean kink at 0)."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(4, 3))
    y = rng.normal(size=(5, 3))
    w = rng.normal(size=(4, 5))

    def f_ref(x_, y_):
        return float(np.sum(w * ref_distance_matrix(x_, y_, kind)))

    gx, gy = jax.grad(lambda a, b: jnp.sum(w * L.pairwise_distances(a, b, kind=kind)),
                      argnums=(0, 1))(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32))
    eps = 1e-6
    for arr, got in ((x, gx), (y, gy)):
        num = np.zeros_like(arr)
        for idx in np.ndindex(arr.shape):
            hi, lo = arr.copy(), arr.copy()
            hi[idx] += eps
            lo[idx] -= eps
            args_hi = (hi, y) if arr is x else (x, hi)
            args_lo = (lo, y) if arr is x else (x, lo)
            num[idx] = (f_ref(*args_hi) - f_ref(*args_lo)) / (2 * eps)
        np.testing.assert_allclose(got, num, rtol=2e-3, atol=2e-4)


def test_euclidean_gradient_is_zero_not_nan_at_coincident_points():
    """Euclidean distance between equal rows is 0 with gradient 0 (not NaN), also through the
    whole matrix."""
    x = jnp.asarray([[1.0, 2.0], [1.0, 2.0], [0.0, -1.0]])
    g = jax.grad(lambda e: L.pairwise_distances(e)[0, 1])(x)
    np.testing.assert_array_equal(g, 0.0)
    g_all = jax.grad(lambda e: jnp.sum(L.pairwise_distances(e)))(x)
    assert np.isfinite(g_all).all()
    # the diagonal contributes nothing; row 2 pulls rows 0 and 1 by the unit vector
    u = np.asarray([1.0, 3.0]) / math.sqrt(10.0)
    np.testing.assert_allclose(g_all[0], 2 * u, rtol=1e-5)
    np.testing.assert_allclose(g_all[2], -4 * u, rtol=1e-5)


def test_pairwise_distances_unknown_kind_raises():
    """An unknown distance name raises ValueError in pairwise_distances and in both losses."""
    x, lab, v = jnp.ones((3, 2)), jnp.zeros(3, jnp.int32), jnp.ones(3, bool)
    with pytest.raises(ValueError):
        L.pairwise_distances(x, kind="manhattan")
    with pytest.raises(ValueError):
        L.contrastive_loss(x, lab, v, distance="l1")
    with pytest.raises(ValueError):
        L.triplet_loss(x, lab, v, distance="l1")


def test_unknown_mining_raises():
    """An unknown triplet mining name raises ValueError."""
    x, lab, v = jnp.ones((3, 2)), jnp.zeros(3, jnp.int32), jnp.ones(3, bool)
    for mining in ("hard", "semihard", "all"):
        with pytest.raises(ValueError):
            L.triplet_loss(x, lab, v, mining=mining)


# ---------------------------------------------------------------------------- vs loop reference

@pytest.mark.parametrize("distance", DISTANCES)
@SETTINGS
@given(data=st.data(), pos_margin=st.sampled_from([0.0, 0.25]),
       neg_margin=st.sampled_from([0.5, 1.0, 2.0]))
def test_contrastive_matches_loop_reference(distance, data, pos_margin, neg_margin):
    """contrastive_loss: mean, per-anchor values / weights / active / total equal the ordered
    pair loop; padding rows get no gradient; gradients finite."""
    batch = data.draw(batches(allow_grid=distance != "cosine"))
    check_against_reference("contrastive", None, distance, batch, pos_margin, neg_margin)


@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("mining", MININGS)
@SETTINGS
@given(data=st.data(), margin=st.sampled_from([0.0, 0.1, 0.3, 1.0]))
def test_triplet_matches_loop_reference(mining, distance, data, margin):
    """triplet_loss for each mining: mean, per-anchor values / weights / active / total equal
    the all-triplets loop (active/total is the batch-all active fraction); padding rows get no
    gradient; gradients finite (also with duplicate rows on the integer grid)."""
    batch = data.draw(batches(allow_grid=distance != "cosine"))
    check_against_reference("triplet", mining, distance, batch, margin, 0.0)


@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("loss,mining", CONFIGS)
def test_loss_gradients_match_finite_differences(loss, mining, distance):
    """grad of ``.mean`` w.r.t. the valid embeddings equals float64 central differences of the
    loop reference (a batch whose decisions are all at least 1e-3 from a kink)."""
    eps = 1e-5
    for seed in range(50):
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(7, 3))
        labels = np.asarray([0, 0, 0, 1, 1, 2, 2])
        ref = reference(loss, mining, x, labels, np.ones(7, bool), 0.3, 1.5, distance)
        if stable(ref.gaps, 1e-3) and ref.active.sum() > 0:
            break
    emb, lab, v = pad_batch(x.astype(np.float32), labels)
    _, _, grad = run_loss(loss, mining, distance, emb, lab, v, 0.3, 1.5)
    x = x.astype(np.float32).astype(np.float64)  # the exact values the loss saw
    num = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        hi, lo = x.copy(), x.copy()
        hi[idx] += eps
        lo[idx] -= eps
        num[idx] = (reference(loss, mining, hi, labels, np.ones(7, bool), 0.3, 1.5, distance).mean
                    - reference(loss, mining, lo, labels, np.ones(7, bool), 0.3, 1.5,
                                distance).mean) / (2 * eps)
    np.testing.assert_allclose(grad[:7, :3], num, rtol=2e-3, atol=2e-4)
    np.testing.assert_array_equal(grad[:, 3:], 0.0)
    np.testing.assert_array_equal(grad[7:], 0.0)


# ---------------------------------------------------------------------------- hand-built cases

# 1-D points (second coordinate 0): a=0 and p=3 of label 0, n1=1 and n2=2 of label 1. Padding
# rows that would change every answer if counted: label 0 at 10 and label 1 at 3.5 (a negative
# farther than p from a, which would replace the semi-hard fallback).
HAND = np.asarray([[0.0, 0.0], [3.0, 0.0], [1.0, 0.0], [2.0, 0.0], [10.0, 0.0], [3.5, 0.0]])
HAND_LABELS = np.asarray([0, 0, 1, 1, 0, 1])
HAND_VALID = np.asarray([1, 1, 1, 1, 0, 0], bool)
# expected (mean, active, total) with margin 0.5, worked out by hand:
HAND_EXPECTED = {
    # semi-hard. (a,p) d=3: negatives at 1, 2, none > 3 -> fallback farthest 2 -> 1.5; (p,a)
    # likewise 1.5. (n1,n2) d=1: a is at exactly 1 (a tie, not farther), p at 2 -> 1-2+.5 < 0.
    # (n2,n1) d=1: p tie, a at 2 -> 0. Squared: 9-4+.5 = 5.5 twice, 1-4+.5 < 0 twice.
    ("semi_hard", "euclidean"): (3.0 / 4, 2, 4),
    ("semi_hard", "squared"): (11.0 / 4, 2, 4),
    # batch-hard: a: 3-1+.5, p: 3-1+.5, n1: 1-1+.5, n2: 1-1+.5. Squared: 9-1+.5 twice, .5 twice.
    ("batch_hard", "euclidean"): (6.0 / 4, 4, 4),
    ("batch_hard", "squared"): (18.0 / 4, 4, 4),
    # batch-all: 8 triplets; active 2.5, 1.5, 1.5, 2.5, .5, .5. Squared: a: 9-1, 9-4; p: 9-4,
    # 9-1 (+.5 each: 8.5+5.5+5.5+8.5); n1: (n2,a) 1-1+.5, (n2,p) 1-4+.5 < 0; n2 likewise.
    ("batch_all", "euclidean"): (9.0 / 6, 6, 8),
    ("batch_all", "squared"): (29.0 / 6, 6, 8),
}


@pytest.mark.parametrize("mining,distance", sorted(HAND_EXPECTED))
def test_hand_example_semi_hard_fallback_tie_and_padding(mining, distance):
    """A hand-worked batch: the semi-hard fallback (no negative farther than the positive ->
    the farthest negative), a negative exactly as far as the positive (not semi-hard: strict
    d(a,n) > d(a,p)), and padding rows that would change every answer if they counted."""
    mean_exp, active_exp, total_exp = HAND_EXPECTED[mining, distance]
    ref = reference("triplet", mining, HAND, HAND_LABELS, HAND_VALID, 0.5, 0.0, distance)
    assert ref.mean == pytest.approx(mean_exp)
    assert (ref.active.sum(), ref.total.sum()) == (active_exp, total_exp)
    emb, lab, v = pad_batch(HAND, HAND_LABELS, HAND_VALID)
    mean, out, grad = run_loss("triplet", mining, distance, emb, lab, v, 0.5)
    assert mean == pytest.approx(mean_exp, rel=1e-6)
    assert (out.active.sum(), out.total.sum()) == (active_exp, total_exp)
    assert np.isfinite(grad).all()


def test_semi_hard_fallback_is_exercised_in_random_batches():
    """On random batches where some anchor-positive pair has no farther negative (the fallback
    path), semi-hard still equals the TFA loop."""
    fallbacks = 0
    for seed in range(8):
        rng = np.random.default_rng(100 + seed)
        # label 0 spread wide, label 1 clustered in the middle: the far label-0 pairs fall back
        x = np.concatenate([rng.normal(size=(4, 2)) * 3, rng.normal(size=(5, 2)) * 0.3])
        labels = np.asarray([0] * 4 + [1] * 5)
        stats = {"fallback": 0}
        ref = ref_semi_hard(x.astype(np.float32).astype(np.float64), labels, np.ones(9, bool),
                            0.2, "squared", stats)
        if not stable(ref.gaps):
            continue
        fallbacks += stats["fallback"]
        emb, lab, v = pad_batch(x, labels, seed=seed)
        mean, out, _ = run_loss("triplet", "semi_hard", "squared", emb, lab, v, 0.2)
        np.testing.assert_allclose(mean, ref.mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(out.values[:9], ref.values, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(out.active[:9], ref.active)
        np.testing.assert_array_equal(out.values[9:], 0.0)
    assert fallbacks > 0


# ---------------------------------------------------------------------------- degenerate batches

def _degenerate(scenario):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(6, 4)).astype(np.float32)
    if scenario == "one_label":
        return pad_batch(x, np.zeros(6, np.int32))
    if scenario == "distinct_labels":
        return pad_batch(x, np.arange(6, dtype=np.int32))
    if scenario == "all_padded":
        return pad_batch(x, np.asarray([0, 0, 1, 1, 2, 2]), np.zeros(6, bool))
    if scenario == "one_valid_row":
        return pad_batch(x, np.asarray([0, 0, 1, 1, 2, 2]), [1, 0, 0, 0, 0, 0])
    raise AssertionError(scenario)


@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("loss,mining", CONFIGS)
@pytest.mark.parametrize("scenario",
                         ["one_label", "distinct_labels", "all_padded", "one_valid_row"])
def test_no_valid_term_gives_exact_zero_and_zero_gradient(scenario, loss, mining, distance):
    """Without any valid triplet (one label, all labels distinct, everything padded, a single
    valid row) the loss is exactly 0, never NaN, with no term counted and a zero gradient.
    (Contrastive still has pairs with one label or distinct labels: checked against the loop.)"""
    emb, lab, v = _degenerate(scenario)
    mean, out, grad = run_loss(loss, mining, distance, emb, lab, v, 0.3, 1.0)
    assert np.isfinite(grad).all()
    if loss == "contrastive" and scenario in ("one_label", "distinct_labels"):
        ref = ref_contrastive(emb.astype(np.float64), lab, v, 0.3, 1.0, distance)
        np.testing.assert_allclose(mean, ref.mean, rtol=1e-5)
        return
    assert mean == 0.0
    assert out.weights.sum() == 0 and out.active.sum() == 0 and out.total.sum() == 0
    np.testing.assert_array_equal(out.values, 0.0)
    np.testing.assert_array_equal(grad, 0.0)


@pytest.mark.parametrize("distance", ["euclidean", "squared"])
@pytest.mark.parametrize("loss,mining", CONFIGS)
def test_duplicate_embeddings_give_finite_gradients(loss, mining, distance):
    """Rows repeated exactly (distance 0 between positives and between negatives) give finite
    gradients and still match the loop reference."""
    base = np.asarray([[1.0, 0.0, 2.0], [0.0, 1.0, -1.0], [1.0, 1.0, 1.0]], np.float32)
    x = base[[0, 0, 1, 1, 2, 2, 0, 1]]             # label-0 pairs coincide, and a negative
    labels = np.asarray([0, 0, 1, 1, 2, 2, 1, 0])   # coincides with an anchor too
    emb, lab, v = pad_batch(x, labels)
    ref = reference(loss, mining, emb, lab, v, 0.3, 1.0, distance)
    mean, out, grad = run_loss(loss, mining, distance, emb, lab, v, 0.3, 1.0)
    assert np.isfinite(grad).all()
    np.testing.assert_allclose(mean, ref.mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out.active, ref.active)
    np.testing.assert_array_equal(out.total, ref.total)


@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("mining", MININGS)
def test_collapsed_embedding_gives_loss_equal_to_margin(mining, distance):
    """Every embedding equal (a collapse): each triplet loss equals the margin, batch-all has
    every triplet active (active fraction 1), and the gradients are finite."""
    labels = np.asarray([0, 0, 1, 1, 1, 2, 2])
    emb, lab, v = pad_batch(np.tile([[0.6, -0.8, 0.0]], (7, 1)), labels)
    mean, out, grad = run_loss("triplet", mining, distance, emb, lab, v, 0.3)
    assert mean == pytest.approx(0.3, abs=1e-6)
    assert out.active.sum() == out.total.sum() > 0
    assert np.isfinite(grad).all()


@pytest.mark.parametrize("loss,mining", CONFIGS)
def test_cosine_zero_padding_rows_give_finite_gradients(loss, mining):
    """Padding rows of zeros (the usual padding) with the cosine distance: the loss ignores them
    and the gradient stays finite everywhere (zero on the padding rows)."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(6, 4)).astype(np.float32)
    labels = np.asarray([0, 0, 1, 1, 2, 2])
    emb, lab, v = pad_batch(x, labels)
    emb[6:] = 0.0
    ref = reference(loss, mining, emb, lab, v, 0.3, 1.0, "cosine")
    mean, _, grad = run_loss(loss, mining, "cosine", emb, lab, v, 0.3, 1.0)
    np.testing.assert_allclose(mean, ref.mean, rtol=1e-5, atol=1e-6)
    assert np.isfinite(grad).all(), f"NaN gradient rows: {np.flatnonzero(~np.isfinite(grad).all(1))}"
    np.testing.assert_array_equal(grad[6:], 0.0)


# ---------------------------------------------------------------------------- margin logits

@functools.lru_cache(maxsize=None)
def jitted_margin(kind, scale, margin):
    return jax.jit(functools.partial(L.margin_logits, kind=kind, scale=scale, margin=margin))


def _cosines(seed, n=64, c=5):
    """Uniform cosines plus ones within 1e-5 of +-1, exactly +-1, and cosines around the
    arcface switch cos(theta) = -cos(m) of the margins used (both sides)."""
    rng = np.random.default_rng(seed)
    cos = rng.uniform(-1, 1, (n, c))
    cos[0, :] = [1.0, -1.0, 1 - 1e-6, -1 + 1e-6, 0.0]
    cos[1:9] = 1 - rng.uniform(0, 1e-5, (8, c))
    cos[9:17] = -1 + rng.uniform(0, 1e-5, (8, c))
    for k, m in enumerate((0.1, 0.5, 1.0)):
        cos[17 + 8 * k:25 + 8 * k] = -math.cos(m) + rng.uniform(-0.05, 0.05, (8, c))
    labels = rng.integers(0, c, n)
    labels[0] = 0
    return np.clip(cos, -1.0, 1.0).astype(np.float32), labels


@pytest.mark.parametrize("kind,scale,margin", [
    ("arcface", 64.0, 0.5), ("arcface", 1.0, 0.5), ("arcface", 30.0, 0.1),
    ("arcface", 1.0, 1.0), ("cosface", 64.0, 0.35), ("cosface", 1.0, 0.2)])
def test_margin_logits_match_loop_reference(kind, scale, margin):
    """margin_logits equals the entry-by-entry reference (arccos then cos(theta + m), the
    fallback past pi) for random cosines incl. +-1, 1 -+ 1e-6 and both sides of the switch;
    the non-target columns are exactly scale * cos."""
    for seed in range(3):
        cos, labels = _cosines(seed)
        got = np.asarray(jitted_margin(kind, scale, margin)(jnp.asarray(cos),
                                                            jnp.asarray(labels)))
        theta = np.arccos(cos.astype(np.float64))
        near_switch = np.abs(theta + margin - math.pi) < 1e-5
        ref = ref_margin_logits(cos, labels, kind, scale, margin)
        ok = ~near_switch
        np.testing.assert_allclose(got[ok], ref[ok], rtol=1e-5, atol=1e-5 * scale)
        other = np.arange(cos.shape[1])[None, :] != labels[:, None]
        np.testing.assert_array_equal(got[other], (scale * cos)[other].astype(np.float32))
    if kind == "arcface":  # the fallback branch was exercised
        assert (np.arccos(cos[np.arange(len(labels)), labels].astype(np.float64))
                + margin > math.pi).any()


@pytest.mark.parametrize("kind,margin", [("arcface", 0.1), ("arcface", 0.5), ("arcface", 0.8),
                                         ("arcface", 1.2), ("cosface", 0.35)])
def test_margin_logits_target_is_monotone_in_cosine(kind, margin):
    """The target logit is non-decreasing in cos(theta) over a dense grid of [-1, 1] (across
    the arcface switch at theta + m = pi as well), up to float32 rounding (2 ulp)."""
    grid = np.linspace(-1.0, 1.0, 4001, dtype=np.float32)
    grid = np.unique(np.concatenate([grid, np.float32(-math.cos(margin))
                                     + np.arange(-50, 51, dtype=np.float32) * 1e-6]))
    got = np.asarray(jitted_margin(kind, 64.0, margin)(
        jnp.asarray(grid)[:, None], jnp.zeros(len(grid), jnp.int32)))[:, 0]
    steps = np.diff(got)
    # near theta + m = pi, cos(theta + m) is flat and float32 rounding wiggles by 1 ulp
    ulp = float(np.spacing(np.float32(64.0)))
    assert (steps >= -2 * ulp).all(), f"decreases at cos={grid[1:][steps < -2 * ulp][:5]}"
    assert got[-1] > got[0]


@pytest.mark.parametrize("kind", ["arcface", "cosface"])
def test_margin_logits_gradients_finite_at_plus_minus_one(kind):
    """d logits / d cosines is finite at cos = +-1, next to them, and at the arcface switch; and
    equals scale on the non-target columns."""
    margin = 0.5
    cos = jnp.asarray([[1.0, -1.0], [-1.0, 1.0], [1 - 1e-7, 0.3], [-1 + 1e-7, 0.3],
                       [-math.cos(margin), 0.0]], jnp.float32)
    labels = jnp.asarray([0, 0, 0, 0, 0])
    grad = jax.grad(lambda c: jnp.sum(L.margin_logits(c, labels, kind=kind, scale=64.0,
                                                      margin=margin)))(cos)
    assert np.isfinite(grad).all()
    np.testing.assert_allclose(grad[2:, 1], 64.0)


def test_margin_logits_unknown_kind_raises():
    """An unknown margin kind raises ValueError."""
    with pytest.raises(ValueError):
        L.margin_logits(jnp.zeros((2, 3)), jnp.zeros(2, jnp.int32), kind="sphereface")
