"""torchvision state dicts -> zoo variables (``jaxvision.models.torchvision``) and the
``import-weights`` workdir (``jaxvision.tools.import_weights``).

The state dicts and the reference forward passes below are written from torchvision's own module
layout (``torchvision/models/{resnet,vgg,alexnet}.py``), NCHW in plain numpy (float64), and do not
use the name table in ``jaxvision/models/torchvision.py``: a converted zoo model must give the
logits torchvision's model would give with the same tensors.
"""

from __future__ import annotations

import json
import struct
from functools import lru_cache

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision.models import build_model
from jaxvision.models.torchvision import TORCHVISION_MODELS, convert

NUM_CLASSES = 7
BN_EPS = 1e-5


# ---------------------------------------------------------------------------------------------
# torchvision-style state dicts (names and layouts as torchvision's modules register them)
# ---------------------------------------------------------------------------------------------

class _StateDict:
    """Fills a ``{key: np.ndarray}`` dict with seeded random tensors, torchvision layouts."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.sd: dict[str, np.ndarray] = {}

    def _normal(self, shape, std):
        # Uniform with this std (numpy draws uniforms several times faster than normals).
        u = self.rng.random(shape, dtype=np.float32)
        u -= np.float32(0.5)
        u *= np.float32(std * np.sqrt(12.0))
        return u

    def conv(self, key, out_ch, in_ch, k, bias):
        # He-scaled weights keep activations O(1) through deep stacks.
        self.sd[f"{key}.weight"] = self._normal((out_ch, in_ch, k, k), np.sqrt(2.0 / (in_ch * k * k)))
        if bias:
            self.sd[f"{key}.bias"] = self._normal((out_ch,), 0.1)

    def bn(self, key, c):
        self.sd[f"{key}.weight"] = self.rng.uniform(0.5, 1.5, c).astype(np.float32)
        self.sd[f"{key}.bias"] = self._normal((c,), 0.1)
        self.sd[f"{key}.running_mean"] = self._normal((c,), 0.1)
        self.sd[f"{key}.running_var"] = self.rng.uniform(0.5, 1.5, c).astype(np.float32)
        self.sd[f"{key}.num_batches_tracked"] = np.array(1234, np.int64)

    def linear(self, key, out_f, in_f):
        self.sd[f"{key}.weight"] = self._normal((out_f, in_f), np.sqrt(2.0 / in_f))
        self.sd[f"{key}.bias"] = self._normal((out_f,), 0.1)


# torchvision: name -> (block, blocks per stage); expansion 1 (BasicBlock) or 4 (Bottleneck).
RESNETS = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
}
# torchvision's vgg cfgs "A", "B", "D", "E" ('M' = 2x2/2 max pool).
VGG_CFGS = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
         512, 512, 512, 512, "M"],
}


def resnet_state_dict(name: str, num_classes: int = NUM_CLASSES, seed: int = 0) -> dict:
    """torchvision ``resnet*`` keys: conv1/bn1, layerS.B.{conv,bn}{1,2[,3]}, layerS.0.downsample.
    {0,1} where the block changes shape, fc."""
    block, sizes = RESNETS[name]
    b = _StateDict(seed)
    b.conv("conv1", 64, 3, 7, bias=False)
    b.bn("bn1", 64)
    expansion = 1 if block == "basic" else 4
    in_ch = 64
    for s, n in enumerate(sizes, start=1):
        planes = 64 * 2 ** (s - 1)
        for i in range(n):
            p = f"layer{s}.{i}"
            if block == "basic":
                b.conv(f"{p}.conv1", planes, in_ch, 3, bias=False)
                b.bn(f"{p}.bn1", planes)
                b.conv(f"{p}.conv2", planes, planes, 3, bias=False)
                b.bn(f"{p}.bn2", planes)
            else:
                b.conv(f"{p}.conv1", planes, in_ch, 1, bias=False)
                b.bn(f"{p}.bn1", planes)
                b.conv(f"{p}.conv2", planes, planes, 3, bias=False)
                b.bn(f"{p}.bn2", planes)
                b.conv(f"{p}.conv3", planes * 4, planes, 1, bias=False)
                b.bn(f"{p}.bn3", planes * 4)
            stride = 2 if (s > 1 and i == 0) else 1
            if stride != 1 or in_ch != planes * expansion:
                b.conv(f"{p}.downsample.0", planes * expansion, in_ch, 1, bias=False)
                b.bn(f"{p}.downsample.1", planes * expansion)
            in_ch = planes * expansion
    b.linear("fc", num_classes, 512 * expansion)
    return b.sd


def vgg_state_dict(name: str, num_classes: int = NUM_CLASSES, seed: int = 0,
                   fc_width: int | None = 4096) -> dict:
    """torchvision ``vgg*[_bn]`` keys: ``features.{idx}`` counting every conv, [bn], relu and
    pool of the flat Sequential; ``classifier.{0,3,6}`` with hidden width ``fc_width`` (4096 in
    torchvision; None: no classifier, the features only)."""
    depth, batch_norm = int(name[3:5]), name.endswith("_bn")
    b = _StateDict(seed)
    idx, in_ch = 0, 3
    for v in VGG_CFGS[depth]:
        if v == "M":
            idx += 1
            continue
        b.conv(f"features.{idx}", v, in_ch, 3, bias=True)
        if batch_norm:
            b.bn(f"features.{idx + 1}", v)
        idx += 3 if batch_norm else 2
        in_ch = v
    if fc_width:
        b.linear("classifier.0", fc_width, 512 * 7 * 7)
        b.linear("classifier.3", fc_width, fc_width)
        b.linear("classifier.6", num_classes, fc_width)
    return b.sd


ALEXNET_CONVS = (  # torchvision features index, out, in, kernel, stride, padding, pool after
    (0, 64, 3, 11, 4, 2, True),
    (3, 192, 64, 5, 1, 2, True),
    (6, 384, 192, 3, 1, 1, False),
    (8, 256, 384, 3, 1, 1, False),
    (10, 256, 256, 3, 1, 1, True),
)


def alexnet_state_dict(num_classes: int = NUM_CLASSES, seed: int = 0) -> dict:
    """torchvision ``alexnet`` keys: features.{0,3,6,8,10}, classifier.{1,4,6}."""
    b = _StateDict(seed)
    for idx, out_ch, in_ch, k, _, _, _ in ALEXNET_CONVS:
        b.conv(f"features.{idx}", out_ch, in_ch, k, bias=True)
    b.linear("classifier.1", 4096, 256 * 6 * 6)
    b.linear("classifier.4", 4096, 4096)
    b.linear("classifier.6", num_classes, 4096)
    return b.sd


# ---------------------------------------------------------------------------------------------
# Reference forward passes: PyTorch's ops, NCHW, float64
# ---------------------------------------------------------------------------------------------

def _f64(a):
    return np.asarray(a, np.float64)


def np_conv2d(x, w, b=None, stride=1, pad=0):
    """``F.conv2d``: x (N, C, H, W), w (O, C, kh, kw), zero padding, floor output size."""
    w = _f64(w)
    k = w.shape[2]
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3))
    win = win[:, :, ::stride, ::stride]                        # (N, C, Ho, Wo, k, k)
    out = np.tensordot(win, w, axes=([1, 4, 5], [1, 2, 3]))  # (N, Ho, Wo, O)
    out = out.transpose(0, 3, 1, 2)
    if b is not None:
        out = out + _f64(b)[None, :, None, None]
    return out


def np_batch_norm(x, sd, prefix):
    """``BatchNorm2d`` in eval mode (running statistics, eps 1e-5)."""
    g = lambda k: _f64(sd[f"{prefix}.{k}"])[None, :, None, None]  # noqa: E731
    return (x - g("running_mean")) / np.sqrt(g("running_var") + BN_EPS) * g("weight") + g("bias")


def relu(x):
    return np.maximum(x, 0.0)


def np_max_pool(x, k, stride, pad=0):
    """``MaxPool2d`` (floor mode): implicit -inf padding."""
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=-np.inf)
    win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3))
    return win[:, :, ::stride, ::stride].max(axis=(4, 5))


def np_adaptive_avg_pool(x, out_hw):
    """``AdaptiveAvgPool2d``: bin i of n -> o covers [floor(i*n/o), ceil((i+1)*n/o))."""
    n, c, h, w = x.shape
    oh, ow = out_hw
    out = np.empty((n, c, oh, ow))
    for i in range(oh):
        h0, h1 = (i * h) // oh, -(-((i + 1) * h) // oh)
        for j in range(ow):
            w0, w1 = (j * w) // ow, -(-((j + 1) * w) // ow)
            out[:, :, i, j] = x[:, :, h0:h1, w0:w1].mean(axis=(2, 3))
    return out


def np_linear(x, sd, prefix, rows=1024):
    """``nn.Linear``: x @ W.T + b (W cast to float64 in row blocks to bound memory)."""
    w = sd[f"{prefix}.weight"]
    out = np.concatenate([x @ _f64(w[i:i + rows]).T for i in range(0, w.shape[0], rows)], axis=1)
    return out + _f64(sd[f"{prefix}.bias"])


def resnet_forward(name, sd, x):
    """torchvision ResNet (v1.5: the stride on the 3x3 conv), eval mode."""
    block, sizes = RESNETS[name]
    h = relu(np_batch_norm(np_conv2d(x, sd["conv1.weight"], stride=2, pad=3), sd, "bn1"))
    h = np_max_pool(h, 3, 2, 1)
    for s, n in enumerate(sizes, start=1):
        for i in range(n):
            p = f"layer{s}.{i}"
            stride = 2 if (s > 1 and i == 0) else 1
            if block == "basic":
                y = np_conv2d(h, sd[f"{p}.conv1.weight"], stride=stride, pad=1)
                y = relu(np_batch_norm(y, sd, f"{p}.bn1"))
                y = np_batch_norm(np_conv2d(y, sd[f"{p}.conv2.weight"], pad=1), sd, f"{p}.bn2")
            else:
                y = relu(np_batch_norm(np_conv2d(h, sd[f"{p}.conv1.weight"]), sd, f"{p}.bn1"))
                y = np_conv2d(y, sd[f"{p}.conv2.weight"], stride=stride, pad=1)
                y = relu(np_batch_norm(y, sd, f"{p}.bn2"))
                y = np_batch_norm(np_conv2d(y, sd[f"{p}.conv3.weight"]), sd, f"{p}.bn3")
            if f"{p}.downsample.0.weight" in sd:
                identity = np_batch_norm(np_conv2d(h, sd[f"{p}.downsample.0.weight"], stride=stride),
                                         sd, f"{p}.downsample.1")
            else:
                identity = h
            h = relu(y + identity)
    h = h.mean(axis=(2, 3))  # AdaptiveAvgPool2d((1, 1)) + flatten
    return np_linear(h, sd, "fc")


def vgg_forward(name, sd, x):
    """torchvision VGG: features, AdaptiveAvgPool2d((7, 7)), flatten, classifier (eval)."""
    depth, batch_norm = int(name[3:5]), name.endswith("_bn")
    h, idx = x, 0
    for v in VGG_CFGS[depth]:
        if v == "M":
            h = np_max_pool(h, 2, 2)
            idx += 1
            continue
        h = np_conv2d(h, sd[f"features.{idx}.weight"], sd[f"features.{idx}.bias"], pad=1)
        if batch_norm:
            h = np_batch_norm(h, sd, f"features.{idx + 1}")
        h = relu(h)
        idx += 3 if batch_norm else 2
    h = np_adaptive_avg_pool(h, (7, 7)).reshape(len(h), -1)  # torch.flatten(x, 1): C, H, W
    h = relu(np_linear(h, sd, "classifier.0"))
    h = relu(np_linear(h, sd, "classifier.3"))
    return np_linear(h, sd, "classifier.6")


def alexnet_forward(sd, x):
    """torchvision AlexNet: features, AdaptiveAvgPool2d((6, 6)), flatten, classifier (eval)."""
    h = x
    for idx, _, _, _, stride, pad, pool in ALEXNET_CONVS:
        h = relu(np_conv2d(h, sd[f"features.{idx}.weight"], sd[f"features.{idx}.bias"], stride, pad))
        if pool:
            h = np_max_pool(h, 3, 2)
    h = np_adaptive_avg_pool(h, (6, 6)).reshape(len(h), -1)
    h = relu(np_linear(h, sd, "classifier.1"))
    h = relu(np_linear(h, sd, "classifier.4"))
    return np_linear(h, sd, "classifier.6")


# ---------------------------------------------------------------------------------------------
# Helpers on the zoo side
# ---------------------------------------------------------------------------------------------

@lru_cache(maxsize=None)
def zoo_model(tv_name: str, num_classes: int = NUM_CLASSES, **extra):
    """``build_model`` of the zoo model ``TORCHVISION_MODELS`` names (``extra``: more fields)."""
    zoo, kwargs = TORCHVISION_MODELS[tv_name]
    return build_model(zoo, num_classes=num_classes, **kwargs, **extra)


@lru_cache(maxsize=None)
def template(tv_name: str, num_classes: int = NUM_CLASSES, **extra):
    """The zoo model's variable shapes, traced at 224x224 as ``import_weights`` does."""
    model = zoo_model(tv_name, num_classes, **extra)
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False),
                          jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))


def zoo_logits(tv_name, variables, x_nchw, num_classes=NUM_CLASSES, **extra):
    model = zoo_model(tv_name, num_classes, **extra)
    x = jnp.asarray(x_nchw.transpose(0, 2, 3, 1), jnp.float32)
    return np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x))


def random_input(n, h, w, seed=1):
    return np.random.default_rng(seed).standard_normal((n, 3, h, w), dtype=np.float32)


def assert_logits_close(got, ref):
    assert got.shape == ref.shape
    scale = np.abs(ref).max()
    # The reference must be informative: classes and examples differ.
    assert scale > 0 and np.ptp(ref, axis=1).min() > 1e-3 * scale
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * scale)


def assert_trees_equal(a, b):
    la, _ = jax.tree_util.tree_flatten_with_path(a)
    lb, _ = jax.tree_util.tree_flatten_with_path(b)
    assert [p for p, _ in la] == [p for p, _ in lb]
    for (path, x), (_, y) in zip(la, lb):
        assert np.shape(x) == np.shape(y), path
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(path))


@pytest.fixture(scope="module")
def resnet18_sd():
    return resnet_state_dict("resnet18", seed=0)


# ---------------------------------------------------------------------------------------------
# Logits: converted zoo model == torchvision's forward pass
# ---------------------------------------------------------------------------------------------

def test_torchvision_model_names_map_to_zoo_models():
    """Every torchvision name the converter supports builds a zoo model (including the ones
    tested numerically below), and unknown names are rejected with the supported list."""
    for name in ("alexnet", "vgg11", "vgg11_bn", "vgg16", "vgg16_bn", "resnet18", "resnet34",
                 "resnet50"):
        assert name in TORCHVISION_MODELS
    for name in TORCHVISION_MODELS:
        zoo_model(name)
    with pytest.raises(ValueError, match="resnet18"):
        convert("resnet19", {}, {})


@pytest.mark.parametrize("name,size", [("resnet18", (45, 61)), ("resnet50", (64, 96))])
def test_resnet_logits_match_torchvision(name, size):
    """ResNet (basic and bottleneck blocks, projection shortcuts incl. layer1.0 of resnet50):
    converted weights give torchvision's logits on non-square inputs (45x61 for resnet18: odd
    sizes check the floor rounding of the strided convs and of the padded 3x3/2 stem pool)."""
    sd = resnet_state_dict(name, seed=3)
    variables = convert(name, sd, template(name))
    x = random_input(2, *size)
    assert_logits_close(zoo_logits(name, variables, x), resnet_forward(name, sd, x))


@pytest.mark.parametrize("name,fc_width", [("vgg11_bn", 512), ("vgg11", 256)])
def test_vgg11_logits_match_torchvision(name, fc_width):
    """VGG-11 with and without batch norm (features.{idx} counting conv/bn/relu/pool, fc6 rows
    permuted from (C, H, W) to (H, W, C)): torchvision's logits at 70x100, where the 2x3 conv map
    is adaptively pooled (overlapping, replicated bins) to 7x7 -- a flatten order or H/W mix-up
    shows. The hidden fc layers are narrowed (model field ``fc_width``) to save time: the
    classifier's conversion does not depend on the width, and the full-width layouts are
    matched key for key in ``test_deeper_layouts_match_strictly``."""
    extra = {} if fc_width == 4096 else {"fc_width": fc_width}
    sd = vgg_state_dict(name, seed=4, fc_width=fc_width)
    variables = convert(name, sd, template(name, **extra))
    x = random_input(2, 70, 100)
    assert_logits_close(zoo_logits(name, variables, x, **extra), vgg_forward(name, sd, x))


def test_alexnet_logits_match_torchvision():
    """torchvision's AlexNet (64-192-384-256-256, 11x11/4 stem with padding 2, 3x3/2 unpadded
    pools, classifier.{1,4,6}): its logits at 99x127, where conv5's pooled 2x3 map is
    adaptively pooled to 6x6."""
    sd = alexnet_state_dict(seed=6)
    variables = convert("alexnet", sd, template("alexnet"))
    x = random_input(2, 99, 127)
    assert_logits_close(zoo_logits("alexnet", variables, x), alexnet_forward(sd, x))


def test_convert_output_layout(resnet18_sd):
    """convert returns float32 numpy arrays of the template's shapes: conv OIHW -> HWIO, linear
    transposed, batch norm into params scale/bias and batch_stats mean/var."""
    t = template("resnet18")
    out = convert("resnet18", resnet18_sd, t)
    assert set(out) == {"params", "batch_stats"}
    for leaf, ref in zip(jax.tree.leaves(out), jax.tree.leaves(t)):
        assert isinstance(leaf, np.ndarray) and leaf.dtype == np.float32 and leaf.shape == ref.shape
    p, bs = out["params"], out["batch_stats"]
    np.testing.assert_array_equal(p["conv1"]["kernel"], resnet18_sd["conv1.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(p["head"]["kernel"], resnet18_sd["fc.weight"].T)
    np.testing.assert_array_equal(p["head"]["bias"], resnet18_sd["fc.bias"])
    blk = "layer3_0"
    np.testing.assert_array_equal(p[blk]["downsample_conv"]["kernel"][0, 0],
                                  resnet18_sd["layer3.0.downsample.0.weight"][:, :, 0, 0].T)
    np.testing.assert_array_equal(p[blk]["norm2"]["scale"], resnet18_sd["layer3.0.bn2.weight"])
    np.testing.assert_array_equal(p[blk]["norm2"]["bias"], resnet18_sd["layer3.0.bn2.bias"])
    np.testing.assert_array_equal(bs[blk]["downsample_norm"]["mean"],
                                  resnet18_sd["layer3.0.downsample.1.running_mean"])
    np.testing.assert_array_equal(bs[blk]["downsample_norm"]["var"],
                                  resnet18_sd["layer3.0.downsample.1.running_var"])


def test_convert_casts_other_dtypes(resnet18_sd):
    """float16 / float64 tensors are converted to float32 (values preserved as float32 casts)."""
    sd = {k: (v.astype(np.float16) if k.startswith("layer1") else v.astype(np.float64))
          if v.dtype == np.float32 else v for k, v in resnet18_sd.items()}
    out = convert("resnet18", sd, template("resnet18"))
    assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(out))
    np.testing.assert_array_equal(out["params"]["layer1_0"]["norm1"]["scale"],
                                  sd["layer1.0.bn1.weight"].astype(np.float32))


@pytest.mark.parametrize("name", ["resnet34", "resnet101", "vgg13", "vgg16", "vgg16_bn",
                                  "vgg19_bn"])
def test_deeper_layouts_match_strictly(name):
    """The other variants' state dicts (more blocks per stage; other features.{idx} counts)
    match the zoo models key for key and shape for shape (convert is strict both ways). For VGG
    the (shared, 120M-parameter) classifier is left out of both sides to save time."""
    t = template(name)
    if name.startswith("vgg"):
        sd = vgg_state_dict(name, fc_width=None)
        t = {"params": {k: v for k, v in t["params"].items() if k not in ("fc6", "fc7", "head")},
             **{k: v for k, v in t.items() if k != "params"}}
    else:
        sd = resnet_state_dict(name)
    out = convert(name, sd, t)
    n_sd = sum(v.size for k, v in sd.items() if not k.endswith("num_batches_tracked"))
    assert sum(leaf.size for leaf in jax.tree.leaves(out)) == n_sd


# ---------------------------------------------------------------------------------------------
# Strict matching errors
# ---------------------------------------------------------------------------------------------

def test_missing_tensor_is_named(resnet18_sd):
    """A tensor the model needs and the state dict lacks -> ValueError naming that key (and the
    source given)."""
    for key in ("layer3.1.bn2.running_var", "layer2.0.downsample.0.weight", "fc.bias"):
        sd = {k: v for k, v in resnet18_sd.items() if k != key}
        with pytest.raises(ValueError, match=rf"'weights\.st'.*'{key}' is missing"):
            convert("resnet18", sd, template("resnet18"), source="'weights.st'")


def test_misshaped_tensor_names_key_and_both_shapes(resnet18_sd):
    """A tensor of the wrong shape -> ValueError naming the key, its shape and the torchvision
    shape the model needs."""
    cases = {"layer2.0.conv1.weight": ((128, 64, 3, 1), (128, 64, 3, 3)),
             "fc.weight": ((NUM_CLASSES + 1, 512), (NUM_CLASSES, 512)),
             "bn1.running_mean": ((63,), (64,))}
    for key, (bad, want) in cases.items():
        sd = dict(resnet18_sd)
        sd[key] = np.zeros(bad, np.float32)
        with pytest.raises(ValueError) as e:
            convert("resnet18", sd, template("resnet18"))
        msg = str(e.value)
        assert repr(key) in msg and str(bad) in msg and str(want) in msg, msg


def test_extra_tensor_is_named(resnet18_sd):
    """A tensor the model does not use -> ValueError naming it (strict, like load_state_dict)."""
    sd = dict(resnet18_sd)
    sd["layer5.0.conv1.weight"] = np.zeros((3, 3, 1, 1), np.float32)
    sd["fc2.bias"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match=r"2 tensor\(s\) are not used.*fc2\.bias.*layer5\.0\.conv1\.weight"):
        convert("resnet18", sd, template("resnet18"))


def test_num_batches_tracked_is_ignored(resnet18_sd):
    """``num_batches_tracked`` is neither needed nor an extra: with, without, or with other
    values, the converted variables are the same."""
    with_nbt = convert("resnet18", resnet18_sd, template("resnet18"))
    without = {k: v for k, v in resnet18_sd.items() if not k.endswith("num_batches_tracked")}
    assert len(without) < len(resnet18_sd)
    assert_trees_equal(with_nbt, convert("resnet18", without, template("resnet18")))
    other = {k: (np.array(0, np.int64) if k.endswith("num_batches_tracked") else v)
             for k, v in resnet18_sd.items()}
    assert_trees_equal(with_nbt, convert("resnet18", other, template("resnet18")))


def test_wrong_architecture_is_rejected(resnet18_sd):
    """A resnet18 state dict read as resnet34 (missing blocks) or as vgg11 fails with a
    ValueError naming a missing key."""
    with pytest.raises(ValueError, match=r"'layer1\.2\.[a-z_]+\d\.[a-z_]+' is missing"):
        convert("resnet34", resnet18_sd, template("resnet34"))
    with pytest.raises(ValueError, match=r"'features\.0\.(weight|bias)' is missing"):
        convert("vgg11", resnet18_sd, template("vgg11"))


# ---------------------------------------------------------------------------------------------
# import-weights: a safetensors file -> a workdir
# ---------------------------------------------------------------------------------------------

IMPORT_CLASSES = 5


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """resnet18 with 5 classes saved as safetensors and imported into a fresh workdir."""
    from safetensors.numpy import save_file
    from jaxvision.tools.import_weights import import_weights
    root = tmp_path_factory.mktemp("import")
    sd = resnet_state_dict("resnet18", num_classes=IMPORT_CLASSES, seed=7)
    src = root / "resnet18.safetensors"
    save_file(sd, str(src))
    summary = import_weights("resnet18", src, root / "run")
    return sd, src, root / "run", summary


def test_import_weights_writes_converted_variables(imported):
    """The workdir's checkpoint (step 0) holds exactly convert's variables; the summary counts
    the classes, parameters and tensors."""
    from jaxvision.train.transfer import read_variables
    sd, src, workdir, summary = imported
    expected = convert("resnet18", sd, template("resnet18", IMPORT_CLASSES))
    variables, step = read_variables(workdir)
    assert step == 0
    assert_trees_equal(variables, expected)
    assert summary["num_classes"] == IMPORT_CLASSES
    assert summary["tensors"] == len(sd)
    assert summary["zoo_model"] == "resnet18"
    assert summary["params"] == sum(x.size for x in jax.tree.leaves(expected["params"]))
    assert json.loads((workdir / "config.json").read_text())["model"]["name"] == "resnet18"


def test_import_weights_predictor_gives_torchvision_logits(imported):
    """load_predictor on the workdir: class names "0".."4" (not ImageNet's), and its model and
    variables give torchvision's logits on a 224x224 image."""
    from jaxvision.inference import load_predictor
    sd, _, workdir, _ = imported
    predictor = load_predictor(workdir)
    names = predictor.model_info.info.class_names
    assert len(names) == IMPORT_CLASSES and list(names) == [str(i) for i in range(IMPORT_CLASSES)]
    x = random_input(1, 224, 224, seed=8)
    got = np.asarray(predictor.run.model.apply(predictor.variables, jnp.asarray(x.transpose(0, 2, 3, 1)),
                                               train=False))
    assert_logits_close(got, resnet_forward("resnet18", sd, x))


def test_import_weights_refuses_existing_workdir(imported):
    """Importing again into the same workdir raises FileExistsError and leaves it as it was."""
    from jaxvision.tools.import_weights import import_weights
    from jaxvision.train.transfer import read_variables
    sd, src, workdir, _ = imported
    before = read_variables(workdir)[0]
    with pytest.raises(FileExistsError, match="already holds a run"):
        import_weights("resnet18", src, workdir)
    assert_trees_equal(read_variables(workdir)[0], before)


def test_import_weights_classes_file(imported, tmp_path):
    """``classes``: one name per line (blank lines skipped) -> the workdir's class names; a file
    with the wrong count -> ValueError before anything is written."""
    from jaxvision.inference import read_model_info
    from jaxvision.config import workdir_config
    from jaxvision.tools.import_weights import import_weights
    _, src, _, _ = imported
    wrong = tmp_path / "wrong.txt"
    wrong.write_text("a\nb\nc\n")
    with pytest.raises(ValueError, match=r"lists 3 class names but the model has 5"):
        import_weights("resnet18", src, tmp_path / "bad", classes=str(wrong))
    assert not (tmp_path / "bad").exists()

    good = tmp_path / "classes.txt"
    good.write_text("cat\ndog\n\nbird\nfish\n  newt  \n")
    import_weights("resnet18", src, tmp_path / "good", classes=str(good))
    info = read_model_info(tmp_path / "good", workdir_config(tmp_path / "good")).info
    assert tuple(info.class_names) == ("cat", "dog", "bird", "fish", "newt")


def test_import_weights_rejects_bad_sources(resnet18_sd, tmp_path):
    """A file that is not safetensors -> ValueError naming it; a missing file ->
    FileNotFoundError; a state dict without the classifier or an unknown model -> ValueError;
    nothing is written."""
    from safetensors.numpy import save_file
    from jaxvision.tools.import_weights import import_weights
    junk = tmp_path / "model.pth"
    junk.write_bytes(b"PK\x03\x04 this is a torch zip pickle, not safetensors" * 10)
    with pytest.raises(ValueError, match=r"'.*model\.pth' is not a readable safetensors file"):
        import_weights("resnet18", junk, tmp_path / "a")
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        import_weights("resnet18", tmp_path / "nope.safetensors", tmp_path / "b")
    headless = tmp_path / "headless.safetensors"
    save_file({k: v for k, v in resnet18_sd.items() if not k.startswith("fc.")}, str(headless))
    with pytest.raises(ValueError, match=r"no 2-D 'fc\.weight'"):
        import_weights("resnet18", headless, tmp_path / "c")
    with pytest.raises(ValueError, match="no torchvision layout"):
        import_weights("resnet17", headless, tmp_path / "d")
    assert not any((tmp_path / d).exists() for d in "abcd")


def test_import_weights_reads_bfloat16_file(tmp_path):
    """A safetensors file with bfloat16 tensors (a common torch export) imports as float32."""
    from jaxvision.tools.import_weights import import_weights
    from jaxvision.train.transfer import read_variables
    sd = resnet_state_dict("resnet18", num_classes=3, seed=9)
    src = tmp_path / "bf16.safetensors"
    _save_bf16(sd, src)
    import_weights("resnet18", src, tmp_path / "run")
    variables, _ = read_variables(tmp_path / "run")
    rounded = {k: _bf16_round(v) if v.dtype == np.float32 else v for k, v in sd.items()}
    assert_trees_equal(variables, convert("resnet18", rounded, template("resnet18", 3)))


def _bf16_round(a):
    """float32 -> the float32 value of its bfloat16 (round to nearest even)."""
    u = a.astype(np.float32).view(np.uint32)
    u = (u + np.uint32(0x7FFF) + ((u >> 16) & 1)) & np.uint32(0xFFFF0000)
    return u.view(np.float32)


def _save_bf16(sd, path):
    """Writes a safetensors file by hand: float32 tensors stored as BF16, others as they are."""
    header, chunks, offset = {}, [], 0
    codes = {np.dtype(np.int64): "I64", np.dtype(np.float32): "BF16"}
    for k, v in sd.items():
        v = np.ascontiguousarray(v)
        data = ((_bf16_round(v).view(np.uint32) >> 16).astype("<u2").tobytes()
                if v.dtype == np.float32 else v.astype("<i8").tobytes())
        header[k] = {"dtype": codes[v.dtype], "shape": list(v.shape),
                     "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(chunks))


# ---------------------------------------------------------------------------------------------
# Optional: against torchvision itself
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["resnet18", "alexnet", "vgg11_bn"])
def test_against_torchvision_models(name):
    """With torch and torchvision installed: torchvision's own model with random weights (and
    random batch-norm statistics) and the converted zoo model give the same logits."""
    torch = pytest.importorskip("torch")
    tv_models = pytest.importorskip("torchvision.models")
    torch.manual_seed(0)
    net = getattr(tv_models, name)(weights=None, num_classes=NUM_CLASSES).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    sd = {k: v.numpy() for k, v in net.state_dict().items()}
    x = random_input(2, *((99, 127) if name == "alexnet" else (64, 96)))
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy().astype(np.float64)
    variables = convert(name, sd, template(name))
    assert_logits_close(zoo_logits(name, variables, x), ref)
