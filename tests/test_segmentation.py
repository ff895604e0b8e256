"""Semantic segmentation: the transposed convolution against its matrix definition, bilinear
upsampling, the models on odd sizes, dilated ResNets, and each model of
`experiments/segmentation.py` trained end to end on tiny scenes."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision.config import get_config
from jaxvision.experiment import load_experiment
from jaxvision.models import build_model
from jaxvision.models.segmentation import FCN, DeepLabV3, UNet
from jaxvision.ops.conv import bilinear_kernel, conv_transpose
from jaxvision.train import loop

SPEC = "experiments/segmentation.py"


def _conv_matrix(in_hw, kernel, stride, padding, dilation=1):
    """U: the matrix of the convolution by ``kernel`` (KH, KW, C_out, C_in) read as HWIO with
    C_out inputs, built column by column from basis images (one per input pixel-channel)."""
    c_in = kernel.shape[2]
    size = int(np.prod(in_hw)) * c_in
    basis = np.eye(size, dtype=np.float64).reshape((size,) + tuple(in_hw) + (c_in,))
    out = jax.lax.conv_general_dilated(jnp.asarray(basis), jnp.asarray(kernel, jnp.float64),
                                       (stride, stride), [(padding, padding)] * 2,
                                       rhs_dilation=(dilation, dilation),
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return np.asarray(out).reshape(size, -1).T  # (outputs, inputs)


@pytest.mark.parametrize("stride,padding,k,dilation", [(2, 1, 4, 1), (2, 0, 2, 1), (3, 1, 3, 1), (1, 1, 3, 2)])
def test_conv_transpose_is_the_transpose_of_the_convolution_matrix(stride, padding, k, dilation):
    rng = np.random.default_rng(stride * 10 + k)
    with jax.enable_x64(True):
        kernel = rng.normal(size=(k, k, 2, 3))              # C_in = 2 -> C_out = 3
        x = rng.normal(size=(1, 4, 3, 2))
        y = conv_transpose(jnp.asarray(x), jnp.asarray(kernel), stride, padding, dilation=dilation)
        # The convolution maps the output space (C_out) back to x's: U has x's size rows.
        u = _conv_matrix(y.shape[1:3], np.swapaxes(kernel, 2, 3), stride, padding, dilation)
        assert u.shape[0] == x.size
        np.testing.assert_allclose(np.asarray(y).reshape(-1), u.T @ x.reshape(-1), atol=1e-10)
        # The same as lax.conv_transpose of the forward convolution's kernel (transpose_kernel),
        # whose padding k - 1 - p on each side gives PyTorch's output size.
        if dilation == 1:
            pad = k - 1 - padding
            ref = jax.lax.conv_transpose(jnp.asarray(x), jnp.asarray(np.swapaxes(kernel, 2, 3)),
                                         (stride, stride), [(pad, pad)] * 2,
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"), transpose_kernel=True)
            np.testing.assert_allclose(np.asarray(y), np.asarray(ref), atol=1e-10)


def test_conv_transpose_one_dimensional_by_hand():
    # 1-D (as a 1 x W image): x = [1, 2], kernel [1, 10, 100], stride 2, padding 0 -> each input
    # stamps the kernel at 2i: [1, 10, 100 + 2, 20, 200].
    y = conv_transpose(jnp.asarray([[[[1.0], [2.0]]]]), jnp.asarray([[[[1.0]], [[10.0]], [[100.0]]]]), (1, 2))
    np.testing.assert_allclose(np.asarray(y).reshape(-1), [1, 10, 102, 20, 200])
    with pytest.raises(ValueError, match="output_padding"):
        conv_transpose(jnp.zeros((1, 2, 2, 1)), jnp.zeros((2, 2, 1, 1)), 2, output_padding=2)


@pytest.mark.parametrize("factor", [2, 4])
def test_bilinear_initialised_upsampling_equals_bilinear_resize_inside(factor):
    x = jax.random.normal(jax.random.key(factor), (1, 6, 5, 2))
    y = conv_transpose(x, bilinear_kernel(factor, 2), factor, factor // 2)
    ref = jax.image.resize(x, (1, 6 * factor, 5 * factor, 2), "linear")
    inner = (slice(None), slice(factor, -factor), slice(factor, -factor))
    np.testing.assert_allclose(np.asarray(y)[inner], np.asarray(ref)[inner], atol=1e-6)


def test_gradients_of_the_transposed_convolution_match_finite_differences():
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(0), (1, 3, 3, 2), jnp.float64)
        k = jax.random.normal(jax.random.key(1), (4, 4, 2, 2), jnp.float64)
        f = lambda x, k: jnp.sum(jnp.sin(conv_transpose(x, k, 2, 1)))  # noqa: E731
        from jax.test_util import check_grads
        check_grads(f, (x, k), order=1, modes=("rev",), atol=1e-6, rtol=1e-6)


def test_models_keep_odd_input_sizes_and_dilated_resnets_keep_their_parameters():
    x = jnp.zeros((1, 37, 45, 3))
    cnn = build_model("small_cnn", num_classes=1, widths=(4, 8, 8, 8))
    for model in (FCN(cnn, 5, taps=("stage2", "stage3", "stage4"), skips=2),
                  FCN(cnn, 5, taps=("stage4",), skips=0), UNet(5, widths=(4, 8, 8)),
                  DeepLabV3(build_model("resnet18", num_classes=1, width=0.125, output_stride=8), 5,
                            taps=("layer4",), rates=(1, 2), width=8)):
        variables = jax.eval_shape(model.init, jax.random.key(0), x)
        assert jax.eval_shape(model.apply, variables, x).shape == (1, 37, 45, 5)
    shapes = {}
    for os_ in (0, 8):
        m = build_model("resnet18", num_classes=2, width=0.125, output_stride=os_)
        v = jax.eval_shape(m.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
        _, feats = jax.eval_shape(lambda v: m.apply(v, jnp.zeros((1, 64, 64, 3)), return_features=True), v)
        shapes[os_] = (jax.tree.map(lambda a: a.shape, v["params"]), feats["layer4"].shape[1])
    assert shapes[0][0] == shapes[8][0] and (shapes[0][1], shapes[8][1]) == (2, 8)


def test_fcn_starts_as_bilinear_upsampling_of_the_coarsest_score():
    cnn = build_model("small_cnn", num_classes=1, widths=(4, 8, 8, 8))
    model = FCN(cnn, 3, taps=("stage3", "stage4"), skips=1)
    x = jax.random.normal(jax.random.key(0), (1, 32, 32, 3))
    variables = jax.jit(model.init)(jax.random.key(1), x)
    assert float(jnp.abs(variables["params"]["score0"]["kernel"]).max()) == 0.0  # skips start at 0
    assert "up_final" not in variables["params"]  # the last upsampling is fixed bilinear


def _tiny(shrink, name: str):
    config = shrink(get_config(f"{SPEC}:{name}"))
    m = config.model
    if name.startswith("unet"):
        m.widths = (8, 16, 16)
    elif name.startswith("fcn"):
        m.backbone.widths = (8, 8, 16, 16)
    else:
        m.backbone.width, m.width, m.rates = 0.125, 8, (1, 2)
        m.backbone.stage_sizes = (1, 1, 1, 1)  # one block per stage: a quarter of the compile
    m.report_pictures = 4 if name.startswith("unet") else 0
    config.train.plots = name.startswith("unet")
    return config


# DeepLab's forward shapes are tested above; training it too costs a ResNet compile (suite time).
@pytest.mark.parametrize("name", ["unet_synthetic", "fcn8s_synthetic"])
def test_each_model_trains_and_is_scored(name, tmp_path, shrink):
    results = loop.train(_tiny(shrink, name), tmp_path, experiment=load_experiment(SPEC), progress=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r["loss"] for r in rows if r.get("split") == "train"]
    assert len(train) == 6 and train[-1] < train[0], (name, train)
    assert 0 <= results["mIoU"] <= 1 and 0 <= results["pixel_accuracy"] <= 1
    assert np.asarray(results["iou"]).shape == (7,)
    names = [r["class"] for r in json.loads((tmp_path / "per_class_iou.json").read_text())]
    assert names[:2] == ["background", "disk"]
    if name.startswith("unet"):
        assert (tmp_path / "segmentations.png").stat().st_size > 1000


def test_constant_class_baselines_score_the_class_frequencies(shrink):
    from jaxvision.tools.mask_baseline import constant_baselines
    config = _tiny(shrink, "unet_synthetic")
    out = constant_baselines(config)
    acc = np.array([out[k]["pixel_accuracy"] for k in range(7)])
    assert acc.sum() == pytest.approx(1.0) and acc[0] > 0.5  # background is most of a scene
    present = acc > 0
    # Predicting class k: IoU(k) = its frequency, every other present class 0 (and counted).
    for k in np.flatnonzero(present):
        assert out[k]["mIoU"] == pytest.approx(acc[k] / present.sum())
        assert out[k]["mean_accuracy"] == pytest.approx(1 / present.sum())


def test_pets_configs_score_at_the_trimaps_own_resolution(shared_data):
    """The pets eval batch keeps each trimap at its file's size (``mask_full`` on one canvas,
    ``mask_size``) beside the 128-px model input, and the evaluator reads ``mask_full``."""
    from jaxvision.data.pipeline import make_loader
    config = get_config(f"{SPEC}:unet_pets")
    assert config.evals.segmentation.mask == "mask_full"
    batch = next(iter(make_loader(config.data, "test", global_batch=2, mode="eval", seed=0)))
    assert batch["image"].shape == (2, 128, 128, 3) and batch["mask"].shape == (2, 128, 128)
    assert batch["mask_full"].shape == (2, 1664, 1664)
    for full, (h, w) in zip(batch["mask_full"], batch["mask_size"]):
        assert h > 128 and w > 128 and (full[:h, :w] != -1).any()
        assert (full[h:] == -1).all() and (full[:, w:] == -1).all()
