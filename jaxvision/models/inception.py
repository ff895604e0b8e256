"""GoogLeNet / Inception-v1 (Szegedy et al. 2015) and a small 32x32 configuration."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import flax.linen as nn

from jaxvision.models import layers
from jaxvision.ops import pool as pool_ops

Array = jax.Array

# Paper's Table 1: name -> (#1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj); "pool" marks
# a 3x3/2 max pool between groups.
GOOGLENET_BLOCKS: tuple[tuple[str, tuple[int, int, int, int, int, int]] | str, ...] = (
    ("inception3a", (64, 96, 128, 16, 32, 32)),
    ("inception3b", (128, 128, 192, 32, 96, 64)),
    "pool",
    ("inception4a", (192, 96, 208, 16, 48, 64)),
    ("inception4b", (160, 112, 224, 24, 64, 64)),
    ("inception4c", (128, 128, 256, 24, 64, 64)),
    ("inception4d", (112, 144, 288, 32, 64, 64)),
    ("inception4e", (256, 160, 320, 32, 128, 128)),
    "pool",
    ("inception5a", (256, 160, 320, 32, 128, 128)),
    ("inception5b", (384, 192, 384, 48, 128, 128)),
)


class _ConvNormAct(nn.Module):
    """conv -> norm -> act; the conv has a bias only when ``norm='none'``. Returns NHWC."""

    features: int
    kernel: int
    stride: int
    norm: str
    activation: str
    kernel_init: str
    dtype: Any
    param_dtype: Any

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        h = layers.conv(
            self.features, self.kernel, "conv", self.dtype, self.param_dtype, self.kernel_init,
            stride=self.stride, padding=self.kernel // 2, use_bias=self.norm == "none",
        )(x)
        h = layers.norm(self.norm, train, self.dtype, param_dtype=self.param_dtype)("norm")(h)
        return layers.activation(self.activation)(h)


class InceptionBlock(nn.Module):
    """Four parallel branches concatenated on channels: 1x1 | 1x1 -> 3x3 | 1x1 -> 5x5 |
    3x3/1 max pool -> 1x1. Returns (N, H, W, c1 + c3 + c5 + pool_proj).

    Submodules: ``branch1x1, branch3x3_reduce, branch3x3, branch5x5_reduce, branch5x5,
    pool_proj``, each with ``conv`` and ``norm``.
    """

    c1: int
    c3_reduce: int
    c3: int
    c5_reduce: int
    c5: int
    pool_proj: int
    norm: str = "batch"
    activation: str = "relu"
    kernel_init: str = "he"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        def cna(features: int, kernel: int, name: str) -> _ConvNormAct:
            return _ConvNormAct(
                features, kernel, 1, self.norm, self.activation, self.kernel_init,
                self.dtype, self.param_dtype, name=name,
            )

        b1 = cna(self.c1, 1, "branch1x1")(x, train)
        b3 = cna(self.c3, 3, "branch3x3")(cna(self.c3_reduce, 1, "branch3x3_reduce")(x, train), train)
        b5 = cna(self.c5, 5, "branch5x5")(cna(self.c5_reduce, 1, "branch5x5_reduce")(x, train), train)
        pooled = pool_ops.max_pool(x, (3, 3), strides=(1, 1), padding="SAME")
        b4 = cna(self.pool_proj, 1, "pool_proj")(pooled, train)
        return jnp.concatenate([b1, b3, b5, b4], axis=-1)


class GoogLeNet(nn.Module):
    """GoogLeNet without the auxiliary classifiers. Returns (N, num_classes) float32.

    ``stem='imagenet'``: conv1 7x7/2 64 -> 3x3/2 pool -> [LRN] -> conv2_reduce 1x1 64 -> conv2
    3x3 192 -> [LRN] -> 3x3/2 pool (224 -> 28). ``stem='cifar'``: one 3x3/1 conv to 192 channels,
    no pooling (for 32x32). Then inception 3a-3b, pool, 4a-4e, pool, 5a-5b, global average pool,
    dropout (0.4 as published), ``head``. Pools are 3x3/2 'SAME' (ceil mode). ``width`` scales
    every channel count.

    Params at 224 with 1000 classes: 6,998,552 with ``norm='none'`` (conv biases, the paper's
    model); 7,005,832 with ``norm='batch'`` (no conv biases, a scale+shift per channel). True
    5x5 kernels are used in the 5x5 branch.

    Params: ``conv1``, ``conv2_reduce``, ``conv2`` (each ``/conv``, ``/norm``),
    ``inception3a/branch1x1/conv`` ..., ``head``. Features: ``stem``, ``inception3a`` ...
    ``inception5b``, ``pool``.
    """

    num_classes: int = 1000
    stem: str = "imagenet"
    width: float = 1.0
    lrn: bool = False
    norm: str = "batch"
    activation: str = "relu"
    dropout: float = 0.4
    kernel_init: str = "he"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False, return_features: bool = False):
        if self.stem not in ("imagenet", "cifar"):
            raise ValueError(f"GoogLeNet stem must be 'imagenet' or 'cifar', got {self.stem!r}")
        layers.check_image_batch(x, "GoogLeNet")
        dtype = layers.resolve_dtype(self.dtype)
        w = lambda c: layers.scaled(c, self.width)  # noqa: E731

        def cna(features: int, kernel: int, stride: int, name: str) -> _ConvNormAct:
            return _ConvNormAct(
                w(features), kernel, stride, self.norm, self.activation, self.kernel_init,
                dtype, self.param_dtype, name=name,
            )

        def pool(h: Array) -> Array:
            return pool_ops.max_pool(h, (3, 3), strides=(2, 2), padding="SAME")

        h = x.astype(dtype)
        if self.stem == "imagenet":
            h = pool(cna(64, 7, 2, "conv1")(h, train))
            if self.lrn:
                h = layers.local_response_norm(h)
            h = cna(192, 3, 1, "conv2")(cna(64, 1, 1, "conv2_reduce")(h, train), train)
            if self.lrn:
                h = layers.local_response_norm(h)
            h = pool(h)
        else:
            h = cna(192, 3, 1, "conv1")(h, train)
        features: dict[str, Array] = {"stem": h}
        for entry in GOOGLENET_BLOCKS:
            if entry == "pool":
                h = pool(h)
                continue
            name, chans = entry
            h = InceptionBlock(
                *(w(c) for c in chans), norm=self.norm, activation=self.activation,
                kernel_init=self.kernel_init, dtype=dtype, param_dtype=self.param_dtype, name=name,
            )(h, train)
            h = features[name] = layers.tap(self, name, h)
        h = jnp.mean(h, axis=(1, 2))
        h = features["pool"] = layers.tap(self, "pool", h)
        if self.dropout > 0:
            h = layers.Dropout(self.dropout)(h, deterministic=not train)
        out = layers.logits(layers.dense(self.num_classes, "head", dtype, self.param_dtype, self.kernel_init)(h))
        if return_features:
            return out, features
        return out
