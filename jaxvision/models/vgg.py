"""VGG (Simonyan & Zisserman 2015), configurations A (VGG-11), B (13), D (16), E (19)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import flax.linen as nn

from jaxvision.models import layers
from jaxvision.ops import pool as pool_ops

Array = jax.Array

# Conv widths per stage; every stage ends with a 2x2/2 max pool.
VGG_STAGES: dict[int, tuple[tuple[int, ...], ...]] = {
    11: ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    13: ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    16: ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    19: ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}


class VGG(nn.Module):
    """Stages of 3x3 convs (+ optional norm) -> ReLU, each ending in a 2x2 max pool, then an
    adaptive average pool to ``grid`` x ``grid`` (7 at 224, a no-op there), fc6 -> dropout ->
    fc7 -> dropout -> head. Returns (N, num_classes) float32.

    At 224 with 1000 classes: VGG-11 132,863,336 params, VGG-16 138,357,544 (``norm='none'``).
    Convs keep their bias even with batch norm (as the published VGG-BN). ``width`` scales the
    conv channels, ``fc_width`` the two hidden fc layers (4096 published; small inputs want less).

    Params: ``conv{stage}_{i}`` (Caffe names, e.g. conv5_3), ``norm{stage}_{i}``, ``fc6``, ``fc7``,
    ``head``. Features: ``conv{s}_{i}`` (after activation), ``pool{s}``, ``fc6``, ``fc7``.
    """

    num_classes: int = 1000
    depth: int = 16
    width: float = 1.0
    fc_width: int = 4096
    grid: int = 7
    norm: str = "none"
    activation: str = "relu"
    dropout: float = 0.5
    kernel_init: str = "he"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False, return_features: bool = False):
        if self.depth not in VGG_STAGES:
            raise ValueError(f"VGG depth must be one of {sorted(VGG_STAGES)}, got {self.depth}")
        stages = VGG_STAGES[self.depth]
        layers.check_image_batch(x, f"VGG-{self.depth}", min_size=2 ** len(stages))
        dtype = layers.resolve_dtype(self.dtype)
        act = layers.activation(self.activation)
        make_norm = layers.norm(self.norm, train, dtype, param_dtype=self.param_dtype)
        h = x.astype(dtype)
        features: dict[str, Array] = {}
        for s, widths in enumerate(stages, start=1):
            for i, w in enumerate(widths, start=1):
                name = f"conv{s}_{i}"
                h = layers.conv(layers.scaled(w, self.width), 3, name, dtype, self.param_dtype, self.kernel_init)(h)
                h = act(make_norm(f"norm{s}_{i}")(h))
                h = features[name] = layers.tap(self, name, h)
            h = pool_ops.max_pool(h, (2, 2), strides=(2, 2))
            h = features[f"pool{s}"] = layers.tap(self, f"pool{s}", h)
        if h.shape[1:3] != (self.grid, self.grid):
            h = layers.adaptive_avg_pool(h, (self.grid, self.grid))
        h = h.reshape(h.shape[0], -1)
        for name in ("fc6", "fc7"):
            h = act(layers.dense(self.fc_width, name, dtype, self.param_dtype, self.kernel_init)(h))
            h = features[name] = layers.tap(self, name, h)
            if self.dropout > 0:
                h = layers.Dropout(self.dropout)(h, deterministic=not train)
        out = layers.logits(layers.dense(self.num_classes, "head", dtype, self.param_dtype, self.kernel_init)(h))
        if return_features:
            return out, features
        return out
