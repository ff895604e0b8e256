"""Softmax regression and the multilayer perceptron, both on flattened inputs."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import flax.linen as nn

from jaxvision.models import layers

Array = jax.Array


def _flatten(x: Array, model: str) -> Array:
    if x.ndim < 2:
        raise ValueError(f"{model} expects a batch (N, ...) with at least 2 axes, got shape {tuple(x.shape)}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{model} expects a normalized float batch, got dtype {x.dtype}")
    return x.reshape(x.shape[0], -1)


class Linear(nn.Module):
    """Softmax regression: ``logits = flatten(x) @ W + b``; returns (N, num_classes) float32.

    Params: ``head/kernel`` (D, num_classes), ``head/bias``.
    """

    num_classes: int = 10
    kernel_init: str = "glorot"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False, return_features: bool = False):
        del train  # no stochastic or batch-dependent layers
        dtype = layers.resolve_dtype(self.dtype)
        h = _flatten(x, "Linear").astype(dtype)
        out = layers.logits(layers.dense(self.num_classes, "head", dtype, self.param_dtype, self.kernel_init)(h))
        if return_features:
            return out, {"input": h}
        return out


class MLP(nn.Module):
    """Fully connected net on flattened inputs: (Dense -> norm -> act -> dropout) per hidden size,
    then ``head``. Returns (N, num_classes) float32 logits.

    Layers are named ``fc1, fc2, ...`` (norms ``norm1, ...``); features are the post-activation
    outputs under the same names.
    """

    num_classes: int = 10
    hidden: tuple[int, ...] = (512, 256)
    activation: str = "relu"
    norm: str = "none"
    dropout: float = 0.0
    kernel_init: str = "he"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False, return_features: bool = False):
        dtype = layers.resolve_dtype(self.dtype)
        act = layers.activation(self.activation)
        make_norm = layers.norm(self.norm, train, dtype, param_dtype=self.param_dtype)
        h = _flatten(x, "MLP").astype(dtype)
        features: dict[str, Array] = {}
        for i, width in enumerate(self.hidden, start=1):
            h = layers.dense(width, f"fc{i}", dtype, self.param_dtype, self.kernel_init)(h)
            h = act(make_norm(f"norm{i}")(h))
            h = features[f"fc{i}"] = layers.tap(self, f"fc{i}", h)
            if self.dropout > 0:
                h = layers.Dropout(self.dropout)(h, deterministic=not train)
        out = layers.logits(layers.dense(self.num_classes, "head", dtype, self.param_dtype, self.kernel_init)(h))
        if return_features:
            return out, features
        return out
