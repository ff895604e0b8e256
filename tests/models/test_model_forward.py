"""Forward passes, shapes, AlexNet ablations, train/eval behaviour and feature taps."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxvision.models import build_model
from jaxvision.models.alexnet import REMOVABLE

# Test time here is XLA compile time. rbg keys compile far faster than threefry's, and eager
# (un-jitted) calls reuse per-op compilations across models and tests.
KEY = jax.random.key(0, impl="rbg")


def _key(seed: int) -> jax.Array:
    return jax.random.key(seed, impl="rbg")


def _init(model, x):
    return model.init(KEY, x)


def _x(n: int, size: int, channels: int = 3, seed: int = 0) -> jax.Array:
    return jax.random.normal(jax.random.key(seed), (n, size, size, channels))


def _out_shape(model, x_shape) -> tuple[int, ...]:
    x = jax.ShapeDtypeStruct(x_shape, jnp.float32)
    out, _ = jax.eval_shape(lambda x: model.init_with_output(KEY, x), x)
    return out.shape


@pytest.mark.parametrize(
    "size,kwargs",
    [
        (224, {}),
        (64, {"stem_kernel": 5, "stem_stride": 2}),
        (32, {"stem_kernel": 3, "stem_stride": 1}),
        (100, {"stem_kernel": 3, "stem_stride": 1, "grid": 2}),
    ],
)
def test_alexnet_output_shape_for_several_input_sizes(size, kwargs):
    assert _out_shape(build_model("alexnet", num_classes=5, **kwargs), (2, size, size, 3)) == (2, 5)


def test_alexnet_too_small_input_says_how_to_fix_it():
    with pytest.raises(ValueError, match="stem_kernel=3, stem_stride=1"):
        _out_shape(build_model("alexnet"), (1, 32, 32, 3))


@pytest.mark.parametrize("stem,size", [("cifar", 32), ("imagenet", 64), ("imagenet", 224)])
def test_resnet_output_shape_for_both_stems(stem, size):
    model = build_model("resnet18", num_classes=4, stem=stem)
    assert _out_shape(model, (3, size, size, 3)) == (3, 4)


@pytest.mark.parametrize("size", [28, 32])
def test_lenet_forward_at_28_and_32(size):
    model = build_model("lenet5", num_classes=10)
    x = _x(2, size, 1)
    variables = _init(model, x)
    out, feats = model.apply(variables, x, return_features=True)
    assert out.shape == (2, 10) and bool(jnp.all(jnp.isfinite(out)))
    # 28x28 is zero-padded to 32, so C1's map is 28x28 either way.
    assert feats["c1"].shape == (2, 28, 28, 6) and feats["c5"].shape == (2, 1, 1, 120)


def test_lenet_refuses_small_input_without_padding():
    with pytest.raises(ValueError, match="pad_to_32=True"):
        _out_shape(build_model("lenet5", pad_to_32=False), (1, 28, 28, 1))


_REMOVE_VARIANTS = [()] + [(name,) for name in REMOVABLE] + [("fc6", "fc7"), REMOVABLE]


@pytest.mark.parametrize("remove", _REMOVE_VARIANTS, ids=lambda r: "+".join(r) or "full")
def test_alexnet_remove_variants_train_one_step(remove):
    model = build_model(
        "alexnet", num_classes=3, width=1 / 16, stem_kernel=3, stem_stride=1, grid=2, remove=remove,
        dropout=0.0,  # dropout has its own test; its RNG would double the compile time here
    )
    x, y = _x(2, 32), jnp.array([0, 2])
    params = _init(model, x)["params"]
    assert not set(remove) & set(params)
    # Shape fix-up: each surviving layer reads what the previous surviving layer made.
    expected_in = 3
    for name, channels in (("conv1", 6), ("conv2", 16), ("conv3", 24), ("conv4", 24), ("conv5", 16)):
        if name in params:
            assert params[name]["kernel"].shape[2] == expected_in, name
            expected_in = channels
    expected_in *= 2 * 2  # flattened 2x2 grid
    for name in ("fc6", "fc7", "head"):
        if name in params:
            assert params[name]["kernel"].shape[0] == expected_in, name
            expected_in = params[name]["kernel"].shape[1]

    def loss_fn(p):
        logits = model.apply({"params": p}, x, train=True, rngs={"dropout": _key(1)})
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    new_params = jax.tree.map(lambda p, g: p - 0.01 * g, params, grads)
    assert np.isfinite(float(loss))
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    assert float(jnp.abs(new_params["head"]["kernel"] - params["head"]["kernel"]).max()) > 0


def test_alexnet_rejects_unknown_remove_name():
    with pytest.raises(ValueError, match="unknown layer"):
        _out_shape(build_model("alexnet", remove=("conv6",)), (1, 224, 224, 3))


def _tiny_cnn(**kwargs):
    return build_model("small_cnn", **{"num_classes": 3, "widths": (4, 8), **kwargs})


def test_batch_stats_update_only_in_train_mode():
    model = _tiny_cnn(norm="batch")
    x = _x(4, 8) * 3 + 1
    variables = _init(model, x)
    run = partial(model.apply, mutable=["batch_stats"])
    t_batch, updated = run(variables, x, train=True)
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), variables["batch_stats"], updated["batch_stats"])
    assert all(jax.tree.leaves(changed))
    e_batch, same = run(variables, x, train=False)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), variables["batch_stats"], same["batch_stats"]))
    # Eval uses running statistics: an example's logits do not depend on its batch mates.
    e_alone, _ = run(variables, x[:1], train=False)
    assert np.allclose(e_alone, e_batch[:1], atol=1e-5)
    # Train normalizes with batch statistics: they do.
    t_alone, _ = run(variables, x[:1], train=True)
    assert not np.allclose(t_alone, t_batch[:1], atol=1e-3)


def test_dropout_active_only_in_train_mode():
    model = _tiny_cnn(norm="none", dropout=0.5)
    x = _x(4, 8)
    variables = _init(model, x)
    run = lambda seed, train: model.apply(variables, x, train=train, rngs={"dropout": _key(seed)})  # noqa: E731
    assert np.array_equal(run(1, False), run(2, False))
    assert not np.allclose(run(1, True), run(2, True))
    assert np.array_equal(run(1, True), run(1, True))


def test_zero_init_residual_makes_blocks_start_as_identity():
    # The same shapes as the resnet20 feature test below, so its eager op compilations are reused.
    model = build_model("resnet20", num_classes=5, stage_sizes=(1, 1, 1), zero_init_residual=True)
    x = _x(2, 8)
    variables = _init(model, x)
    assert float(jnp.abs(variables["params"]["layer1_0"]["norm2"]["scale"]).max()) == 0.0
    assert float(jnp.abs(variables["params"]["layer1_0"]["norm1"]["scale"]).min()) == 1.0
    _, f = model.apply(variables, x, return_features=True)
    # Identity-shape block: relu(0 + x) == x since the stem output is already >= 0.
    assert np.allclose(f["layer1"], f["stem"])


_FEATURE_MODELS = [
    ("mlp", {"hidden": (8, 6)}, 8, "fc2", {"fc1", "fc2"}),
    ("small_cnn", {"widths": (4, 8)}, 8, "pool", {"stage1", "stage2", "pool"}),
    ("lenet5", {}, 32, "f6", {"c1", "s2", "c3", "s4", "c5", "f6"}),
    ("alexnet_small", {"width": 1 / 16, "lrn": True}, 32, "fc7", {"conv1", "conv2", "conv3", "conv4", "conv5", "pool5", "fc6", "fc7"}),
    ("vgg11_small", {"width": 1 / 16, "fc_width": 8}, 32, "fc7", {"conv1_1", "pool5", "fc6", "fc7"}),
    ("resnet20", {"stage_sizes": (1, 1, 1)}, 8, "pool", {"stem", "layer1", "layer2", "layer3", "pool"}),
    ("linear", {}, 4, "input", {"input"}),
]


@pytest.mark.parametrize("name,kwargs,size,last,keys", _FEATURE_MODELS, ids=[m[0] for m in _FEATURE_MODELS])
def test_features_and_head_read_the_last_feature(name, kwargs, size, last, keys):
    channels = 1 if name == "lenet5" else 3
    model = build_model(name, num_classes=5, **kwargs)
    x = _x(2, size, channels)
    variables = _init(model, x)
    run = partial(model.apply, return_features=True, capture_intermediates=True, mutable=["intermediates"])
    (logits, feats), state = run(variables, x)
    assert logits.shape == (2, 5) and keys <= set(feats)
    # The head is the classifier: logits = last feature @ head + bias (a linear probe's input).
    head = variables["params"]["head"]
    ref = np.asarray(feats[last]).reshape(2, -1) @ np.asarray(head["kernel"]) + np.asarray(head["bias"])
    assert np.allclose(logits, ref, atol=1e-4)
    # capture_intermediates taps every module's output, the head's included.
    assert np.allclose(state["intermediates"]["head"]["__call__"][0], logits)


def test_bfloat16_compute_keeps_float32_params_and_logits():
    model = _tiny_cnn(dtype="bfloat16")
    x = _x(2, 8)
    variables = _init(model, x)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))
    out, feats = model.apply(variables, x, return_features=True)
    assert out.dtype == jnp.float32 and feats["stage1"].dtype == jnp.bfloat16
    ref = _tiny_cnn().apply(variables, x)
    assert np.allclose(out, ref, atol=0.1, rtol=0.1)


def test_replacing_the_head_changes_only_the_class_count():
    old, new = _tiny_cnn(num_classes=10), _tiny_cnn(num_classes=3)
    x = _x(1, 8)
    v_old, v_new = _init(old, x), _init(new, x)
    params = {**v_old["params"], "head": v_new["params"]["head"]}
    out = new.apply({"params": params, "batch_stats": v_old["batch_stats"]}, x)
    assert out.shape == (1, 3)


@pytest.mark.parametrize(
    "name,kwargs,keys",
    [
        ("googlenet_small", {}, {"stem": 192 // 4, "inception3a": 64, "inception5b": 256, "pool": 256}),
        ("densenet_bc40", {}, {"stem": 24, "block1": 96, "block3": 132, "pool": 132}),
    ],
)
def test_feature_taps_of_the_deep_models(name, kwargs, keys):
    # Abstract only: compiling these deep graphs on CPU takes longer than this suite may.
    model = build_model(name, num_classes=5, **kwargs)
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    logits, feats = jax.eval_shape(lambda x: model.init_with_output(KEY, x, return_features=True)[0], x)
    assert logits.shape == (2, 5)
    assert {k: feats[k].shape[-1] for k in keys} == keys
