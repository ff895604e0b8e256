"""AlexNet (Krizhevsky et al. 2012), ungrouped single-tower layout, scalable and ablatable."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import flax.linen as nn

from jaxvision.models import layers
from jaxvision.ops import pool as pool_ops

Array = jax.Array

# name, channels, kernel, padding, LRN after it (paper: conv1, conv2), 3x3/2 max pool after it.
_CONVS = (
    ("conv1", 96, None, None, True, True),  # kernel/stride/padding come from the stem options
    ("conv2", 256, 5, 2, True, True),
    ("conv3", 384, 3, 1, False, False),
    ("conv4", 384, 3, 1, False, False),
    ("conv5", 256, 3, 1, False, True),
)
_FCS = (("fc6", 4096), ("fc7", 4096))
# The published two-GPU model splits these convs into two groups (``groups=2``).
_GROUPED = ("conv2", "conv4", "conv5")
REMOVABLE: tuple[str, ...] = tuple(c[0] for c in _CONVS) + tuple(f[0] for f in _FCS)


class AlexNet(nn.Module):
    """conv1 96@11x11/4 -> [LRN] -> pool -> conv2 256@5x5 -> [LRN] -> pool -> conv3 384@3x3 ->
    conv4 384@3x3 -> conv5 256@3x3 -> pool -> adaptive avg pool to ``grid`` x ``grid`` ->
    dropout -> fc6 4096 -> dropout -> fc7 4096 -> head. Returns (N, num_classes) float32.

    At 224x224 with 1000 classes (defaults: no LRN, biases, ``groups=1``) it has 62,378,344
    params; the pooled conv5 map is already 6x6 there, so the adaptive pool is a no-op. Pools are
    3x3 stride 2 'VALID' (overlapping pooling) and need a map of at least 3x3.

    Small inputs: shrink the stem (``stem_kernel``, ``stem_stride``; ``stem_padding`` defaults to
    2 for the 11x11 stem, as published, else ``(k-1)//2``) and, if wished, ``grid``; e.g. at
    32x32 use ``stem_kernel=3, stem_stride=1``, at 64x64 ``stem_kernel=5, stem_stride=2``.
    ``width`` scales all conv channels and fc sizes.

    ``channels``: conv1..conv5 widths before ``width`` scaling (published (96, 256, 384, 384, 256);
    torchvision's single-tower model, ``alexnet_torchvision``, has (64, 192, 384, 256, 256)).

    ``remove`` drops any of conv1..conv5, fc6, fc7; the next layer simply reads what the
    previous surviving layer produced (e.g. without conv3, conv4 reads conv2's 256 maps; without
    fc6 and fc7 the head reads the flattened pooled conv5 grid). A removed conv's LRN goes with
    it but its max pool stays, so the downsampling schedule and the fc input size are unchanged.
    Dropout belongs to fc6/fc7 and goes with them.

    Params: ``conv1..conv5, norm1..norm5 (if norm != 'none'), fc6, fc7, head``. Features:
    ``conv1..conv5`` (after activation, before pooling), ``pool5`` (flattened grid), ``fc6``,
    ``fc7``.
    """

    num_classes: int = 1000
    width: float = 1.0
    stem_kernel: int = 11
    stem_stride: int = 4
    stem_padding: int | None = None
    grid: int = 6
    channels: tuple[int, ...] = tuple(c[1] for c in _CONVS)
    lrn: bool = False
    groups: int = 1
    remove: tuple[str, ...] = ()
    activation: str = "relu"
    norm: str = "none"
    dropout: float = 0.5
    kernel_init: str = "he"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False, return_features: bool = False):
        unknown = sorted(set(self.remove) - set(REMOVABLE))
        if unknown:
            raise ValueError(f"AlexNet remove={tuple(self.remove)}: unknown layer(s) {unknown}; choose from {REMOVABLE}")
        if len(self.channels) != len(_CONVS) or min(self.channels) < 1:
            raise ValueError(f"AlexNet channels={tuple(self.channels)} must give {len(_CONVS)} "
                             "positive widths, conv1..conv5")
        if self.grid < 1:
            raise ValueError(f"AlexNet grid must be >= 1, got {self.grid}")
        layers.check_image_batch(x, "AlexNet")
        dtype = layers.resolve_dtype(self.dtype)
        act = layers.activation(self.activation)
        make_norm = layers.norm(self.norm, train, dtype, param_dtype=self.param_dtype)
        stem_padding = self.stem_padding
        if stem_padding is None:
            stem_padding = 2 if self.stem_kernel == 11 else (self.stem_kernel - 1) // 2

        h = x.astype(dtype)
        features: dict[str, Array] = {}
        for i, (name, _, kernel, padding, lrn_after, pool_after) in enumerate(_CONVS, start=1):
            channels = self.channels[i - 1]
            if name not in self.remove:
                stride = 1
                if name == "conv1":
                    kernel, stride, padding = self.stem_kernel, self.stem_stride, stem_padding
                out_ch = layers.scaled(channels, self.width)
                groups = self.groups if name in _GROUPED else 1
                if h.shape[-1] % groups or out_ch % groups:
                    raise ValueError(
                        f"AlexNet {name} with groups={groups} needs input ({h.shape[-1]}) and output "
                        f"({out_ch}) channels divisible by {groups}; change width or use groups=1"
                    )
                if h.shape[1] + 2 * padding < kernel or h.shape[2] + 2 * padding < kernel:
                    raise ValueError(self._too_small(x, f"{name} ({kernel}x{kernel} kernel)", h))
                h = layers.conv(
                    out_ch, kernel, name, dtype, self.param_dtype, self.kernel_init,
                    stride=stride, padding=padding, use_bias=self.norm == "none", groups=groups,
                )(h)
                h = act(make_norm(f"norm{i}")(h))
                if lrn_after and self.lrn:
                    h = layers.local_response_norm(h)
                h = features[name] = layers.tap(self, name, h)
            if pool_after:
                if h.shape[1] < 3 or h.shape[2] < 3:
                    raise ValueError(self._too_small(x, f"the 3x3/2 max pool after {name}", h))
                h = pool_ops.max_pool(h, (3, 3), strides=(2, 2), padding="VALID")
        if h.shape[1:3] != (self.grid, self.grid):
            h = layers.adaptive_avg_pool(h, (self.grid, self.grid))
        h = h.reshape(h.shape[0], -1)
        h = features["pool5"] = layers.tap(self, "pool5", h)
        for name, size in _FCS:
            if name in self.remove:
                continue
            if self.dropout > 0:
                h = layers.Dropout(self.dropout)(h, deterministic=not train)
            h = act(layers.dense(layers.scaled(size, self.width), name, dtype, self.param_dtype, self.kernel_init)(h))
            h = features[name] = layers.tap(self, name, h)
        out = layers.logits(layers.dense(self.num_classes, "head", dtype, self.param_dtype, self.kernel_init)(h))
        if return_features:
            return out, features
        return out

    def _too_small(self, x: Array, where: str, h: Array) -> str:
        return (
            f"AlexNet input {x.shape[1]}x{x.shape[2]} is too small: {where} gets a "
            f"{h.shape[1]}x{h.shape[2]} map. Use a smaller stem (e.g. stem_kernel=3, stem_stride=1 "
            "for 32x32, stem_kernel=5, stem_stride=2 for 64x64) or a larger input"
        )
