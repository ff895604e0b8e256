"""Embedding networks for metric learning: a zoo backbone with an embedding head, and a siamese
wrapper for pairs."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxvision.models import layers


def l2_normalize(x: jax.Array, axis: int = -1) -> jax.Array:
    """``x / max(||x||, 1e-12)`` along ``axis`` (float32), with a finite gradient at 0."""
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=axis, keepdims=True), 1e-24))


class EmbeddingNet(nn.Module):
    """``backbone`` (a zoo classifier built with ``num_classes = dim``, so its ``head`` is the
    linear projection to the embedding) -> optional batch norm -> optional L2 normalization.

    Returns the embedding (N, dim) float32. With ``num_classes`` > 0 it also holds class weights
    ``class_weights`` (dim, num_classes), and ``return_scores=True`` returns ``(embedding, scores
    (N, num_classes))``: with ``head='cosine'`` the cosines between the embedding and every class
    weight (ArcFace / CosFace), with ``head='linear'`` the plain logits ``embedding @ weights``
    (a softmax classifier whose penultimate layer is the embedding). ``return_features=True``
    returns the backbone's features too (``(embedding, features)``), for probes.

    ``represent``: the losses always act on the projection, but the embedding the model gives
    (``__call__`` without ``projection=True``: what is evaluated, predicted and exported) is,
    when ``represent`` names a backbone feature (``'pool'``), that feature flattened and
    L2-normalized: the layer below the projection head, which carries over to classes never
    trained on better than the projection does (as in SimCLR, Chen et al. 2020; measured in
    ``benchmarks/NOTES.md``). '' ships the projection itself.

    Params: ``backbone/...`` (the zoo model's own), ``embedding_norm``, ``class_weights``.
    """

    backbone: nn.Module
    batch_norm: bool = False
    normalize: bool = True
    num_classes: int = 0
    head: str = "cosine"
    represent: str = ""

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False, return_scores: bool = False,
                 return_features: bool = False, projection: bool = False):
        want_features = return_features or bool(self.represent)
        out = self.backbone(x, train=train, return_features=want_features)
        emb, features = out if want_features else (out, None)
        emb = emb.astype(jnp.float32)
        if self.batch_norm:
            emb = layers.norm("batch", train, jnp.float32)("embedding_norm")(emb)
        if self.normalize:
            emb = l2_normalize(emb)
        projected = emb
        if self.represent and not projection:
            if self.represent not in features:
                raise ValueError(f"EmbeddingNet represent={self.represent!r} is not a feature of "
                                 f"{type(self.backbone).__name__}; it has: {', '.join(features)}.")
            rep = features[self.represent]
            emb = l2_normalize(rep.reshape(rep.shape[0], -1))
        result: Any = emb
        if self.head not in ("cosine", "linear"):
            raise ValueError(f"EmbeddingNet head={self.head!r} must be 'cosine' or 'linear'.")
        if return_scores:
            if self.num_classes < 1:
                raise ValueError("EmbeddingNet(num_classes=0) has no class weights: set "
                                 "num_classes for a classification head.")
            w = self.param("class_weights", nn.initializers.normal(0.01),
                           (emb.shape[-1], self.num_classes), jnp.float32)
            scores = (l2_normalize(projected) @ l2_normalize(w, axis=0) if self.head == "cosine"
                      else projected @ w)
            result = (emb, scores)
        elif self.num_classes > 0 and self.is_initializing():
            # Create the class weights at init even when the caller asks only for embeddings.
            self.param("class_weights", nn.initializers.normal(0.01),
                       (projected.shape[-1], self.num_classes), jnp.float32)
        if return_features:
            return (*result, features) if isinstance(result, tuple) else (result, features)
        return result


class Siamese(nn.Module):
    """One ``net`` applied to both images of a pair (shared weights): returns
    ``(net(x1), net(x2))``."""

    net: nn.Module

    @nn.compact
    def __call__(self, x1: jax.Array, x2: jax.Array, *, train: bool = False):
        return self.net(x1, train=train), self.net(x2, train=train)
