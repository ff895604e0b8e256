"""Object detection: YOLOv1, CenterNet, RetinaNet, a two-stage Faster R-CNN and Mask R-CNN.

Every model is trained from ``boxes`` / ``box_classes`` / ``box_valid`` and scored by the COCO
evaluator (``evals.coco``: AP, AP50, AP75, APs/m/l, AR1/10/100, equal to pycocotools); its
``predict`` returns fixed-size detections (``jaxvision/models/detection.py``). Named configs
(``experiments/detection.py:<name>``) are listed in ``CONFIGS`` at the bottom.

``model``: ``name`` (``yolo_v1``, ``centernet``, ``retinanet``, ``faster_rcnn``), ``backbone``
(a zoo model config: ``name`` and its fields), ``taps`` (the backbone feature maps read),
``max_detections`` (K per image), ``nms_iou``, ``score_threshold``, and the detector's own
fields (see its class). ``loss``: the weights and options of the model's loss.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxvision import losses, metrics, models, replica
from jaxvision.config import base_config
from jaxvision.data.source import SourceInfo
from jaxvision.evaluators import eval_config
from jaxvision.experiment import apply_model, model_kwargs, output_classes, plots
from jaxvision.experiment import default_prepare as prepare
from jaxvision.models import detection as det
from jaxvision.models import rcnn

DETECTORS = {"yolo_v1": det.YOLOv1, "centernet": det.CenterNet, "retinanet": det.RetinaNet,
             "faster_rcnn": rcnn.FasterRCNN}
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"  # the real data sets
# model keys read here, not passed to the detector class
_OWN_KEYS = ("name", "backbone", "max_detections", "nms_iou", "score_threshold", "num_classes",
             "draw_threshold", "report_pictures")


def build_model(config: Any, info: SourceInfo, *, axis_name: str | None = None):
    """The detector ``model.name`` on the zoo backbone ``model.backbone``."""
    del axis_name
    m = config.model
    if m.name not in DETECTORS:
        raise ValueError(f"model.name={m.name!r} is not a detector; detectors: {', '.join(DETECTORS)}.")
    dtype = jnp.bfloat16 if config.train.mixed_precision else jnp.float32
    backbone = models.build_backbone(m.backbone, dtype)
    classes = output_classes(config, info.num_box_classes, "object classes (num_box_classes)")
    return DETECTORS[m.name](backbone=backbone, num_classes=classes, dtype=dtype,
                             **model_kwargs(m, _OWN_KEYS))


def _apply(config: Any, model, variables: dict, batch: dict, key, train: bool):
    kwargs = {}
    if config.model.name == "faster_rcnn" and (train or key is not None):
        # The second stage trains on RoIs sampled around the ground truth.
        kwargs = dict(boxes=batch["boxes"], box_classes=batch["box_classes"],
                      box_valid=batch["box_valid"])
    return apply_model(model, variables, prepare(config, batch), train=train, key=key, **kwargs)


def _terms(config: Any, model, out, batch: dict, image_size, key) -> dict[str, jax.Array]:
    """The model's loss terms per image (N,)."""
    c, name = config.loss, config.model.name
    boxes, classes, valid = batch["boxes"], batch["box_classes"], batch["box_valid"]
    if name == "yolo_v1":
        t = losses.yolo_v1_loss(out, boxes, classes, valid, image_size, num_boxes=model.num_boxes,
                                lambda_coord=float(c.lambda_coord), lambda_noobj=float(c.lambda_noobj))
        return t._asdict()
    if name == "centernet":
        stride = image_size[0] / out["heatmap"].shape[1]
        return losses.centernet_loss(out, boxes, classes, valid, stride,
                                     size_weight=float(c.size_weight), offset_weight=float(c.offset_weight))
    if name == "retinanet":
        return losses.retinanet_loss(out, boxes, classes, valid, alpha=float(c.alpha),
                                     gamma=float(c.gamma), box_loss=str(c.box_loss))
    keys = replica.example_keys(jax.random.fold_in(key, 1), boxes.shape[0])
    terms = losses.faster_rcnn_loss(out, boxes, valid, keys)
    if "roi_mask_logits" in out:
        terms["mask"] = losses.mask_rcnn_loss(out, batch["instance_mask"], boxes.shape[1])
    return terms


def _losses(config, model, variables, batch, key, train):
    out, new_state = _apply(config, model, variables, batch, key, train)
    terms = _terms(config, model, out, batch, tuple(batch["image"].shape[1:3]), key)
    total = sum(terms.values())
    w = batch["valid"]
    mets = {"loss": metrics.mean(total, w), **{f"loss_{k}": metrics.mean(v, w) for k, v in terms.items()}}
    return total, mets, new_state


def loss(config: Any, model, variables: dict, batch: dict, key, *, train: bool):
    """The detector's loss (the sum of its terms, per image) averaged over the valid images;
    metrics ``loss`` and ``loss_<term>``."""
    total, mets, new_state = _losses(config, model, variables, batch, key, train)
    return losses.masked_mean(total, batch["valid"]), mets, new_state


def evaluate(config: Any, model, variables: dict, batch: dict):
    """The loss terms on eval images (the two-stage model samples its RoIs with a fixed key)."""
    key = jax.random.key(0) if config.model.name == "faster_rcnn" else None
    return _losses(config, model, variables, batch, key, False)[1]


def predict(config: Any, model, variables: dict, batch: dict):
    """Fixed-size detections per image: ``det_boxes`` (N, K, 4) input pixels, ``det_scores``,
    ``det_classes``, ``det_valid`` (K = ``model.max_detections``)."""
    out, _ = _apply(config, model, variables, batch, None, False)
    m = config.model
    size = tuple(batch["image"].shape[1:3])
    common = dict(max_detections=int(m.max_detections), score_threshold=float(m.score_threshold))
    if m.name == "yolo_v1":
        return det.decode_yolo_v1(out, size, model.num_boxes, iou_threshold=float(m.nms_iou), **common)
    if m.name == "centernet":
        return det.decode_centernet(out, size[0] / out["heatmap"].shape[1], size, **common)
    if m.name == "retinanet":
        return det.decode_retinanet(out, size, iou_threshold=float(m.nms_iou), **common)
    return rcnn.decode_faster_rcnn(out, size, iou_threshold=float(m.nms_iou), **common)


def _names(info: SourceInfo) -> tuple[str, ...]:
    return tuple(info.box_class_names or info.class_names)


def _name(info: SourceInfo, k: int) -> str:
    names = _names(info)
    return names[k] if k < len(names) else str(k)


def _to_image(config: Any, outputs: dict) -> tuple[np.ndarray, float, float]:
    """Valid detection boxes in the pixels of the image as read (``predict`` records its size;
    the eval pipelines of detection configs only resize)."""
    boxes = np.asarray(outputs["det_boxes"], np.float64)
    sy = sx = 1.0
    if "image_size" in outputs and "input_size" in outputs:
        (h, w), (ih, iw) = outputs["image_size"], outputs["input_size"]
        sy, sx = h / ih, w / iw
    return boxes * np.array([sy, sx, sy, sx]), sy, sx


def describe(config: Any, outputs: dict, info: SourceInfo) -> dict:
    """``predict``'s record of one image: ``detections``, best first, as ``{"class", "index",
    "score", "box": [y0, x0, y1, x1]}`` in the pixels of the image file."""
    boxes, _, _ = _to_image(config, outputs)
    keep = np.flatnonzero(np.asarray(outputs["det_valid"]))
    return {"detections": [
        {"class": _name(info, int(outputs["det_classes"][i])), "index": int(outputs["det_classes"][i]),
         "score": round(float(outputs["det_scores"][i]), 6),
         "box": [round(float(v), 2) for v in boxes[i]]} for i in keep]}


def draw(config: Any, example: dict, outputs: dict, info: SourceInfo) -> np.ndarray:
    """The image with its detections (score >= ``model.draw_threshold``, default 0.3)."""
    from jaxvision import viz
    boxes, _, _ = _to_image(config, outputs)
    keep = np.asarray(outputs["det_valid"], bool)
    return viz.draw_detections(example["image"], boxes[keep], np.asarray(outputs["det_classes"])[keep],
                               np.asarray(outputs["det_scores"])[keep], _names(info),
                               min_score=float(config.model.get("draw_threshold", 0.3)))


def report(config: Any, workdir: Path, results: dict, info: SourceInfo) -> None:
    """Saves ``pr_curves.png`` (precision / recall per class at IoU 0.5), ``per_class_ap.json``
    and ``detections.png`` (predictions over the first ``model.report_pictures`` eval images,
    ground truth dashed white; 0 = none). ``train.plots`` off: only the JSON."""
    from jaxvision import viz
    workdir = Path(workdir)
    names = [_name(info, k) for k in range(len(np.asarray(results.get("AP_per_class", []))))]
    draw = plots(config)
    if draw and results.get("pr_curve50") is not None and (np.asarray(results["pr_curve50"]) > -1).any():
        viz.plot_pr_curves(np.asarray(results["pr_curve50"]), str(workdir / "pr_curves.png"),
                           class_names=names)
    if results.get("AP_per_class") is not None:
        rows = [{"class": n, "AP": float(a)} for n, a in zip(names, np.asarray(results["AP_per_class"]))]
        (workdir / "per_class_ap.json").write_text(json.dumps(rows, indent=2))
    if draw and int(config.model.get("report_pictures", 8)) > 0:
        _picture(config, workdir, info, int(config.model.get("report_pictures", 8)))


def _picture(config: Any, workdir: Path, info: SourceInfo, count: int) -> None:
    """Draws the first ``count`` eval images with the run's detections and their ground truth."""
    from jaxvision import viz
    from jaxvision.inference import predict_eval_batch
    batch, outs = predict_eval_batch(workdir, config, count)
    panels = []
    for i, out in enumerate(outs):
        keep = np.asarray(out["det_valid"], bool)
        gv = batch["box_valid"][i]
        panels.append(viz.draw_detections(
            batch["image"][i], np.asarray(out["det_boxes"])[keep], np.asarray(out["det_classes"])[keep],
            np.asarray(out["det_scores"])[keep], _names(info), gt_boxes=batch["boxes"][i][gv],
            gt_classes=batch["box_classes"][i][gv], min_score=float(config.model.get("draw_threshold", 0.3))))
    viz.detection_grid(panels, str(workdir / "detections.png"), columns=4,
                       title=f"{config.model.name}: detections (score >= "
                             f"{float(config.model.get('draw_threshold', 0.3)):g}), ground truth dashed")


# ----------------------------------------------------------------------------- configs


def _loss_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        lambda_coord=5.0, lambda_noobj=0.5,          # YOLOv1
        size_weight=0.1, offset_weight=1.0,          # CenterNet
        alpha=0.25, gamma=2.0, box_loss="smooth_l1",  # RetinaNet
    ))


def _base(name: str, taps: tuple[str, ...], **fields: Any) -> ml_collections.ConfigDict:
    """Procedural scenes at their defaults (64 px, 1-4 objects, 6 classes) with scale jitter and
    flips; a 4-stage ``small_cnn`` (strides 1, 2, 4, 8) as backbone; COCO evaluation."""
    config = base_config()
    config.data.keys = ("image", "boxes", "box_classes")
    config.data.max_boxes = 8
    config.data.procedural.num_eval = 500
    config.data.train_pp = "random_scale(64, scale=(0.75, 1.25))|flip_lr"
    config.data.input_shape = (64, 64, 3)
    config.data.num_classes = 6
    config.model = ml_collections.ConfigDict(dict(
        name=name, backbone=dict(name="small_cnn", widths=(32, 64, 128, 128), norm="batch"),
        taps=taps, max_detections=100, nms_iou=0.5, score_threshold=0.01, draw_threshold=0.3,
        report_pictures=8, **fields))
    config.loss = _loss_config()
    config.optim.update(dict(name="adam", lr=2e-3, schedule="cosine", warmup_steps=100, grad_clip_norm=10.0))
    config.train.update(dict(batch_size=32, eval_batch_size=100, steps=3000, eval_every=1000,
                             checkpoint_every=500, log_every=100, best_metric="AP"))
    config.evals = ml_collections.ConfigDict({"coco": eval_config("coco"), "eval": eval_config("metrics")})
    return config


def yolo_synthetic() -> ml_collections.ConfigDict:
    """YOLOv1 (8 x 8 grid, 2 boxes per cell, the paper's fully connected head) on the procedural scenes."""
    return _base("yolo_v1", ("stage4",), grid=8, num_boxes=2, hidden=512, dropout=0.5, head="fc")


def yolo_conv_synthetic() -> ml_collections.ConfigDict:
    """YOLOv1's grid, loss and decoding with a convolutional head (per-cell 3x3 and 1x1)."""
    config = yolo_synthetic()
    config.model.update(dict(head="conv", hidden=128, dropout=0.0))
    return config


def centernet_synthetic() -> ml_collections.ConfigDict:
    """CenterNet at output stride 4 (16 x 16 heat maps) on the procedural scenes."""
    return _base("centernet", ("stage3", "stage4"), width=64, head_width=64)


def retinanet_synthetic() -> ml_collections.ConfigDict:
    """RetinaNet, FPN strides 4 and 8, 9 anchors per cell (12-38 px), focal + smooth L1."""
    return _base("retinanet", ("stage3", "stage4"), width=64, head_depth=2, anchor_scale=3.0)


def twostage_synthetic() -> ml_collections.ConfigDict:
    """Faster R-CNN with an FPN (strides 4 and 8; boxes near 16 px pool from stride 8), RoIAlign 7 x 7."""
    return _base("faster_rcnn", ("stage3", "stage4"), fpn=True, width=64, anchor_scale=3.0,
                 canonical_size=16.0, canonical_level=3, pre_nms=300, post_nms_train=64,
                 post_nms_test=32, roi_batch=32)


def _files(config: ml_collections.ConfigDict, name: str, path: str, size: int, *, train: str,
           evaluate: str, max_boxes: int, classes: int) -> ml_collections.ConfigDict:
    """Points a config at file or TFDS data resized to ``size`` x ``size`` (boxes follow)."""
    config.data.name, config.data.path = name, path
    config.data.train_split, config.data.eval_split = train, evaluate
    config.data.max_boxes = max_boxes
    config.data.eval_pp = f"resize({size})"
    config.data.train_pp = f"resize({size})|random_scale({size}, scale=(0.75, 1.25))|flip_lr"
    config.data.input_shape, config.data.num_classes = (size, size, 3), classes
    return config


def pets_heads() -> ml_collections.ConfigDict:
    """Cat and dog head boxes of ../shared/data/oxford_pets, 128 x 128, CenterNet from scratch.

    Only the 296 trainval images have head boxes; every 4th of each breed is held out (split
    heads_eval, 72 images), the rest train (heads_train, 224)."""
    config = _files(centernet_synthetic(), "oxford_pets", str(SHARED / "oxford_pets"), 128,
                    train="heads_train", evaluate="heads_eval", max_boxes=4, classes=2)
    config.train.batch_size, config.train.eval_batch_size = 16, 72
    config.train.steps, config.train.eval_every, config.train.checkpoint_every = 2000, 500, 500
    config.train.log_every = 50
    return config


def coco128() -> ml_collections.ConfigDict:
    """COCO128 overfit-then-evaluate sanity run: RetinaNet trained and scored on the same 128 images.

    ../shared/data/coco128: 80 classes, up to 42 boxes an image, at 192 x 192, FPN strides 4-16;
    a detector that cannot fit these images is broken."""
    config = _files(retinanet_synthetic(), "yolo", str(SHARED / "coco128"), 192, train="train",
                    evaluate="train", max_boxes=48, classes=80)
    config.model.backbone.widths = (32, 64, 128, 128, 128)
    config.model.taps = ("stage3", "stage4", "stage5")
    config.data.train_pp = "resize(192)|flip_lr"  # memorizing is the point: light augmentation
    config.train.batch_size, config.train.eval_batch_size = 16, 64
    config.train.steps, config.train.eval_every, config.train.checkpoint_every = 3000, 1000, 500
    config.train.log_every = 50
    return config


def voc() -> ml_collections.ConfigDict:
    """PASCAL VOC 2007 (TFDS voc/2007), ResNet-18 FPN RetinaNet at 320 x 320: a GPU's job.

    Trains on train+validation, scores test with COCO AP and VOC07 11-point AP; the data must
    be prepared first (the error gives the ``data prepare`` command)."""
    config = _files(retinanet_synthetic(), "voc/2007", None, 320, train="train+validation",
                    evaluate="test", max_boxes=48, classes=20)
    config.model.backbone = ml_collections.ConfigDict(dict(name="resnet18", norm="batch"))
    config.model.taps = ("layer2", "layer3", "layer4")
    config.model.anchor_scale = 4.0
    config.data.keys = ("image", "boxes", "box_classes", "box_difficult")
    config.evals.voc07 = eval_config("voc", eleven_point=True)
    config.train.batch_size, config.train.steps = 16, 40000
    config.train.eval_every = config.train.checkpoint_every = 5000
    return config


def coco() -> ml_collections.ConfigDict:
    """COCO 2017 (TFDS coco/2017), ResNet-50 FPN RetinaNet at 512 x 512: a GPU's job.

    Scored on validation with crowd regions and areas from the data; prepare the data first."""
    config = _files(retinanet_synthetic(), "coco/2017", None, 512, train="train",
                    evaluate="validation", max_boxes=100, classes=80)
    config.model.backbone = ml_collections.ConfigDict(dict(name="resnet50", norm="batch"))
    config.model.taps = ("layer2", "layer3", "layer4")
    config.model.anchor_scale = 4.0
    config.data.keys = ("image", "boxes", "box_classes", "box_crowd", "box_area")
    config.train.batch_size, config.train.steps = 16, 90000
    config.train.eval_every = config.train.checkpoint_every = 10000
    return config


def maskrcnn_synthetic() -> ml_collections.ConfigDict:
    """Mask R-CNN: the two-stage detector with a mask head, on the procedural instance masks.

    Scored twice by the COCO evaluator: boxes (``AP``) and masks (``coco_mask/AP``, mask IoU)."""
    config = twostage_synthetic()
    config.data.keys = ("image", "boxes", "box_classes", "instance_mask")
    config.model.mask_head = True
    # A head sized for this CPU and 64-px scenes (objects under ~25 px): 7 x 7 RoIAlign, two
    # 32-channel convolutions, 14 x 14 masks. The paper's 14 x 14 / four 256-channel head (or
    # even its default 64 channels: 35 s a step at batch 32 in a `bench` that shared the cores
    # with a training run) is far too slow for this CPU.
    config.model.update(dict(mask_size=7, mask_convs=2, mask_width=32))
    config.evals.coco_mask = eval_config("coco", iou_type="segm")
    return config


def default() -> ml_collections.ConfigDict:
    """RetinaNet on the procedural scenes, the best of the four there (benchmarks/NOTES.md, "Detection")."""
    return retinanet_synthetic()


CONFIGS = {
    "default": default,
    "yolo_synthetic": yolo_synthetic,
    "yolo_conv_synthetic": yolo_conv_synthetic,
    "centernet_synthetic": centernet_synthetic,
    "retinanet_synthetic": retinanet_synthetic,
    "twostage_synthetic": twostage_synthetic,
    "maskrcnn_synthetic": maskrcnn_synthetic,
    "pets_heads": pets_heads,
    "coco128": coco128,
    "voc": voc,
    "coco": coco,
}
