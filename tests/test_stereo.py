"""Stereo experiment end to end on tiny procedural pairs: each model trains (the loss falls) and
is scored, the self-supervised loss, the classical baseline, and the errors a user meets."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision.config import get_config
from jaxvision.data.transforms import TRANSFORMS
from jaxvision.experiment import load_experiment
from jaxvision.train import loop

SPEC = "experiments/stereo.py"
TINY = {"mccnn_synthetic": dict(width=8, depth=2), "dispnet_synthetic": dict(widths=(8, 8, 16, 16)),
        "gcnet_synthetic": dict(width=4, unary_blocks=1)}


def _tiny(shrink, name: str, **model):
    config = shrink(get_config(f"{SPEC}:{name}"), size=32)
    config.data.procedural.max_disparity = 6.0
    config.model.max_disparity = 6
    config.model.update({**TINY.get(name, {}), **model})
    config.model.report_pictures = 0
    config.optim.lr = 3e-3
    return config


@pytest.mark.parametrize("name", list(TINY))
def test_each_model_trains_and_is_scored(name, tmp_path, shrink):
    config = _tiny(shrink, name)
    if name == "dispnet_synthetic":
        config.model.report_pictures = 2                  # one model draws the report pictures
        config.train.plots = True
    results = loop.train(config, tmp_path, experiment=load_experiment(SPEC), progress=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r["loss"] for r in rows if r.get("split") == "train"]
    assert len(train) == 6 and train[-1] < train[0], (name, train)
    for key in ("EPE", "bad0.5", "bad1", "bad2", "bad3", "D1", "EPE_noc", "bad2_noc"):
        assert np.isfinite(results[key]), key
    assert 0 <= results["bad1"] <= 100 and results["EPE"] >= 0
    assert len(json.loads((tmp_path / "per_image.json").read_text())) == 8
    if name == "dispnet_synthetic":
        assert (tmp_path / "disparities.png").stat().st_size > 1000
        _check_predict(tmp_path)


def _check_predict(workdir):
    """``predict`` on a user's pair of another size: the disparity at the file's size as .npy,
    the depth with a camera given, and the picture."""
    from PIL import Image
    from jaxvision.__main__ import main
    rng = np.random.default_rng(0)
    pairs = workdir / "pairs"
    pairs.mkdir()
    for side in ("left", "right"):
        Image.fromarray(rng.integers(0, 255, (24, 40, 3), dtype=np.uint8)).save(pairs / f"{side}.png")
    out = workdir / "out"
    assert main(["predict", "--workdir", str(workdir), str(pairs / "left.png"), "--right",
                 str(pairs / "right.png"), "--out", str(out), "--config.model.baseline=0.5",
                 "--config.model.focal=100"]) == 0
    line = json.loads((out / "predictions.jsonl").read_text())
    disp = np.load(out / line["arrays"]["disparity"])
    depth = np.load(out / line["arrays"]["depth"])
    assert disp.shape == depth.shape == (24, 40) and (disp >= 0).all()
    np.testing.assert_allclose(depth[disp > 0], 50.0 / disp[disp > 0], rtol=1e-5)
    assert line["disparity"]["max"] == pytest.approx(float(disp.max()), abs=1e-3)
    assert Image.open(out / line["picture"]).size == (3 * 40, 24)


def test_self_supervised_training_lowers_its_loss_without_ground_truth(tmp_path, shrink):
    config = _tiny(shrink, "dispnet_synthetic")
    config.loss.kind = "self_supervised"
    config.data.keys = ("image", "image_right", "disparity")    # the loss never reads it
    # As selfsup_middlebury: the model sees the pair halved, the scores and pictures are drawn
    # at the ground truth's size.
    config.data.eval_pp, config.model.report_pictures = "resize_inputs(0.5)", 2
    config.train.plots = True
    results = loop.train(config, tmp_path, experiment=load_experiment(SPEC), progress=False)
    assert (tmp_path / "disparities.png").stat().st_size > 1000
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r.get("split") == "train"]
    assert train[-1]["loss"] < train[0]["loss"]
    assert {"appearance", "smoothness", "left_right"} <= set(train[0])
    assert np.isfinite(results["EPE"]) and "EPE_noc" not in results


def test_ncc_baseline_recovers_procedural_disparity(tmp_path, shrink):
    config = _tiny(shrink, "ncc_baseline")
    config.train.steps = 1
    results = loop.train(config, tmp_path, experiment=load_experiment(SPEC), progress=False)
    # 9x9 windows on 32-px scenes: object borders cost a lot; the all-zero map scores EPE ~3.
    assert results["EPE_noc"] < 1.5 and results["bad1_noc"] < 40


def test_stereo_input_errors_are_clear(tmp_path, shrink):
    exp = load_experiment(SPEC)
    config = _tiny(shrink, "dispnet_synthetic")
    batch = {"image": np.zeros((1, 8, 8, 3), np.uint8), "image_right": np.zeros((1, 8, 6, 3), np.uint8)}
    with pytest.raises(ValueError, match="differ in shape"):
        exp.prepare(config, batch)
    with pytest.raises(ValueError, match="needs 'image_right'"):
        exp.prepare(config, {"image": batch["image"]})
    config.data.keys = ("image", "disparity")
    with pytest.raises(ValueError, match="needs 'image_right'"):
        loop.train(config, tmp_path / "a", experiment=exp, progress=False)
    config = _tiny(shrink, "dispnet_synthetic")
    config.model.name = "psmnet"
    with pytest.raises(ValueError, match="not a stereo model; models: classical, mccnn"):
        loop.train(config, tmp_path / "b", experiment=exp, progress=False)
    # A ground-truth map of the wrong shape.
    config = _tiny(shrink, "mccnn_synthetic")
    model = exp.build_model(config, None)
    pair = {"image": np.zeros((1, 16, 16, 3), np.uint8), "image_right": np.zeros((1, 16, 16, 3), np.uint8),
            "valid": np.ones(1, bool)}
    variables = jax.jit(lambda b: exp.init(config, model, b, jax.random.key(0)))(pair)
    with pytest.raises(ValueError, match=r"'disparity' has shape \(1, 8, 16\)"):
        exp.loss(config, model, variables, {**pair, "disparity": jnp.zeros((1, 8, 16))}, None, train=False)


def test_rescale_and_resize_inputs():
    rng = np.random.default_rng(0)
    ex = {"image": rng.integers(0, 255, (10, 16, 3), dtype=np.uint8),
          "image_right": rng.integers(0, 255, (10, 16, 3), dtype=np.uint8),
          "disparity": np.full((10, 16), 4.0, np.float32)}
    half = TRANSFORMS["rescale"](0.5)(ex, rng)
    assert half["image"].shape == (5, 8, 3) and half["disparity"].shape == (5, 8)
    np.testing.assert_array_equal(half["disparity"], 2.0)     # values scale with the width
    inputs = TRANSFORMS["resize_inputs"](0.5)(ex, rng)
    assert inputs["image"].shape == inputs["image_right"].shape == (5, 8, 3)
    assert inputs["disparity"] is ex["disparity"]               # the target stays at file size
    with pytest.raises(ValueError, match="factor must be > 0"):
        TRANSFORMS["rescale"](0)


def test_middlebury_configs_score_at_full_resolution(shared_data):
    from jaxvision.data.pipeline import make_loader
    config = get_config(f"{SPEC}:selfsup_middlebury")
    batches = list(make_loader(config.data, "all", global_batch=1, mode="eval", seed=0))
    assert len(batches) == 4
    for b in batches:
        h, w = b["disparity"].shape[1:]
        assert b["image"].shape[1:3] == (round(h / 2), round(w / 2))
    train = next(iter(make_loader(config.data, "all", global_batch=2, mode="train", seed=0)))
    assert train["image"].shape == (2, 128, 128, 3) and train["disparity"].shape == (2, 128, 128)


def _write_kitti(root, n=5, h=12, w=20, noc=True):
    from PIL import Image
    rng = np.random.default_rng(1)
    base = root / "training"
    for sub in ("image_2", "image_3", "disp_occ_0") + (("disp_noc_0",) if noc else ()):
        (base / sub).mkdir(parents=True)
    disps = []
    for i in range(n):
        name = f"{i:06d}_10.png"
        for sub in ("image_2", "image_3"):
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(base / sub / name)
        raw = rng.integers(0, 40 * 256, (h, w)).astype(np.uint16)
        raw[0] = 0                                        # no ground truth on the first row
        Image.fromarray(raw).save(base / "disp_occ_0" / name)
        if noc:
            raw_noc = raw.copy()
            raw_noc[:, :3] = 0
            Image.fromarray(raw_noc).save(base / "disp_noc_0" / name)
        disps.append(raw)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(base / "image_2" / f"{i:06d}_11.png")
    return disps


def test_kitti2015_source_reads_16_bit_disparity_and_splits(tmp_path):
    from jaxvision.data.config import data_config
    from jaxvision.data.source import DataError, build_source
    disps = _write_kitti(tmp_path)
    data = data_config("kitti2015")
    data.path = str(tmp_path)
    src = build_source(data, "training")
    assert len(src) == 5 and src.info.keys == ("image", "image_right", "disparity", "disparity_noc")
    ex = src[2]
    assert ex["image"].shape == ex["image_right"].shape == (12, 20, 3)
    want = np.where(disps[2] > 0, disps[2] / 256.0, -1.0)
    np.testing.assert_allclose(ex["disparity"], want)
    assert (ex["disparity_noc"][:, :3] == -1).all()
    assert [len(build_source(data, s)) for s in ("train", "val")] == [4, 1]
    with pytest.raises(DataError, match="kitti2015.*split"):
        build_source(data, "testing")
    data.path = str(tmp_path / "missing")
    with pytest.raises(DataError, match="data.path"):
        build_source(data, "train")


def test_stereo_evaluator_reads_kitti_noc_maps(tmp_path):
    from jaxvision.evaluators import Stereo
    gt = np.full((1, 4, 6), 10.0, np.float32)
    noc = gt.copy()
    noc[:, :, :2] = -1
    pred = gt + np.array([5.0, 5.0, 0, 0, 0, 0], np.float32)    # wrong only where occluded
    ev = Stereo("st", split="val", batch_size=1, every=0)
    ev.reset()
    ev.update(jax.device_get(jax.jit(ev.transform)({"pred_disparity": pred, "disparity": gt,
                                                     "disparity_noc": noc})))
    got = ev.compute()
    assert got["EPE"] == pytest.approx(5 * 2 / 6) and got["EPE_noc"] == 0.0
    assert got["D1"] == pytest.approx(100 * 2 / 6) and got["D1_noc"] == 0.0


@pytest.mark.parametrize("name,kwargs", [("classical", {}), ("mccnn", dict(width=4, depth=2)),
                                         ("dispnet_c", dict(widths=(4, 4, 8, 8))),
                                         ("gcnet", dict(width=4, unary_blocks=1, scale=2)),
                                         ("gcnet", dict(width=4, unary_blocks=1, scale=4))])
def test_models_give_a_full_resolution_map_for_odd_sizes(name, kwargs):
    from jaxvision.models.stereo import STEREO_MODELS
    model = STEREO_MODELS[name](max_disparity=9, **kwargs)
    x = jax.ShapeDtypeStruct((2, 27, 41, 6), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
    out = jax.eval_shape(lambda v, x: model.apply(v, x), variables, x)
    assert out["disparity"].shape == (2, 27, 41)
    assert all(d.shape == (2, 27, 41) for d in out["disparities"])
    if "cost" in out:
        assert out["cost"].shape == (2, 27, 41, 10)


def test_mccnn_aggregated_cost_is_the_box_mean_of_its_raw_cost():
    from jaxvision.models.stereo import MCCNN
    x = jax.random.uniform(jax.random.key(1), (1, 9, 12, 6))
    raw, agg = MCCNN(max_disparity=4, width=4, depth=2), MCCNN(max_disparity=4, width=4, depth=2, aggregate=3)
    variables = raw.init(jax.random.key(0), x)
    c0 = np.asarray(raw.apply(variables, x)["cost"], np.float64)[0]
    out = agg.apply(variables, x)
    c = np.where(np.isfinite(c0), c0, 2.0)
    want = np.full_like(c0, np.inf)
    for y in range(9):
        for xx in range(12):
            for d in range(5):
                if xx >= d:   # the window cut at the border: the mean of the pixels inside
                    want[y, xx, d] = c[max(y - 1, 0):y + 2, max(xx - 1, 0):xx + 2, d].mean()
    np.testing.assert_allclose(np.asarray(out["cost"])[0], want, rtol=1e-5)
    best = np.argmin(want, -1)
    assert np.all(np.abs(np.asarray(out["wta"])[0] - best) <= 0.5)   # sub-pixel stays within 1/2
