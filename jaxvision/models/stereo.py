"""Stereo models: the classical matching pipeline, MC-CNN (fast), DispNet-C and a small GC-Net.

Every model takes the rectified pair as one (B, H, W, 2C) array, left channels first (the
stereo experiment's ``prepare``), and returns a dict:

* ``disparity`` (B, H, W) float32: the left view's disparity in input pixels, at the input's
  resolution (any H, W: inputs are edge-padded to the model's stride and outputs cropped);
* ``disparities``: the same at every output scale, upsampled to (B, H, W) (coarse to fine;
  DispNet's multi-scale loss reads them), one entry for the single-scale models;
* ``cost`` (B, H, W, D) float32 for the models with a cost volume at full resolution
  (classical and MC-CNN; lower = better match, ``+inf`` outside the other image).

``max_disparity`` is the largest disparity the model can output (candidates 0 .. max).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxvision.models import layers
from jaxvision.ops import stereo as ops

Array = jax.Array


def split_pair(x: Array) -> tuple[Array, Array]:
    """(B, H, W, 2C) -> left, right (B, H, W, C)."""
    if x.ndim != 4 or x.shape[-1] % 2:
        raise ValueError(f"stereo models take the pair as (B, H, W, 2C), left channels first; got "
                         f"shape {x.shape}.")
    c = x.shape[-1] // 2
    return x[..., :c], x[..., c:]


def _pad_to(x: Array, multiple: int) -> Array:
    """Edge-pads H and W (bottom / right) up to multiples of ``multiple``."""
    h, w = x.shape[1:3]
    ph, pw = -h % multiple, -w % multiple
    if ph or pw:
        x = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")
    return x


def _up(d: Array, hw: Sequence[int]) -> Array:
    """A disparity map (B, h, w) in input pixels, bilinearly resized to ``hw`` (values unchanged:
    they are already in the input's pixel units)."""
    if d.shape[1:3] == tuple(hw):
        return d
    return jax.image.resize(d, (d.shape[0],) + tuple(hw), "bilinear")


class Classical(nn.Module):
    """The classical pipeline, no parameters: a ``cost`` ('sad', 'ssd', 'ncc') volume over
    ``window`` x ``window`` patches of the gray images, winner-takes-all with sub-pixel
    refinement. Invalid (left-right check failed) pixels are not marked: every pixel keeps its
    best match, so the map is dense (scores count every pixel)."""

    max_disparity: int
    cost: str = "ncc"
    window: int = 9
    subpixel: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> dict:
        left, right = split_pair(x.astype(jnp.float32))
        volume = ops.cost_volume(left, right, self.max_disparity, self.cost, self.window)
        disp = ops.winner_takes_all(volume, self.subpixel)
        return {"disparity": disp, "disparities": (disp,), "cost": volume}


class MCCNN(nn.Module):
    """MC-CNN fast (Zbontar & LeCun, 2016): a siamese tower of ``depth`` 3x3 convolutions of
    ``width`` channels (ReLU between, none after the last), unit-normalized features, and the
    matching cost ``1 - cosine similarity`` at every disparity. ``disparity`` is the soft-argmin
    of ``-similarity / temperature`` (differentiable, for the regression and self-supervised
    losses); ``wta`` is the classical winner-takes-all on the cost (what ``predict`` reports
    when ``inference='wta'``), after averaging it over ``aggregate`` x ``aggregate`` windows
    when ``aggregate`` > 1 (a box filter: the paper's cross-based aggregation and semi-global
    matching are not built; a disparity outside the other image counts as the worst cost, 2,
    in the average)."""

    max_disparity: int
    width: int = 64
    depth: int = 4
    temperature: float = 0.05
    aggregate: int = 0
    dtype: Any = jnp.float32

    def setup(self):
        self.convs = [layers.conv(self.width, 3, f"conv{i}", self.dtype, jnp.float32, "he")
                      for i in range(self.depth)]

    def features(self, x: Array) -> Array:
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if i < self.depth - 1:
                x = nn.relu(x)
        x = x.astype(jnp.float32)
        return x / jnp.sqrt(jnp.sum(x * x, -1, keepdims=True) + 1e-12)

    def __call__(self, x: Array, train: bool = False) -> dict:
        left, right = split_pair(x)
        fl, fr = self.features(left.astype(self.dtype)), self.features(right.astype(self.dtype))
        sim = ops.correlation(fl, fr, self.max_disparity) * fl.shape[-1]     # cosine similarity
        w = x.shape[2]
        ok = jnp.arange(w)[:, None] >= jnp.arange(self.max_disparity + 1)[None, :]
        cost = jnp.where(ok, 1.0 - sim, jnp.inf)
        disp = ops.soft_argmin(jnp.where(ok, -sim / self.temperature, jnp.inf))
        if self.aggregate > 1:
            cost = jnp.where(ok, ops.box_mean(jnp.where(ok, cost, 2.0), self.aggregate), jnp.inf)
        return {"disparity": disp, "disparities": (disp,), "cost": cost,
                "wta": ops.winner_takes_all(cost)}


class DispNetC(nn.Module):
    """DispNet-C (Mayer et al., 2016), reduced: a shared encoder (two stride-2 3x3 convolutions,
    ``widths[0]``, ``widths[1]``), the 1-D correlation of the two views at 1/4 resolution over
    ``max_disparity / 4`` displacements beside a 1x1 projection of the left features, two more
    stride-2 stages (1/8, 1/16), and a decoder of stride-2 transposed convolutions that
    concatenates the encoder's left features and the upsampled coarser prediction at each
    scale. Disparities are predicted at 1/16, 1/8, 1/4 and 1/2 (in input pixels) and upsampled
    to the input; ``disparity`` is the finest."""

    max_disparity: int
    widths: Sequence[int] = (32, 64, 128, 192)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> dict:
        h, w = x.shape[1:3]
        left, right = split_pair(_pad_to(x, 16).astype(self.dtype))
        c = lambda f, k, name, s=1: layers.conv(f, k, name, self.dtype, jnp.float32, "he", stride=s)  # noqa: E731
        w1, w2, w3, w4 = self.widths
        conv1, conv2 = c(w1, 3, "conv1", 2), c(w2, 3, "conv2", 2)
        l1, r1 = nn.relu(conv1(left)), nn.relu(conv1(right))
        l2, r2 = nn.relu(conv2(l1)), nn.relu(conv2(r1))
        corr = ops.correlation(l2, r2, max(1, -(-self.max_disparity // 4))).astype(self.dtype)
        x3 = jnp.concatenate([corr, nn.relu(c(w2 // 2, 1, "redir")(l2))], -1)
        l3 = nn.relu(c(w3, 3, "conv3_1")(nn.relu(c(w3, 3, "conv3", 2)(x3))))
        l4 = nn.relu(c(w4, 3, "conv4_1")(nn.relu(c(w4, 3, "conv4", 2)(l3))))
        skips = [(l3, w3), (l2, w2), (l1, w1)]
        feat = l4
        pred = c(1, 3, "pr4")(feat)[..., 0].astype(jnp.float32)
        preds = [pred]
        for i, (skip, f) in enumerate(skips):
            up = nn.relu(layers.ConvTranspose(f, 4, 2, 1, dtype=self.dtype, name=f"upconv{3 - i}")(feat))
            up_pred = jax.image.resize(pred, (pred.shape[0],) + skip.shape[1:3], "bilinear")
            feat = nn.relu(c(f, 3, f"iconv{3 - i}")(
                jnp.concatenate([up, skip, up_pred[..., None].astype(self.dtype)], -1)))
            pred = c(1, 3, f"pr{3 - i}")(feat)[..., 0].astype(jnp.float32) + up_pred
            preds.append(pred)
        full = left.shape[1:3]
        outs = tuple(_up(p, full)[:, :h, :w] for p in preds)
        return {"disparity": outs[-1], "disparities": outs}


class _Res3D(nn.Module):
    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        conv = lambda name: layers.Conv(self.features, (3, 3, 3), padding="SAME", dtype=self.dtype, name=name)  # noqa: E731
        return nn.relu(x + conv("b")(nn.relu(conv("a")(x))))


class GCNet(nn.Module):
    """GC-Net (Kendall et al., 2017), reduced to train on a CPU: unary features at 1/``scale``
    resolution (a 5x5 stride-2 convolution, one more stride-2 convolution for ``scale=4``, and
    ``unary_blocks`` residual blocks of ``width`` channels), the concatenation cost volume over
    ``D / scale`` disparities, a 3-D encoder-decoder (3x3x3 convolutions, two stride-2 levels,
    transposed 3-D convolutions with skips), a last transposed 3-D convolution to one channel
    (at full resolution and ``D`` disparities for ``scale=2``; ``scale=4`` resizes the cost
    volume by 2 more, trilinearly), and the soft-argmin over the disparities."""

    max_disparity: int
    width: int = 16
    unary_blocks: int = 2
    scale: int = 2           # the cost volume's resolution: 1/2 (the paper's) or 1/4
    dtype: Any = jnp.float32

    def _levels(self) -> int:
        # Disparities at 1/scale resolution: a multiple of 4 (two stride-2 3-D levels) covering max.
        part = -(-(self.max_disparity + 1) // self.scale)
        return -(-part // 4) * 4

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> dict:
        if self.scale not in (2, 4):
            raise ValueError(f"GCNet scale must be 2 or 4 (the cost volume's 1/scale resolution); got {self.scale}.")
        h, w = x.shape[1:3]
        left, right = split_pair(_pad_to(x, 4 * self.scale).astype(self.dtype))
        f = self.width
        conv0 = layers.conv(f, 5, "unary0", self.dtype, jnp.float32, "he", stride=2)
        extra = (layers.conv(f, 3, "unary_down", self.dtype, jnp.float32, "he", stride=2)
                 if self.scale == 4 else None)
        blocks = [(layers.conv(f, 3, f"unary{i}a", self.dtype, jnp.float32, "he"),
                   layers.conv(f, 3, f"unary{i}b", self.dtype, jnp.float32, "he"))
                  for i in range(1, self.unary_blocks + 1)]
        last = layers.conv(f, 3, "unary_out", self.dtype, jnp.float32, "he")

        def unary(z):
            z = nn.relu(conv0(z))
            if extra is not None:
                z = nn.relu(extra(z))
            for a, b in blocks:
                z = nn.relu(z + b(nn.relu(a(z))))
            return last(z)
        fl, fr = unary(left), unary(right)
        vol = ops.concat_volume(fl, fr, self._levels())                 # (B, D/2, H/2, W/2, 2f)
        conv3 = lambda feat, name, s=1: layers.Conv(feat, (3, 3, 3), strides=(s, s, s), padding="SAME",  # noqa: E731
                                                dtype=self.dtype, name=name)
        c1 = _Res3D(f, self.dtype, name="c1")(nn.relu(conv3(f, "c0")(vol)))
        c2 = _Res3D(2 * f, self.dtype, name="c2")(nn.relu(conv3(2 * f, "down1", 2)(c1)))
        c3 = _Res3D(2 * f, self.dtype, name="c3")(nn.relu(conv3(2 * f, "down2", 2)(c2)))
        up = lambda feat, name: layers.FlaxConvTranspose(  # noqa: E731
            feat, (3, 3, 3), strides=(2, 2, 2), padding="SAME", dtype=self.dtype, name=name)
        u2 = nn.relu(up(2 * f, "up2")(c3)) + c2
        u1 = nn.relu(up(f, "up1")(u2)) + c1
        cost = up(1, "up0")(u1)[..., 0].astype(jnp.float32)             # (B, 2L, H*2/scale, ...)
        if self.scale == 4:  # the last factor 2 in disparity and space by trilinear resizing
            b, d, hh, ww = cost.shape
            cost = jax.image.resize(cost, (b, 2 * d, 2 * hh, 2 * ww), "linear")
        disp = ops.soft_argmin(cost, axis=1)[:, :h, :w]
        return {"disparity": disp, "disparities": (disp,)}


STEREO_MODELS = {"classical": Classical, "mccnn": MCCNN, "dispnet_c": DispNetC, "gcnet": GCNet}
