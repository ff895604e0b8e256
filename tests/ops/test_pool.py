"""``jaxvision.ops.pool``: values and gradients against a plain loop and ``flax.linen``'s pools."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from hypothesis import given, settings, strategies as st

from jaxvision.ops import conv as conv_ops
from jaxvision.ops import pool as P


@pytest.fixture(autouse=True)
def _rewrite_every_size(monkeypatch):
    # The rewrite is for large pools; these tests check it on small ones.
    monkeypatch.setattr(P, "_MIN_ELEMENTS", 0)


def _loop(x, g, window, strides, pads, kind, count_include_pad=True):
    """Plain-loop reference in float64 for a 2-D NHWC pool: (y, dx) where dx is the gradient of
    sum(y * g). A max pool's gradient goes to the first maximum in row-major window order."""
    x = np.asarray(x, np.float64)
    g = np.asarray(g, np.float64)
    fill = -np.inf if kind == "max" else 0.0
    xp = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)), constant_values=fill)
    valid = np.pad(np.ones(x.shape[1:3]), (pads[0], pads[1]))
    n, hp, wp, c = xp.shape
    ho = (hp - window[0]) // strides[0] + 1
    wo = (wp - window[1]) // strides[1] + 1
    y = np.zeros((n, ho, wo, c))
    dxp = np.zeros_like(xp)
    for i, j in itertools.product(range(ho), range(wo)):
        i0, j0 = i * strides[0], j * strides[1]
        win = xp[:, i0:i0 + window[0], j0:j0 + window[1], :].reshape(n, -1, c)
        if kind == "max":
            first = np.argmax(win, axis=1)          # numpy's argmax: the first maximum
            y[:, i, j] = np.take_along_axis(win, first[:, None], 1)[:, 0]
            a, b = np.divmod(first, window[1])
            for e, ch in itertools.product(range(n), range(c)):
                dxp[e, i0 + a[e, ch], j0 + b[e, ch], ch] += g[e, i, j, ch]
        else:
            count = (window[0] * window[1] if count_include_pad
                     else valid[i0:i0 + window[0], j0:j0 + window[1]].sum())
            y[:, i, j] = win.sum(1) / count
            dxp[:, i0:i0 + window[0], j0:j0 + window[1], :] += g[:, i, j, None, None, :] / count
    return y, dxp[:, pads[0][0]:hp - pads[0][1], pads[1][0]:wp - pads[1][1], :]


def _value_and_grad(pool, window, strides, padding, **kw):
    def f(x, g):
        y, vjp = jax.vjp(lambda x: pool(x, window, strides, padding, **kw), x)
        return y, vjp(g)[0]
    return jax.jit(f)


def _inputs(rng, shape, ties):
    x = rng.normal(size=shape).astype(np.float32)
    if ties:   # ReLU'd, on a coarse grid: windows of zeros and repeated maxima
        x = np.maximum(np.round(x * 2) / 2, 0).astype(np.float32)
    return jnp.asarray(x)


@settings(max_examples=12, deadline=None)
@given(n=st.integers(1, 3), h=st.integers(1, 9), w=st.integers(1, 9), c=st.integers(1, 3),
       kh=st.integers(1, 3), kw=st.integers(1, 3), sh=st.integers(1, 3), sw=st.integers(1, 3),
       padding=st.sampled_from(["SAME", "VALID", ((0, 1), (1, 0)), ((1, 1), (1, 1))]),
       kind=st.sampled_from(["max", "avg", "avg_valid_count"]), ties=st.booleans(),
       seed=st.integers(0, 10_000))
def test_pool_matches_a_plain_loop(n, h, w, c, kh, kw, sh, sw, padding, kind, ties, seed):
    window, strides = (kh, kw), (sh, sw)
    pads = P._pads(padding, (h, w), window, strides)
    if any(p >= k for pair, k in zip(pads, window) for p in pair):
        return   # a window wholly in the padding: -inf or 0/0, as flax's own pools give
    if any(s + sum(p) < k for s, p, k in zip((h, w), pads, window)):
        return   # no output
    rng = np.random.default_rng(seed)
    x = _inputs(rng, (n, h, w, c), ties)
    base, count_include_pad = kind[:3], kind != "avg_valid_count"
    kw_ = {} if base == "max" else {"count_include_pad": count_include_pad}
    fn = P.max_pool if base == "max" else P.avg_pool
    g = rng.normal(size=_out_shape(x.shape, window, strides, pads))
    y_ref, dx_ref = _loop(x, g, window, strides, pads, base, count_include_pad)
    y, dx = _value_and_grad(fn, window, strides, padding, **kw_)(x, jnp.asarray(g, jnp.float32))
    np.testing.assert_allclose(np.asarray(y), y_ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(dx), dx_ref, rtol=1e-5, atol=1e-5)


def _out_shape(shape, window, strides, pads):
    n, h, w, c = shape
    return (n, (h + sum(pads[0]) - window[0]) // strides[0] + 1,
            (w + sum(pads[1]) - window[1]) // strides[1] + 1, c)


@pytest.mark.parametrize("window,strides,padding", [
    ((2, 2), (2, 2), "VALID"),                 # LeNet, VGG, U-Net, the small CNN
    ((3, 3), (2, 2), "VALID"),                 # AlexNet
    ((3, 3), (2, 2), ((1, 1), (1, 1))),        # ResNet and DenseNet stems
    ((3, 3), (1, 1), "SAME"),                  # GoogLeNet's pool branch
    ((2, 3), (3, 2), ((1, 0), (0, 2))),
])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_gradients_equal_flax_pools(window, strides, padding, kind):
    # The same tie-breaking as XLA's select_and_scatter: a ReLU'd input has windows of zeros.
    x = _inputs(np.random.default_rng(0), (3, 11, 12, 4), ties=True)
    ours, theirs = (P.max_pool, nn.max_pool) if kind == "max" else (P.avg_pool, nn.avg_pool)
    g = jnp.asarray(np.random.default_rng(1).normal(size=theirs(x, window, strides, padding).shape),
                    jnp.float32)
    y, dx = _value_and_grad(ours, window, strides, padding)(x, g)
    y_ref, dx_ref = _value_and_grad(theirs, window, strides, padding)(x, g)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(y_ref))
    np.testing.assert_allclose(np.asarray(dx), np.asarray(dx_ref), rtol=1e-6, atol=1e-6)


def test_second_derivatives_jit_and_vmap():
    x = _inputs(np.random.default_rng(2), (2, 6, 6, 3), ties=False)

    def loss(pool, x):
        return jnp.sum(pool(x, (3, 3), (2, 2), "SAME") ** 3)

    for ours, theirs in ((P.max_pool, nn.max_pool), (P.avg_pool, nn.avg_pool)):
        v = jnp.ones_like(x)
        # Reverse over reverse: a custom VJP has no forward mode.
        hvp = jax.jit(lambda x, pool: jax.grad(
            lambda z: jnp.vdot(jax.grad(lambda u: loss(pool, u))(z), v))(x), static_argnums=1)
        np.testing.assert_allclose(hvp(x, ours), hvp(x, theirs), rtol=1e-5, atol=1e-5)
        per_example = jax.vmap(jax.grad(lambda z: loss(ours, z[None])))(x)
        np.testing.assert_allclose(per_example, jax.grad(lambda z: loss(theirs, z))(x),
                                   rtol=1e-6, atol=1e-6)


def test_bfloat16_and_three_spatial_axes():
    x = _inputs(np.random.default_rng(3), (2, 5, 6, 7, 3), ties=True)
    g = jnp.asarray(np.random.default_rng(4).normal(size=(2, 5, 3, 4, 3)), jnp.float32)
    for ours, theirs in ((P.max_pool, nn.max_pool), (P.avg_pool, nn.avg_pool)):
        got = _value_and_grad(ours, (2, 2, 2), (1, 2, 2), "SAME")(x, g)
        want = _value_and_grad(theirs, (2, 2, 2), (1, 2, 2), "SAME")(x, g)
        np.testing.assert_allclose(got[1], want[1], rtol=1e-6, atol=1e-6)
    xb, gb = x[:, 0].astype(jnp.bfloat16), g[:, 0, :, :3].astype(jnp.bfloat16)   # (2, 6, 7, 3) -> (2, 3, 3, 3)
    y, dx = _value_and_grad(P.max_pool, (2, 2), (2, 2), "VALID")(xb, gb)
    y_ref, dx_ref = _value_and_grad(nn.max_pool, (2, 2), (2, 2), "VALID")(xb, gb)
    assert y.dtype == dx.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(dx, np.float32), np.asarray(dx_ref, np.float32))


def test_the_rewrite_runs_on_cpu_and_xla_setting_turns_it_off(monkeypatch):
    x = jnp.ones((1, 4, 4, 1))

    def has_select_and_scatter():
        jaxpr = jax.make_jaxpr(jax.grad(lambda z: P.max_pool(z, (2, 2), (2, 2)).sum()))(x)
        return "select_and_scatter" in str(jaxpr)

    assert not has_select_and_scatter()
    monkeypatch.setattr(P, "_MIN_ELEMENTS", x.size + 1)   # too small to repay its compile time
    assert has_select_and_scatter()
    monkeypatch.setattr(P, "_MIN_ELEMENTS", 0)
    with conv_ops.as_lax():
        assert has_select_and_scatter()
    monkeypatch.setenv("JAXVISION_CONV_GRAD", "xla")
    assert has_select_and_scatter()


def test_bad_padding_names_the_choices():
    with pytest.raises(ValueError, match="'SAME', 'VALID'"):
        P.max_pool(jnp.ones((1, 4, 4, 1)), (2, 2), (2, 2), "FULL")
    with pytest.raises(ValueError, match="one \\(low, high\\) pair per window axis"):
        P.avg_pool(jnp.ones((1, 4, 4, 1)), (2, 2), (2, 2), ((1, 1),))


def test_a_zoo_model_pools_through_the_rewrite_with_flax_gradients(monkeypatch):
    from jaxvision import models
    model = models.build_model("vgg11", num_classes=10, width=0.0625, fc_width=16, grid=1,
                               norm="batch")
    x = jnp.asarray(np.maximum(np.random.default_rng(5).standard_normal((2, 32, 32, 3)), 0),
                    jnp.float32)
    variables = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(x)

    def grads():
        def loss(params):
            return jnp.sum(jnp.sin(model.apply({**variables, "params": params}, x, train=False)))
        return jax.jit(jax.grad(loss))(variables["params"])

    calls = []
    phases = P._scatter_by_phases
    monkeypatch.setattr(P, "_scatter_by_phases", lambda *a: calls.append(1) or phases(*a))
    got = grads()
    assert len(calls) == 5, "VGG-11 has five max pools"
    monkeypatch.setenv("JAXVISION_CONV_GRAD", "xla")
    want = grads()
    assert len(calls) == 5
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(jnp.abs(b).max()))


def test_symbolic_batch_exports_with_flax_pools(monkeypatch):
    monkeypatch.setattr(P, "_MIN_ELEMENTS", 1 << 17)   # the default: the size is compared
    (b,) = jax.export.symbolic_shape("b")
    spec = jax.ShapeDtypeStruct((b, 8, 8, 3), jnp.float32)
    exported = jax.export.export(jax.jit(lambda x: P.max_pool(x, (2, 2), (2, 2))))(spec)
    x = jnp.asarray(np.random.default_rng(6).normal(size=(5, 8, 8, 3)), jnp.float32)
    np.testing.assert_array_equal(exported.call(x), nn.max_pool(x, (2, 2), (2, 2)))
