"""A convolution whose weight gradient is fast on CPU: ``conv_general_dilated`` with a custom VJP.

On XLA:CPU the backward-filter convolution that ``jax.grad`` emits for a convolution's kernel
runs at a few GFLOP/s, well below the forward pass, and it dominates the train step of a conv
net. This module computes the same kernel gradient another way:

* ``'xla'``: the backward-filter convolution XLA emits (what ``jax.grad`` does);
* ``'im2col'``: the input's columns (the strided views of the padded input under every kernel
  offset, concatenated along channels: (n, Ho, Wo, KH*KW*C)) and one matmul with ``dy``, over
  blocks of examples small enough for the columns to stay in cache (a ``lax.scan``), summed.

Both give ``jax.grad``'s values up to float32 rounding (the sums are ordered differently).
Which one runs is decided per convolution from its static shape by ``choose``, never by timing
at run time, so every process of a job and every resume computes the same numbers. Today the
default is XLA's gradient everywhere (see ``choose`` for why); ``JAXVISION_CONV_GRAD=auto``
applies the per-shape rule measured on CPU (``measured_rule``: ``benchmarks/conv_grad.py``,
``benchmarks/NOTES.md``) and ``JAXVISION_CONV_GRAD=im2col`` forces the rewrite. Non-CPU
backends under 'auto', and convolutions the rewrite does not cover (feature groups, input
dilation, batch groups, layouts other than NHWC/HWIO, ``preferred_element_type``), keep XLA's
gradient.

The input gradient is XLA's (it is as fast as the forward pass). Second derivatives go through
the same functions (the custom VJP's backward is itself differentiable).

``conv_general_dilated`` has ``lax.conv_general_dilated``'s signature, so it drops into
``flax.linen.Conv(conv_general_dilated=...)``: parameters and checkpoints are unchanged.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from jax import lax

FORMULATIONS = ("xla", "im2col")
_AS_LAX = contextvars.ContextVar("jaxvision_conv_as_lax", default=False)


@contextlib.contextmanager
def as_lax():
    """Within this block ``conv_general_dilated`` is ``lax.conv_general_dilated`` outright (no
    rewrite, no matmul fast path), for tools that read convolutions off a jaxpr (receptive
    fields)."""
    token = _AS_LAX.set(True)
    try:
        yield
    finally:
        _AS_LAX.reset(token)
_NHWC = ("NHWC", "HWIO", "NHWC")


def _pads(padding: Any, x_hw: Sequence[int], k_hw: Sequence[int], strides: Sequence[int],
          dilation: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """Explicit (low, high) padding per spatial axis, as lax computes it."""
    if isinstance(padding, str):
        eff = [(k - 1) * d + 1 for k, d in zip(k_hw, dilation)]
        return tuple(lax.padtype_to_pads(x_hw, eff, strides, padding))
    return tuple((int(lo), int(hi)) for lo, hi in padding)


def _columns(x, k_hw, strides, pads, dilation, out_hw):
    """(N, Ho, Wo, KH*KW*C): the strided view of the padded input under every kernel offset,
    concatenated along channels in (kh, kw, c) order, the row order of an HWIO kernel."""
    xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    n, c = x.shape[0], x.shape[3]
    views = []
    for kh in range(k_hw[0]):
        for kw in range(k_hw[1]):
            h0, w0 = kh * dilation[0], kw * dilation[1]
            views.append(lax.slice(
                xp, (0, h0, w0, 0),
                (n, h0 + strides[0] * (out_hw[0] - 1) + 1, w0 + strides[1] * (out_hw[1] - 1) + 1, c),
                (1, strides[0], strides[1], 1)))
    return views[0] if len(views) == 1 else jnp.concatenate(views, axis=-1)


def _kernel_grad_im2col(x, dy, k_hw, strides, pads, dilation, blocks):
    """(KH, KW, C, O) float32: ``dy`` against the input's columns, one (KH*KW*C, n*Ho*Wo) @
    (n*Ho*Wo, O) matmul per block of n = N / blocks examples, summed over the blocks (a scan,
    so only one block's columns exist at a time)."""
    n, ho, wo, o = dy.shape
    c = x.shape[3]

    def block(acc, xd):
        cols = _columns(xd[0], k_hw, strides, pads, dilation, (ho, wo))
        return acc + jnp.einsum("nhwp,nhwo->po", cols, xd[1],
                                preferred_element_type=jnp.float32), None

    xs = x.reshape((blocks, n // blocks) + x.shape[1:])
    dys = dy.reshape((blocks, n // blocks) + dy.shape[1:])
    acc, _ = lax.scan(block, jnp.zeros((k_hw[0] * k_hw[1] * c, o), jnp.float32), (xs, dys))
    return acc.reshape(k_hw[0], k_hw[1], c, o)


# ``measured_rule``, from benchmarks/conv_grad.py on this project's 2-core CPU
# (benchmarks/NOTES.md, "Convolution weight gradient"): blocks of at most this many bytes of
# columns stay in cache; a KxK kernel (K > 1) with fewer output pixels per image or fewer output
# channels than these is left to XLA, which won there (1x1 kernels won everywhere).
_BLOCK_BYTES = 3 * 2**19
_MIN_OUT_PIXELS = 64
_MIN_OUT_CHANNELS = 32


def _block_count(n: int, bytes_per_example: int) -> int:
    """The smallest divisor of ``n`` that brings a block's columns under ``_BLOCK_BYTES``."""
    for blocks in range(1, n + 1):
        if n % blocks == 0 and (n // blocks) * bytes_per_example <= _BLOCK_BYTES:
            return blocks
    return n


def choose(x_shape: Sequence[int], w_shape: Sequence[int], strides: Sequence[int],
           out_hw: Sequence[int] | None = None, backend: str | None = None) -> str:
    """The kernel-gradient formulation for an NHWC input ``x_shape``, an HWIO kernel ``w_shape``
    and output size ``out_hw`` (default: input size / stride).

    ``JAXVISION_CONV_GRAD`` decides: unset or 'xla' (the default) -> 'xla'; 'im2col' -> 'im2col';
    'auto' -> ``measured_rule``. The default stays XLA's gradient because, although 'im2col' wins
    on most conv shapes measured alone, the whole train step of ``default`` ran slower with the
    measured rule (0.83x; ResNet-20 1.07x; ``benchmarks/conv_step.py`` in benchmarks/NOTES.md).
    """
    setting = os.environ.get("JAXVISION_CONV_GRAD", "") or "xla"
    if setting not in FORMULATIONS + ("auto",):
        raise ValueError(f"JAXVISION_CONV_GRAD={setting!r} must be one of "
                         f"{FORMULATIONS + ('auto',)}.")
    if setting != "auto":
        return setting
    return measured_rule(x_shape, w_shape, strides, out_hw, backend)


def measured_rule(x_shape: Sequence[int], w_shape: Sequence[int], strides: Sequence[int],
                  out_hw: Sequence[int] | None = None, backend: str | None = None) -> str:
    """The faster formulation of the kernel gradient measured alone, per shape: on CPU 'im2col'
    for 1x1 kernels, and for larger ones with at least ``_MIN_OUT_PIXELS`` output pixels per
    image and ``_MIN_OUT_CHANNELS`` output channels; else 'xla'. Other backends: 'xla'."""
    if (backend or jax.default_backend()) != "cpu":
        return "xla"
    if out_hw is None:
        out_hw = [-(-int(d) // int(s)) for d, s in zip(x_shape[1:3], strides)]
    if w_shape[0] * w_shape[1] == 1:
        return "im2col"
    big = out_hw[0] * out_hw[1] >= _MIN_OUT_PIXELS and w_shape[3] >= _MIN_OUT_CHANNELS
    return "im2col" if big else "xla"


def _is_nhwc(lhs_shape, rhs_shape, dimension_numbers) -> bool:
    """Whether ``dimension_numbers`` (strings or ``ConvDimensionNumbers``, as ``flax.linen.Conv``
    passes them) mean NHWC input, HWIO kernel, NHWC output."""
    if dimension_numbers is None:
        return False
    try:
        dn = lax.conv_dimension_numbers(lhs_shape, rhs_shape, dimension_numbers)
    except (TypeError, ValueError):
        return False
    return dn == lax.conv_dimension_numbers(lhs_shape, rhs_shape, _NHWC)


def _is_dense(x_shape, w_shape, pads, dilation, out_hw) -> bool:
    """Whether the kernel covers the whole unpadded input once (one output pixel, no padding,
    no dilation): LeNet's C5 and fc layers written as convolutions."""
    return (tuple(out_hw) == (1, 1) and all(p == (0, 0) for p in pads)
            and tuple(dilation) == (1, 1) and tuple(x_shape[1:3]) == tuple(w_shape[:2]))


def _dense(x, w, precision):
    """A convolution whose kernel covers its input, as the matmul it is: (N, 1, 1, O). XLA:CPU
    runs the convolution's input gradient at this shape ~10x slower than the matmul's."""
    n, o = x.shape[0], w.shape[3]
    y = jnp.dot(x.reshape(n, -1), w.reshape(-1, o), precision=precision)
    return y.reshape(n, 1, 1, o)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv(x, w, strides, pads, dilation, precision):
    """The forward convolution; its VJP takes the kernel gradient by 'im2col'."""
    return lax.conv_general_dilated(x, w, strides, pads, rhs_dilation=dilation,
                                    dimension_numbers=_NHWC, precision=precision)


def _conv_fwd(x, w, strides, pads, dilation, precision):
    return _conv(x, w, strides, pads, dilation, precision), (x, w)


def _conv_bwd(strides, pads, dilation, precision, res, dy):
    x, w = res
    _, vjp_x = jax.vjp(lambda x_: lax.conv_general_dilated(
        x_, w, strides, pads, rhs_dilation=dilation, dimension_numbers=_NHWC,
        precision=precision), x)
    (dx,) = vjp_x(dy)
    k_hw = w.shape[:2]
    per_example = dy.shape[1] * dy.shape[2] * k_hw[0] * k_hw[1] * x.shape[3] * x.dtype.itemsize
    dw = _kernel_grad_im2col(x, dy, k_hw, strides, pads, dilation,
                             _block_count(x.shape[0], per_example))
    return dx, dw.astype(w.dtype)


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, batch_group_count=1,
                         precision=None, preferred_element_type=None, *,
                         formulation: str | None = None):
    """``lax.conv_general_dilated`` (same arguments and result) with the kernel gradient of
    ``formulation`` (default: ``choose``'s rule; see the module docstring). Cases outside
    NHWC/HWIO, feature or batch groups, input dilation and ``preferred_element_type`` are passed
    to ``lax.conv_general_dilated`` unchanged."""
    nd = lhs.ndim - 2
    strides = tuple(int(s) for s in window_strides)
    dilation = tuple(int(d) for d in (rhs_dilation or (1,) * nd))
    plain = (_AS_LAX.get() or nd != 2 or not _is_nhwc(lhs.shape, rhs.shape, dimension_numbers)
             or feature_group_count != 1
             or batch_group_count != 1 or any(d != 1 for d in (lhs_dilation or (1,) * nd))
             or preferred_element_type is not None)
    if not plain:
        pads = _pads(padding, lhs.shape[1:3], rhs.shape[:2], strides, dilation)
        out_hw = [(lhs.shape[1 + i] + sum(pads[i]) - (rhs.shape[i] - 1) * dilation[i] - 1)
                  // strides[i] + 1 for i in range(2)]
        formulation = formulation or choose(lhs.shape, rhs.shape, strides, out_hw)
        if formulation not in FORMULATIONS:
            raise ValueError(f"conv formulation must be one of {FORMULATIONS}, got {formulation!r}.")
    if not plain and _is_dense(lhs.shape, rhs.shape, pads, dilation, out_hw):
        return _dense(lhs, rhs, precision)
    if plain or formulation == "xla":
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                        rhs_dilation, dimension_numbers, feature_group_count,
                                        batch_group_count, precision, preferred_element_type)
    return _conv(lhs, rhs, strides, pads, dilation, precision)


def conv_transpose(x: jax.Array, kernel: jax.Array, stride: int | Sequence[int],
                   padding: int | Sequence[int] = 0, output_padding: int | Sequence[int] = 0,
                   dilation: int | Sequence[int] = 1) -> jax.Array:
    """The transposed ("fractionally strided") convolution, PyTorch's ``ConvTranspose2d``, NHWC.

    Defined as the transpose of a convolution's matrix: with ``conv`` the convolution of stride
    ``stride``, padding ``padding`` and dilation ``dilation`` by ``kernel`` read as (KH, KW,
    C_out, C_in) (mapping C_out channels to C_in), ``conv(z) = U z`` and this returns ``U^T x``
    (computed as the VJP of ``conv_general_dilated``, so its gradients go through the same
    kernel-gradient mechanism). ``x`` (N, H, W, C_in), ``kernel`` (KH, KW, C_in, C_out);
    returns (N, Ho, Wo, C_out) with ``Ho = (H - 1) * s - 2 p + d (KH - 1) + 1 + output_padding``
    (``output_padding`` < ``stride`` picks among the sizes that the convolution maps to H).
    """
    def pair(v: Any, name: str) -> tuple[int, int]:
        out = (int(v), int(v)) if isinstance(v, int) else tuple(int(a) for a in v)
        if len(out) != 2 or min(out) < 0:
            raise ValueError(f"conv_transpose: {name}={v!r} must be an int >= 0 or a pair of them.")
        return out

    s, p, op, d = (pair(stride, "stride"), pair(padding, "padding"),
                   pair(output_padding, "output_padding"), pair(dilation, "dilation"))
    if min(s) < 1 or min(d) < 1 or op[0] >= s[0] or op[1] >= s[1]:
        raise ValueError(f"conv_transpose: stride {s} and dilation {d} must be >= 1 and "
                         f"output_padding {op} below the stride.")
    if x.ndim != 4 or kernel.ndim != 4 or kernel.shape[2] != x.shape[3]:
        raise ValueError(f"conv_transpose: x {x.shape} must be (N, H, W, C_in) and kernel "
                         f"{kernel.shape} (KH, KW, C_in, C_out) with the same C_in.")
    kh, kw = kernel.shape[:2]
    out_hw = tuple((n - 1) * si - 2 * pi + di * (k - 1) + 1 + o
                   for n, si, pi, di, k, o in zip(x.shape[1:3], s, p, d, (kh, kw), op))
    if min(out_hw) < 1:
        raise ValueError(f"conv_transpose: the output would be {out_hw}; lower the padding.")
    w = jnp.swapaxes(kernel, 2, 3)  # the convolution's HWIO kernel: C_out in, C_in out

    def forward(z):
        return conv_general_dilated(z, w, s, ((p[0], p[0]), (p[1], p[1])), rhs_dilation=d,
                                    dimension_numbers=_NHWC)

    z = jnp.zeros((x.shape[0],) + out_hw + (kernel.shape[3],), jnp.result_type(x, kernel))
    _, vjp = jax.vjp(forward, z)
    return vjp(x.astype(z.dtype))[0]


def bilinear_kernel(factor: int, channels: int, dtype: Any = jnp.float32) -> jax.Array:
    """The (K, K, C, C) kernel, K = 2f - f % 2, with which ``conv_transpose(x, kernel,
    stride=f, padding=f // 2)`` upsamples each channel f times bilinearly (FCN's
    initialisation, Long et al., 2015): a separable tent ``1 - |i - c| / f`` (``c`` its
    centre) on the diagonal, 0 between channels. The result (f times the input size) equals
    half-pixel bilinear resizing (``jax.image.resize``) away from the border, where the zero
    padding pulls values towards 0."""
    k = 2 * factor - factor % 2
    centre = factor - 1 if k % 2 == 1 else factor - 0.5
    tent = 1 - jnp.abs(jnp.arange(k, dtype=jnp.float32) - centre) / factor
    filt = (tent[:, None] * tent[None, :]).astype(dtype)
    return filt[:, :, None, None] * jnp.eye(channels, dtype=dtype)[None, None]
