"""Per-channel sums as matrix products, and a bias add whose gradient is one (for XLA:CPU).

A sum over every axis of a channels-last (..., C) tensor but the last is slow on XLA:CPU
(jaxlib 0.10, YNNPACK off as ``import jaxvision`` sets): its tree-reduction pass rewrites it into
a ``reduce-window`` over blocks of 32 rows whose loop reads the tensor one channel at a time.
Written as ``ones @ x`` over the (rows, C) matrix, the same sum runs in Eigen's matrix product in
one pass. Two such sums are in every conv net's train step:

* batch norm's statistics and their gradients (``ops.batch_norm``, over ``channel_sums``);
* a convolution's bias gradient, ``sum(dy)`` over (N, H, W): ``bias_add``, which
  ``models.layers.Conv`` and ``ConvTranspose`` add their bias with. One layer's ``relu(y + b)``
  gradient at AlexNet's shapes took 30 / 14 / 6.0 / 4.9 ms with XLA's reduction against 14 /
  2.4 / 1.2 / 0.8 ms as a product; the train step ran 1.10x faster on LeNet-5 and 1.05x on
  U-Net, and the same on AlexNet and VGG-11, where XLA ran the reductions beside the
  convolutions (``benchmarks/NOTES.md``, "Bias gradients as matrix products").
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from jaxvision.ops import conv as conv_ops

# Below this many elements a bias add keeps XLA's reduction: the gain is under ~0.1 ms a step
# there, and the suite's tiny models compile one product fewer per layer.
MIN_ELEMENTS = 2**17
# With few channels XLA's reduction is fast and the product is not: U-Net's 3-class classifier
# output (16, 64, 64, 3) took 0.30 ms with XLA's against 0.85 ms; 6 channels gained 5-10%, 8 tied,
# 16 and more gained 1.3-6x.
MIN_CHANNELS = 6


def channel_sums(*arrays: jax.Array) -> jax.Array:
    """(len(arrays), C): the sum over all but the last axis of each (..., C) array, in float32 or
    wider, as ``ones @ a.reshape(-1, C)``."""
    acc = jnp.promote_types(jnp.result_type(*arrays), jnp.float32)
    rows = math.prod(arrays[0].shape[:-1])
    # Two rows of ones, one of them wasted: XLA:CPU compiles a matrix-vector product into
    # generated code (~16 ms of compile time each) but calls Eigen for a matrix-matrix product
    # (~7 ms), and the sum, bound by reading the input, runs as fast.
    ones = jnp.ones((2, rows), acc)
    return jnp.stack([jnp.dot(ones, a.astype(acc).reshape(rows, a.shape[-1]),
                              preferred_element_type=acc)[0] for a in arrays])


def applies(shape: Sequence[Any], backend: str | None = None, dtype: Any = None) -> bool:
    """Whether ``bias_add`` differentiates its bias by a matrix product for an output of
    ``shape`` (..., C) and float ``dtype``: on CPU (outside ``JAXVISION_CONV_GRAD=xla`` and
    ``conv.as_lax()``), for static shapes of at least ``MIN_ELEMENTS`` elements and
    ``MIN_CHANNELS`` channels, and in 16-bit floats at any size: XLA:CPU sums a bfloat16
    reduction in bfloat16 (over 2,048 ones it returns 256), the product in float32."""
    if len(shape) < 2:
        return False
    if dtype is not None and jnp.finfo(dtype).bits < 32:
        return conv_ops.cpu_rewrite(shape, 0, backend)
    return conv_ops.cpu_rewrite(shape, MIN_ELEMENTS, backend) and shape[-1] >= MIN_CHANNELS


def bias_add(y: jax.Array, bias: jax.Array) -> jax.Array:
    """``y + bias`` for ``y`` (..., C) and ``bias`` (C,) of one float dtype; returns (..., C).

    Where ``applies``, the sum over (...) that differentiating the broadcast needs is a matrix
    product summed in float32 (forward and reverse mode; derivatives of any order): same values,
    gradients equal up to float32 rounding. Otherwise, and for other shapes or mixed dtypes, it
    is ``y + bias``."""
    if (bias.ndim == 1 and bias.shape == y.shape[-1:]
            and y.dtype == bias.dtype and jnp.issubdtype(y.dtype, jnp.floating)
            and applies(y.shape, dtype=y.dtype)):
        return _bias_add(y, bias)
    return y + bias


@jax.custom_jvp
def _bias_add(y: jax.Array, bias: jax.Array) -> jax.Array:
    return y + bias


def _bias_add_jvp(primals, tangents):
    y, bias = primals
    dy, dbias = tangents
    # Symbolic zeros: a bias that is not differentiated (frozen, or a gradient with respect to
    # the input only) must not cost a product in the forward pass.
    if isinstance(dbias, SymbolicZero):
        return y + bias, dy
    acc = jnp.promote_types(y.dtype, jnp.float32)
    rows = math.prod(y.shape[:-1])
    # The bias's tangent broadcast over the rows as the product of a column of ones with it:
    # transposed for reverse mode, that is ``ones.T @ dy``, the sum as a product. The second
    # column and row are there for Eigen's matrix-matrix product, as in ``channel_sums``.
    rhs = jnp.stack([dbias.astype(acc), jnp.zeros_like(dbias, acc)])
    spread = jnp.dot(jnp.ones((rows, 2), acc), rhs, preferred_element_type=acc)
    spread = spread.reshape(y.shape).astype(y.dtype)
    return y + bias, spread if isinstance(dy, SymbolicZero) else dy + spread


_bias_add.defjvp(_bias_add_jvp, symbolic_zeros=True)
