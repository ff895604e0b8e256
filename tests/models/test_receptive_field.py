"""Receptive fields (``jaxvision.models.receptive_field``, the ``summary`` columns) against the
published tables of AlexNet and VGG-16, and against the support of d output / d input on
random linear stacks (hypothesis)."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jaxvision.models import build_model
from jaxvision.models.receptive_field import receptive_fields
from jaxvision.models.summary import summarize


def _table(model, size: int) -> dict[str, tuple[str, str]]:
    rows, _ = summarize(model, (size, size, 3))
    return {r["name"]: (r["receptive_field"], r["stride"]) for r in rows}


def test_alexnet_and_vgg16_match_the_published_fields():
    # AlexNet (conv1 11x11 stride 4, 3x3 stride-2 max pools): 11, 51, 99, 131, 163 pixels.
    table = _table(build_model("alexnet", num_classes=10), 224)
    assert [table[f"conv{i}"] for i in range(1, 6)] == [
        ("11", "4"), ("51", "8"), ("99", "16"), ("131", "16"), ("163", "16")]
    assert table["fc6"] == ("all", "all")
    # VGG-16: conv5_3 sees 196 x 196 pixels at stride 16.
    table = _table(build_model("vgg16", num_classes=10), 224)
    want = [3, 5, 10, 14, 24, 32, 40, 60, 76, 92, 132, 164, 196]
    names = [f"conv{b}_{i}" for b, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3)) for i in range(1, n + 1)]
    assert [int(table[n][0]) for n in names] == want
    assert table["conv5_3"][1] == "16"


class _Stack(nn.Module):
    """A linear stack (no activation): (kind, kernel, stride, dilation) per layer, with
    kind 'conv' or 'avg' (average pooling); optionally a residual 1x1 branch at the end."""

    layers: Sequence[tuple[str, int, int, int]]
    residual: bool = False

    @nn.compact
    def __call__(self, x):
        for kind, k, s, d in self.layers:
            if kind == "conv":
                x = nn.Conv(2, (k, k), (s, s), padding="VALID", kernel_dilation=(d, d),
                            kernel_init=nn.initializers.uniform(1.0))(x)
            else:
                x = nn.avg_pool(x, (k, k), (s, s))
        if self.residual:
            x = x + nn.Conv(2, (1, 1), kernel_init=nn.initializers.uniform(1.0))(x)
        return x


def _support(model, size: int) -> tuple[int, int, Sequence[float], Sequence[float]]:
    """The extent (rows, columns) of the nonzero d out[centre] / d x, and the closed form."""
    x = jnp.ones((1, size, size, 1)) + jax.random.uniform(jax.random.key(0), (1, size, size, 1))
    # Compiled, not eager: each hypothesis example has new shapes, and eagerly every op of
    # init, apply and grad compiles alone.
    variables = jax.jit(model.init)(jax.random.key(1), x)
    out = jax.eval_shape(model.apply, variables, x)
    i, j = out.shape[1] // 2, out.shape[2] // 2
    g = np.asarray(jax.jit(jax.grad(lambda x: model.apply(variables, x)[0, i, j].sum()))(x))[0, :, :, 0]
    rows, cols = np.nonzero(np.abs(g) > 0)
    (field,) = receptive_fields(lambda x, v: model.apply(v, x), jax.ShapeDtypeStruct(x.shape, x.dtype), variables)
    return rows.max() - rows.min() + 1, cols.max() - cols.min() + 1, field.size, field.jump


_layer = st.tuples(st.sampled_from(["conv", "conv", "avg"]), st.integers(1, 4), st.integers(1, 3),
                   st.integers(1, 2)).map(lambda t: t if t[0] == "conv" else (t[0], t[1], t[2], 1))


@settings(max_examples=8, deadline=None)
@given(layers=st.lists(_layer, min_size=1, max_size=4), residual=st.booleans())
def test_closed_form_equals_the_gradient_support(layers, residual):
    model = _Stack(tuple(layers), residual)
    # Input large enough for the centre output's field to lie inside it.
    size, jump = 1, 1
    for _, k, s, d in layers:
        size += (k - 1) * d * jump
        jump *= s
    n = size + 2 * jump + 2
    h, w, field, strides = _support(model, n)
    assert (h, w) == (field[0], field[1]) == (size, size), (layers, h, w, field)
    assert tuple(strides) == (jump, jump)


def test_global_pooling_and_flatten_are_global_and_dilated_stacks_grow():
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            a = nn.Conv(2, (3, 3), kernel_dilation=(2, 2))(x)          # 5
            b = nn.Conv(2, (3, 3), strides=(2, 2))(a)                  # 7, stride 2
            return a, b, b.mean((1, 2)), nn.Dense(3)(b.reshape(b.shape[0], -1))
    x = jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32)
    variables = jax.eval_shape(lambda x: Net().init(jax.random.key(0), x), x)
    a, b, pooled, dense = receptive_fields(lambda x, v: Net().apply(v, x), x, variables)
    assert a.size == (5.0, 5.0) and a.jump == (1.0, 1.0)
    assert b.size == (7.0, 7.0) and b.jump == (2.0, 2.0)
    assert pooled.is_global and dense.is_global
    # A parameter that does not depend on the input has no field.
    assert receptive_fields(lambda x, v: v["params"]["Dense_0"]["bias"] * 1.0, x, variables) == [None]


@pytest.mark.parametrize("name", ["resnet18", "lenet5"])
def test_summary_has_a_field_for_every_spatial_layer(name):
    model = build_model(name, num_classes=10)
    size = 32 if name == "lenet5" else 64
    rows, _ = summarize(model, (size, size, 1 if name == "lenet5" else 3))
    spatial = [r for r in rows if isinstance(r["output_shape"], tuple) and len(r["output_shape"]) == 4]
    assert spatial and all(r["receptive_field"] not in ("", "all") for r in spatial)
    assert rows[-1]["receptive_field"] == "all"
    fields = [int(r["receptive_field"]) for r in spatial]
    assert fields == sorted(fields) or name == "resnet18"  # ResNet's 1x1 shortcuts see less
