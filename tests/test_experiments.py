"""Every named config of every experiment: contract keys, model builds at its declared input shape
(``jax.eval_shape``, no data, no compute); the published ImageNet counts through ``summary``'s
path; label smoothing and per-class metrics against independent references."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import confusion_matrix as sk_confusion_matrix
from sklearn.metrics import precision_recall_fscore_support

from jaxvision import losses, metrics
from jaxvision.config import get_config, list_experiments
from jaxvision.data.source import DataError, SourceInfo, build_source
from jaxvision.experiment import load_experiment
from jaxvision.train.bench import model_and_input_shape, summary

SPECS = [spec for spec, _, _ in list_experiments()]
CLASSIFICATION = "experiments/classification.py"
CONTRACT_KEYS = ("seed", "data.name", "data.data_dir", "data.manual_dir", "train.batch_size",
                 "train.steps", "train.eval_every", "train.checkpoint_every", "train.log_every",
                 "parallel.strategy")
NAMED = ("default", "lenet_mnist", "cnn_fashion_mnist", "resnet18_cifar10", "alexnet_imagenet",
         "vgg16_imagenet", "alexnet_ablation")


def _has(config: ml_collections.ConfigDict, dotted: str) -> bool:
    node = config
    for part in dotted.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            return False
        node = node[part]
    return True


def _declared_model(config: ml_collections.ConfigDict, spec: str):
    """The model and (H, W, C) input from the config's declaration alone (never reads data)."""
    exp = load_experiment(spec)
    shape = tuple(int(d) for d in config.data.input_shape)
    info = SourceInfo(name=str(config.data.name), split=str(config.data.eval_split),
                      keys=("image", "label"), num_classes=int(config.data.get("num_classes", 0)) or None)
    return exp, exp.build_model(config, info), shape


def test_every_classification_config_is_registered_and_documented():
    names = [s.split(":", 1)[1] for s in SPECS if s.startswith(CLASSIFICATION)]
    assert set(NAMED) <= set(names), f"missing configs: {set(NAMED) - set(names)}"
    for _, _, doc in list_experiments():
        assert doc, "every named config needs a one-line docstring (shown by `jaxvision list`)"


@pytest.mark.parametrize("spec", SPECS)
def test_config_has_contract_keys_and_model_initializes_at_declared_shape(spec):
    config = get_config(spec)
    missing = [k for k in CONTRACT_KEYS if not _has(config, k)]
    assert not missing, f"{spec} lacks contract keys {missing}"
    if not _has(config, "data.input_shape"):
        # Experiments without a declaration are built from their data (procedural by default).
        model, shape = model_and_input_shape(config, spec)
        exp = load_experiment(spec)
    else:
        exp, model, shape = _declared_model(config, spec)
    assert len(shape) == 3, f"{spec}: data.input_shape must be (H, W, C), got {shape}"
    batch = {"image": jax.ShapeDtypeStruct((2,) + shape, jnp.uint8),
             "label": jax.ShapeDtypeStruct((2,), jnp.int32)}
    if "image_right" in tuple(config.data.get("keys", ())):  # stereo models read the pair
        batch["image_right"] = batch["image"]
    variables = jax.eval_shape(lambda b, k: exp.init_variables(config, model, b, k), batch,
                               jax.random.key(0))
    logits = jax.eval_shape(lambda v, b: model.apply(v, exp.prepare(config, b), train=False),
                            variables, batch)
    if _has(config, "data.num_classes") and spec.startswith(CLASSIFICATION):
        assert logits.shape == (2, config.data.num_classes)


@pytest.mark.parametrize("name", ["default", "alexnet_ablation"])
def test_declared_shape_matches_the_data_when_present(name):
    """The declaration is only a stand-in for the data: where the data is here, they agree."""
    spec = f"{CLASSIFICATION}:{name}"
    config = get_config(spec)
    try:
        build_source(config.data, config.data.eval_split)
    except DataError:
        pytest.skip(f"data {config.data.name!r} is not prepared here")
    model, shape = model_and_input_shape(config, spec)
    assert shape == tuple(config.data.input_shape)
    assert model.num_classes == config.data.num_classes


@pytest.mark.parametrize("name, params", [("alexnet_imagenet", 62_378_344),
                                          ("vgg16_imagenet", 138_357_544)])
def test_imagenet_configs_summarize_to_the_published_counts(name, params):
    spec = f"{CLASSIFICATION}:{name}"
    config = get_config(spec, ["data.data_dir=/nonexistent/tfds"])  # force the no-data path
    table, totals = summary(config, spec)
    assert totals["params"] == params
    assert f"{params:,}" in table and "(224, 224, 3)" in table


def test_summary_without_data_or_declaration_says_how_to_fix():
    spec = f"{CLASSIFICATION}:alexnet_imagenet"
    config = get_config(spec, ["data.data_dir=/nonexistent/tfds"])
    del config.data["input_shape"]
    with pytest.raises(DataError, match="data.input_shape"):
        summary(config, spec)


@pytest.mark.parametrize("key, text, value", [
    ("optim.weight_decay", "5e-4", 5e-4), ("model.dropout", "0.3", 0.3), ("model.norm", "none", "none"),
    ("data.train_pp", "random_crop(28, pad=2)|flip_lr", "random_crop(28, pad=2)|flip_lr"),
    ("loss.label_smoothing", "0.1", 0.1), ("train.early_stopping_patience", "3", 3),
])
def test_regularizers_are_reachable_by_override(key, text, value):
    spec = f"{CLASSIFICATION}:cnn_fashion_mnist"
    config = get_config(spec, [f"{key}={text}"])
    group, leaf = key.split(".")
    assert config[group][leaf] == value
    _, model, _ = _declared_model(config, spec)
    if group == "model":
        assert getattr(model, leaf) == value


def test_ablation_variants_build():
    config = get_config(f"{CLASSIFICATION}:alexnet_ablation")
    names = [name for name, _ in config.ablation.variants]
    assert names == ["full", "no_fc7", "no_fc6_fc7", "no_conv3_conv4", "no_conv3_conv4_fc6_fc7"]
    sizes = []
    for name, overrides in config.ablation.variants:
        variant = get_config(f"{CLASSIFICATION}:alexnet_ablation",
                             [f"{k}={v!r}" for k, v in overrides.items()])
        exp, model, shape = _declared_model(variant, f"{CLASSIFICATION}:alexnet_ablation")
        params = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), jnp.zeros((1,) + shape))
        sizes.append(sum(np.prod(p.shape) for p in jax.tree.leaves(params)))
    assert all(later < sizes[0] for later in sizes[1:]), f"removing layers must shrink the model: {sizes}"


def _np_smoothed_ce(logits: np.ndarray, labels: np.ndarray, s: float) -> np.ndarray:
    """Closed form: -(1-s) log p_y - (s/C) sum_c log p_c, with log p from a stable log-softmax."""
    z = logits.astype(np.float64)
    logp = z - z.max(1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
    c = z.shape[1]
    return -(1 - s) * logp[np.arange(len(labels)), labels] - s / c * logp.sum(1)


@settings(max_examples=25, deadline=None)
@given(c=st.sampled_from([2, 3, 10]), s=st.floats(0.0, 0.5), seed=st.integers(0, 2**16))
def test_label_smoothing_matches_closed_form(c, s, seed):
    # Few distinct shapes: every new shape recompiles the eager ops.
    n = 6
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=5.0, size=(n, c)).astype(np.float32)
    labels = rng.integers(0, c, n).astype(np.int32)
    got = np.asarray(losses.softmax_cross_entropy(jnp.asarray(logits), jnp.asarray(labels),
                                                  label_smoothing=s))
    np.testing.assert_allclose(got, _np_smoothed_ce(logits, labels, s), rtol=1e-5, atol=1e-5)


def test_label_smoothing_minimum_is_at_the_smoothed_distribution():
    """With s > 0 the loss is smallest at log p = log((1-s) onehot + s/C), not at a one-hot."""
    c, s = 5, 0.2
    target = np.full(c, s / c)
    target[2] += 1 - s
    best = np.asarray(losses.softmax_cross_entropy(jnp.log(jnp.asarray(target))[None], jnp.array([2]),
                                                   label_smoothing=s))
    entropy = -np.sum(target * np.log(target))
    np.testing.assert_allclose(best, [entropy], rtol=1e-5)
    peaked = np.asarray(losses.softmax_cross_entropy(jnp.array([[0, 0, 20.0, 0, 0]]), jnp.array([2]),
                                                     label_smoothing=s))
    assert peaked[0] > best[0]


@settings(max_examples=20, deadline=None)
@given(c=st.sampled_from([2, 3, 7]), n_valid=st.integers(1, 24), seed=st.integers(0, 2**16))
def test_confusion_matrix_and_per_class_scores_match_sklearn(c, n_valid, seed):
    n = 24
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, n)
    preds = np.where(rng.random(n) < 0.5, labels, rng.integers(0, c, n))
    valid = np.zeros(n, bool)  # padded eval examples have weight 0
    valid[rng.permutation(n)[:n_valid]] = True
    cm = np.asarray(metrics.confusion_matrix(jnp.asarray(preds), jnp.asarray(labels), c,
                                             jnp.asarray(valid)))
    expected = sk_confusion_matrix(labels, preds, labels=list(range(c)), sample_weight=valid.astype(float))
    np.testing.assert_array_equal(cm, expected)
    got = metrics.precision_recall_f1(cm)
    p, r, f, support = precision_recall_fscore_support(labels[valid], preds[valid], labels=list(range(c)),
                                                       zero_division=0)
    np.testing.assert_allclose(got["precision"], p, atol=1e-12)
    np.testing.assert_allclose(got["recall"], r, atol=1e-12)
    np.testing.assert_allclose(got["f1"], f, atol=1e-12)
    np.testing.assert_array_equal(got["support"], support)
