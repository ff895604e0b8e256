"""build_model: names, presets, argument checking."""

from __future__ import annotations

import jax.numpy as jnp
import pytest

from jaxvision.models import MODELS, AlexNet, ResNet, build_model, list_models, model_fields


def test_presets_and_overrides():
    model = build_model("resnet20", num_classes=100)
    assert isinstance(model, ResNet)
    assert model.num_classes == 100 and model.stage_sizes == (3, 3, 3) and model.stem == "cifar"
    assert build_model("lenet").__class__ is build_model("lenet5").__class__  # alias


def test_config_lists_become_tuples_and_dtype_names_resolve():
    model = build_model("alexnet", remove=["conv3", "fc6"], dtype="bfloat16")
    assert isinstance(model, AlexNet) and model.remove == ("conv3", "fc6")
    assert model.dtype == jnp.bfloat16
    hash(model)  # modules must stay hashable for jit


def test_unknown_name_suggests_close_matches():
    with pytest.raises(ValueError, match="Did you mean 'resnet18'"):
        build_model("resnet_18")


def test_unknown_argument_lists_the_accepted_ones():
    with pytest.raises(ValueError, match=r"'widht' \(did you mean 'width'\?\).*Accepted arguments: num_classes"):
        build_model("small_cnn", widht=2.0)


def test_bad_choice_fails_at_build_time():
    with pytest.raises(ValueError, match="activation"):
        build_model("mlp", activation="relux")
    with pytest.raises(ValueError, match="norm"):
        build_model("resnet18", norm="batchnorm")


def test_every_model_has_the_common_fields():
    for name in list_models():
        fields = set(model_fields(MODELS[name].cls))
        assert {"num_classes", "dtype", "param_dtype", "kernel_init"} <= fields, name
