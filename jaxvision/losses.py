"""Losses. Each returns per-example values (N,); the caller takes a masked mean."""

from __future__ import annotations

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
