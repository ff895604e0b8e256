"""LeNet-5 (LeCun et al. 1998) for 32x32 inputs."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import flax.linen as nn

from jaxvision.models import layers
from jaxvision.ops import pool as pool_ops

Array = jax.Array


class LeNet5(nn.Module):
    """C1 6@5x5 -> S2 2x2 -> C3 16@5x5 -> S4 2x2 -> C5 120@5x5 -> F6 84 -> head.

    Returns (N, num_classes) float32 logits. With 10 classes and a 32x32 input it has 61,706
    params (C1 156, C3 2,416, C5 48,120, F6 10,164, head 850). Simplifications of the paper,
    which are the usual modern reading: C3 connects to all six S2 maps (no sparse table), the
    subsampling layers are plain parameter-free pools, the output is a dense layer (not RBF) and
    ``tanh`` is the unscaled one. Convs are 'VALID'. ``pad_to_32`` zero-pads smaller inputs
    (MNIST's 28x28) symmetrically to 32x32; inputs larger than 32 give C5 a spatial extent > 1,
    which is flattened (so F6's input size follows the input size).

    Params: ``c1, c3, c5, f6, head``. Features: ``c1, s2, c3, s4, c5, f6`` (after activation).
    """

    num_classes: int = 10
    activation: str = "tanh"
    pool: str = "avg"
    pad_to_32: bool = True
    kernel_init: str = "lecun"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False, return_features: bool = False):
        del train  # no dropout or batch norm in LeNet-5
        if self.pool not in ("max", "avg"):
            raise ValueError(f"LeNet5 pool must be 'avg' (classic) or 'max', got {self.pool!r}")
        layers.check_image_batch(x, "LeNet5")
        dtype = layers.resolve_dtype(self.dtype)
        h = x.astype(dtype)
        if self.pad_to_32:
            ph, pw = max(0, 32 - h.shape[1]), max(0, 32 - h.shape[2])
            h = jnp.pad(h, [(0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)])
        if h.shape[1] < 32 or h.shape[2] < 32:
            raise ValueError(
                f"LeNet5 needs 32x32 inputs, got {x.shape[1]}x{x.shape[2]}; "
                "set pad_to_32=True to zero-pad smaller images (e.g. MNIST 28x28)"
            )
        act = layers.activation(self.activation)
        pool = pool_ops.max_pool if self.pool == "max" else pool_ops.avg_pool

        def conv(features: int, name: str) -> nn.Conv:
            return layers.conv(features, 5, name, dtype, self.param_dtype, self.kernel_init, padding="VALID")

        f: dict[str, Array] = {}
        f["c1"] = h = layers.tap(self, "c1", act(conv(6, "c1")(h)))
        f["s2"] = h = layers.tap(self, "s2", pool(h, (2, 2), strides=(2, 2)))
        f["c3"] = h = layers.tap(self, "c3", act(conv(16, "c3")(h)))
        f["s4"] = h = layers.tap(self, "s4", pool(h, (2, 2), strides=(2, 2)))
        f["c5"] = h = layers.tap(self, "c5", act(conv(120, "c5")(h)))
        h = h.reshape(h.shape[0], -1)
        f["f6"] = h = layers.tap(self, "f6", act(layers.dense(84, "f6", dtype, self.param_dtype, self.kernel_init)(h)))
        out = layers.logits(layers.dense(self.num_classes, "head", dtype, self.param_dtype, self.kernel_init)(h))
        if return_features:
            return out, f
        return out
