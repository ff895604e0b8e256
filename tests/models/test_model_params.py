"""Parameter counts against the published layouts (abstract init only: no real compute)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import pytest

from jaxvision.models import MODELS, build_model, list_models


def _size(tree) -> int:
    return sum(x.size for x in jax.tree.leaves(tree))


@functools.lru_cache(maxsize=None)
def _abstract(name: str, size: int, channels: int = 3, **kwargs):
    """(output ShapeDtypeStruct, variables of ShapeDtypeStructs) of ``name`` on (2, size, size,
    channels) inputs."""
    model = build_model(name, **kwargs)
    x = jax.ShapeDtypeStruct((2, size, size, channels), jnp.float32)
    return jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x), x)


def _params(name: str, size: int = 224, channels: int = 3, **kwargs):
    return _abstract(name, size, channels, **kwargs)[1]["params"]


def test_alexnet_per_layer_counts_match_the_ungrouped_layout():
    params = _params("alexnet", num_classes=1000)
    expected = {
        "conv1": 34_944, "conv2": 614_656, "conv3": 885_120, "conv4": 1_327_488,
        "conv5": 884_992, "fc6": 37_752_832, "fc7": 16_781_312, "head": 4_097_000,
    }
    assert {k: _size(v) for k, v in params.items()} == expected
    assert _size(params) == 62_378_344
    # Layer shapes of the published single-tower model.
    assert params["conv1"]["kernel"].shape == (11, 11, 3, 96)
    assert params["fc6"]["kernel"].shape == (256 * 6 * 6, 4096)


def test_alexnet_grouped_variant_halves_conv2_4_5_weights():
    params = _params("alexnet", groups=2)
    assert params["conv2"]["kernel"].shape == (5, 5, 48, 256)
    assert params["conv4"]["kernel"].shape == (3, 3, 192, 384)
    assert _size(params) == 62_378_344 - (614_400 + 1_327_104 + 884_736) // 2


def test_lenet5_per_layer_counts():
    params = _params("lenet5", 32, 1, num_classes=10)
    assert {k: _size(v) for k, v in params.items()} == {
        "c1": 156, "c3": 2_416, "c5": 48_120, "f6": 10_164, "head": 850,
    }
    assert _size(params) == 61_706
    # MNIST's 28x28 is padded to 32, so the count does not change.
    assert _size(_params("lenet5", 28, 1, num_classes=10)) == 61_706


@pytest.mark.parametrize(
    "name,expected",
    [
        ("vgg11", 132_863_336),
        ("vgg16", 138_357_544),
        ("resnet18", 11_689_512),
        ("resnet34", 21_797_672),
        ("resnet50", 25_557_032),
        ("densenet121", 7_978_856),
    ],
)
def test_published_totals_at_224(name, expected):
    assert _size(_params(name)) == expected


def test_resnet20_cifar_count():
    # He et al.: 0.27M with option-A (parameter-free) shortcuts; 269,722 with 10 classes.
    assert _size(_params("resnet20", 32, 3)) == 269_722


@pytest.mark.slow
def test_densenet_bc100_count():
    # Huang et al. Table 2: DenseNet-BC (L=100, k=12) has 0.8M parameters.
    n = _size(_params("densenet_bc100", 32, 3))
    assert n == 769_162


def _googlenet_reference(norm: bool, num_classes: int = 1000) -> int:
    """Hand count from Table 1 of the paper: k*k*cin*cout per conv plus a bias (or a BN scale and
    shift) per output channel."""
    per_channel = 2 if norm else 1

    def conv(k: int, cin: int, cout: int) -> int:
        return k * k * cin * cout + per_channel * cout

    table = [  # 1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj
        (64, 96, 128, 16, 32, 32), (128, 128, 192, 32, 96, 64),
        (192, 96, 208, 16, 48, 64), (160, 112, 224, 24, 64, 64), (128, 128, 256, 24, 64, 64),
        (112, 144, 288, 32, 64, 64), (256, 160, 320, 32, 128, 128),
        (256, 160, 320, 32, 128, 128), (384, 192, 384, 48, 128, 128),
    ]
    total = conv(7, 3, 64) + conv(1, 64, 64) + conv(3, 64, 192)
    cin = 192
    for c1, r3, c3, r5, c5, pp in table:
        total += conv(1, cin, c1) + conv(1, cin, r3) + conv(3, r3, c3) + conv(1, cin, r5) + conv(5, r5, c5) + conv(1, cin, pp)
        cin = c1 + c3 + c5 + pp
    return total + cin * num_classes + num_classes


def test_googlenet_counts_match_table_1():
    with_bn = _size(_params("googlenet"))
    plain = _size(_params("googlenet", norm="none"))
    assert with_bn == _googlenet_reference(norm=True) == 7_005_832
    assert plain == _googlenet_reference(norm=False) == 6_998_552
    assert 6.6e6 <= plain <= 7.1e6


# Deeper members of an already covered family (same class, only more blocks): slow to trace.
_DEEP = {"resnet44", "resnet56", "resnet101", "resnet110", "resnet152", "vgg13", "vgg19"}


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in _DEEP else n for n in list_models()]
)
def test_every_registered_model_names_its_classifier_head(name):
    # Same (name, size, channels) as the count tests above, so the abstract init is shared.
    size = 32 if name in ("lenet5", "linear", "mlp") or MODELS[name].defaults.get("stem") == "cifar" else 224
    num_classes = MODELS[name].defaults["num_classes"]
    out, variables = _abstract(name, size, 3)
    assert out.shape == (2, num_classes) and out.dtype == jnp.float32
    head = variables["params"]["head"]
    assert head["kernel"].shape[-1] == num_classes and head["bias"].shape == (num_classes,)


@pytest.mark.parametrize("name, kwargs, total", [
    ("alexnet_torchvision", {}, 61_100_840),        # torchvision.models.alexnet()
    ("vgg11", {"norm": "batch"}, 132_868_840),      # torchvision.models.vgg11_bn()
    ("vgg16", {"norm": "batch"}, 138_365_992),      # torchvision.models.vgg16_bn()
    ("resnet34", {}, 21_797_672),
])
def test_torchvision_counterparts_have_torchvisions_parameter_counts(name, kwargs, total):
    # Batch-norm running statistics are buffers in torch, not parameters: params only.
    assert _size(_params(name, **kwargs)) == total
