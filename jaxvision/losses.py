"""Losses. Each returns per-example values (N,); the caller takes a masked mean."""

from __future__ import annotations

import math
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax


def smooth_labels(labels: jax.Array, num_classes: int, smoothing: float = 0.0) -> jax.Array:
    """One-hot targets (N, C) mixed with the uniform distribution: ``(1-s) * onehot + s / C``."""
    onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    return onehot * (1.0 - smoothing) + smoothing / num_classes


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array, *, label_smoothing: float = 0.0
                          ) -> jax.Array:
    """Cross-entropy of integer ``labels`` (N,) under ``logits`` (N, C), with label smoothing.

    Returns (N,) float32, computed in float32 whatever the logits' dtype.
    """
    chex.assert_rank(logits, 2)
    chex.assert_rank(labels, 1)
    targets = smooth_labels(labels, logits.shape[-1], label_smoothing)
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def distillation_loss(student_logits: jax.Array, teacher_logits: jax.Array, temperature: float
                      ) -> jax.Array:
    """KL(teacher_T || student_T) * T^2 per example (N,), with temperature-softened softmaxes."""
    t = jax.nn.softmax(teacher_logits.astype(jnp.float32) / temperature)
    log_s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature)
    log_t = jnp.log(jnp.clip(t, 1e-12))
    return jnp.sum(t * (log_t - log_s), axis=-1) * temperature**2


def masked_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
    """``sum(values * weights) / max(sum(weights), 1)``: the mean over valid examples."""
    w = weights.astype(jnp.float32)
    return jnp.sum(values * w) / jnp.maximum(jnp.sum(w), 1.0)


# ------------------------------------------------------------------------ metric learning
#
# Batch losses over embeddings (N, D) with integer ``labels`` (N,) and a ``valid`` mask (N,)
# (padding is never an anchor, a positive or a negative). They return a ``PairLoss``: the loss is
# ``sum(values) / max(sum(weights), 1)`` (``PairLoss.mean``), so the per-anchor parts sum exactly
# across devices.

DISTANCES = ("euclidean", "squared", "cosine")


class PairLoss(NamedTuple):
    """Per-anchor parts of a batch loss: ``values`` (N,) loss sums, ``weights`` (N,) how many
    terms each sums, ``active`` (N,) terms with a positive loss, ``total`` (N,) valid terms."""

    values: jax.Array
    weights: jax.Array
    active: jax.Array
    total: jax.Array

    @property
    def mean(self) -> jax.Array:
        """The loss: ``sum(values) / max(sum(weights), 1)`` (0 when there is no term)."""
        return jnp.sum(self.values) / jnp.maximum(jnp.sum(self.weights), 1.0)


def pairwise_distances(x: jax.Array, y: jax.Array | None = None, kind: str = "euclidean"
                       ) -> jax.Array:
    """Distances (N, M) between the rows of ``x`` (N, D) and ``y`` (M, D) (default ``x``), in
    float32: ``euclidean`` ||x - y|| (gradient 0, not NaN, where it is 0), ``squared``
    ||x - y||^2, or ``cosine`` 1 - cos(x, y)."""
    if kind not in DISTANCES:
        raise ValueError(f"distance {kind!r} is not one of {DISTANCES}.")
    x = x.astype(jnp.float32)
    y = x if y is None else y.astype(jnp.float32)
    if kind == "cosine":
        # sqrt(max(|x|^2, eps)), not max(|x|, eps): the norm's derivative is infinite at 0, and
        # 0 * inf would put NaN in the gradient of an all-zero (padding) row.
        xn = x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, -1, keepdims=True), 1e-24))
        yn = y * jax.lax.rsqrt(jnp.maximum(jnp.sum(y * y, -1, keepdims=True), 1e-24))
        return 1.0 - xn @ yn.T
    sq = jnp.maximum(jnp.sum(x * x, -1)[:, None] + jnp.sum(y * y, -1)[None, :] - 2.0 * x @ y.T, 0.0)
    if kind == "squared":
        return sq
    positive = sq > 1e-12
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def _pair_masks(labels: jax.Array, valid: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(positive (N, N): same label, i != j, both valid; negative (N, N): labels differ, both
    valid)."""
    v = valid.astype(bool)
    both = v[:, None] & v[None, :]
    same = labels[:, None] == labels[None, :]
    eye = jnp.eye(labels.shape[0], dtype=bool)
    return same & both & ~eye, ~same & both


def contrastive_loss(embeddings: jax.Array, labels: jax.Array, valid: jax.Array, *,
                     pos_margin: float = 0.0, neg_margin: float = 1.0,
                     distance: str = "euclidean") -> PairLoss:
    """Contrastive loss (Hadsell et al. 2006) over every ordered pair of the batch:
    ``relu(d - pos_margin)^2`` for a pair of one label, ``relu(neg_margin - d)^2`` for a pair
    of two, averaged over all valid pairs (``i != j``)."""
    d = pairwise_distances(embeddings, kind=distance)
    pos, neg = _pair_masks(labels, valid)
    loss = jnp.where(pos, jax.nn.relu(d - pos_margin) ** 2, 0.0) + \
        jnp.where(neg, jax.nn.relu(neg_margin - d) ** 2, 0.0)
    pairs = (pos | neg).astype(jnp.float32)
    return PairLoss(jnp.sum(loss, 1), jnp.sum(pairs, 1),
                    jnp.sum((loss > 0).astype(jnp.float32), 1), jnp.sum(pairs, 1))


def triplet_loss(embeddings: jax.Array, labels: jax.Array, valid: jax.Array, *,
                 margin: float = 0.2, mining: str = "batch_all", distance: str = "euclidean"
                 ) -> PairLoss:
    """Triplet loss ``relu(d(a, p) - d(a, n) + margin)`` with triplets mined inside the batch.

    ``mining``:

    * ``batch_all``: every valid triplet (a, p, n); the loss is the mean over the *active*
      ones (loss > 0), 0 when none is; ``active / total`` is the fraction of active triplets.
    * ``batch_hard`` (Hermans et al. 2017): per anchor the farthest positive and the closest
      negative; the mean over anchors that have both.
    * ``semi_hard``, the FaceNet rule as TensorFlow-Addons' ``triplet_semihard_loss`` implements
      it: per anchor-positive pair the closest negative still farther than the positive
      (``d(a, n) > d(a, p)``), or, when there is none, the farthest negative; the mean over the
      anchor-positive pairs that have a negative. (TFA's default is ``distance='euclidean'``;
      TensorFlow's original ``tf.contrib`` version used ``'squared'``.)
    """
    d = pairwise_distances(embeddings, kind=distance)
    pos, neg = _pair_masks(labels, valid)
    if mining == "batch_all":
        triplet = pos[:, :, None] & neg[:, None, :]
        loss = jnp.where(triplet, jax.nn.relu(d[:, :, None] - d[:, None, :] + margin), 0.0)
        active = jnp.sum((loss > 0).astype(jnp.float32), (1, 2))
        return PairLoss(jnp.sum(loss, (1, 2)), active, active,
                        jnp.sum(triplet.astype(jnp.float32), (1, 2)))
    big = jnp.finfo(jnp.float32).max
    if mining == "batch_hard":
        has = jnp.any(pos, 1) & jnp.any(neg, 1)
        hardest_pos = jnp.max(jnp.where(pos, d, -big), 1)
        hardest_neg = jnp.min(jnp.where(neg, d, big), 1)
        loss = jnp.where(has, jax.nn.relu(hardest_pos - hardest_neg + margin), 0.0)
        w = has.astype(jnp.float32)
        return PairLoss(loss, w, (loss > 0).astype(jnp.float32), w)
    if mining == "semi_hard":
        d_ap = d[:, :, None]                                  # (a, p, 1)
        d_an = d[:, None, :]                                  # (a, 1, n)
        outside = neg[:, None, :] & (d_an > d_ap)             # semi-hard or easy: d(a,n) > d(a,p)
        closest_outside = jnp.min(jnp.where(outside, d_an, big), 2)
        farthest = jnp.max(jnp.where(neg, d, -big), 1)[:, None]
        chosen = jnp.where(jnp.any(outside, 2), closest_outside, farthest)
        terms = pos & jnp.any(neg, 1)[:, None]
        loss = jnp.where(terms, jax.nn.relu(d - chosen + margin), 0.0)
        termsf = terms.astype(jnp.float32)
        return PairLoss(jnp.sum(loss, 1), jnp.sum(termsf, 1),
                        jnp.sum((loss > 0).astype(jnp.float32), 1), jnp.sum(termsf, 1))
    raise ValueError(f"triplet mining {mining!r} is not one of 'batch_all', 'batch_hard', "
                     "'semi_hard'.")


def margin_logits(cosines: jax.Array, labels: jax.Array, *, kind: str = "arcface",
                  scale: float = 64.0, margin: float = 0.5) -> jax.Array:
    """Additive-margin softmax logits (N, C) from ``cosines`` (N, C) = cos(theta) between the
    normalized embeddings and the normalized class weights.

    ``arcface`` (Deng et al. 2019): ``s * cos(theta + m)`` for the true class, where
    theta + m > pi falls back to ``cos(theta) - m sin(m)`` (monotone, as insightface);
    ``cosface`` (Wang et al. 2018): ``s * (cos(theta) - m)``; other classes ``s * cos(theta)``.
    Feed them to ``softmax_cross_entropy``."""
    c = jnp.clip(cosines.astype(jnp.float32), -1.0, 1.0)
    target = jax.nn.one_hot(labels, c.shape[-1], dtype=bool)
    if kind == "arcface":
        sin = jnp.sqrt(jnp.clip(1.0 - c * c, 1e-12, 1.0))
        shifted = c * math.cos(margin) - sin * math.sin(margin)
        # theta + m > pi  <=>  cos(theta) < cos(pi - m) = -cos(m)
        shifted = jnp.where(c > -math.cos(margin), shifted, c - margin * math.sin(margin))
    elif kind == "cosface":
        shifted = c - margin
    else:
        raise ValueError(f"margin logits kind {kind!r} is not 'arcface' or 'cosface'.")
    return scale * jnp.where(target, shifted, c)
