"""SmallCNN: the default classifier for the procedural scenes (fast on CPU at 64x64)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import flax.linen as nn

from jaxvision.models import layers
from jaxvision.ops import pool as pool_ops

Array = jax.Array


class SmallCNN(nn.Module):
    """Stages of ``blocks`` x (3x3 conv -> norm -> act), each stage but the last followed by a 2x2
    pool; then global average pool (or, with ``flatten``, the last map flattened: the head then
    sees where things are, which retrieval of digits needs), dropout and the ``head``. Returns
    (N, num_classes) float32.

    Params are named ``stage{s}_conv{b}`` / ``stage{s}_norm{b}`` / ``head``; features
    ``stage1..stageS`` (each stage's output before pooling) and ``pool`` (the pooled vector).
    Convs carry no bias when followed by a batch/layer norm (the norm's shift replaces it).
    """

    num_classes: int = 10
    widths: tuple[int, ...] = (32, 64, 128)
    blocks: int = 1
    width: float = 1.0
    pool: str = "max"
    flatten: bool = False
    activation: str = "relu"
    norm: str = "batch"
    dropout: float = 0.0
    kernel_init: str = "he"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False, return_features: bool = False):
        if self.pool not in ("max", "avg"):
            raise ValueError(f"SmallCNN pool must be 'max' or 'avg', got {self.pool!r}")
        if not self.widths or self.blocks < 1:
            raise ValueError(f"SmallCNN needs >= 1 stage and blocks >= 1, got widths={self.widths}, blocks={self.blocks}")
        layers.check_image_batch(x, "SmallCNN", min_size=2 ** (len(self.widths) - 1))
        dtype = layers.resolve_dtype(self.dtype)
        act = layers.activation(self.activation)
        make_norm = layers.norm(self.norm, train, dtype, param_dtype=self.param_dtype)
        pool = pool_ops.max_pool if self.pool == "max" else pool_ops.avg_pool
        h = x.astype(dtype)
        features: dict[str, Array] = {}
        for s, w in enumerate(self.widths, start=1):
            for b in range(1, self.blocks + 1):
                h = layers.conv(
                    layers.scaled(w, self.width), 3, f"stage{s}_conv{b}", dtype, self.param_dtype,
                    self.kernel_init, use_bias=self.norm == "none",
                )(h)
                h = act(make_norm(f"stage{s}_norm{b}")(h))
            h = features[f"stage{s}"] = layers.tap(self, f"stage{s}", h)
            if s < len(self.widths):
                h = pool(h, (2, 2), strides=(2, 2))
        h = h.reshape(h.shape[0], -1) if self.flatten else jnp.mean(h, axis=(1, 2))
        h = features["pool"] = layers.tap(self, "pool", h)
        if self.dropout > 0:
            h = layers.Dropout(self.dropout)(h, deterministic=not train)
        out = layers.logits(layers.dense(self.num_classes, "head", dtype, self.param_dtype, self.kernel_init)(h))
        if return_features:
            return out, features
        return out
