"""Named building blocks shared by the model zoo: initializers, activations, norms, pooling.

Every choice a config can make is a string resolved here, so an experiment config says
``kernel_init='he'`` or ``norm='layer'`` and a typo fails with the list of valid names.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import flax.linen as nn

from jaxvision import replica
from jaxvision.ops import batch_norm as bn_ops
from jaxvision.ops import bias as bias_ops
from jaxvision.ops import conv as conv_ops

Array = jax.Array
Dtype = Any
Initializer = Callable[..., Array]


def _choose(kind: str, name: str, table: Mapping[str, Any]) -> Any:
    """Looks ``name`` up in ``table``; an unknown name raises with the valid ones and near misses."""
    if not isinstance(name, str):
        raise TypeError(f"{kind} must be a string naming one of {sorted(table)}, got {name!r}")
    key = name.lower().replace("-", "_")
    if key in table:
        return table[key]
    close = difflib.get_close_matches(key, list(table), n=3)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    raise ValueError(f"unknown {kind} {name!r}.{hint} Valid choices: {', '.join(sorted(table))}.")


# Bare family names pick the variant their authors/frameworks made the default: Glorot & Bengio
# used the uniform form, He et al. the normal form, LeCun the normal form (also flax's default).
_INITIALIZERS: dict[str, Initializer] = {
    "glorot": jax.nn.initializers.glorot_uniform(),
    "glorot_uniform": jax.nn.initializers.glorot_uniform(),
    "glorot_normal": jax.nn.initializers.glorot_normal(),
    "he": jax.nn.initializers.he_normal(),
    "he_normal": jax.nn.initializers.he_normal(),
    "he_uniform": jax.nn.initializers.he_uniform(),
    "lecun": jax.nn.initializers.lecun_normal(),
    "lecun_normal": jax.nn.initializers.lecun_normal(),
    "lecun_uniform": jax.nn.initializers.lecun_uniform(),
}
for _src, _dst in (("glorot", "xavier"), ("he", "kaiming")):
    for _suffix in ("", "_uniform", "_normal"):
        _INITIALIZERS[_dst + _suffix] = _INITIALIZERS[_src + _suffix]

INITIALIZERS: tuple[str, ...] = tuple(sorted(_INITIALIZERS))


def initializer(name: str) -> Initializer:
    """Returns the kernel initializer called ``name`` (``glorot``/``xavier``, ``he``/``kaiming``,
    ``lecun``, each with ``_normal`` / ``_uniform`` variants).

    The bare names mean ``glorot_uniform``, ``he_normal`` and ``lecun_normal``.
    """
    return _choose("kernel_init", name, _INITIALIZERS)


def _identity(x: Array) -> Array:
    return x


_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "relu": nn.relu,
    "leaky_relu": nn.leaky_relu,  # negative slope 0.01
    "gelu": nn.gelu,
    "tanh": jnp.tanh,
    "sigmoid": nn.sigmoid,
    "silu": nn.silu,
    "swish": nn.silu,
    "elu": nn.elu,
    "identity": _identity,
    "linear": _identity,
}

ACTIVATIONS: tuple[str, ...] = tuple(sorted(_ACTIVATIONS))


def activation(name: str) -> Callable[[Array], Array]:
    """Returns the elementwise activation called ``name`` (relu, leaky_relu, gelu, tanh, sigmoid,
    silu/swish, elu, identity/linear)."""
    return _choose("activation", name, _ACTIVATIONS)


NORMS: tuple[str, ...] = ("batch", "layer", "none")

# Momentum/epsilon of the common PyTorch defaults (flax's own momentum 0.99 is slower to settle
# on the short schedules this codebase runs).
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def norm(
    name: str,
    train: bool,
    dtype: Dtype = None,
    *,
    param_dtype: Dtype = jnp.float32,
    momentum: float = BN_MOMENTUM,
    epsilon: float = BN_EPSILON,
) -> Callable[..., Callable[[Array], Array]]:
    """Returns a factory ``make(name, zero_init=False) -> layer`` for the norm called ``name``.

    ``batch``: BatchNorm over all but the last axis, running statistics in the ``batch_stats``
    collection, updated only when ``train`` (``BatchNorm`` below when training on CPU and
    ``ops.batch_norm.applies``, else ``flax.linen.BatchNorm``). ``layer``: LayerNorm over the
    channel (last) axis. ``none``: identity with no parameters. ``zero_init=True`` starts the
    scale at zero (used for the last norm of a residual branch). Call the factory inside a
    compact method.
    """
    kind = _choose("norm", name, {n: n for n in NORMS})

    def make(layer_name: str, zero_init: bool = False) -> Callable[[Array], Array]:
        scale_init = nn.initializers.zeros if zero_init else nn.initializers.ones
        if kind == "batch":
            def batch_norm(x: Array) -> Array:
                # In training on CPU, large layers are this module's BatchNorm, whose sums are
                # matrix products (jaxvision.ops.batch_norm); the variables are the
                # same, so checkpoints do not depend on it.
                cls = BatchNorm if train and bn_ops.applies(x.shape) else nn.BatchNorm
                return cls(
                    use_running_average=not train,
                    # Under pmap, statistics over the global batch (as under jit); replica.py.
                    axis_name=replica.cross_replica_axis() if train else None,
                    momentum=momentum,
                    epsilon=epsilon,
                    dtype=dtype,
                    param_dtype=param_dtype,
                    scale_init=scale_init,
                    name=layer_name,
                )(x)

            return batch_norm
        if kind == "layer":
            return nn.LayerNorm(
                epsilon=epsilon,
                dtype=dtype,
                param_dtype=param_dtype,
                scale_init=scale_init,
                name=layer_name,
            )
        return _identity

    return make


_DTYPES: dict[str, Any] = {
    "float32": jnp.float32,
    "f32": jnp.float32,
    "bfloat16": jnp.bfloat16,
    "bf16": jnp.bfloat16,
    "float16": jnp.float16,
    "f16": jnp.float16,
}


class BatchNorm(nn.Module):
    """``flax.linen.BatchNorm`` in training, over the last axis: the same variables (params
    ``scale``, ``bias``; ``batch_stats`` ``mean``, ``var``), values, gradients and running
    averages up to float32 rounding, computed by ``jaxvision.ops.batch_norm.batch_norm_train``,
    whose channel sums are matrix products (faster on XLA:CPU). ``norm`` uses it when training
    on CPU (``batch_norm.applies``); evaluation (``use_running_average``) is flax's. Returns
    ``x``'s shape in ``dtype`` (default: ``x``, scale and bias promoted, as flax)."""

    use_running_average: bool = False
    axis_name: str | None = None
    momentum: float = 0.99
    epsilon: float = 1e-5
    dtype: Dtype = None
    param_dtype: Dtype = jnp.float32
    scale_init: Initializer = nn.initializers.ones
    bias_init: Initializer = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: Array) -> Array:
        if self.use_running_average:
            raise ValueError("jaxvision BatchNorm is the training form; evaluate with "
                             "flax.linen.BatchNorm(use_running_average=True) (layers.norm does).")
        features = (x.shape[-1],)
        ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32),
                                features)
        ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32), features)
        scale = self.param("scale", self.scale_init, features, self.param_dtype)
        bias = self.param("bias", self.bias_init, features, self.param_dtype)
        y, mean, var = bn_ops.batch_norm_train(x, scale, bias, self.epsilon, self.axis_name)
        if not self.is_initializing():
            ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
            ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        return y.astype(nn.dtypes.canonicalize_dtype(x, scale, bias, dtype=self.dtype))


def resolve_dtype(dtype: Any) -> Any:
    """Returns a jnp dtype for ``dtype`` given as a dtype or a name ('float32', 'bfloat16', ...)."""
    if isinstance(dtype, str):
        return _choose("dtype", dtype, _DTYPES)
    return dtype


def scaled(channels: int, width: float) -> int:
    """Returns ``channels * width`` rounded, at least 1 (the width multiplier of every model)."""
    if width <= 0:
        raise ValueError(f"width multiplier must be > 0, got {width}")
    return max(1, int(round(channels * width)))


def check_image_batch(x: Array, model: str, min_size: int = 1) -> None:
    """Raises a clear error unless ``x`` is an NHWC float batch with H, W >= ``min_size``."""
    if x.ndim != 4:
        raise ValueError(
            f"{model} expects an NHWC image batch (N, H, W, C), got shape {tuple(x.shape)}; "
            "add the batch axis with x[None] for a single image"
        )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(
            f"{model} expects a normalized float image batch, got dtype {x.dtype}; "
            "convert uint8 images to float (and normalize) before the model"
        )
    if x.shape[1] < min_size or x.shape[2] < min_size:
        raise ValueError(
            f"{model} needs inputs of at least {min_size}x{min_size} pixels, got "
            f"{x.shape[1]}x{x.shape[2]}"
        )


def adaptive_avg_pool(x: Array, output_size: Sequence[int]) -> Array:
    """Averages an NHWC map into an ``output_size`` (oh, ow) grid -> (N, oh, ow, C).

    Bin ``i`` of an axis of length ``n`` covers ``[floor(i*n/o), ceil((i+1)*n/o))``, so the grid
    is fixed whatever the input size (a map smaller than the grid is replicated, not padded).
    """
    oh, ow = output_size
    _, h, w, _ = x.shape

    def weights(n: int, o: int) -> Array:
        rows = []
        for i in range(o):
            start, end = (i * n) // o, -((-(i + 1) * n) // o)
            rows.append([1.0 / (end - start) if start <= j < end else 0.0 for j in range(n)])
        return jnp.asarray(rows, dtype=x.dtype)

    return jnp.einsum("ih,jw,nhwc->nijc", weights(h, oh), weights(w, ow), x)


def local_response_norm(
    x: Array, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0
) -> Array:
    """AlexNet's cross-channel LRN on NHWC: ``x / (k + alpha * sum_{window} x^2) ** beta``.

    The window spans ``size`` channels centred on each channel (clipped at the ends); ``alpha`` is
    not divided by ``size`` (the paper's form, not PyTorch's).
    """
    sq = jnp.square(x.astype(jnp.float32))
    half = size // 2
    padded = jnp.pad(sq, [(0, 0)] * (x.ndim - 1) + [(half, size - 1 - half)])
    c = x.shape[-1]
    total = sum(padded[..., i : i + c] for i in range(size))
    return (x / jnp.power(k + alpha * total, beta)).astype(x.dtype)


def dense(
    features: int, name: str, dtype: Dtype, param_dtype: Dtype, kernel_init: str, use_bias: bool = True
) -> nn.Dense:
    """A Dense layer with the model's dtypes and named kernel initializer."""
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=initializer(kernel_init),
        name=name,
    )


# nn.Conv's constructor fields, which ``Conv`` hands to its inner convolution unchanged.
_CONV_FIELDS = tuple(f.name for f in dataclasses.fields(nn.Conv)
                     if f.init and f.name not in ("parent", "name"))


class Conv(nn.Conv):
    """``flax.linen.Conv`` computed by ``jaxvision.ops.conv`` (its CPU formulations), its bias
    added by ``ops.bias.bias_add`` (the bias gradient as a matrix product on CPU). Same fields,
    parameters (names, shapes, initial values) and outputs, so checkpoints do not depend on it.
    Every model's convolution is built through this or ``conv``."""

    conv_general_dilated: Callable[..., Array] | None = conv_ops.conv_general_dilated

    @nn.compact
    def __call__(self, inputs: Array) -> Array:
        # flax adds the bias inside nn.Conv, so the convolution runs without it in this
        # module's own scope (same parameter tree, kernel created first as in nn.Conv).
        inner = nn.Conv(**{**{k: getattr(self, k) for k in _CONV_FIELDS}, "use_bias": False})
        nn.share_scope(self, inner)
        y = inner(inputs)
        if not self.use_bias:
            return y
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
        y, bias = self.promote_dtype(y, bias, dtype=self.dtype)
        return bias_ops.bias_add(y, bias)


def conv(
    features: int,
    kernel: int,
    name: str,
    dtype: Dtype,
    param_dtype: Dtype,
    kernel_init: str,
    *,
    stride: int = 1,
    padding: Any = "SAME",
    use_bias: bool = True,
    groups: int = 1,
    dilation: int = 1,
) -> nn.Conv:
    """A square 2-D convolution with the model's dtypes and named kernel initializer.

    It goes through ``jaxvision.ops.conv`` (per-shape CPU formulations by default;
    ``JAXVISION_CONV_GRAD=xla`` for XLA's everywhere); parameters are
    ``flax.linen.Conv``'s, so checkpoints do not depend on it."""
    if isinstance(padding, int):
        padding = [(padding, padding), (padding, padding)]
    return Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=padding,
        use_bias=use_bias,
        feature_group_count=groups,
        kernel_dilation=(dilation, dilation),
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=initializer(kernel_init),
        name=name,
    )


class ConvTranspose(nn.Module):
    """A 2-D transposed convolution (``jaxvision.ops.conv.conv_transpose``: PyTorch's
    ``ConvTranspose2d`` semantics, NHWC) with kernel (K, K, C_in, features) and optional bias.

    ``init='bilinear'`` starts it as bilinear upsampling by ``stride`` (FCN; needs C_in ==
    features and K = 2 * stride - stride % 2, padding = stride // 2), else a named initializer.
    ``trainable=False`` keeps the bilinear kernel fixed (no parameter), as FCN's final
    upsampling."""

    features: int
    kernel: int
    stride: int
    padding: int = 0
    init: str = "he"
    use_bias: bool = False
    trainable: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = x.shape[-1]
        shape = (self.kernel, self.kernel, c, self.features)
        if self.init == "bilinear":
            if c != self.features or self.kernel != 2 * self.stride - self.stride % 2:
                raise ValueError(f"ConvTranspose init='bilinear' needs features == input channels "
                                 f"({c} vs {self.features}) and kernel 2 * stride - stride % 2 "
                                 f"({2 * self.stride - self.stride % 2}), got kernel {self.kernel}.")
            init = lambda key, shape, dtype: conv_ops.bilinear_kernel(self.stride, c, dtype)  # noqa: E731
        else:
            init = initializer(self.init)
        if self.trainable:
            kernel = self.param("kernel", init, shape, self.param_dtype)
        else:
            kernel = conv_ops.bilinear_kernel(self.stride, c, self.param_dtype)
        dtype = resolve_dtype(self.dtype)
        y = conv_ops.conv_transpose(x.astype(dtype), kernel.astype(dtype), self.stride, self.padding)
        if self.use_bias:
            y = bias_ops.bias_add(y, self.param("bias", nn.initializers.zeros, (self.features,),
                                                self.param_dtype).astype(dtype))
        return y


class FlaxConvTranspose(nn.Module):
    """``flax.linen.ConvTranspose`` (its fields used here, its parameters ``kernel`` (*K, C_in,
    features) and ``bias``, its values) computed by ``jaxvision.ops.conv.lax_conv_transpose``:
    by output phases on CPU, for 1-3 spatial axes (GC-Net's 3-D cost-volume decoder). Inputs
    (N, *spatial, C_in); returns (N, *spatial_out, features)."""

    features: int
    kernel_size: Sequence[int]
    strides: Sequence[int] | None = None
    padding: str | Sequence[tuple[int, int]] = "SAME"
    kernel_dilation: Sequence[int] | None = None
    use_bias: bool = True
    transpose_kernel: bool = False
    dtype: Dtype = None
    param_dtype: Dtype = jnp.float32
    precision: Any = None
    kernel_init: Initializer = nn.linear.default_kernel_init
    bias_init: Initializer = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: Array) -> Array:
        nd = len(self.kernel_size)
        c = x.shape[-1]
        shape = tuple(self.kernel_size) + ((self.features, c) if self.transpose_kernel
                                           else (c, self.features))
        kernel = self.param("kernel", self.kernel_init, shape, self.param_dtype)
        bias = (self.param("bias", self.bias_init, (self.features,), self.param_dtype)
                if self.use_bias else None)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        y = conv_ops.lax_conv_transpose(x, kernel, tuple(self.strides or (1,) * nd), self.padding,
                                        rhs_dilation=self.kernel_dilation,
                                        transpose_kernel=self.transpose_kernel,
                                        precision=self.precision)
        return y if bias is None else bias_ops.bias_add(y, bias)


TAP_COLLECTION = "taps"


def tap(module: nn.Module, name: str, x: Array) -> Array:
    """``x``, a feature the model returns as ``name`` (``return_features``), made a point where
    gradients can be read: a caller that passes a ``taps`` collection of zeros (``mutable`` to
    create it) gets d output / d feature as the gradient of that collection (``flax``'s
    ``perturb``; Grad-CAM in ``jaxvision/tools/explain.py``). Otherwise the identity, and it
    never adds variables at ``init``."""
    if module.is_initializing():
        return x
    return module.perturb(f"{name}_tap", x, collection=TAP_COLLECTION)


def logits(x: Array) -> Array:
    """Casts head outputs to float32 so losses stay accurate under bfloat16 compute."""
    return x.astype(jnp.float32)


class Dropout(nn.Module):
    """Inverted dropout with one key per example (``replica.example_keys``), so the masks do not
    depend on how the batch is split over devices. Uses the ``dropout`` rng stream."""

    rate: float

    @nn.compact
    def __call__(self, x: Array, *, deterministic: bool) -> Array:
        if deterministic or self.rate <= 0.0:
            return x
        if self.rate >= 1.0:
            return jnp.zeros_like(x)
        keys = replica.example_keys(self.make_rng("dropout"), x.shape[0])
        keep = jax.vmap(lambda k: jax.random.bernoulli(k, 1.0 - self.rate, x.shape[1:]))(keys)
        return jnp.where(keep, x / (1.0 - self.rate), jnp.zeros_like(x)).astype(x.dtype)
