"""``jaxvision.ops.batch_norm`` and ``layers.BatchNorm``: values against a float64 numpy reference,
gradients (first and second), running statistics and pmap against ``flax.linen.BatchNorm``."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from hypothesis import given, settings, strategies as st

from jaxvision.models import layers
from jaxvision.ops import batch_norm as B


def _data(shape, seed=0, offset=0.0):
    r = np.random.default_rng(seed)
    x = (offset + r.normal(size=shape)).astype(np.float32)
    c = shape[-1]
    scale = (1 + 0.5 * r.normal(size=c)).astype(np.float32)
    bias = r.normal(size=c).astype(np.float32)
    g = r.normal(size=shape).astype(np.float32)
    return x, scale, bias, g


def _loss(y, stats, g):
    """sum(y * g) plus terms in the new running statistics, so that their cotangents count."""
    c = g.shape[-1]
    return (jnp.sum(y * g) + jnp.sum(stats["mean"] * g.reshape(-1)[:c])
            + jnp.sum(stats["var"] * g.reshape(-1)[c:2 * c]))


def _bn_loss(cls):
    """``_loss`` through batch norm ``cls`` in training, with (y, its new running statistics)."""
    def loss(x, scale, bias, g, axis_name=None):
        bn = cls(use_running_average=False, momentum=0.9, epsilon=1e-5, axis_name=axis_name)
        variables = {"params": {"scale": scale, "bias": bias},
                     "batch_stats": {"mean": jnp.zeros(x.shape[-1]), "var": jnp.ones(x.shape[-1])}}
        y, state = bn.apply(variables, x, mutable=["batch_stats"])
        return _loss(y, state["batch_stats"], g), (y, state["batch_stats"])
    return loss


_flax_loss = _bn_loss(nn.BatchNorm)
_our_loss = _bn_loss(layers.BatchNorm)


def _grads(loss):
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))


_FLAX = _grads(_flax_loss)
_OURS = _grads(_our_loss)


def _numpy_forward(x, scale, bias, eps=1e-5):
    """(y, mean, biased var) in float64 over all but the last axis."""
    x = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
    mean = x.mean(0)
    var = ((x - mean) ** 2).mean(0)
    return (x - mean) / np.sqrt(var + eps) * scale + bias, mean, var


@pytest.mark.parametrize("shape", [(16, 7), (8, 5, 5, 3), (2, 3, 4, 5, 6)])
def test_values_running_statistics_and_gradients_equal_flax(shape):
    x, scale, bias, g = _data(shape, offset=2.0)
    (_, (y, stats)), grads = _OURS(x, scale, bias, g)
    (_, (fy, fstats)), fgrads = _FLAX(x, scale, bias, g)
    ref_y, ref_mean, ref_var = _numpy_forward(x, scale, bias)
    np.testing.assert_allclose(np.asarray(y).reshape(ref_y.shape), ref_y, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(stats["mean"], 0.1 * ref_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * ref_var, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(y, fy, rtol=1e-5, atol=1e-5)
    for key in ("mean", "var"):
        np.testing.assert_allclose(stats[key], fstats[key], rtol=1e-5, atol=1e-6)
    for ours, theirs in zip(grads, fgrads):
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)


@settings(max_examples=6, deadline=None, derandomize=True)
@given(n=st.integers(2, 6), hw=st.integers(1, 4), c=st.integers(1, 5),
       offset=st.sampled_from([0.0, 5.0]), seed=st.integers(0, 2**16))
def test_gradients_equal_flax_on_random_shapes(n, hw, c, offset, seed):
    x, scale, bias, g = _data((n, hw, hw, c), seed, offset)
    (_, (y, _)), grads = _OURS(x, scale, bias, g)
    (_, (fy, _)), fgrads = _FLAX(x, scale, bias, g)
    np.testing.assert_allclose(y, fy, rtol=1e-4, atol=1e-4)
    for ours, theirs in zip(grads, fgrads):
        np.testing.assert_allclose(ours, theirs, rtol=1e-3, atol=1e-3)


def _plain_train(x, scale, bias, eps=1e-5):
    """The same function written with jax.numpy reductions, autodiff's reference."""
    axes = tuple(range(x.ndim - 1))
    mean = x.mean(axes)
    var = jnp.maximum(0.0, (x * x).mean(axes) - mean * mean)
    return (x - mean) * jax.lax.rsqrt(var + eps) * scale + bias, mean, var


def test_statistics_cotangents_and_second_derivatives():
    x, scale, bias, g = _data((6, 3, 3, 4), seed=1, offset=1.0)
    a, b = g[0, 0, 0], g[1, 1, 1]

    def loss(fn, x, scale, bias):
        y, mean, var = fn(x, scale, bias)
        return jnp.sum(y * g) ** 2 / 100 + jnp.sum(mean * a) + jnp.sum(var * b)

    ours = functools.partial(B.batch_norm_train, epsilon=1e-5)
    got = jax.grad(loss, argnums=(1, 2, 3))(ours, x, scale, bias)
    want = jax.grad(loss, argnums=(1, 2, 3))(_plain_train, x, scale, bias)
    for o, w in zip(got, want):
        np.testing.assert_allclose(o, w, rtol=1e-4, atol=1e-4)

    def grad_norm(fn, x):   # a gradient penalty: differentiates the backward pass
        dx = jax.grad(lambda x_: jnp.sum(fn(x_, scale, bias)[0] * g))(x)
        return jnp.sum(dx ** 2)

    np.testing.assert_allclose(jax.grad(grad_norm, argnums=1)(ours, x),
                               jax.grad(grad_norm, argnums=1)(_plain_train, x),
                               rtol=1e-3, atol=1e-3)


def test_bfloat16_inputs_compute_in_float32_like_flax():
    x, scale, bias, _ = _data((8, 4, 4, 3), seed=2)
    xb = jnp.asarray(x, jnp.bfloat16)
    variables = {"params": {"scale": scale, "bias": bias},
                 "batch_stats": {"mean": jnp.zeros(3), "var": jnp.ones(3)}}
    for dtype in (None, jnp.bfloat16):
        ours, _ = layers.BatchNorm(dtype=dtype).apply(variables, xb, mutable=["batch_stats"])
        theirs, _ = nn.BatchNorm(use_running_average=False, dtype=dtype).apply(
            variables, xb, mutable=["batch_stats"])
        assert ours.dtype == theirs.dtype
        np.testing.assert_allclose(np.asarray(ours, np.float32), np.asarray(theirs, np.float32),
                                   rtol=2e-2, atol=2e-2)


def test_pmap_statistics_and_gradients_over_all_replicas_equal_flax():
    devices = jax.local_device_count()
    if devices < 2:
        pytest.skip("needs several (simulated) devices")
    x, scale, bias, g = _data((devices * 3, 2, 2, 4), seed=3, offset=1.0)
    shard = lambda a: a.reshape((devices, -1) + a.shape[1:])  # noqa: E731

    def run(loss):
        fn = jax.pmap(jax.value_and_grad(functools.partial(loss, axis_name="i"),
                                         argnums=(0, 1, 2), has_aux=True),
                      axis_name="i", in_axes=(0, None, None, 0))
        return fn(shard(x), scale, bias, shard(g))

    (_, (y, stats)), grads = run(_our_loss)
    (_, (fy, fstats)), fgrads = run(_flax_loss)
    np.testing.assert_allclose(y, fy, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stats["mean"], fstats["mean"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["var"], fstats["var"], rtol=1e-5, atol=1e-6)
    for ours, theirs in zip(grads, fgrads):
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)
    # ... and the global batch's statistics: those of one jit over every row.
    _, ref_mean, _ = _numpy_forward(x, scale, bias)
    np.testing.assert_allclose(stats["mean"][0], 0.1 * ref_mean, rtol=1e-5, atol=1e-6)
    # pmap differentiates the sum of the replicas' losses: the jit of that over every row.
    def total(x):
        y, mean, var = B.batch_norm_train(x, scale, bias, 1e-5)
        stats = {"mean": 0.1 * mean, "var": 0.9 + 0.1 * var}
        return jnp.sum(y * g) + sum(_loss(0.0, stats, gs) for gs in shard(g))

    np.testing.assert_allclose(grads[0].reshape(x.shape), jax.grad(total)(x), rtol=1e-4, atol=1e-4)


def test_norm_trains_with_it_on_cpu_and_keeps_flax_elsewhere(monkeypatch):
    class Net(nn.Module):
        train: bool

        @nn.compact
        def __call__(self, x):
            return layers.norm("batch", self.train)("bn")(x)

    x = jnp.asarray(_data((4, 3, 3, 2))[0])
    used = []
    orig = B.batch_norm_train
    monkeypatch.setattr(B, "batch_norm_train", lambda *a: used.append(1) or orig(*a))
    monkeypatch.setattr(B, "MIN_ELEMENTS", x.size + 1)       # too small: flax's
    Net(train=True).init(jax.random.key(0), x)
    assert not used
    monkeypatch.setattr(B, "MIN_ELEMENTS", x.size)
    flax_vars = nn.BatchNorm(use_running_average=False).init(jax.random.key(0), x)
    variables = Net(train=True).init(jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, variables["params"]["bn"]) == jax.tree.map(
        jnp.shape, flax_vars["params"])
    assert jax.tree.map(jnp.shape, variables["batch_stats"]["bn"]) == jax.tree.map(
        jnp.shape, flax_vars["batch_stats"])
    assert used
    used.clear()
    Net(train=False).apply(variables, x)
    assert not used
    monkeypatch.setenv("JAXVISION_CONV_GRAD", "xla")
    Net(train=True).apply(variables, x, mutable=["batch_stats"])
    assert not used
    with pytest.raises(ValueError, match="use_running_average"):
        layers.BatchNorm(use_running_average=True).apply(
            {"params": variables["params"]["bn"], "batch_stats": variables["batch_stats"]["bn"]}, x)


@pytest.mark.parametrize("name, kwargs, shape", [
    ("small_cnn", dict(widths=(4, 8), norm="batch"), (4, 8, 8, 3)),
    ("unet", dict(num_classes=3, widths=(4, 8)), (2, 16, 16, 3)),
])
def test_zoo_models_train_to_flax_gradients_and_statistics(monkeypatch, name, kwargs, shape):
    from jaxvision import models
    from jaxvision.models.segmentation import UNet
    monkeypatch.setattr(B, "MIN_ELEMENTS", 0)
    model = UNet(**kwargs) if name == "unet" else models.build_model(name, **kwargs)
    x = jnp.asarray(np.random.default_rng(0).standard_normal(shape), jnp.float32)
    variables = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(x)
    calls = []
    orig = B.batch_norm_train
    monkeypatch.setattr(B, "batch_norm_train", lambda *a: calls.append(1) or orig(*a))

    def step():
        # A fresh function per setting: the batch norm is chosen when it is traced.
        def loss(params):
            out, state = model.apply({**variables, "params": params}, x, train=True,
                                     mutable=["batch_stats"])
            return jnp.sum(jnp.sin(out)), state
        return jax.jit(jax.grad(loss, has_aux=True))(variables["params"])

    monkeypatch.setenv("JAXVISION_CONV_GRAD", "xla")
    want = step()
    assert not calls
    monkeypatch.setenv("JAXVISION_CONV_GRAD", "auto")
    got = step()
    assert calls, f"{name}: no batch norm went through ops.batch_norm"
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)


def test_sharded_jit_gives_the_single_device_values_and_gradients():
    devices = jax.devices()
    if len(devices) < 2:
        pytest.skip("needs several (simulated) devices")
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    x, scale, bias, g = _data((len(devices) * 2, 3, 3, 4), seed=4, offset=1.0)
    rows = NamedSharding(Mesh(np.array(devices), ("batch",)), P("batch"))
    (_, (y, stats)), grads = _OURS(jax.device_put(x, rows), scale, bias, jax.device_put(g, rows))
    (_, (y1, stats1)), grads1 = _OURS(x, scale, bias, g)
    for a, b in zip(jax.tree.leaves((y, stats, grads)), jax.tree.leaves((y1, stats1, grads1))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
