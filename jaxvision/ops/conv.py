"""A convolution that is fast on CPU: ``conv_general_dilated`` with per-shape formulations.

With XLA:CPU's YNNPACK fusions on (jaxlib 0.10's default), the backward-filter convolution
that ``jax.grad`` emits for a convolution's kernel runs at a few GFLOP/s, well below the forward
pass, and it dominates the train step of a conv net. ``import jaxvision`` turns those fusions off
(``jaxvision/cpu_flags.py``); XLA's own kernel gradient is then the fastest, and the rewrite below
applies only where YNNPACK is kept on. In both settings the forward convolution is slow when the
input has only a few channels (a first layer). This module computes both another way where
that was measured to be faster (``benchmarks/conv_grad.py``, ``benchmarks/NOTES.md``):

* kernel gradient, ``'xla'``: the backward-filter convolution XLA emits (what ``jax.grad`` does);
  ``'im2col'``: the input's columns (the strided views of the padded input under every kernel
  offset, concatenated along channels: (n, Ho, Wo, KH*KW*C)) and one matmul with ``dy``, over
  blocks of examples small enough for the columns to stay in cache (a ``lax.scan``), summed;
* forward, ``'xla'``, ``'elementwise'`` or ``'im2col'``: for at most ``_MAX_ELEMENTWISE_TERMS``
  products per output (KH*KW*C: a 3x3 RGB or 5x5 gray first layer), the sum of the shifted views
  times the kernel's scalars, one fused loop; for maps of at most ``_MAX_IM2COL_PIXELS`` output
  pixels (VGG's 2x2 maps on CIFAR, where XLA:CPU's forward and input gradient run at ~2 GFLOP/s),
  the columns times the kernel as one matmul, and its transpose for the input gradient;
* a kernel that covers its whole unpadded input (one output pixel: LeNet's C5, fc layers
  written as convolutions) is the matmul it is, forward and backward.

All give ``lax.conv_general_dilated``'s values and gradients up to float32 rounding (the sums
are ordered differently). Which one runs is decided per convolution from its static shape and
the backend (``choose``, ``choose_forward``), never by timing at run time, so every process of a
job and every resume computes the same numbers. ``JAXVISION_CONV_GRAD`` sets the policy:
unset or 'auto' (the default) applies the measured rules on CPU and XLA's formulations on other
backends (on CPU, a convolution too small to pay back a rewrite's compile time keeps XLA's:
``_MIN_FLOPS``, ``_MIN_FORWARD_FLOPS``); 'xla' is ``lax.conv_general_dilated`` everywhere, and
``pool``'s pools and ``layers.norm``'s batch norm are ``flax.linen``'s (what a plain Flax model
gets); 'im2col' forces the
kernel-gradient rewrite and applies the forward rules at any size. Convolutions the rewrites do
not cover (feature groups, input dilation, batch groups, layouts other than NHWC/HWIO,
``preferred_element_type``, 3-D, symbolic shapes as in ``jax.export``) are
``lax.conv_general_dilated``'s.

The input gradient is XLA's, except after the im2col forward (its transpose). Second
derivatives go through the same functions (the custom VJP's backward is itself differentiable).

Two XLA:CPU bugs in the input gradient are avoided by writing padding out first (a ``lax.pad``,
then the convolution without it), under every setting including 'xla': padding beyond the
kernel's reach, for the convolutions this module rewrites (2-D, NHWC/HWIO, no groups), and on
CPU all the padding of a strided convolution (``_pads_strided_first``), for those, for every
other 2-D layout and grouping that goes to lax, and for 3-D convolutions padded more below than
above on some axis (not with input dilation, nor within ``as_lax()``; GC-Net's 'SAME' 3-D
padding stays in the convolution: written out, it cost its step ~25%).

On CPU (not under 'xla' nor within ``as_lax()``), a 2-D convolution of at least
``MIN_MATERIALIZED_ELEMENTS`` input elements also has its input and its output's cotangent
computed into buffers of their own, by a division by a 1 that XLA cannot fold (same values
and derivatives, forward mode included): otherwise XLA:CPU recomputes the whole elementwise
chain behind each (batch norms, ReLUs, residual adds) inside the transposes that its kernel
gradient reads, which took ~30% of a ResNet-20 step.

``conv_transpose`` (FCN, U-Net, DispNet, Mask R-CNN upsampling) is written as a stride-1
convolution over the output's phases: as the input-dilated convolution that ``jax.vjp`` gives,
its forward and backward pass took 3-12x as long on XLA:CPU (``benchmarks/conv_transpose.py``).

``conv_general_dilated`` has ``lax.conv_general_dilated``'s signature, so it drops into
``flax.linen.Conv(conv_general_dilated=...)``: parameters and checkpoints are unchanged.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from jaxvision import cpu_flags

FORMULATIONS = ("xla", "im2col")          # of the kernel gradient
FORWARDS = ("xla", "elementwise", "im2col")
SETTINGS = ("auto",) + FORMULATIONS       # of JAXVISION_CONV_GRAD
_NHWC = ("NHWC", "HWIO", "NHWC")
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


def _pads(padding: Any, x_hw: Sequence[int], k_hw: Sequence[int], strides: Sequence[int],
          dilation: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """Explicit (low, high) padding per spatial axis, as lax computes it."""
    if isinstance(padding, str):
        eff = [(k - 1) * d + 1 for k, d in zip(k_hw, dilation)]
        return tuple(lax.padtype_to_pads(x_hw, eff, strides, padding))
    return tuple((int(lo), int(hi)) for lo, hi in padding)


def _out_hw(x_shape, w_shape, strides, pads, dilation) -> list[int]:
    """(Ho, Wo) of an NHWC input under an HWIO kernel with explicit ``pads``."""
    return [(x_shape[1 + i] + sum(pads[i]) - (w_shape[i] - 1) * dilation[i] - 1) // strides[i] + 1
            for i in range(2)]


def _views(x, k_hw, strides, pads, dilation, out_hw) -> list:
    """The KH*KW strided views (N, Ho, Wo, C) of the padded input, one per kernel offset, in
    (kh, kw) order."""
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
    return views


def _acc_dtype(*arrays) -> Any:
    """The dtype sums run in: float32, or the inputs' own when wider (float64 stays float64)."""
    return jnp.promote_types(jnp.result_type(*arrays), jnp.float32)


def _columns(x, k_hw, strides, pads, dilation, out_hw):
    """(N, Ho, Wo, KH*KW*C): ``_views`` concatenated along channels in (kh, kw, c) order, the
    row order of an HWIO kernel."""
    views = _views(x, k_hw, strides, pads, dilation, out_hw)
    return views[0] if len(views) == 1 else jnp.concatenate(views, axis=-1)


def _forward_elementwise(x, w, strides, pads, dilation, out_hw):
    """(N, Ho, Wo, O): sum over offsets and input channels of view[..., c] * w[kh, kw, c, :], in
    float32 (or wider), cast to the inputs' dtype."""
    kw_, c = w.shape[1], w.shape[2]
    acc = _acc_dtype(x, w)
    wf = w.astype(acc)
    out = None
    for k, v in enumerate(_views(x, w.shape[:2], strides, pads, dilation, out_hw)):
        v = v.astype(acc)
        for ci in range(c):
            term = v[..., ci:ci + 1] * wf[k // kw_, k % kw_, ci]
            out = term if out is None else out + term
    return out.astype(jnp.result_type(x, w))


def _forward_im2col(x, w, strides, pads, dilation, out_hw, precision):
    """(N, Ho, Wo, O): the input's columns times the kernel as one matmul (float32 or wider sums)."""
    cols = _columns(x, w.shape[:2], strides, pads, dilation, out_hw)
    y = jnp.einsum("nhwp,po->nhwo", cols, w.reshape(-1, w.shape[3]), precision=precision,
                   preferred_element_type=_acc_dtype(x, w))
    return y.astype(jnp.result_type(x, w))


def _kernel_grad_im2col(x, dy, k_hw, strides, pads, dilation, blocks):
    """(KH, KW, C, O) in float32 or wider: ``dy`` against the input's columns, one
    (KH*KW*C, n*Ho*Wo) @ (n*Ho*Wo, O) matmul per block of n = N / blocks examples, summed over
    the blocks (a scan, so only one block's columns exist at a time)."""
    n, ho, wo, o = dy.shape
    c = x.shape[3]
    acc_dtype = _acc_dtype(x, dy)

    def block(acc, xd):
        cols = _columns(xd[0], k_hw, strides, pads, dilation, (ho, wo))
        return acc + jnp.einsum("nhwp,nhwo->po", cols, xd[1],
                                preferred_element_type=acc_dtype), None

    xs = x.reshape((blocks, n // blocks) + x.shape[1:])
    dys = dy.reshape((blocks, n // blocks) + dy.shape[1:])
    acc, _ = lax.scan(block, jnp.zeros((k_hw[0] * k_hw[1] * c, o), acc_dtype), (xs, dys))
    return acc.reshape(k_hw[0], k_hw[1], c, o)

# The measured rules, from benchmarks/conv_grad.py on this project's 2-core CPU with XLA's
# YNNPACK fusions on (JAXVISION_CPU_YNN=1; the kernel-gradient ones apply only then)
# (benchmarks/NOTES.md, "Convolution weight gradient"): blocks of at most this many bytes of
# columns stay in cache (6 MiB beat 1.5, 4, 8, 12 and 24 MiB on most shapes); a KxK kernel
# (K > 1) with fewer output rows (N * Ho * Wo, the matmul's contraction) or fewer output channels
# than these keeps XLA's kernel gradient, which won or tied there (ResNet-18's and VGG's 4x4
# maps at batch 128, U-Net's 8x8 and 16x16 at batch 16, AlexNet's 13x13 at 32); 1x1 kernels
# lost to 'im2col' everywhere. Kernels larger than 3x3 keep XLA's: AlexNet's 11x11/4 and 5x5
# won alone (35 vs 28, 75 vs 61 GFLOP/s) but its whole step ran 0.79-0.86x with them rewritten. The
# elementwise forward won 2-8x up to 27 products per output (3x3x3, 5x5x1) and lost at 75.
_BLOCK_BYTES = 3 * 2**21
_MIN_ROWS = 8192
_MAX_KERNEL_PIXELS = 9
_MIN_OUT_CHANNELS = 32
# The rewrite adds ~0.15 s of XLA compile time per convolution (ResNet-20's step compiles in
# 5.3 s instead of 2.7 s) and saves time in proportion to the work: below this many FLOPs per
# call it would take more than ~100 steps to pay back, so small convolutions (tests, tiny
# models) keep XLA's gradient.
_MIN_FLOPS = 10**8
_MAX_ELEMENTWISE_TERMS = 32
# The same trade for the forward rewrites, whose wins are larger (2-8x): under 'auto' a
# convolution of fewer FLOPs per call keeps XLA's forward. LeNet-5's first layer at batch 128
# (30 MFLOP) is rewritten; a test's 3x3x3 layer at batch 8 on 32x32 (3.5 MFLOP) is not, and
# the detection, segmentation and stereo tests ran 12% faster with XLA's convolutions throughout.
_MIN_FORWARD_FLOPS = 10**7
_MAX_IM2COL_PIXELS = 4


def _block_count(n: int, bytes_per_example: int) -> int:
    """The smallest divisor of ``n`` that brings a block's columns under ``_BLOCK_BYTES``."""
    for blocks in range(1, n + 1):
        if n % blocks == 0 and (n // blocks) * bytes_per_example <= _BLOCK_BYTES:
            return blocks
    return n


def _flops(x_shape: Sequence[int], w_shape: Sequence[int], out_hw: Sequence[int]) -> int:
    """Multiply-adds times 2 of one call: batch x output pixels x the kernel's KH*KW*C*O."""
    return 2 * int(x_shape[0]) * int(out_hw[0]) * int(out_hw[1]) * math.prod(map(int, w_shape))


def concrete(*shapes: Sequence[Any]) -> bool:
    """Whether every dimension of ``shapes`` is a Python int: False for the symbolic sizes of
    ``jax.export`` (a batch 'b'), which have no value to choose a formulation by."""
    return all(isinstance(d, int) for shape in shapes for d in shape)


def cpu_rewrite(shape: Sequence[Any], min_elements: int, backend: str | None = None) -> bool:
    """Whether one of this project's CPU rewrites (materialized convolution inputs,
    ``pool``'s backward pass, ``batch_norm``'s and ``bias``'s products) applies to an array of
    ``shape``: XLA's formulations are not in force (``xla_only``), every dimension is concrete,
    and it has at least ``min_elements`` elements (a smaller one would not pay back the compile
    time)."""
    return not xla_only(backend) and concrete(shape) and math.prod(shape) >= min_elements


def _setting() -> str:
    setting = os.environ.get("JAXVISION_CONV_GRAD", "") or "auto"
    if setting not in SETTINGS:
        raise ValueError(f"JAXVISION_CONV_GRAD={setting!r} must be one of {SETTINGS} (unset = "
                         "'auto').")
    return setting


def xla_only(backend: str | None = None) -> bool:
    """True where XLA's own formulations run everywhere (convolutions, ``pool``'s pooling,
    flax's batch norm in training, not ``ops.batch_norm``'s, and plain bias adds): under
    ``JAXVISION_CONV_GRAD=xla``, within ``as_lax()`` and off CPU."""
    return (_AS_LAX.get() or _setting() == "xla"
            or (backend or jax.default_backend()) != "cpu")


def choose(x_shape: Sequence[int], w_shape: Sequence[int], strides: Sequence[int],
           out_hw: Sequence[int] | None = None, backend: str | None = None) -> str:
    """The kernel-gradient formulation for an NHWC input ``x_shape``, an HWIO kernel ``w_shape``
    and output size ``out_hw`` (default: input size / stride): ``JAXVISION_CONV_GRAD`` unset or
    'auto' -> ``measured_rule``; 'xla' -> 'xla'; 'im2col' -> 'im2col'."""
    setting = _setting()
    if setting != "auto":
        return setting
    return measured_rule(x_shape, w_shape, strides, out_hw, backend)


def choose_forward(x_shape: Sequence[int], w_shape: Sequence[int],
                   out_hw: Sequence[int] | None = None, backend: str | None = None) -> str:
    """The forward formulation for a KxK kernel (K > 1; else 'xla'): 'xla' under
    ``JAXVISION_CONV_GRAD=xla``, off CPU and, under 'auto', below ``_MIN_FORWARD_FLOPS`` per
    call; else 'elementwise' with at most ``_MAX_ELEMENTWISE_TERMS`` products per output
    (KH*KW*C), 'im2col' for an output map of at most ``_MAX_IM2COL_PIXELS`` pixels (``out_hw``,
    default the input's size), 'xla' otherwise."""
    setting = _setting()
    if setting == "xla" or (backend or jax.default_backend()) != "cpu":
        return "xla"
    if w_shape[0] * w_shape[1] == 1:
        return "xla"
    out_hw = x_shape[1:3] if out_hw is None else out_hw
    if setting == "auto" and _flops(x_shape, w_shape, out_hw) < _MIN_FORWARD_FLOPS:
        return "xla"
    if int(w_shape[0]) * int(w_shape[1]) * int(x_shape[3]) <= _MAX_ELEMENTWISE_TERMS:
        return "elementwise"
    return "im2col" if out_hw[0] * out_hw[1] <= _MAX_IM2COL_PIXELS else "xla"


def choose_transpose(backend: str | None = None) -> str:
    """How ``conv_transpose`` is computed: 'phases' (one stride-1 convolution over the output's
    phases, 3-12x faster forward+backward on XLA:CPU) on CPU; 'xla' (the input-dilated convolution
    of ``jax.vjp``, what ``lax.conv_transpose`` does) under ``JAXVISION_CONV_GRAD=xla`` and off
    CPU, where it was not measured."""
    if _setting() == "xla" or (backend or jax.default_backend()) != "cpu":
        return "xla"
    return "phases"


def measured_rule(x_shape: Sequence[int], w_shape: Sequence[int], strides: Sequence[int],
                  out_hw: Sequence[int] | None = None, backend: str | None = None) -> str:
    """The faster formulation of the kernel gradient measured alone, per shape: on CPU with
    XLA's YNNPACK fusions on (``cpu_flags.ynn_enabled``), for a convolution of at least
    ``_MIN_FLOPS``, 'im2col' for 1x1 kernels, and for larger ones with at most
    ``_MAX_KERNEL_PIXELS`` taps (3x3), at least ``_MIN_ROWS`` output pixels in the batch
    (N * Ho * Wo) and ``_MIN_OUT_CHANNELS`` output channels; else 'xla'. With YNNPACK off (what
    ``import jaxvision`` sets) XLA's own kernel gradient was as fast or faster on every ResNet
    shape but two, so 'xla'; other backends: 'xla'."""
    if (backend or jax.default_backend()) != "cpu" or not cpu_flags.ynn_enabled():
        return "xla"
    if out_hw is None:
        out_hw = [-(-int(d) // int(s)) for d, s in zip(x_shape[1:3], strides)]
    if _flops(x_shape, w_shape, out_hw) < _MIN_FLOPS:
        return "xla"
    if w_shape[0] * w_shape[1] == 1:
        return "im2col"
    big = (x_shape[0] * out_hw[0] * out_hw[1] >= _MIN_ROWS and w_shape[3] >= _MIN_OUT_CHANNELS
           and w_shape[0] * w_shape[1] <= _MAX_KERNEL_PIXELS)
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


def _pads_strided_first(strides: Sequence[int], backend: str | None = None) -> bool:
    """Whether a convolution with ``strides`` has all its padding written out before it (a
    ``lax.pad``, then the convolution unpadded): on CPU when a stride is above 1. XLA:CPU
    aborted the process while compiling the input gradient of some strided, padded
    convolutions, e.g. 3x6 inputs, a 5x2 kernel, strides (3, 2) and padding ((2, 0), (1, 1));
    written out, none of the same random draws did (tests/ops/test_conv.py)."""
    return max(strides) > 1 and (backend or jax.default_backend()) == "cpu"


def _is_dense(x_shape, w_shape, pads, dilation, out_hw) -> bool:
    """Whether the kernel covers the whole input once (one output pixel, no padding left after
    any written out, no dilation): LeNet's C5 and fc layers written as convolutions."""
    return (tuple(out_hw) == (1, 1) and all(p == (0, 0) for p in pads)
            and tuple(dilation) == (1, 1) and tuple(x_shape[1:3]) == tuple(w_shape[:2]))


def _dense(x, w, precision):
    """A convolution whose kernel covers its input, as the matmul it is: (N, 1, 1, O). XLA:CPU
    runs the convolution's input gradient at this shape ~10x slower than the matmul's."""
    n, o = x.shape[0], w.shape[3]
    y = jnp.dot(x.reshape(n, -1), w.reshape(-1, o), precision=precision)
    return y.reshape(n, 1, 1, o)


def _lax_conv(x, w, strides, pads, dilation, precision):
    return lax.conv_general_dilated(x, w, strides, pads, rhs_dilation=dilation,
                                    dimension_numbers=_NHWC, precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6, 7))
def _conv(x, w, strides, pads, dilation, precision, forward, kernel_grad):
    """The convolution by ``forward``; its VJP takes the kernel gradient by ``kernel_grad``."""
    out_hw = _out_hw(x.shape, w.shape, strides, pads, dilation)
    if forward == "elementwise":
        return _forward_elementwise(x, w, strides, pads, dilation, out_hw)
    if forward == "im2col":
        return _forward_im2col(x, w, strides, pads, dilation, out_hw, precision)
    return _lax_conv(x, w, strides, pads, dilation, precision)


def _conv_fwd(x, w, strides, pads, dilation, precision, forward, kernel_grad):
    return _conv(x, w, strides, pads, dilation, precision, forward, kernel_grad), (x, w)


def _conv_bwd(strides, pads, dilation, precision, forward, kernel_grad, res, dy):
    x, w = res
    # The input gradient of the im2col forward is its transpose (a matmul, then the columns
    # added back into place), which is as fast as that forward where XLA's is not.
    if forward == "im2col":
        out_hw = dy.shape[1:3]
        (dx,) = jax.vjp(lambda x_: _forward_im2col(x_, w, strides, pads, dilation, out_hw,
                                                   precision), x)[1](dy)
    else:
        (dx,) = jax.vjp(lambda x_: _lax_conv(x_, w, strides, pads, dilation, precision), x)[1](dy)
    if kernel_grad == "im2col":
        k_hw = w.shape[:2]
        per_example = dy.shape[1] * dy.shape[2] * k_hw[0] * k_hw[1] * x.shape[3] * x.dtype.itemsize
        dw = _kernel_grad_im2col(x, dy, k_hw, strides, pads, dilation,
                                 _block_count(x.shape[0], per_example))
    else:
        (dw,) = jax.vjp(lambda w_: _lax_conv(x, w_, strides, pads, dilation, precision), w)[1](dy)
    return dx, dw.astype(w.dtype)


_conv.defvjp(_conv_fwd, _conv_bwd)


# XLA:CPU computes a convolution's kernel gradient as a convolution of the input transposed to
# (C, H, W, N) with the output's cotangent transposed to (H, W, N, O), and its fusion pass
# recomputes inside those transposes the whole elementwise chain that produced each of them
# (batch norms, ReLUs and residual adds of earlier layers), reading every source tensor across
# the batch stride: 173-187 ms of a ~700 ms ResNet-20 step at batch 128, against ~2.3 ms for a
# plain transpose of one such tensor. XLA duplicates cheap elementwise ops into each consumer
# but not a division, so dividing by a 1 it cannot fold makes the chain run once into a buffer
# that the convolution and the transposes share (``_materialized_input``,
# ``_materialized_cotangent``). The step with it against without, interleaved in one process
# (benchmarks/train_step.py --ablate-materialize): ResNet-20 1.19x, ResNet-18 1.18x, U-Net
# 1.00-1.04x, the small CNN 0.97x; LeNet-5's small layers lost 10%, hence the size floor
# (benchmarks/NOTES.md, "Materialized convolution inputs").
MIN_MATERIALIZED_ELEMENTS = 2**18


def _run_time_one(w: jax.Array, dtype: Any) -> jax.Array:
    """A scalar 1 of ``dtype`` that XLA cannot fold to a constant: ``1 + 0 * w[0, ...]`` (to XLA,
    ``0 * w`` is not 0, since ``w`` may be inf or NaN; then so is every output, as the loss
    would be anyway). The two functions below ignore its tangent: no gradient reaches ``w``."""
    return (1 + 0 * w[(0,) * w.ndim]).astype(dtype)


@jax.custom_jvp
def _materialized_input(x: jax.Array, one: jax.Array) -> jax.Array:
    """``x / one`` (exactly ``x``) computed once into its own buffer; tangents and cotangents pass
    through unchanged (``one`` is 1 and gets none)."""
    return x / one


@_materialized_input.defjvp
def _materialized_input_jvp(primals, tangents):
    x, one = primals
    return x / one, tangents[0]


@jax.custom_jvp
def _materialized_cotangent(y: jax.Array, one: jax.Array) -> jax.Array:
    """``y`` unchanged, its tangent (and so its cotangent, the transpose) divided by ``one``."""
    return y


@_materialized_cotangent.defjvp
def _materialized_cotangent_jvp(primals, tangents):
    y, one = primals
    return y, tangents[0] / one


def _materializes(lhs, rhs, feature_group_count: int, batch_group_count: int) -> bool:
    """Whether ``conv_general_dilated`` materializes this convolution's input and output
    cotangent: a 2-D floating-point convolution without groups on CPU, outside
    ``JAXVISION_CONV_GRAD=xla`` and ``as_lax()``, with concrete shapes and at least
    ``MIN_MATERIALIZED_ELEMENTS`` input elements."""
    return (lhs.ndim == 4 and feature_group_count == 1 and batch_group_count == 1
            and jnp.issubdtype(lhs.dtype, jnp.floating) and concrete(rhs.shape)
            and cpu_rewrite(lhs.shape, MIN_MATERIALIZED_ELEMENTS))


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, batch_group_count=1,
                         precision=None, preferred_element_type=None, *,
                         formulation: str | None = None, forward: str | None = None):
    """``lax.conv_general_dilated`` (same arguments and result) computed by the formulations of
    ``choose`` (kernel gradient; ``formulation`` overrides) and ``choose_forward`` (``forward``
    overrides); see the module docstring. Cases outside NHWC/HWIO, feature or batch groups,
    input dilation and ``preferred_element_type`` are passed to ``lax.conv_general_dilated``
    unchanged. On CPU, a large enough 2-D convolution's input and output cotangent are computed
    into buffers of their own first (``_materializes``; same values)."""
    args = (window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
            feature_group_count, batch_group_count, precision, preferred_element_type)
    if _materializes(lhs, rhs, feature_group_count, batch_group_count):
        one = _run_time_one(rhs, lhs.dtype)
        y = _conv_general_dilated(_materialized_input(lhs, one), rhs, *args,
                                  formulation=formulation, forward=forward)
        return _materialized_cotangent(y, one.astype(y.dtype))
    return _conv_general_dilated(lhs, rhs, *args, formulation=formulation, forward=forward)


def _conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                          dimension_numbers, feature_group_count, batch_group_count, precision,
                          preferred_element_type, *, formulation: str | None,
                          forward: str | None):
    nd = lhs.ndim - 2
    strides = tuple(int(s) for s in window_strides)
    dilation = tuple(int(d) for d in (rhs_dilation or (1,) * nd))
    # Symbolic shapes (``jax.export`` with a batch dimension 'b') have no static size to choose
    # by, and an exported model should not depend on this host's measurements: XLA's.
    plain = (_AS_LAX.get() or not concrete(lhs.shape, rhs.shape) or nd != 2
             or not _is_nhwc(lhs.shape, rhs.shape, dimension_numbers)
             or feature_group_count != 1
             or batch_group_count != 1 or any(d != 1 for d in (lhs_dilation or (1,) * nd))
             or preferred_element_type is not None)
    if not plain:
        pads = _pads(padding, lhs.shape[1:3], rhs.shape[:2], strides, dilation)
        out_hw = _out_hw(lhs.shape, rhs.shape, strides, pads, dilation)
        if min(out_hw) < 1:
            plain = True     # lax's own error
    if not plain:
        # Padding written out first (then the convolution pads the rest), because of two
        # XLA:CPU bugs in a convolution's input gradient (tests/ops/test_conv.py):
        # * padding beyond the kernel's reach returned uninitialized memory on a 1-row input;
        # * some strided, padded convolutions aborted the process while compiling
        #   (``_pads_strided_first``).
        reach = [(rhs.shape[i] - 1) * dilation[i] for i in range(2)]
        all_out = _pads_strided_first(strides)
        excess = [(lo, hi) if all_out else (max(lo - r, 0), max(hi - r, 0))
                  for (lo, hi), r in zip(pads, reach)]
        if any(e for pair in excess for e in pair):
            lhs = lax.pad(lhs, jnp.zeros((), lhs.dtype),
                          ((0, 0, 0), (*excess[0], 0), (*excess[1], 0), (0, 0, 0)))
            pads = tuple((lo - e0, hi - e1) for (lo, hi), (e0, e1) in zip(pads, excess))
            padding = pads
        if _is_dense(lhs.shape, rhs.shape, pads, dilation, out_hw):
            return _dense(lhs, rhs, precision)
        formulation = formulation or choose(lhs.shape, rhs.shape, strides, out_hw)
        forward = forward or choose_forward(lhs.shape, rhs.shape, out_hw)
        if formulation not in FORMULATIONS:
            raise ValueError(f"conv formulation must be one of {FORMULATIONS}, got {formulation!r}.")
        if forward not in FORWARDS:
            raise ValueError(f"conv forward must be one of {FORWARDS}, got {forward!r}.")
        plain = formulation == "xla" and forward == "xla"
    if plain:
        # The XLA:CPU abort above, in the layouts, groupings and 3-D convolutions handed to lax
        # as they are: 2-D always; 3-D when an axis pads more below than above (as an aborting
        # case of the tests does), not 'SAME' padding (more above, if uneven), which GC-Net's
        # convolutions have compiled with all along and which written out cost its step ~25%.
        if (nd in (2, 3) and not _AS_LAX.get() and _pads_strided_first(strides)
                and concrete(lhs.shape, rhs.shape)
                and all(d == 1 for d in (lhs_dilation or (1,) * nd))):
            lhs, padding = _write_padding_out(lhs, rhs, padding, strides, dilation,
                                              dimension_numbers, low_heavy_only=nd == 3)
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                        rhs_dilation, dimension_numbers, feature_group_count,
                                        batch_group_count, precision, preferred_element_type)
    return _conv(lhs, rhs, strides, pads, dilation, precision, forward, formulation)


def _write_padding_out(lhs, rhs, padding, strides, dilation, dimension_numbers,
                       low_heavy_only: bool = False):
    """(lhs with ``padding`` written out as a ``lax.pad`` of its spatial axes, the padding left
    for the convolution: none), for any ``dimension_numbers`` lax accepts and any number of
    spatial axes; ``lhs`` and ``padding`` unchanged when there is no padding, or with
    ``low_heavy_only`` when no axis is padded more below than above."""
    dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    axes, k_axes = dn.lhs_spec[2:], dn.rhs_spec[2:]
    pads = _pads(padding, [lhs.shape[a] for a in axes], [rhs.shape[a] for a in k_axes], strides,
                 dilation)
    if (not any(lo or hi for lo, hi in pads)
            or (low_heavy_only and all(lo <= hi for lo, hi in pads))):
        return lhs, padding
    config = [(0, 0, 0)] * lhs.ndim
    for a, (lo, hi) in zip(axes, pads):
        config[a] = (lo, hi, 0)
    return lax.pad(lhs, jnp.zeros((), lhs.dtype), config), ((0, 0),) * len(axes)



def conv_transpose(x: jax.Array, kernel: jax.Array, stride: int | Sequence[int],
                   padding: int | Sequence[int] = 0, output_padding: int | Sequence[int] = 0,
                   dilation: int | Sequence[int] = 1) -> jax.Array:
    """The transposed ("fractionally strided") convolution, PyTorch's ``ConvTranspose2d``, NHWC.

    Defined as the transpose of a convolution's matrix: with ``conv`` the convolution of stride
    ``stride``, padding ``padding`` and dilation ``dilation`` by ``kernel`` read as (KH, KW,
    C_out, C_in) (mapping C_out channels to C_in), ``conv(z) = U z`` and this returns ``U^T x``,
    computed as one stride-1 convolution per output phase (``_conv_transpose_by_phases``), so
    its forward and gradients go through this module's convolution (on CPU; elsewhere, under
    ``JAXVISION_CONV_GRAD=xla`` and within ``as_lax()``, as the VJP of the strided convolution,
    an input-dilated one). ``x`` (N, H, W, C_in), ``kernel`` (KH, KW, C_in, C_out); returns
    (N, Ho, Wo, C_out) with ``Ho = (H - 1) * s - 2 p + d (KH - 1) + 1 + output_padding``
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
    dtype = jnp.result_type(x, kernel)
    if _AS_LAX.get() or choose_transpose() == "xla":
        # The input-dilated convolution lax writes (`receptive_fields` reads it off the jaxpr).
        w = jnp.swapaxes(kernel, 2, 3)  # the convolution's HWIO kernel: C_out in, C_in out

        def forward(z):
            return conv_general_dilated(z, w, s, ((p[0], p[0]), (p[1], p[1])), rhs_dilation=d,
                                        dimension_numbers=_NHWC)

        z = jnp.zeros((x.shape[0],) + out_hw + (kernel.shape[3],), dtype)
        _, vjp = jax.vjp(forward, z)
        return vjp(x.astype(dtype))[0]
    return _conv_transpose_by_phases(x.astype(dtype), kernel.astype(dtype), s, p, d, out_hw)


def _conv_transpose_by_phases(x: jax.Array, kernel: jax.Array, s: Sequence[int],
                              p: Sequence[int], d: Sequence[int],
                              out_size: Sequence[int]) -> jax.Array:
    """``conv_transpose`` as one stride-1 convolution with ``prod(s)`` times the output
    channels, then depth-to-space: (N, *out_size, C_out) for ``x`` (N, *spatial, C_in) and
    ``kernel`` (*K, C_in, C_out), any number of spatial axes.

    Output row ``j`` of a transposed convolution is ``sum_m x[q - m] w[r + s m]`` with
    ``q, r = divmod(j + p, s)``: each phase ``r`` of the output is a plain convolution of ``x``
    with every ``s``-th kernel row from ``r`` (the sub-pixel decomposition). Written so, the
    forward and both gradients are ordinary convolutions; as the input-dilated convolution that
    ``jax.vjp`` of a strided convolution gives, XLA:CPU took 30-140 ms for the forward and
    backward pass of U-Net's and DispNet's upsampling layers against 3.5-13 ms this way
    (``benchmarks/conv_transpose.py``). ``p`` may exceed what the kernel covers or
    ``out_size`` be cut short: rows outside are zeros, rows past ``out_size`` dropped.
    """
    nd = x.ndim - 2
    if not 1 <= nd <= 3:
        raise ValueError(f"conv_transpose: x {x.shape} has {nd} spatial axes; 1 to 3 are supported.")
    n, c, o = x.shape[0], x.shape[-1], kernel.shape[-1]
    k = kernel
    if any(di != 1 for di in d):   # the dilated kernel, its zeros written out
        size = tuple((ki - 1) * di + 1 for ki, di in zip(k.shape[:nd], d))
        k = jnp.zeros(size + (c, o), k.dtype).at[tuple(slice(None, None, di) for di in d)].set(k)
    # Zero rows up to a multiple of the stride give every phase m taps.
    m = [-(-k.shape[i] // s[i]) for i in range(nd)]
    k = jnp.pad(k, [(0, m[i] * s[i] - k.shape[i]) for i in range(nd)] + [(0, 0)] * 2)
    # (m0, s0, m1, s1, ..., C, O) with kernel row m_i * s_i + r_i; flipped over each m (a
    # correlation, as lax convolves), the phases moved next to the output channels.
    k = k.reshape(tuple(v for i in range(nd) for v in (m[i], s[i])) + (c, o))
    k = k[tuple(slice(None, None, -1) if a % 2 == 0 else slice(None) for a in range(2 * nd))]
    k = k.transpose(tuple(range(0, 2 * nd, 2)) + (2 * nd,) + tuple(range(1, 2 * nd, 2)) + (2 * nd + 1,))
    k = k.reshape(tuple(m) + (c, math.prod(s) * o))
    # Phase outputs q0..q1 cover output rows p..p + size - 1; padding lo/hi makes the VALID
    # convolution start at q0 and give q1 - q0 + 1 of them (negative pads crop).
    q0 = [p[i] // s[i] for i in range(nd)]
    q1 = [(p[i] + out_size[i] - 1) // s[i] for i in range(nd)]
    lo = [m[i] - 1 - q0[i] for i in range(nd)]
    hi = [q1[i] - q0[i] + m[i] - x.shape[1 + i] - lo[i] for i in range(nd)]
    xp = lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0)] + [(lo[i], hi[i], 0) for i in range(nd)]
                 + [(0, 0, 0)])
    spatial = "DHW"[-nd:]
    dims = (f"N{spatial}C", f"{spatial}IO", f"N{spatial}C")
    y = conv_general_dilated(xp, k, (1,) * nd, "VALID", dimension_numbers=dims)
    q = y.shape[1:1 + nd]
    y = y.reshape((n,) + q + tuple(s) + (o,))
    y = y.transpose((0,) + tuple(a for i in range(nd) for a in (1 + i, 1 + nd + i)) + (1 + 2 * nd,))
    y = y.reshape((n,) + tuple(q[i] * s[i] for i in range(nd)) + (o,))
    start = [p[i] - q0[i] * s[i] for i in range(nd)]
    return y[(slice(None),) + tuple(slice(start[i], start[i] + out_size[i]) for i in range(nd))]


def _lax_transpose_pads(k: int, s: int, padding: str) -> tuple[int, int]:
    """The (low, high) padding of the dilated input that ``lax.conv_transpose`` uses for
    'SAME' / 'VALID' (the forward convolution's padding, read for its transpose)."""
    if padding.upper() == "SAME":
        pad_len = k + s - 2
        low = k - 1 if s > k - 1 else -(-pad_len // 2)
    elif padding.upper() == "VALID":
        pad_len, low = k + s - 2 + max(k - s, 0), k - 1
    else:
        raise ValueError(f"conv_transpose padding {padding!r}: 'SAME', 'VALID' or (low, high) pairs.")
    return low, pad_len - low


def lax_conv_transpose(lhs: jax.Array, rhs: jax.Array, strides: Sequence[int],
                       padding: str | Sequence[tuple[int, int]],
                       rhs_dilation: Sequence[int] | None = None, dimension_numbers: Any = None,
                       transpose_kernel: bool = False, precision: Any = None,
                       preferred_element_type: Any = None) -> jax.Array:
    """``lax.conv_transpose`` (its signature and values; what ``flax.linen.ConvTranspose``
    computes), by output phases on CPU (``choose_transpose``) for channel-last layouts
    (``dimension_numbers`` None), 1-3 spatial axes; otherwise ``lax.conv_transpose`` itself.

    ``lax.conv_transpose`` without ``transpose_kernel`` convolves the input dilated by
    ``strides`` with ``rhs`` (*K, C_in, C_out): PyTorch's transposed convolution of the
    spatially flipped kernel, cut by ``K_eff - 1 - pad_low`` (``K_eff = d (K - 1) + 1``)."""
    nd = lhs.ndim - 2
    if (dimension_numbers is not None or preferred_element_type is not None or not 1 <= nd <= 3
            or _AS_LAX.get() or choose_transpose() == "xla"):
        return lax.conv_transpose(lhs, rhs, strides, padding, rhs_dilation=rhs_dilation,
                                  dimension_numbers=dimension_numbers,
                                  transpose_kernel=transpose_kernel, precision=precision,
                                  preferred_element_type=preferred_element_type)
    d = tuple(rhs_dilation or (1,) * nd)
    k = rhs
    if transpose_kernel:   # lax flips it and swaps its channel axes; flipped again below
        k = jnp.swapaxes(jnp.flip(k, tuple(range(nd))), nd, nd + 1)
    k_eff = [(k.shape[i] - 1) * d[i] + 1 for i in range(nd)]
    if isinstance(padding, str):
        pads = [_lax_transpose_pads(k_eff[i], strides[i], padding) for i in range(nd)]
    else:
        pads = [tuple(int(v) for v in pair) for pair in padding]
    out_size = [(lhs.shape[1 + i] - 1) * strides[i] + 1 + sum(pads[i]) - k_eff[i] + 1
                for i in range(nd)]
    if min(out_size) < 1:
        raise ValueError(f"lax_conv_transpose: the output would be {out_size}; lower the padding.")
    dtype = jnp.result_type(lhs, rhs)
    return _conv_transpose_by_phases(
        lhs.astype(dtype), jnp.flip(k, tuple(range(nd))).astype(dtype), tuple(strides),
        [k_eff[i] - 1 - pads[i][0] for i in range(nd)], d, out_size)


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
