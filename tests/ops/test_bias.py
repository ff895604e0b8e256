"""``jaxvision.ops.bias`` and ``layers.Conv``'s bias: values and derivatives (first, second,
forward mode) against a float64 numpy reference and ``y + bias``; where the product applies;
``layers.Conv`` against ``flax.linen.Conv`` (parameters, outputs, gradients)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision.models import layers
from jaxvision.ops import bias as B
from jaxvision.ops import conv as conv_ops

# Just above the floor, so that the product applies: 2 * 32 * 64 * 32 = 2**17.
SHAPE = (2, 32, 64, 32)


def _data(shape, seed=0, dtype=np.float32):
    r = np.random.default_rng(seed)
    y = r.normal(size=shape).astype(dtype)
    b = r.normal(size=shape[-1:]).astype(dtype)
    g = r.normal(size=shape).astype(dtype)
    return y, b, g


def _has_product(fn, *args) -> bool:
    """Whether ``fn``'s jaxpr (nested ones included) has a ``dot_general``."""
    return "dot_general" in str(jax.make_jaxpr(fn)(*args))


def _loss(add):
    # A nonlinearity between the add and the sum, so that second derivatives are not zero.
    return lambda y, b, g: jnp.sum(jnp.tanh(add(y, b)) * g)


_OURS = jax.jit(jax.value_and_grad(_loss(B.bias_add), argnums=(0, 1)))
_PLAIN = jax.jit(jax.value_and_grad(_loss(jnp.add), argnums=(0, 1)))


@pytest.mark.parametrize("shape", [SHAPE, (2, 4, 16, 32, 32), (4096, 32)])
def test_values_and_gradients_match_numpy_and_the_plain_add(shape):
    y, b, g = _data(shape)
    assert B.applies(shape)
    (v, (dy, db)) = _OURS(y, b, g)
    (v0, (dy0, db0)) = _PLAIN(y, b, g)
    t = 1 - np.tanh(y.astype(np.float64) + b) ** 2
    np.testing.assert_allclose(db, (t * g).reshape(-1, shape[-1]).sum(0), rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(db, db0, rtol=1e-5, atol=1e-3)
    np.testing.assert_array_equal(dy, dy0)
    np.testing.assert_array_equal(v, v0)
    np.testing.assert_array_equal(B.bias_add(y, b), y + b)


def test_the_bias_gradient_is_a_product_only_where_it_applies():
    y, b, g = _data(SHAPE)
    grad_b = jax.grad(_loss(B.bias_add), argnums=1)
    assert _has_product(grad_b, y, b, g)
    small = tuple(s // 2 if i == 1 else s for i, s in enumerate(SHAPE))
    assert not B.applies(small)
    assert not _has_product(grad_b, *_data(small))
    few = (2**16, B.MIN_CHANNELS - 1)     # enough elements, too few channels
    assert not B.applies(few) and not _has_product(grad_b, *_data(few))
    # Mixed dtypes, a bias that is not per channel, XLA's formulations: the plain add.
    assert not _has_product(grad_b, y, b.astype(jnp.bfloat16), g)
    assert not _has_product(grad_b, y, np.float32(1.0), g)
    with conv_ops.as_lax():   # a new function: traces are cached per function and shapes
        assert not _has_product(jax.grad(_loss(B.bias_add), argnums=1), y, b, g)
    # Only the input differentiated (saliency, a frozen bias): no product in the forward pass.
    grad_y = jax.grad(_loss(B.bias_add), argnums=0)
    assert not _has_product(grad_y, y, b, g)
    np.testing.assert_array_equal(grad_y(y, b, g), jax.grad(_loss(jnp.add), argnums=0)(y, b, g))


def test_second_derivatives_and_forward_mode_match_the_plain_add():
    y, b, g = _data(SHAPE)
    h = jax.jit(jax.hessian(lambda b: _loss(B.bias_add)(y, b, g)))(b)
    h0 = jax.jit(jax.hessian(lambda b: _loss(jnp.add)(y, b, g)))(b)
    np.testing.assert_allclose(h, h0, rtol=1e-4, atol=1e-5 * float(np.abs(h0).max()))
    ty, tb = _data(SHAPE, seed=1)[:2]
    out, tangent = jax.jvp(B.bias_add, (y, b), (ty, tb))
    np.testing.assert_array_equal(out, y + b)
    np.testing.assert_allclose(tangent, ty + tb, rtol=1e-6, atol=1e-6)
    per_example = jax.vmap(jax.grad(lambda b, y, g: _loss(B.bias_add)(y, b, g)), (None, 0, 0))(
        b, y[:, None], g[:, None])
    np.testing.assert_allclose(per_example.sum(0), _PLAIN(y, b, g)[1][1], rtol=1e-4, atol=1e-3)


def test_bfloat16_sums_in_float32_at_any_size():
    y, b, g = (a.astype(jnp.bfloat16) for a in _data(SHAPE))
    db = jax.grad(lambda b: jnp.sum(B.bias_add(y, b).astype(jnp.float32) * g))(b)
    assert db.dtype == jnp.bfloat16
    ref = np.asarray(g, np.float64).reshape(-1, SHAPE[-1]).sum(0)
    np.testing.assert_allclose(np.asarray(db, np.float64), ref, rtol=1e-2, atol=0.5)
    # Below the floors, 3 channels: 2,048 rows of ones sum to 2,048 (XLA's bfloat16 sum: 256).
    small = jnp.zeros((2, 32, 32, 3), jnp.bfloat16)
    assert not B.applies(small.shape) and B.applies(small.shape, dtype=jnp.bfloat16)
    db = jax.jit(jax.grad(lambda b: jnp.sum(B.bias_add(small, b).astype(jnp.float32))))(
        jnp.zeros(3, jnp.bfloat16))
    np.testing.assert_array_equal(np.asarray(db, np.float32), [2048.0] * 3)


class _Net(nn.Module):
    conv: type
    dtype: object = None

    @nn.compact
    def __call__(self, x):
        x = self.conv(32, (3, 3), name="c1", dtype=self.dtype,
                      bias_init=nn.initializers.normal(1.0))(x)
        x = self.conv(32, (3, 3), strides=2, name="c2", use_bias=False, dtype=self.dtype)(x)
        return self.conv(32, (1, 1), padding="VALID", name="c3", dtype=self.dtype)(jnp.tanh(x))


@pytest.mark.parametrize("dtype", [None, jnp.bfloat16])
def test_conv_has_flax_conv_parameters_outputs_and_gradients(dtype):
    x = _data((2, 64, 64, 8))[0]
    ours = _Net(layers.Conv, dtype)
    params = ours.init(jax.random.key(0), x)
    ref = _Net(nn.Conv).init(jax.random.key(0), x)
    assert jax.tree.structure(params) == jax.tree.structure(ref)
    jax.tree.map(np.testing.assert_array_equal, params, ref)
    assert B.applies((2, 64, 64, 32))

    def loss(net):
        return jax.jit(jax.value_and_grad(lambda p: jnp.sum(net.apply(p, x).astype(jnp.float32))))

    # Against flax's convolution in float32: in bfloat16, XLA:CPU sums flax's bias gradient in
    # bfloat16 (over 2 * 64 * 64 rows of ones it stops at 256 = 256 + 1), ours in float32, c3's
    # too (2 * 32 * 32 * 32 elements, below the float32 floor).
    (v, grads), (v0, grads0) = loss(ours)(params), loss(_Net(nn.Conv))(params)
    tol = 3e-2 if dtype else 1e-4
    np.testing.assert_allclose(v, v0, rtol=tol)
    jax.tree.map(lambda a, c: np.testing.assert_allclose(
        np.asarray(a, np.float32), c, rtol=tol, atol=tol * np.abs(c).max()), grads, grads0)
