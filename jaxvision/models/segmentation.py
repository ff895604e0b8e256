"""Semantic segmentation models: FCN-32s/16s/8s, U-Net and DeepLab-v3 (dilated ResNet + ASPP).

Each returns per-pixel class logits (N, H, W, C) float32 at the input's resolution, whatever
the input size (odd sizes included: upsampled maps are cropped to the size of the map they
join, FCN's rule, or edge-padded where pooling rounded a side down). FCN and DeepLab hold a zoo classifier as ``backbone`` (parameters under
``backbone/``; ``transfer.map=(('^', 'backbone/'),)`` starts them from a classification run)
and read the feature maps ``taps`` (finest first).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxvision.models import layers
from jaxvision.ops import pool as pool_ops
from jaxvision.models.detection import backbone_features

Array = jax.Array


def _crop_to(x: Array, hw: Sequence[int]) -> Array:
    """The top-left ``hw`` window of ``x`` (N, H', W', C), H' >= H and W' >= W."""
    if x.shape[1] < hw[0] or x.shape[2] < hw[1]:
        raise ValueError(f"cannot crop {x.shape[1:3]} to {tuple(hw)}: the upsampled map is smaller.")
    return x[:, :hw[0], :hw[1]]


def _fit_to(x: Array, hw: Sequence[int]) -> Array:
    """``x`` cropped, or edge-padded at the bottom / right, to spatial size ``hw``: a map
    upsampled by its stride covers the input's ``stride * floor(H / stride)`` first rows, and
    the few rows a 'VALID' pooling dropped take the nearest computed value."""
    pad = [(0, 0), (0, max(0, hw[0] - x.shape[1])), (0, max(0, hw[1] - x.shape[2])), (0, 0)]
    if pad[1][1] or pad[2][1]:
        x = jnp.pad(x, pad, mode="edge")
    return x[:, :hw[0], :hw[1]]


def _upsample(x: Array, factor: int, name: str, *, trainable: bool, dtype: Any) -> Array:
    """FCN's upsampling by an integer ``factor``: a transposed convolution started (or fixed)
    as bilinear interpolation; returns (N, H * factor, W * factor, C)."""
    if factor == 1:
        return x
    return layers.ConvTranspose(x.shape[-1], 2 * factor - factor % 2, factor, factor // 2,
                                init="bilinear", trainable=trainable, dtype=dtype, name=name)(x)


def _factor(big: int, small: int) -> int:
    """The stride between a map of side ``small`` and one of side ``big``: the power of two
    nearest their ratio (pooling rounds odd sides up or down)."""
    f = 2 ** int(round(math.log2(big / small)))
    if not 0.5 * f < big / small < 2 * f:
        raise ValueError(f"feature maps of sides {big} and {small} are not a power of two apart.")
    return f


class FCN(nn.Module):
    """Fully convolutional network (Long et al., 2015). A 1x1 convolution scores each of the
    last ``1 + skips`` taps (FCN-32s: ``skips=0``; 16s: 1; 8s: 2; skip scores start at 0, as in
    the paper); from the coarsest, each score map is upsampled by a learned transposed
    convolution (bilinear at the start) to the next finer tap, cropped and added; the sum is
    upsampled to the input by a fixed bilinear transposed convolution and cropped (or, where a
    'VALID' pooling dropped the last rows of an odd side, edge-padded: ``_fit_to``)."""

    backbone: nn.Module
    num_classes: int
    taps: tuple[str, ...] = ()
    skips: int = 2
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        if not 0 <= self.skips < max(len(self.taps), 1):
            raise ValueError(f"FCN skips={self.skips} needs {self.skips + 1} taps; got {self.taps}.")
        feats = backbone_features(self.backbone, x, train, self.taps)[-(self.skips + 1):]
        scores = [layers.Conv(self.num_classes, (1, 1), dtype=self.dtype, name=f"score{i}",
                          kernel_init=nn.initializers.zeros if i < len(feats) - 1
                          else layers.initializer("he"))(f) for i, f in enumerate(feats)]
        h = scores[-1]
        for i in range(len(scores) - 2, -1, -1):
            f = _factor(scores[i].shape[1], h.shape[1])
            h = _fit_to(_upsample(h, f, f"up{i}", trainable=True, dtype=self.dtype), scores[i].shape[1:3])
            h = h + scores[i]
        f = _factor(x.shape[1], h.shape[1])
        h = _fit_to(_upsample(h, f, "up_final", trainable=False, dtype=self.dtype), x.shape[1:3])
        return layers.logits(h)


class UNet(nn.Module):
    """U-Net (Ronneberger et al., 2015): a contracting path of ``len(widths)`` levels (two 3x3
    convolutions, norm, ReLU; 2x2 max pooling between levels) and an expanding path (2x2
    stride-2 transposed convolution halving the channels, concatenated with the same level's
    features, two 3x3 convolutions), then a 1x1 convolution to the classes. 'SAME' padding
    (the paper's valid convolutions would shrink the output); on odd sides the upsampled map
    is cropped to the skip's size."""

    num_classes: int
    widths: tuple[int, ...] = (16, 32, 64, 128)
    norm: str = "batch"
    kernel_init: str = "he"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        layers.check_image_batch(x, "UNet")
        dtype = layers.resolve_dtype(self.dtype)
        make_norm = layers.norm(self.norm, train, dtype)
        bias = self.norm == "none"

        def double(h: Array, w: int, name: str) -> Array:
            for j in (1, 2):
                h = layers.conv(w, 3, f"{name}_conv{j}", dtype, jnp.float32, self.kernel_init, use_bias=bias)(h)
                h = nn.relu(make_norm(f"{name}_norm{j}")(h))
            return h

        h, skips = x.astype(dtype), []
        for i, w in enumerate(self.widths):
            if i:
                h = pool_ops.max_pool(h, (2, 2), strides=(2, 2), padding="SAME")
            h = double(h, w, f"down{i}")
            skips.append(h)
        for i in range(len(self.widths) - 2, -1, -1):
            w = self.widths[i]
            up = layers.ConvTranspose(w, 2, 2, 0, init=self.kernel_init, use_bias=True, dtype=dtype,
                                      name=f"up{i}")(h)
            h = double(jnp.concatenate([_crop_to(up, skips[i].shape[1:3]), skips[i]], -1), w, f"up{i}")
        return layers.logits(layers.Conv(self.num_classes, (1, 1), dtype=dtype, name="classifier")(h))


class DeepLabV3(nn.Module):
    """DeepLab-v3 (Chen et al., 2017) on a backbone read at its last tap (a ResNet built with
    ``output_stride`` 8 or 16 keeps that map dense): atrous spatial pyramid pooling (a 1x1
    branch, 3x3 branches at ``rates``, and image-level pooling, each ``width`` channels with
    norm and ReLU), concatenated and projected (1x1), a 3x3 convolution, the 1x1 classifier,
    and bilinear upsampling to the input size."""

    backbone: nn.Module
    num_classes: int
    taps: tuple[str, ...] = ()
    rates: tuple[int, ...] = (6, 12, 18)
    width: int = 64
    norm: str = "batch"
    kernel_init: str = "he"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        f = backbone_features(self.backbone, x, train, self.taps)[-1]
        dtype = layers.resolve_dtype(self.dtype)
        make_norm = layers.norm(self.norm, train, dtype)
        bias = self.norm == "none"

        def branch(h: Array, kernel: int, rate: int, name: str) -> Array:
            h = layers.conv(self.width, kernel, f"{name}_conv", dtype, jnp.float32, self.kernel_init,
                            padding=rate * (kernel // 2), use_bias=bias, dilation=rate)(h)
            return nn.relu(make_norm(f"{name}_norm")(h))

        parts = [branch(f, 1, 1, "aspp0")]
        parts += [branch(f, 3, r, f"aspp{i + 1}") for i, r in enumerate(self.rates)]
        pooled = branch(jnp.mean(f, axis=(1, 2), keepdims=True), 1, 1, "aspp_pool")
        parts.append(jnp.broadcast_to(pooled, f.shape[:3] + (self.width,)))
        h = branch(jnp.concatenate(parts, -1), 1, 1, "project")
        h = branch(h, 3, 1, "head")
        h = layers.Conv(self.num_classes, (1, 1), dtype=dtype, name="classifier")(h)
        h = jax.image.resize(h, (h.shape[0],) + tuple(x.shape[1:3]) + (h.shape[-1],), "bilinear")
        return layers.logits(h)
