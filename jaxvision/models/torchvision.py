"""torchvision classifiers' weights in this zoo: state-dict names and layouts -> flax variables.

``TORCHVISION_MODELS`` maps a torchvision constructor name to the zoo model that computes the
same function (``alexnet`` is ``alexnet_torchvision``, ``vgg16_bn`` is ``vgg16`` with batch norm,
``resnet50`` is ``resnet50``: torchvision's ResNets are v1.5 with the stride in the 3x3 conv, as
ours). ``convert(name, state_dict, template)`` fills ``template`` (the zoo model's variables,
or their shapes) from a torchvision state dict of numpy arrays:

* conv weights OIHW -> HWIO; linear weights (out, in) -> (in, out);
* the first fc layer after the conv stack reads a flattened (C, H, W) map in torchvision and an
  (H, W, C) one here, so its rows are permuted;
* batch norm ``weight``/``bias``/``running_mean``/``running_var`` -> ``scale``/``bias`` and
  ``batch_stats`` ``mean``/``var`` (both use eps 1e-5; ``num_batches_tracked`` is unused).

The match is strict, as ``torch.nn.Module.load_state_dict(strict=True)``: the first tensor the
model needs that the file lacks, a tensor of the wrong shape, or tensors left over are errors
that name them.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import jax
import numpy as np

from jaxvision.models.vgg import VGG_STAGES

# torchvision name -> (zoo name, extra model arguments)
TORCHVISION_MODELS: dict[str, tuple[str, dict]] = {
    "alexnet": ("alexnet_torchvision", {}),
    **{f"vgg{d}": (f"vgg{d}", {}) for d in VGG_STAGES},
    **{f"vgg{d}_bn": (f"vgg{d}", {"norm": "batch"}) for d in VGG_STAGES},
    **{f"resnet{d}": (f"resnet{d}", {}) for d in (18, 34, 50, 101, 152)},
}

# Our leaf name -> torchvision's, per kind of layer.
_LEAVES = {
    "conv": {"kernel": "weight", "bias": "bias"},
    "linear": {"kernel": "weight", "bias": "bias"},
    "bn": {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"},
}
_RESNET = (
    (r"conv1", "conv1", "conv"),
    (r"norm1", "bn1", "bn"),
    (r"layer(\d+)_(\d+)/conv(\d+)", r"layer\1.\2.conv\3", "conv"),
    (r"layer(\d+)_(\d+)/norm(\d+)", r"layer\1.\2.bn\3", "bn"),
    (r"layer(\d+)_(\d+)/downsample_conv", r"layer\1.\2.downsample.0", "conv"),
    (r"layer(\d+)_(\d+)/downsample_norm", r"layer\1.\2.downsample.1", "bn"),
    (r"head", "fc", "linear"),
)


def _vgg_modules(depth: int, batch_norm: bool, grid: int) -> dict[str, tuple[str, str]]:
    # torchvision's ``features`` is a flat Sequential: conv, [bn], relu per layer, a pool per
    # stage; the index of a layer counts all of them.
    out, idx = {}, 0
    for s, widths in enumerate(VGG_STAGES[depth], start=1):
        for i in range(1, len(widths) + 1):
            out[f"conv{s}_{i}"] = (f"features.{idx}", "conv")
            idx += 1
            if batch_norm:
                out[f"norm{s}_{i}"] = (f"features.{idx}", "bn")
                idx += 1
            idx += 1  # relu
        idx += 1      # max pool
    out.update({"fc6": ("classifier.0", f"flat{grid}"), "fc7": ("classifier.3", "linear"),
                "head": ("classifier.6", "linear")})
    return out


_ALEXNET = {"conv1": ("features.0", "conv"), "conv2": ("features.3", "conv"),
            "conv3": ("features.6", "conv"), "conv4": ("features.8", "conv"),
            "conv5": ("features.10", "conv"), "fc6": ("classifier.1", "flat6"),
            "fc7": ("classifier.4", "linear"), "head": ("classifier.6", "linear")}


def head_key(name: str) -> str:
    """The torchvision key of the classifier's weight (its rows count the classes)."""
    _check_name(name)
    return "fc.weight" if name.startswith("resnet") else "classifier.6.weight"


def _check_name(name: str) -> None:
    if name not in TORCHVISION_MODELS:
        raise ValueError(f"no torchvision layout for model {name!r}; supported: "
                         f"{', '.join(TORCHVISION_MODELS)}.")


def module_map(name: str) -> Any:
    """``our module path ('layer1_0/conv1') -> (torchvision prefix, kind)`` for ``name``: a
    function of the path (kind 'conv', 'bn', 'linear' or 'flat<grid>'), or None if unmapped."""
    _check_name(name)
    if name.startswith("resnet"):
        def lookup(path: str) -> tuple[str, str] | None:
            for pattern, repl, kind in _RESNET:
                if re.fullmatch(pattern, path):
                    return re.sub(f"^{pattern}$", repl, path), kind
            return None
        return lookup
    table = (_ALEXNET if name == "alexnet" else
             _vgg_modules(int(name[3:5]), name.endswith("_bn"), grid=7))
    return table.get


def _torch_shape(kind: str, leaf: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    if leaf == "kernel" and kind == "conv":
        h, w, i, o = shape
        return (o, i, h, w)
    if leaf == "kernel":
        return (shape[1], shape[0])
    return tuple(shape)


def _to_flax(kind: str, leaf: str, value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if leaf != "kernel":
        return value
    if kind == "conv":
        return value.transpose(2, 3, 1, 0)
    if kind.startswith("flat"):
        g = int(kind[4:])
        out_dim, in_dim = value.shape
        c = in_dim // (g * g)
        return value.reshape(out_dim, c, g, g).transpose(2, 3, 1, 0).reshape(shape)
    return value.T


def convert(name: str, state_dict: Mapping[str, np.ndarray], template: Mapping[str, Any], *,
            source: str = "the state dict") -> dict:
    """Returns ``template``'s variables (``{'params': ..., 'batch_stats': ...}``, arrays or
    ``ShapeDtypeStruct`` leaves) filled from the torchvision ``state_dict`` of model ``name``,
    as float32 numpy arrays of the template's shapes. Raises ``ValueError`` naming the first
    missing or mis-shaped tensor, or the tensors left unused (``source`` names the file)."""
    lookup = module_map(name)
    used: set[str] = set()

    def fill(path: tuple, leaf: Any) -> np.ndarray:
        keys = [str(getattr(k, "key", k)) for k in path]
        module, leaf_name = "/".join(keys[1:-1]), keys[-1]   # keys[0]: the collection
        found = lookup(module)
        if found is None or leaf_name not in _LEAVES["bn" if found[1] == "bn" else "conv"]:
            raise ValueError(f"{name}: the zoo model has {'/'.join(keys)}, which has no "
                             "torchvision counterpart; this is a bug in the name table of "
                             "jaxvision/models/torchvision.py.")
        prefix, kind = found
        table = _LEAVES["bn"] if kind == "bn" else _LEAVES["conv"]
        key = f"{prefix}.{table[leaf_name]}"
        if key not in state_dict:
            raise ValueError(f"{source}: tensor {key!r} is missing (needed for {'/'.join(keys)} "
                             f"of {name}); is this a torchvision {name} state dict?")
        value = np.asarray(state_dict[key])
        want = _torch_shape(kind, leaf_name, tuple(leaf.shape))
        if tuple(value.shape) != want:
            raise ValueError(f"{source}: tensor {key!r} has shape {tuple(value.shape)}, but "
                             f"{name} needs {want} there (for {'/'.join(keys)}).")
        used.add(key)
        return np.ascontiguousarray(_to_flax(kind, leaf_name, value.astype(np.float32),
                                             tuple(leaf.shape)))

    # Parameters first, so that a missing layer is named by its weight, not its statistics.
    order = ["params", *(c for c in template if c != "params")]
    out = {c: jax.tree_util.tree_map_with_path(fill, {c: template[c]})[c] for c in order}
    suffix = "num_batches_tracked"
    left = sorted(k for k in state_dict if k not in used and not (
        k.endswith(suffix) and k[:-len(suffix)] + "running_mean" in used))
    if left:
        raise ValueError(f"{source}: {len(left)} tensor(s) are not used by {name}: "
                         f"{', '.join(left[:8])}{', ...' if len(left) > 8 else ''}; is this a "
                         f"torchvision {name} state dict?")
    return out
