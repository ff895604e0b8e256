"""Detection end to end: each model of `experiments/detection.py` trains on a tiny scene set
(the loss goes down), is scored by the COCO and VOC evaluators, writes its pictures, and
`predict` draws boxes on image files; bad box inputs."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from PIL import Image

from jaxvision.__main__ import main
from jaxvision.config import get_config
from jaxvision.data.source import DataError
from jaxvision.evaluators import eval_config
from jaxvision.experiment import load_experiment
from jaxvision.train import loop

SPEC = "experiments/detection.py"
# Mask R-CNN is the two-stage detector plus its mask head: one run covers both. YOLOv1 is
# traced, not trained, here (suite time): its loss and decoder have oracle tests of their own.
MODELS = ("centernet_synthetic", "retinanet_synthetic", "maskrcnn_synthetic")


def _tiny(shrink, name: str):
    config = shrink(get_config(f"{SPEC}:{name}"))
    config.data.procedural.max_objects = 2
    config.model.backbone.widths = (8, 8, 16, 16)
    for key, value in (("width", 16), ("head_width", 16), ("hidden", 32), ("grid", 4), ("head_depth", 1),
                       ("roi_batch", 16), ("post_nms_train", 16), ("post_nms_test", 8), ("pre_nms", 64)):
        if key in config.model:
            config.model[key] = value
    config.model.max_detections = 10
    # Every evaluator and picture costs a compilation: the COCO one always, the rest once.
    if name == "centernet_synthetic":
        config.evals.voc = eval_config("voc")
        config.evals.eval = eval_config("metrics")
        config.train.plots = True
    else:
        config.model.report_pictures = 0
    if name == "maskrcnn_synthetic":  # masks only: box AP is the other models' test
        del config.evals["coco"]
        config.model.update(dict(mask_convs=1, mask_size=7, mask_width=8))
    return config


@pytest.fixture(scope="module", params=MODELS)
def run(request, tmp_path_factory, shrink):
    workdir = tmp_path_factory.mktemp(request.param)
    config = _tiny(shrink, request.param)
    results = loop.train(config, workdir, experiment=load_experiment(SPEC), progress=False)
    return request.param, config, workdir, results


def test_each_model_trains_and_is_scored(run):
    name, _, workdir, results = run
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train = [r["loss"] for r in rows if r.get("split") == "train"]
    assert len(train) == 6 and train[-1] < train[0], (name, train)
    for key in ("AP", "AP50", "AP75", "APs", "AR1", "AR10", "AR100"):
        assert np.isfinite(results[key]) and -1 <= results[key] <= 1, (name, key)
    assert np.asarray(results["AP_per_class"]).shape == (6,)
    assert json.loads((workdir / "per_class_ap.json").read_text())[0]["class"] == "disk"
    if name == "centernet_synthetic":
        assert 0 <= results["voc_mAP"] <= 1 and np.isfinite(results["loss_heatmap"])
        assert (workdir / "detections.png").stat().st_size > 1000
    if name == "maskrcnn_synthetic":  # AP here is the mask AP (iou_type='segm')
        assert "loss_mask" in rows[-2] | rows[-1] and "coco_mask/AP" not in results


@pytest.mark.parametrize("name", ["yolo_synthetic", "yolo_conv_synthetic"])
def test_yolo_loss_and_predict_trace_with_the_declared_shapes(name, shrink):
    """The experiment's wiring of YOLOv1 (loss terms, gradients, fixed-size detections),
    traced without compiling."""
    from jaxvision.data.pipeline import make_loader
    config = _tiny(shrink, name)
    exp = load_experiment(SPEC)
    batch = next(iter(make_loader(config.data, "train", global_batch=8, mode="train", seed=0)))
    model = exp.build_model(config, _info(config))
    variables = jax.eval_shape(lambda b: exp.init_variables(config, model, b, jax.random.key(0)), batch)
    total, mets, _ = jax.eval_shape(
        lambda v, b: exp.loss(config, model, v, b, jax.random.key(1), train=True), variables, batch)
    assert total.shape == () and {"loss", "loss_coord", "loss_size"} <= set(mets), sorted(mets)
    grads = jax.eval_shape(jax.grad(lambda v: exp.loss(config, model, v, batch, jax.random.key(1),
                                                       train=True)[0]), variables)
    assert jax.tree.structure(grads) == jax.tree.structure(variables)
    out = jax.eval_shape(lambda v, b: exp.predict(config, model, v, b), variables, batch)
    assert out["det_boxes"].shape == (8, 10, 4) and out["det_valid"].shape == (8, 10)


def _info(config):
    from jaxvision.data.source import build_source
    return build_source(config.data, "train").info


def test_predict_draws_boxes_on_image_files(run, tmp_path):
    name, _, workdir, _ = run
    if name != "centernet_synthetic":
        pytest.skip("one model is enough for the command line")
    images = tmp_path / "in"
    images.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(images / "a.png")
    out = tmp_path / "out"
    assert main(["predict", "--workdir", str(workdir), str(images), "--out", str(out)]) == 0
    line = json.loads((out / "predictions.jsonl").read_text().splitlines()[0])
    dets = line["detections"]
    assert len(dets) == 10 and dets[0]["score"] >= dets[-1]["score"]
    # Boxes are in the file's pixels (48 x 64), not the model's 32 x 32 input.
    for d in dets:
        y0, x0, y1, x1 = d["box"]
        assert 0 <= y0 <= y1 <= 48 and 0 <= x0 <= x1 <= 64
    assert Image.open(out / line["picture"]).size[0] >= 256


def test_random_box_baseline_scores_near_zero_and_repeats(shrink):
    from jaxvision.tools.box_baseline import random_boxes
    config = _tiny(shrink, "centernet_synthetic")
    config.data.procedural.num_eval = 40
    a, b = random_boxes(config, seed=3), random_boxes(config, seed=3)
    assert a["AP"] == b["AP"] and a["eval_images"] == 40
    assert 0 <= a["AP50"] < 0.2 and 0 <= a["voc_mAP"] < 0.2


def test_too_many_boxes_and_foreign_classes_are_clear_errors(tmp_path, shrink):
    config = _tiny(shrink, "centernet_synthetic")
    config.data.max_boxes = 1
    with pytest.raises(DataError, match=r"data.max_boxes=1.*--config.data.max_boxes=2"):
        loop.train(config, tmp_path / "a", experiment=load_experiment(SPEC), progress=False)
    config = _tiny(shrink, "centernet_synthetic")
    config.model.num_classes = 3
    with pytest.raises(ValueError, match="model.num_classes=3 is below the data.s 6 object classes"):
        loop.train(config, tmp_path / "b", experiment=load_experiment(SPEC), progress=False)
    config = _tiny(shrink, "centernet_synthetic")
    config.model.name = "yolo"
    with pytest.raises(ValueError, match="detectors: yolo_v1, centernet, retinanet, faster_rcnn"):
        loop.train(config, tmp_path / "c", experiment=load_experiment(SPEC), progress=False)


@pytest.mark.parametrize("name", ["voc", "coco"])
def test_tfds_configs_without_the_data_give_the_prepare_command(name, tmp_path):
    from jaxvision.data.source import build_source
    config = get_config(f"{SPEC}:{name}")
    config.data.data_dir = str(tmp_path)
    with pytest.raises(DataError, match="data prepare"):
        build_source(config.data, config.data.train_split)
