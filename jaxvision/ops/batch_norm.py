"""Batch norm in training, with its per-channel sums as matrix products (for XLA:CPU).

Batch norm sums over every axis but the channels: the mean and the mean square forward, and
``sum(dy)`` and ``sum(dy * x)`` backward. Each is a matrix product here
(``ops.bias.channel_sums``), since XLA:CPU's own reduction over a channels-last tensor is slow.
In ResNet-20's train step (batch 128) the reductions took ~150 ms of the two threads' time
with ``flax.linen.BatchNorm`` against ~37 ms for the products, and one layer's forward and
backward pass runs 1.4-3.7x faster (``benchmarks/batch_norm.py``;
``benchmarks/NOTES.md``, "Batch norm by matrix products").

``batch_norm_train`` is a ``jax.custom_vjp``, because autodiff of the forward would bring the
reductions back: the gradient of a broadcast is a reduction. Its backward is the closed form
(``dx = scale * rstd * (dy - mean(dy) - xhat * mean(dy * xhat))``) with both sums as products.
Values and gradients equal ``flax.linen.BatchNorm``'s (``use_fast_variance``, statistics in
float32) up to float32 rounding (tests/ops/test_batch_norm.py); the backward is written in
``jax.numpy``, so it can be differentiated again.

Under ``pmap`` (``axis_name``) the statistics are over every replica's rows, as flax's
``axis_name`` gives: the forward sums are ``psum``-ed, and so are the backward sums that enter
the input gradient, while the scale and bias gradients stay this replica's (the train step
averages gradients over replicas, as it does flax's).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from jaxvision.ops import conv as conv_ops
from jaxvision.ops.bias import channel_sums


# Below this many elements a batch norm keeps flax's form (``applies``): the products add XLA
# compile time (~25 ms per layer) that a small layer's gain (< 0.3 ms per step at 2^17
# elements) takes too long to pay back, and the test suite's small models compile faster so.
MIN_ELEMENTS = 2**18


def applies(shape: Sequence[Any], backend: str | None = None) -> bool:
    """Whether ``layers.norm`` trains a batch norm of input ``shape`` with
    ``batch_norm_train``: on CPU (outside ``JAXVISION_CONV_GRAD=xla`` and ``conv.as_lax()``,
    ``conv.xla_only``), for static shapes of at least ``MIN_ELEMENTS`` elements."""
    return conv_ops.cpu_rewrite(shape, MIN_ELEMENTS, backend)


def _global(sums: jax.Array, rows: int, axis_name: str | None) -> tuple[jax.Array, Any]:
    """``sums`` and the row count over every replica of ``axis_name`` (this one's without)."""
    if axis_name is None:
        return sums, rows
    return lax.psum(sums, axis_name), lax.psum(rows, axis_name)


def _stats(x, epsilon, axis_name):
    rows = math.prod(x.shape[:-1])
    xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    (s1, s2), n = _global(channel_sums(xf, xf * xf), rows, axis_name)
    mean = s1 / n
    var = jnp.maximum(0.0, s2 / n - mean * mean)   # as flax: the fast variance can round below 0
    return mean, var, lax.rsqrt(var + epsilon), n


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def batch_norm_train(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float,
                     axis_name: str | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Batch norm of ``x`` (..., C) over all its rows (and, with ``axis_name``, every replica's):
    ``((x - mean) * rsqrt(var + epsilon) * scale + bias, mean, var)``. ``scale``, ``bias``: (C,).
    Returns y (..., C) in float32 (or the inputs' wider type; the caller casts), and the biased
    ``mean`` and ``var`` (C,) in float32 for the running averages."""
    y, mean, var, _ = _forward(x, scale, bias, epsilon, axis_name)
    return y, mean, var


def _forward(x, scale, bias, epsilon, axis_name):
    mean, var, rstd, _ = _stats(x, epsilon, axis_name)
    mul = rstd * scale
    acc = jnp.promote_types(jnp.result_type(x, scale, bias), jnp.float32)
    y = (x.astype(acc) - mean) * mul + bias
    return y, mean, var, rstd


def _fwd(x, scale, bias, epsilon, axis_name):
    y, mean, var, rstd = _forward(x, scale, bias, epsilon, axis_name)
    return (y, mean, var), (x, scale, bias, mean, rstd)


def _bwd(epsilon, axis_name, res, cts):
    x, scale, bias, mean, rstd = res
    dy, dmean, dvar = cts
    acc = jnp.promote_types(jnp.result_type(x, scale, bias), jnp.float32)
    dy = dy.astype(acc)
    xf = x.astype(acc)
    local = channel_sums(dy, dy * xf)              # sum(dy), sum(dy * x) over this replica's rows
    (sdy, sdyx), n = _global(local, math.prod(x.shape[:-1]), axis_name)
    # sum(dy * xhat) = rstd * (sum(dy * x) - mean * sum(dy)), here and per replica.
    dscale = rstd * (local[1] - mean * local[0])
    dscale_all = rstd * (sdyx - mean * sdy)
    mul = rstd * scale
    # dx = mul * (dy - sdy / n - xhat * dscale_all / n) + the statistics' own cotangents
    # (zero in a train step, whose running averages are not differentiated):
    # d mean / dx = 1 / n, d var / dx = 2 (x - mean) / n.
    if axis_name is not None:
        dmean, dvar = lax.psum(jnp.stack([dmean, dvar]), axis_name)
    coef_x = -mul * rstd * dscale_all / n + 2.0 * dvar / n
    const = -mul * sdy / n - coef_x * mean + dmean / n
    dx = dy * mul + xf * coef_x + const
    return (dx.astype(x.dtype), dscale.astype(scale.dtype), local[0].astype(bias.dtype))


batch_norm_train.defvjp(_fwd, _bwd)
