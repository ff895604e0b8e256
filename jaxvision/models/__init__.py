"""The model zoo: Flax linen classifiers on NHWC float inputs, built by name.

Every classifier is called as ``model.apply(variables, x, train=False) -> logits (N, C)``
(float32), keeps batch-norm statistics in ``batch_stats``, draws dropout from the ``dropout`` rng
stream, and names its classifier layer ``head`` (so ``params['head']`` can be swapped for a new
class count). ``return_features=True`` returns ``(logits, {layer_name: activation})``.

    model = build_model("resnet18", num_classes=10, stem="cifar")
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Mapping

import flax.linen as nn

from jaxvision.models import layers
from jaxvision.models.alexnet import AlexNet
from jaxvision.models.densenet import DenseNet
from jaxvision.models.inception import GoogLeNet, InceptionBlock
from jaxvision.models.knn import knn_neighbors, knn_predict
from jaxvision.models.lenet import LeNet5
from jaxvision.models.mlp import MLP, Linear
from jaxvision.models.resnet import ResNet, resnet_config
from jaxvision.models.small_cnn import SmallCNN
from jaxvision.models.summary import format_table, summarize
from jaxvision.models.vgg import VGG


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A registered model: its class, the field values of the named preset, one-line blurb."""

    cls: type[nn.Module]
    defaults: Mapping[str, Any]
    description: str


def _spec(cls: type[nn.Module], description: str, **defaults: Any) -> ModelSpec:
    return ModelSpec(cls, dict(defaults), description)


MODELS: dict[str, ModelSpec] = {
    "linear": _spec(Linear, "softmax regression on flattened pixels", num_classes=10),
    "mlp": _spec(MLP, "multilayer perceptron on flattened pixels", num_classes=10),
    "small_cnn": _spec(SmallCNN, "3-stage conv-norm-relu net, the default for 64x64 scenes", num_classes=10),
    "lenet5": _spec(LeNet5, "LeNet-5, 32x32 (28x28 zero-padded)", num_classes=10),
    "alexnet": _spec(AlexNet, "AlexNet, ungrouped, 224x224", num_classes=1000),
    "alexnet_torchvision": _spec(
        AlexNet, "AlexNet as torchvision builds it (64-192-384-256-256), 224x224", num_classes=1000,
        channels=(64, 192, 384, 256, 256),
    ),
    "alexnet_small": _spec(
        AlexNet, "AlexNet at width 1/4 with a 3x3/1 stem and a 3x3 grid, for 32-64 px inputs",
        num_classes=10, width=0.25, stem_kernel=3, stem_stride=1, grid=3,
    ),
    "googlenet": _spec(GoogLeNet, "GoogLeNet / Inception-v1 (no aux heads), 224x224", num_classes=1000),
    "googlenet_small": _spec(
        GoogLeNet, "GoogLeNet at width 1/4 with a 3x3/1 stem, for 32x32", num_classes=10, stem="cifar", width=0.25,
    ),
    "densenet121": _spec(DenseNet, "DenseNet-121, 224x224", num_classes=1000),
    "densenet_bc100": _spec(
        DenseNet, "DenseNet-BC-100 (k=12), 32x32", num_classes=10, growth=12, blocks=(16, 16, 16), stem="cifar",
    ),
    "densenet_bc40": _spec(
        DenseNet, "DenseNet-BC-40 (k=12), a small 32x32 config", num_classes=10, growth=12, blocks=(6, 6, 6), stem="cifar",
    ),
}
for _depth in (11, 13, 16, 19):
    MODELS[f"vgg{_depth}"] = _spec(VGG, f"VGG-{_depth}, 224x224", num_classes=1000, depth=_depth)
MODELS["vgg11_small"] = _spec(
    VGG, "VGG-11 at width 1/4 with 256-wide fc layers and a 1x1 grid, for 32x32",
    num_classes=10, depth=11, width=0.25, fc_width=256, grid=1,
)
for _depth in (18, 34, 50, 101, 152):
    MODELS[f"resnet{_depth}"] = _spec(ResNet, f"ResNet-{_depth}, 224x224 (stem='cifar' for 32x32)", num_classes=1000, **resnet_config(_depth))
for _depth in (20, 32, 44, 56, 110):
    MODELS[f"resnet{_depth}"] = _spec(ResNet, f"ResNet-{_depth} (CIFAR layout), 32x32", **resnet_config(_depth))

_ALIASES = {"lenet": "lenet5", "lenet_5": "lenet5", "inception_v1": "googlenet", "cnn": "small_cnn"}


def list_models() -> list[str]:
    """Returns the registered model names, sorted."""
    return sorted(MODELS)


def model_fields(cls: type[nn.Module]) -> tuple[str, ...]:
    """Returns the constructor arguments a model class accepts (its dataclass fields)."""
    return tuple(f.name for f in dataclasses.fields(cls) if f.init and f.name not in ("parent", "name"))


def _freeze(value: Any) -> Any:
    # Configs give lists; module fields must be hashable.
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Returns the registered model ``name`` with ``kwargs`` overriding its preset fields.

    Raises ValueError for an unknown name (with close matches) or an argument the model does not
    accept (with the accepted ones), and for an unknown initializer/activation/norm/dtype name.
    """
    key = _ALIASES.get(name, name)
    if key not in MODELS:
        close = difflib.get_close_matches(name, list(MODELS) + list(_ALIASES), n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown model {name!r}.{hint} Registered models: {', '.join(list_models())}.")
    spec = MODELS[key]
    accepted = model_fields(spec.cls)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        hints = []
        for u in unknown:
            close = difflib.get_close_matches(u, accepted, n=1)
            hints.append(f"{u!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ValueError(
            f"build_model({name!r}): {spec.cls.__name__} does not accept {', '.join(hints)}. "
            f"Accepted arguments: {', '.join(accepted)}."
        )
    fields = {**spec.defaults, **{k: _freeze(v) for k, v in kwargs.items()}}
    # Fail at build time, not at the first forward pass, on a misspelt choice.
    if "kernel_init" in fields:
        layers.initializer(fields["kernel_init"])
    if "activation" in fields:
        layers.activation(fields["activation"])
    if "norm" in fields:
        layers.norm(fields["norm"], train=False)
    for field in ("dtype", "param_dtype"):
        if field in fields:
            fields[field] = layers.resolve_dtype(fields[field])
    return spec.cls(**fields)


__all__ = [
    "MODELS", "ModelSpec", "build_model", "list_models", "model_fields", "layers",
    "Linear", "MLP", "SmallCNN", "LeNet5", "AlexNet", "VGG", "ResNet", "GoogLeNet", "InceptionBlock",
    "DenseNet", "resnet_config", "knn_predict", "knn_neighbors", "summarize", "format_table",
]


def build_backbone(spec: Mapping[str, Any], dtype: Any = None) -> nn.Module:
    """The zoo model a detector or segmenter reads feature maps from: ``spec`` is its config
    (``name`` and fields, e.g. ``config.model.backbone``); its classifier head is unused, so
    it gets one output unless ``spec`` says otherwise."""
    fields = {k: (tuple(v) if isinstance(v, list) else v) for k, v in dict(spec).items() if k != "name"}
    fields.setdefault("num_classes", 1)
    if dtype is not None:
        fields["dtype"] = dtype
    return build_model(str(spec["name"]), **fields)

