"""DenseNet / DenseNet-BC (Huang et al. 2017)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import flax.linen as nn

from jaxvision.models import layers
from jaxvision.ops import pool as pool_ops

Array = jax.Array


class _DenseLayer(nn.Module):
    """norm -> act -> 1x1 conv (bottleneck, ``bn_size * growth`` maps; skipped if bn_size=0) ->
    norm -> act -> 3x3 conv (``growth`` maps) -> [dropout]. Returns the ``growth`` new maps."""

    growth: int
    bn_size: int
    norm: str
    activation: str
    dropout: float
    kernel_init: str
    dtype: Any
    param_dtype: Any

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        act = layers.activation(self.activation)
        make_norm = layers.norm(self.norm, train, self.dtype, param_dtype=self.param_dtype)
        bias = self.norm == "none"
        h = act(make_norm("norm1")(x))
        if self.bn_size > 0:
            h = layers.conv(self.bn_size * self.growth, 1, "conv1", self.dtype, self.param_dtype, self.kernel_init, use_bias=bias)(h)
            h = act(make_norm("norm2")(h))
        h = layers.conv(self.growth, 3, "conv2", self.dtype, self.param_dtype, self.kernel_init, padding=1, use_bias=bias)(h)
        if self.dropout > 0:
            h = layers.Dropout(self.dropout)(h, deterministic=not train)
        return h


class DenseNet(nn.Module):
    """Stem -> dense blocks (each layer's output concatenated onto its input) separated by
    transitions (norm -> act -> 1x1 conv to ``floor(compression * C)`` -> 2x2 avg pool) ->
    final norm -> act -> global average pool -> ``head``. Returns (N, num_classes) float32.

    ``stem='imagenet'``: 7x7/2 conv (``stem_width``, default 2*growth) + norm + act + 3x3/2 max
    pool; ``stem='cifar'``: one 3x3 conv, no pooling. ``bn_size=4`` gives the BC bottleneck
    layers (0 disables them); ``compression=0.5`` is BC's transition compression.

    DenseNet-121 at 224, 1000 classes: 7,978,856 params. Params: ``conv0``, ``norm0``,
    ``block{b}_layer{l}/{norm1,conv1,norm2,conv2}``, ``transition{b}_norm``, ``transition{b}_conv``,
    ``norm_final``, ``head``. Features: ``stem``, ``block1..blockB`` (the block's full
    concatenated output), ``pool``.
    """

    num_classes: int = 1000
    growth: int = 32
    blocks: tuple[int, ...] = (6, 12, 24, 16)
    bn_size: int = 4
    compression: float = 0.5
    stem: str = "imagenet"
    stem_width: int | None = None
    norm: str = "batch"
    activation: str = "relu"
    dropout: float = 0.0
    kernel_init: str = "he"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False, return_features: bool = False):
        if self.stem not in ("imagenet", "cifar"):
            raise ValueError(f"DenseNet stem must be 'imagenet' or 'cifar', got {self.stem!r}")
        if not 0 < self.compression <= 1:
            raise ValueError(f"DenseNet compression must be in (0, 1], got {self.compression}")
        layers.check_image_batch(x, "DenseNet")
        dtype = layers.resolve_dtype(self.dtype)
        act = layers.activation(self.activation)
        make_norm = layers.norm(self.norm, train, dtype, param_dtype=self.param_dtype)
        bias = self.norm == "none"
        stem_width = self.stem_width or 2 * self.growth

        h = x.astype(dtype)
        if self.stem == "imagenet":
            h = layers.conv(stem_width, 7, "conv0", dtype, self.param_dtype, self.kernel_init, stride=2, padding=3, use_bias=bias)(h)
            h = act(make_norm("norm0")(h))
            h = pool_ops.max_pool(h, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        else:
            # Pre-activation layers follow, so the CIFAR stem is a bare conv (as in the paper).
            h = layers.conv(stem_width, 3, "conv0", dtype, self.param_dtype, self.kernel_init, padding=1, use_bias=bias)(h)
        features: dict[str, Array] = {"stem": h}
        for b, n_layers in enumerate(self.blocks, start=1):
            for i in range(1, n_layers + 1):
                new = _DenseLayer(
                    self.growth, self.bn_size, self.norm, self.activation, self.dropout,
                    self.kernel_init, dtype, self.param_dtype, name=f"block{b}_layer{i}",
                )(h, train)
                h = jnp.concatenate([h, new], axis=-1)
            h = features[f"block{b}"] = layers.tap(self, f"block{b}", h)
            if b < len(self.blocks):
                out_ch = int(h.shape[-1] * self.compression)
                h = act(make_norm(f"transition{b}_norm")(h))
                h = layers.conv(out_ch, 1, f"transition{b}_conv", dtype, self.param_dtype, self.kernel_init, use_bias=bias)(h)
                h = pool_ops.avg_pool(h, (2, 2), strides=(2, 2))
        h = act(make_norm("norm_final")(h))
        h = jnp.mean(h, axis=(1, 2))
        h = features["pool"] = layers.tap(self, "pool", h)
        out = layers.logits(layers.dense(self.num_classes, "head", dtype, self.param_dtype, self.kernel_init)(h))
        if return_features:
            return out, features
        return out
