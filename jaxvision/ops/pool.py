"""Max and average pooling whose backward pass is fast on CPU.

``jax.grad`` of ``flax.linen.max_pool`` is XLA's ``select_and_scatter``, and that of
``avg_pool`` an input-padded ``reduce_window``. On XLA:CPU both run far slower than the forward
pass: a 2x2/2 max pool over (128, 32, 32, 64) takes 1.9 ms forward and 141 ms forward and
backward (``benchmarks/pool.py``, ``benchmarks/NOTES.md``). Here the backward pass is written by
*output phases*, as ``conv.conv_transpose`` is: the input position ``p = s*q + r`` (stride
``s``, phase ``r``) receives from the outputs ``q - m`` through the window offsets
``k = r + s*m``, so every phase is a sum of shifted copies of a pooled-size array and the
phases interleave by a reshape. Nothing is scattered.

The values equal ``flax.linen``'s exactly, and so do the gradients, up to float32 rounding where
windows overlap (contributions are summed in another order). A max pool's gradient goes to the
*first* maximum of a window in row-major window order, as ``select_and_scatter`` does (ties are
common after a ReLU: a window of zeros). Second derivatives work: the backward pass is made of
differentiable ops.

The rewrite runs on CPU for inputs of at least ``_MIN_ELEMENTS`` values: it compiles to more
ops (about 0.05-0.1 s more per pool at the tests' ``-O0``), which a small pool's gain (under a
millisecond a call) would take hundreds of steps to repay. Off CPU, under
``JAXVISION_CONV_GRAD=xla`` (what a plain Flax model gets) and within ``conv.as_lax()``, these
functions are ``flax.linen``'s; so are inputs without a batch axis, non-float inputs and
symbolic shapes (``jax.export``).
"""

from __future__ import annotations

import itertools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax import lax

from jaxvision.ops import conv as conv_ops

Padding = str | Sequence[tuple[int, int]]
# LeNet-5's second pool at batch 128, (128, 10, 10, 16), is 204,800 values and gains 1.2 of 1.5
# ms a step; test-sized pools (a few thousand values) stay flax's.
_MIN_ELEMENTS = 1 << 17


def _pads(padding: Padding, spatial: Sequence[int], window: Sequence[int],
          strides: Sequence[int]) -> tuple[tuple[int, int], ...]:
    if isinstance(padding, str):
        if padding.upper() not in ("SAME", "VALID"):
            raise ValueError(f"pool padding must be 'SAME', 'VALID' or (low, high) pairs, got "
                             f"{padding!r}")
        padding = padding.upper()
    pads = conv_ops._pads(padding, spatial, window, strides, (1,) * len(window))
    if len(pads) != len(window):
        raise ValueError(f"pool padding {padding!r} needs one (low, high) pair per window axis "
                         f"({len(window)})")
    return pads


def _rewrite(inputs: jax.Array, window: Sequence[int]) -> bool:
    # Symbolic shapes (``jax.export``'s batch 'b') stay flax's: their size has no fixed order.
    return (inputs.ndim == len(window) + 2 and jnp.issubdtype(inputs.dtype, jnp.floating)
            and conv_ops.cpu_rewrite(inputs.shape, _MIN_ELEMENTS))


def _strided_views(xp: jax.Array, window, strides, out_sp) -> list[tuple[tuple[int, ...], jax.Array]]:
    """(offset, view) for every window offset: view[q] = xp[s*q + offset], pooled-size."""
    n, c = xp.shape[0], xp.shape[-1]
    views = []
    for k in itertools.product(*(range(w) for w in window)):
        start = (0, *k, 0)
        limit = (n, *(ki + s * (o - 1) + 1 for ki, s, o in zip(k, strides, out_sp)), c)
        views.append((k, lax.slice(xp, start, limit, (1, *strides, 1))))
    return views


def _scatter_by_phases(parts: list[tuple[tuple[int, ...], jax.Array]], strides, padded_sp,
                       pads, in_sp) -> jax.Array:
    """sum over (offset k, array a) of a placed at the padded positions s*q + k, cropped to the
    unpadded input: the transpose of ``_strided_views``."""
    first = parts[0][1]
    n, c, out_sp = first.shape[0], first.shape[-1], first.shape[1:-1]
    q_sp = [-(-p // s) for p, s in zip(padded_sp, strides)]
    zero = jnp.zeros((), first.dtype)
    phases: dict[tuple[int, ...], jax.Array] = {}
    for k, a in parts:
        r = tuple(ki % s for ki, s in zip(k, strides))
        m = [ki // s for ki, s in zip(k, strides)]
        placed = lax.pad(a, zero, [(0, 0, 0), *((mi, q - mi - o, 0) for mi, q, o
                                                in zip(m, q_sp, out_sp)), (0, 0, 0)])
        phases[r] = placed + phases[r] if r in phases else placed
    empty = jnp.zeros((n, *q_sp, c), first.dtype)
    stacked = jnp.stack([phases.get(r, empty) for r in itertools.product(*(range(s) for s in strides))])
    d = len(strides)
    stacked = stacked.reshape(*strides, n, *q_sp, c)
    # (s1..sd, n, q1..qd, c) -> (n, q1, s1, ..., qd, sd, c): position s*q + r.
    perm = [d] + [a for i in range(d) for a in (d + 1 + i, i)] + [2 * d + 1]
    full = stacked.transpose(perm).reshape(n, *(q * s for q, s in zip(q_sp, strides)), c)
    return lax.slice(full, (0, *(lo for lo, _ in pads), 0),
                     (n, *(lo + i for (lo, _), i in zip(pads, in_sp)), c))


def max_pool(inputs: jax.Array, window_shape: Sequence[int], strides: Sequence[int] | None = None,
             padding: Padding = "VALID") -> jax.Array:
    """``flax.linen.max_pool``: (N, *spatial, C) -> (N, *pooled, C), padding 'SAME', 'VALID' or
    (low, high) pairs per window axis (padded with -inf), with a gradient computed by phases
    (module docstring)."""
    window = tuple(int(w) for w in window_shape)
    strides = tuple(int(s) for s in (strides or (1,) * len(window)))
    if not _rewrite(inputs, window):
        return nn.max_pool(inputs, window, strides, padding)
    in_sp = inputs.shape[1:-1]
    pads = _pads(padding, in_sp, window, strides)

    @jax.custom_vjp
    def pool(x):
        return nn.max_pool(x, window, strides, pads)

    def pool_fwd(x):
        y = pool(x)
        return y, (x, y)

    def pool_bwd(res, g):
        x, y = res
        xp = jnp.pad(x, [(0, 0), *pads, (0, 0)], constant_values=-jnp.inf)
        views = _strided_views(xp, window, strides, y.shape[1:-1])
        # The first maximum of each window, as an index into the offsets: computed once, so
        # each offset's share below is one compare and one select.
        first = jnp.full(y.shape, len(views), jnp.int32)
        for i in reversed(range(len(views))):
            first = jnp.where(views[i][1] == y, i, first)
        parts = [(k, jnp.where(first == i, g, jnp.zeros((), g.dtype)))
                 for i, (k, _) in enumerate(views)]
        return (_scatter_by_phases(parts, strides, xp.shape[1:-1], pads, in_sp),)

    pool.defvjp(pool_fwd, pool_bwd)
    return pool(inputs)


def avg_pool(inputs: jax.Array, window_shape: Sequence[int], strides: Sequence[int] | None = None,
             padding: Padding = "VALID", count_include_pad: bool = True) -> jax.Array:
    """``flax.linen.avg_pool``: (N, *spatial, C) -> (N, *pooled, C), the window's mean (over
    the window's size, or with ``count_include_pad=False`` over its unpadded positions), with a
    gradient computed by phases (module docstring)."""
    window = tuple(int(w) for w in window_shape)
    strides = tuple(int(s) for s in (strides or (1,) * len(window)))
    if not _rewrite(inputs, window):
        return nn.avg_pool(inputs, window, strides, padding, count_include_pad)
    in_sp = inputs.shape[1:-1]
    pads = _pads(padding, in_sp, window, strides)

    @jax.custom_vjp
    def pool(x):
        return nn.avg_pool(x, window, strides, pads, count_include_pad)

    def pool_fwd(x):
        return pool(x), None

    def pool_bwd(_, g):
        if count_include_pad or all(p == (0, 0) for p in pads):
            share = g / jnp.asarray(math.prod(window), g.dtype)
        else:
            ones = jnp.ones((1, *in_sp, 1), g.dtype)
            counts = lax.reduce_window(ones, jnp.zeros((), g.dtype), lax.add, (1, *window, 1),
                                       (1, *strides, 1), [(0, 0), *pads, (0, 0)])
            share = g / counts
        offsets = itertools.product(*(range(w) for w in window))
        padded_sp = [i + lo + hi for i, (lo, hi) in zip(in_sp, pads)]
        return (_scatter_by_phases([(k, share) for k in offsets], strides, padded_sp, pads, in_sp),)

    pool.defvjp(pool_fwd, pool_bwd)
    return pool(inputs)


__all__ = ["max_pool", "avg_pool"]
