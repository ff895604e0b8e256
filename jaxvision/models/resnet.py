"""ResNet v1.5 (He et al. 2016): basic and bottleneck blocks, ImageNet and CIFAR stems."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import flax.linen as nn

from jaxvision.models import layers
from jaxvision.ops import pool as pool_ops

Array = jax.Array

# depth -> (block, blocks per stage) for the ImageNet family (stage widths 64..512).
IMAGENET_DEPTHS: dict[int, tuple[str, tuple[int, ...]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
# CIFAR family (He et al. sec. 4.2): 3 stages of n basic blocks, widths 16/32/64, depth 6n+2.
CIFAR_DEPTHS: tuple[int, ...] = (20, 32, 44, 56, 110)


class _Block(nn.Module):
    """Residual block; ``kind='basic'`` (3x3, 3x3) or ``'bottleneck'`` (1x1, 3x3 strided, 1x1 x4).

    Returns act(branch(x) + shortcut(x)) with ``features * expansion`` channels (NHWC).
    """

    features: int
    stride: int
    kind: str
    shortcut: str
    norm: str
    activation: str
    kernel_init: str
    zero_init_residual: bool
    dtype: Any
    param_dtype: Any
    dilation: int = 1        # of the 3x3 convolutions (DeepLab's atrous stages)

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        act = layers.activation(self.activation)
        make_norm = layers.norm(self.norm, train, self.dtype, param_dtype=self.param_dtype)
        bias = self.norm == "none"

        def conv(features: int, kernel: int, stride: int, name: str) -> nn.Conv:
            d = self.dilation if kernel > 1 else 1
            return layers.conv(
                features, kernel, name, self.dtype, self.param_dtype, self.kernel_init,
                stride=stride, padding=d * (kernel // 2), use_bias=bias, dilation=d,
            )

        if self.kind == "basic":
            out_ch = self.features
            h = act(make_norm("norm1")(conv(self.features, 3, self.stride, "conv1")(x)))
            h = make_norm("norm2", zero_init=self.zero_init_residual)(conv(out_ch, 3, 1, "conv2")(h))
        else:
            out_ch = 4 * self.features
            h = act(make_norm("norm1")(conv(self.features, 1, 1, "conv1")(x)))
            h = act(make_norm("norm2")(conv(self.features, 3, self.stride, "conv2")(h)))
            h = make_norm("norm3", zero_init=self.zero_init_residual)(conv(out_ch, 1, 1, "conv3")(h))

        residual = x
        if self.stride != 1 or x.shape[-1] != out_ch:
            if self.shortcut == "projection":
                residual = make_norm("downsample_norm")(conv(out_ch, 1, self.stride, "downsample_conv")(x))
            else:
                # Option A of the paper: parameter-free subsampling plus zero channels.
                if out_ch < x.shape[-1]:
                    raise ValueError(f"shortcut='pad' cannot shrink channels {x.shape[-1]} -> {out_ch}; use 'projection'")
                residual = x[:, :: self.stride, :: self.stride, :]
                extra = out_ch - x.shape[-1]
                residual = jnp.pad(residual, [(0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)])
        return act(h + residual)


class ResNet(nn.Module):
    """Stem -> stages of residual blocks (first block of each later stage strides by 2) -> global
    average pool -> [dropout] -> head. Returns (N, num_classes) float32.

    ``stem='imagenet'``: 7x7/2 conv + norm + act + 3x3/2 max pool; ``stem='cifar'``: 3x3/1 conv +
    norm + act, no pool. ``shortcut='projection'`` (1x1 conv + norm when the shape changes,
    option B) or ``'pad'`` (strided identity plus zero channels, option A, the CIFAR paper's).
    ``zero_init_residual`` starts the last norm scale of every block at 0, so each block starts
    as the identity. Convs carry a bias only with ``norm='none'``.

    Published counts at 224, 1000 classes: ResNet-18 11,689,512; -34 21,797,672; -50 25,557,032.
    ResNet-20 (cifar, pad, 10 classes): 269,722.

    ``output_stride`` 8 or 16 (DeepLab, Chen et al. 2017) replaces the strides of the stages that
    would go below it by dilated 3x3 convolutions: same parameters, denser features.

    Params: ``conv1``, ``norm1`` (stem), ``layer{s}_{b}/conv{i}``, ``layer{s}_{b}/norm{i}``,
    ``layer{s}_{b}/downsample_conv``, ``head``. Features: ``stem``, ``layer1..layerS``, ``pool``.
    """

    num_classes: int = 1000
    output_stride: int = 0   # 0: as published; 8 or 16: later stages dilate instead of striding
    stage_sizes: tuple[int, ...] = (2, 2, 2, 2)
    block: str = "basic"
    widths: tuple[int, ...] = (64, 128, 256, 512)
    width: float = 1.0
    stem: str = "imagenet"
    shortcut: str = "projection"
    zero_init_residual: bool = False
    norm: str = "batch"
    activation: str = "relu"
    dropout: float = 0.0
    kernel_init: str = "he"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False, return_features: bool = False):
        for field, value, valid in (
            ("block", self.block, ("basic", "bottleneck")),
            ("stem", self.stem, ("imagenet", "cifar")),
            ("shortcut", self.shortcut, ("projection", "pad")),
        ):
            if value not in valid:
                raise ValueError(f"ResNet {field} must be one of {valid}, got {value!r}")
        if len(self.stage_sizes) != len(self.widths):
            raise ValueError(
                f"ResNet stage_sizes {self.stage_sizes} and widths {self.widths} must have the same length"
            )
        layers.check_image_batch(x, "ResNet")
        dtype = layers.resolve_dtype(self.dtype)
        act = layers.activation(self.activation)
        make_norm = layers.norm(self.norm, train, dtype, param_dtype=self.param_dtype)
        bias = self.norm == "none"
        stem_width = layers.scaled(self.widths[0], self.width)

        h = x.astype(dtype)
        features: dict[str, Array] = {}
        if self.stem == "imagenet":
            h = layers.conv(stem_width, 7, "conv1", dtype, self.param_dtype, self.kernel_init, stride=2, padding=3, use_bias=bias)(h)
            h = act(make_norm("norm1")(h))
            h = pool_ops.max_pool(h, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        else:
            h = layers.conv(stem_width, 3, "conv1", dtype, self.param_dtype, self.kernel_init, padding=1, use_bias=bias)(h)
            h = act(make_norm("norm1")(h))
        h = features["stem"] = layers.tap(self, "stem", h)
        stride, dilation = (4 if self.stem == "imagenet" else 1), 1
        for s, (n_blocks, w) in enumerate(zip(self.stage_sizes, self.widths), start=1):
            first_stride, previous = (2 if s > 1 else 1), dilation
            if first_stride == 2 and self.output_stride and stride * 2 > self.output_stride:
                # DeepLab (and torchvision's replace_stride_with_dilation): keep the resolution
                # and dilate; the stage's first block keeps the previous rate.
                first_stride, dilation = 1, dilation * 2
            stride *= first_stride
            for b in range(n_blocks):
                h = _Block(
                    features=layers.scaled(w, self.width),
                    stride=first_stride if b == 0 else 1,
                    dilation=previous if b == 0 else dilation,
                    kind=self.block,
                    shortcut=self.shortcut,
                    norm=self.norm,
                    activation=self.activation,
                    kernel_init=self.kernel_init,
                    zero_init_residual=self.zero_init_residual,
                    dtype=dtype,
                    param_dtype=self.param_dtype,
                    name=f"layer{s}_{b}",
                )(h, train)
            h = features[f"layer{s}"] = layers.tap(self, f"layer{s}", h)
        h = jnp.mean(h, axis=(1, 2))
        h = features["pool"] = layers.tap(self, "pool", h)
        if self.dropout > 0:
            h = layers.Dropout(self.dropout)(h, deterministic=not train)
        out = layers.logits(layers.dense(self.num_classes, "head", dtype, self.param_dtype, self.kernel_init)(h))
        if return_features:
            return out, features
        return out


def resnet_config(depth: int) -> dict[str, Any]:
    """Returns the ResNet fields of a published depth: 18/34/50/101/152 (ImageNet layout) or
    20/32/44/56/110 (CIFAR layout: cifar stem, widths 16/32/64, 'pad' shortcuts)."""
    if depth in IMAGENET_DEPTHS:
        block, sizes = IMAGENET_DEPTHS[depth]
        return {"block": block, "stage_sizes": sizes}
    if depth in CIFAR_DEPTHS:
        n = (depth - 2) // 6
        return {
            "block": "basic", "stage_sizes": (n, n, n), "widths": (16, 32, 64),
            "stem": "cifar", "shortcut": "pad", "num_classes": 10,
        }
    raise ValueError(f"no ResNet layout for depth {depth}; choose from {sorted(IMAGENET_DEPTHS) + list(CIFAR_DEPTHS)}")
