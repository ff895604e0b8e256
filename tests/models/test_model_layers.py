"""Named initializers / activations / norms and the pooling helpers against closed forms."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxvision.models import build_model, layers

KEY = jax.random.key(0, impl="rbg")

# name -> (variance as a function of (fan_in, fan_out), distribution)
_EXPECTED_INIT = {
    "glorot": (lambda i, o: 2 / (i + o), "uniform"),
    "glorot_normal": (lambda i, o: 2 / (i + o), "normal"),
    "xavier_uniform": (lambda i, o: 2 / (i + o), "uniform"),
    "he": (lambda i, o: 2 / i, "normal"),
    "kaiming_uniform": (lambda i, o: 2 / i, "uniform"),
    "he_normal": (lambda i, o: 2 / i, "normal"),
    "lecun": (lambda i, o: 1 / i, "normal"),
    "lecun_uniform": (lambda i, o: 1 / i, "uniform"),
}


@pytest.mark.parametrize("name", sorted(_EXPECTED_INIT))
def test_initializer_variance_and_shape_of_distribution(name):
    fan_in, fan_out = 300, 200
    w = np.asarray(layers.initializer(name)(jax.random.key(1), (fan_in, fan_out), jnp.float32))
    var_fn, dist = _EXPECTED_INIT[name]
    var = var_fn(fan_in, fan_out)
    assert w.var() == pytest.approx(var, rel=0.05)
    bound = np.sqrt(3 * var)  # a uniform of this variance lives in [-bound, bound]
    if dist == "uniform":
        assert np.abs(w).max() <= bound + 1e-6
    else:
        assert np.abs(w).max() > bound * 1.05  # normal tails reach past the uniform's bound


def test_every_listed_initializer_resolves_and_aliases_agree():
    for name in layers.INITIALIZERS:
        assert callable(layers.initializer(name))
    w = lambda n: np.asarray(layers.initializer(n)(jax.random.key(3), (8, 8)))  # noqa: E731
    assert np.array_equal(w("xavier"), w("glorot_uniform"))
    assert np.array_equal(w("kaiming"), w("he_normal"))


def test_unknown_names_list_the_choices():
    with pytest.raises(ValueError, match="Did you mean 'he'"):
        layers.initializer("hee")
    with pytest.raises(ValueError, match="relu"):
        layers.activation("rellu")
    with pytest.raises(ValueError, match="batch, layer, none"):
        layers.norm("group", train=False)


def test_activations_match_numpy():
    x = np.linspace(-4, 4, 41, dtype=np.float32)
    gelu = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
    expected = {
        "relu": np.maximum(x, 0),
        "leaky_relu": np.where(x > 0, x, 0.01 * x),
        "gelu": gelu,
        "tanh": np.tanh(x),
        "sigmoid": 1 / (1 + np.exp(-x)),
        "silu": x / (1 + np.exp(-x)),
        "identity": x,
    }
    for name, ref in expected.items():
        assert np.allclose(layers.activation(name)(jnp.asarray(x)), ref, atol=1e-5), name


class _NormOnly(nn.Module):
    kind: str
    train: bool

    @nn.compact
    def __call__(self, x):
        return layers.norm(self.kind, self.train)("n")(x)


def test_norms_match_numpy():
    x = np.random.default_rng(0).normal(2.0, 3.0, size=(4, 3, 3, 5)).astype(np.float32)

    def run(kind, train):
        wrap = _NormOnly(kind, train)
        variables = wrap.init(KEY, x)
        out, state = wrap.apply(variables, x, mutable=["batch_stats"])
        return variables, np.asarray(out), state

    v, out, state = run("batch", True)
    mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
    assert np.allclose(out, (x - mean) / np.sqrt(var + 1e-5), atol=1e-4)
    # Running statistics move 10% of the way (momentum 0.9) from their 0 / 1 start.
    assert np.allclose(state["batch_stats"]["n"]["mean"], 0.1 * mean, atol=1e-5)
    _, out, _ = run("layer", False)
    m, s = x.mean(axis=-1, keepdims=True), x.var(axis=-1, keepdims=True)
    assert np.allclose(out, (x - m) / np.sqrt(s + 1e-5), atol=1e-4)
    v, out, _ = run("none", False)
    assert np.array_equal(out, x) and not v


@pytest.mark.parametrize(
    "kwargs",
    [{"kernel_init": n} for n in ("glorot", "he_uniform", "lecun")]
    + [{"activation": a} for a in layers.ACTIVATIONS]
    + [{"norm": n} for n in layers.NORMS],
)
def test_each_choice_builds(kwargs):
    model = build_model("small_cnn", num_classes=3, widths=(4, 8), **kwargs)
    x = jax.ShapeDtypeStruct((2, 8, 8, 3), jnp.float32)
    out, variables = jax.eval_shape(lambda x: model.init_with_output(KEY, x), x)
    assert out.shape == (2, 3)
    has_stats = "batch_stats" in variables
    assert has_stats == (kwargs.get("norm", "batch") == "batch")


def _adaptive_ref(x: np.ndarray, oh: int, ow: int) -> np.ndarray:
    n, h, w, c = x.shape
    out = np.zeros((n, oh, ow, c), np.float64)
    for i in range(oh):
        for j in range(ow):
            r0, r1 = int(np.floor(i * h / oh)), int(np.ceil((i + 1) * h / oh))
            c0, c1 = int(np.floor(j * w / ow)), int(np.ceil((j + 1) * w / ow))
            out[:, i, j] = x[:, r0:r1, c0:c1].mean(axis=(1, 2))
    return out


@settings(max_examples=15, deadline=None)
@given(h=st.integers(1, 13), w=st.integers(1, 13), oh=st.integers(1, 7), ow=st.integers(1, 7))
def test_adaptive_avg_pool_matches_reference(h, w, oh, ow):
    x = np.random.default_rng(h * 100 + w).normal(size=(2, h, w, 3)).astype(np.float32)
    out = layers.adaptive_avg_pool(jnp.asarray(x), (oh, ow))
    assert out.shape == (2, oh, ow, 3)
    assert np.allclose(out, _adaptive_ref(x, oh, ow), atol=1e-5)


def test_local_response_norm_matches_loop():
    x = np.random.default_rng(0).normal(size=(2, 3, 3, 7)).astype(np.float32) * 10
    size, alpha, beta, k = 5, 1e-2, 0.75, 2.0
    ref = np.zeros_like(x)
    for c in range(7):
        lo, hi = max(0, c - size // 2), min(7, c + size // 2 + 1)
        ref[..., c] = x[..., c] / (k + alpha * (x[..., lo:hi] ** 2).sum(-1)) ** beta
    assert np.allclose(layers.local_response_norm(jnp.asarray(x), size, alpha, beta, k), ref, rtol=1e-5)


def test_bad_inputs_name_the_expected_layout():
    with pytest.raises(ValueError, match=r"NHWC"):
        layers.check_image_batch(jnp.zeros((8, 8, 3)), "SmallCNN")
    with pytest.raises(TypeError, match="float"):
        layers.check_image_batch(jnp.zeros((1, 8, 8, 3), jnp.uint8), "SmallCNN")
    with pytest.raises(ValueError, match="width multiplier"):
        layers.scaled(64, 0.0)


@pytest.mark.parametrize("kernel, strides, padding, shape", [
    ((3, 3, 3), (2, 2, 2), "SAME", (2, 3, 4, 5, 3)),     # GC-Net's decoder
    ((4, 4), (2, 2), "VALID", (2, 5, 3, 3)), ((3,), (3,), ((2, 1),), (2, 4, 3))])
def test_flax_conv_transpose_has_flax_parameters_and_values(kernel, strides, padding, shape):
    x = jax.random.normal(jax.random.key(1), shape)
    ours = layers.FlaxConvTranspose(4, kernel, strides=strides, padding=padding)
    theirs = nn.ConvTranspose(4, kernel, strides=strides, padding=padding,
                              precision=jax.lax.Precision.HIGHEST)
    v_ours, v_theirs = ours.init(KEY, x), theirs.init(KEY, x)
    jax.tree.map(np.testing.assert_array_equal, v_ours, v_theirs)   # checkpoints carry over
    v = jax.tree.map(lambda a: a + 0.1, v_theirs)                    # a nonzero bias too
    np.testing.assert_allclose(ours.apply(v, x), theirs.apply(v, x), rtol=1e-5, atol=1e-5)
