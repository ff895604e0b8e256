"""``explain``: occlusion maps against a plain loop, Grad-CAM against its closed form on a
model that looks only at the top-left of its input, first-layer filters, the command line."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxvision.__main__ import main
from jaxvision.config import get_config
from jaxvision.inference import load_predictor
from jaxvision.tools.explain import (explain, filter_grid, first_conv_kernel, grad_cam,
                                     occlusion_map, occlusion_positions)
from jaxvision.train.loop import train

REGION = "tests/tools/region_experiment.py:region"


@pytest.fixture(scope="module")
def region_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("explain") / "run"
    train(get_config(REGION), workdir, progress=False)
    return workdir


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"im{i}.png")
    return folder


def test_positions_cover_both_edges():
    assert occlusion_positions(16, 4, 3) == [0, 3, 6, 9, 12]
    assert occlusion_positions(16, 4, 4) == [0, 4, 8, 12]
    with pytest.raises(ValueError, match="larger than the model's input"):
        occlusion_positions(8, 9, 1)


def test_occlusion_map_equals_a_plain_loop():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    w = rng.normal(size=(10 * 12 * 3, 5))

    def prob_fn(batch):
        z = batch.reshape(len(batch), -1).astype(np.float64) / 255 @ w
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    got = occlusion_map(prob_fn, image, 2, patch=4, stride=3, chunk=5)
    ys, xs = [0, 3, 6], [0, 3, 6, 8]
    want = np.zeros((3, 4))
    for i, y in enumerate(ys):
        for j, x in enumerate(xs):
            im = image.copy()
            im[y:y + 4, x:x + 4] = 128
            want[i, j] = prob_fn(im[None])[0, 2]
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_occlusion_only_matters_where_the_model_looks(region_run, images, tmp_path):
    predictor = load_predictor(region_run)
    result = explain(predictor, [images / "im0.png"], tmp_path, patch=4, stride=2)
    rec = result["inputs"][0]
    occ = np.asarray(rec["occlusion"])
    ys = xs = occlusion_positions(16, 4, 2)
    # The model reads rows and columns 0..8 (0..7 plus the halo): squares starting at >= 9
    # in either direction change nothing.
    far = np.array([[y >= 9 or x >= 9 for x in xs] for y in ys])
    np.testing.assert_allclose(occ[far], rec["probability"], rtol=1e-5)
    assert np.abs(occ[~far] - rec["probability"]).max() > 1e-4
    assert rec["target"] == int(np.argmax(predictor([{"image": np.asarray(Image.open(images / 'im0.png'))}])[0]["probabilities"]))
    assert Image.open(rec["png"]).size[0] == 3 * Image.open(rec["png"]).size[1]
    saved = json.loads((tmp_path / "explain.json").read_text())
    assert saved["filters_from"] == "conv1/kernel" and saved["inputs"][0]["layer"] == "conv1"


def test_grad_cam_matches_its_closed_form(region_run):
    predictor = load_predictor(region_run)
    model, variables = predictor.run.model, predictor.variables
    x = jax.random.uniform(jax.random.PRNGKey(0), (3, 16, 16, 3))
    target = jnp.array([0, 1, 2])
    cam = grad_cam(model, variables, x, target, "conv1")
    # logit_t = W[:, t] . mean over the top-left 8x8 of A: d logit / d A = W[c, t] / 64 there,
    # 0 elsewhere, so alpha_c = W[c, t] / 256 (the mean over all 16 x 16 positions).
    _, feats = model.apply(variables, x, return_features=True)
    a = np.asarray(feats["conv1"], np.float64)
    w = np.asarray(variables["params"]["head"]["kernel"], np.float64)
    want = np.maximum(np.einsum("nhwc,cn->nhw", a, w[:, [0, 1, 2]] / 256), 0)
    np.testing.assert_allclose(cam, want, rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="not a feature map"):
        grad_cam(model, variables, x, target, "head")


def test_filters_are_the_first_convolution():
    params = {"stem": {"kernel": np.zeros((5, 5, 3, 6))}, "block": {"conv": {"kernel": np.ones((3, 3, 6, 6))}}}
    path, k = first_conv_kernel(params, 3)
    assert path == "stem/kernel" and k.shape == (5, 5, 3, 6)
    grid = filter_grid(np.random.default_rng(0).normal(size=(3, 3, 1, 5)), cell=6)
    assert grid.shape == (2 * 7, 3 * 7, 3) and grid.min() >= 0 and grid.max() <= 1
    with pytest.raises(ValueError, match="no convolution kernel"):
        first_conv_kernel({"fc": {"kernel": np.zeros((4, 2))}}, 3)


def test_command_line(region_run, images, tmp_path, capsys):
    code = main(["explain", "--workdir", str(region_run), str(images), "--out", str(tmp_path),
                 "--class", "1"])
    out = capsys.readouterr().out
    assert code == 0, out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["patch"] == 4 and summary["stride"] == 2
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["explain_im0.png", "explain_im1.png", "filters.png"]
    assert all(r["target"] == 1 for r in json.loads((tmp_path / "explain.json").read_text())["inputs"])
    assert main(["explain", "--workdir", str(region_run), str(images), "--out", str(tmp_path),
                 "--class", "99"]) == 2


@pytest.mark.parametrize("name, deepest", [("resnet20", "layer3"), ("lenet5", "c5")])
def test_zoo_models_tap_their_deepest_map_without_changing_anything(name, deepest):
    from jaxvision.models import build_model
    from jaxvision.tools.explain import last_feature_map
    model = build_model(name, num_classes=4)
    x = jax.random.uniform(jax.random.PRNGKey(0), (2, 32, 32, 1 if name == "lenet5" else 3))
    # Compiled, not eager: op by op, each primitive of a ResNet compiles on its own (~10 s).
    variables = jax.jit(model.init)(jax.random.PRNGKey(1), x)
    assert "taps" not in variables                                 # checkpoints unchanged
    assert last_feature_map(model, variables, x) == deepest       # model order, not sorted
    plain = jax.jit(model.apply)(variables, x)
    (with_taps, _), taps = jax.jit(lambda v, x: model.apply(v, x, return_features=True,
                                                            mutable=["taps"]))(variables, x)
    # Two compiled programs may sum in another order: equal up to float32 rounding.
    np.testing.assert_allclose(plain, with_taps, rtol=1e-5, atol=1e-6)
    cam = grad_cam(model, variables, x, jnp.array([0, 3]), deepest)
    assert cam.shape[0] == 2 and np.all(cam >= 0) and np.isfinite(cam).all()
