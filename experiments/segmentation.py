"""Semantic segmentation: FCN-32s/16s/8s, U-Net and DeepLab-v3 trained per pixel on ``mask``.

The loss is per-pixel cross-entropy over the non-ignored pixels (``IGNORE_LABEL`` skipped),
optionally class-weighted, plus ``loss.dice_weight`` x soft Dice or with the focal form
(``loss.focal_gamma`` > 0). The ``segmentation`` evaluator accumulates one confusion matrix over
the whole eval split: ``mIoU``, ``pixel_accuracy``, ``mean_accuracy``, ``fw_iou``, per-class
``iou``. Named configs are listed in ``CONFIGS`` at the bottom.

``model``: ``name`` (``fcn``, ``unet``, ``deeplab``), ``backbone`` (a zoo model config, for FCN
and DeepLab), ``taps``, and the model's own fields (``jaxvision/models/segmentation.py``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxvision import losses, metrics, models
from jaxvision.config import base_config
from jaxvision.data.source import SourceInfo
from jaxvision.evaluators import eval_config
from jaxvision.experiment import apply_model, model_kwargs, output_classes, plots
from jaxvision.experiment import default_prepare as prepare
from jaxvision.models import segmentation as seg

SEGMENTERS = {"fcn": seg.FCN, "unet": seg.UNet, "deeplab": seg.DeepLabV3}
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"  # the real data sets
_OWN_KEYS = ("name", "backbone", "num_classes", "report_pictures")


def build_model(config: Any, info: SourceInfo, *, axis_name: str | None = None):
    """The segmenter ``model.name`` (on the zoo backbone ``model.backbone`` for FCN / DeepLab)."""
    del axis_name
    m = config.model
    if m.name not in SEGMENTERS:
        raise ValueError(f"model.name={m.name!r} is not a segmenter; segmenters: {', '.join(SEGMENTERS)}.")
    dtype = jnp.bfloat16 if config.train.mixed_precision else jnp.float32
    kwargs = model_kwargs(m, _OWN_KEYS)
    if m.name != "unet":
        kwargs["backbone"] = models.build_backbone(m.backbone, dtype)
    classes = output_classes(config, info.num_mask_classes, "'mask' classes (num_mask_classes)")
    return SEGMENTERS[m.name](num_classes=classes, dtype=dtype, **kwargs)


def _apply(config: Any, model, variables: dict, batch: dict, key, train: bool):
    return apply_model(model, variables, prepare(config, batch), train=train, key=key)


def _losses(config: Any, logits: jax.Array, batch: dict) -> tuple[jax.Array, dict]:
    c = config.loss
    mask, valid = batch["mask"], batch["valid"].astype(jnp.float32)
    weights = jnp.asarray(c.class_weights, jnp.float32) if c.class_weights else None
    if float(c.focal_gamma) > 0:
        pix = losses.softmax_focal_loss(logits, mask, gamma=float(c.focal_gamma), alpha=weights)
    else:
        pix = losses.pixel_cross_entropy(logits, mask, class_weights=weights,
                                         label_smoothing=float(c.label_smoothing))
    pixels = jnp.maximum(jnp.sum(pix.pixels * valid), 1.0)
    total = jnp.sum(pix.values * valid) / pixels
    mets = {"loss": (jnp.sum(pix.values * valid), pixels)}
    if float(c.dice_weight) > 0:
        dice = losses.dice_loss(logits, mask)
        total = total + float(c.dice_weight) * losses.masked_mean(dice, valid)
        mets["dice_loss"] = metrics.mean(dice, batch["valid"])
    known = (mask >= 0) & (batch["valid"][:, None, None])
    correct = (jnp.argmax(logits, -1) == mask) & known
    mets["pixel_accuracy"] = (jnp.sum(correct).astype(jnp.float32), jnp.sum(known).astype(jnp.float32))
    return total, mets


def loss(config: Any, model, variables: dict, batch: dict, key, *, train: bool):
    """Mean per-pixel loss over the batch's non-ignored pixels (+ weighted Dice); metrics
    ``loss`` (the pixel term), ``pixel_accuracy`` and ``dice_loss`` when used."""
    logits, new_state = _apply(config, model, variables, batch, key, train)
    total, mets = _losses(config, logits, batch)
    return total, mets, new_state


def evaluate(config: Any, model, variables: dict, batch: dict):
    """The pixel loss and pixel accuracy as exact sums over the eval pixels."""
    logits, _ = _apply(config, model, variables, batch, None, False)
    return _losses(config, logits, batch)[1]


def predict(config: Any, model, variables: dict, batch: dict):
    """``mask_logits`` (N, H, W, C) float32 at the input resolution (the ``segmentation``
    evaluator resizes them to the label's)."""
    logits, _ = _apply(config, model, variables, batch, None, False)
    return {"mask_logits": logits.astype(jnp.float32)}


def _names(info: SourceInfo, count: int) -> list[str]:
    names = list(info.mask_class_names)
    return names[:count] + [str(k) for k in range(len(names), count)]


def _label_map(outputs: dict, hw: tuple[int, int] | None = None) -> np.ndarray:
    """The argmax class map, resized (nearest) to ``hw``."""
    from jaxvision.viz import resize_nearest
    labels = np.argmax(np.asarray(outputs["mask_logits"]), -1)
    return labels if hw is None else resize_nearest(labels, hw)


def describe(config: Any, outputs: dict, info: SourceInfo) -> dict:
    """``predict``'s record of one image: ``classes``, the fraction of its pixels given to each
    class present, largest first."""
    labels = _label_map(outputs)
    names = _names(info, np.asarray(outputs["mask_logits"]).shape[-1])
    ids, counts = np.unique(labels, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    return {"classes": [{"class": names[int(ids[i])], "index": int(ids[i]),
                         "fraction": round(float(counts[i] / labels.size), 6)} for i in order]}


def draw(config: Any, example: dict, outputs: dict, info: SourceInfo) -> np.ndarray:
    """The image beside its predicted class map (at the file's size)."""
    from jaxvision import viz
    image = viz.image_for_display(example["image"])
    overlay = viz.overlay_labels(image, _label_map(outputs, image.shape[:2]))
    return (np.concatenate([image, overlay], 1) * 255).round().astype(np.uint8)


def report(config: Any, workdir: Path, results: dict, info: SourceInfo) -> None:
    """Saves ``per_class_iou.png`` / ``.json`` and ``segmentations.png`` (image, ground truth,
    prediction for the first ``model.report_pictures`` eval images). ``train.plots`` off: only
    the JSON."""
    from jaxvision import viz
    workdir = Path(workdir)
    draw = plots(config)
    if results.get("iou") is not None:
        iou = np.asarray(results["iou"], np.float64)
        names = _names(info, len(iou))
        (workdir / "per_class_iou.json").write_text(json.dumps(
            [{"class": n, "iou": None if np.isnan(v) else float(v)} for n, v in zip(names, iou)], indent=2))
        if draw:
            viz.plot_bars(names, [0.0 if np.isnan(v) else float(v) for v in iou],
                          str(workdir / "per_class_iou.png"), title=f"IoU per class (mIoU {results.get('mIoU', float('nan')):.3f})")
    count = int(config.model.get("report_pictures", 6))
    if count > 0 and draw:
        _pictures(config, workdir, count)


def _pictures(config: Any, workdir: Path, count: int) -> None:
    from PIL import Image
    from jaxvision import viz
    from jaxvision.inference import predict_eval_batch
    batch, outs = predict_eval_batch(workdir, config, count)
    rows = []
    for i, out in enumerate(outs):
        image = viz.image_for_display(batch["image"][i])
        rows.append(np.concatenate([image, viz.overlay_labels(image, batch["mask"][i]),
                                    viz.overlay_labels(image, _label_map(out, image.shape[:2]))], 1))
    grid = (np.concatenate(rows, 0) * 255).round().astype(np.uint8)
    Image.fromarray(grid).save(workdir / "segmentations.png")


# ----------------------------------------------------------------------------- configs


def _base(name: str, **fields: Any) -> ml_collections.ConfigDict:
    """Procedural scenes at their defaults (64 px, 1-4 objects; 7 mask classes: background and
    the 6 shapes) with scale jitter and flips; the ``segmentation`` evaluator."""
    config = base_config()
    config.data.keys = ("image", "mask")
    config.data.procedural.num_eval = 500
    config.data.train_pp = "random_scale(64, scale=(0.75, 1.25))|flip_lr"
    config.data.input_shape, config.data.num_classes = (64, 64, 3), 7
    config.model = ml_collections.ConfigDict(dict(name=name, report_pictures=6, **fields))
    config.loss = ml_collections.ConfigDict(dict(class_weights=(), label_smoothing=0.0,
                                                 dice_weight=0.0, focal_gamma=0.0))
    config.optim.update(dict(name="adam", lr=2e-3, schedule="cosine", warmup_steps=100))
    config.train.update(dict(batch_size=32, eval_batch_size=100, steps=3000, eval_every=1000,
                             checkpoint_every=500, log_every=100, best_metric="mIoU"))
    config.evals = ml_collections.ConfigDict({"segmentation": eval_config("segmentation"),
                                              "eval": eval_config("metrics")})
    return config


def _small_cnn() -> dict:
    return dict(name="small_cnn", widths=(32, 64, 128, 128), norm="batch")


def unet_synthetic() -> ml_collections.ConfigDict:
    """U-Net, 4 levels of 16-128 channels, on the procedural scenes' masks."""
    return _base("unet", widths=(16, 32, 64, 128))


def fcn8s_synthetic() -> ml_collections.ConfigDict:
    """FCN-8s on a 4-stage small_cnn (skips from strides 2 and 4, scores at stride 8)."""
    return _base("fcn", backbone=_small_cnn(), taps=("stage2", "stage3", "stage4"), skips=2)


def deeplab_synthetic() -> ml_collections.ConfigDict:
    """DeepLab-v3: ResNet-18 at 1/4 width with output stride 8, ASPP rates 2/4/6 (64 px inputs)."""
    return _base("deeplab", backbone=dict(name="resnet18", width=0.25, output_stride=8, norm="batch"),
                 taps=("layer4",), rates=(2, 4, 6), width=64)


def default() -> ml_collections.ConfigDict:
    """FCN-8s on the procedural scenes' semantic masks, the best of the three there within 30
    minutes of this CPU (benchmarks/NOTES.md, "Segmentation")."""
    return fcn8s_synthetic()


def _pets(config: ml_collections.ConfigDict, size: int = 128) -> ml_collections.ConfigDict:
    """Oxford-IIIT Pet trimaps (pet / background, the border ignored) of ../shared/data: the
    trainval list trains, the test list scores; images resized to ``size``. The ``segmentation``
    evaluator scores at each trimap's own resolution (``full_res_mask``: the largest test image
    is 1600 x 1646); the ``eval`` loss and pixel accuracy are at ``size``."""
    config.data.name, config.data.path = "oxford_pets", str(SHARED / "oxford_pets")
    config.data.train_split, config.data.eval_split = "train", "test"
    config.data.eval_pp = f"full_res_mask(1664)|resize({size})"
    config.data.train_pp = f"resize({size})|random_scale({size}, scale=(0.8, 1.2))|flip_lr"
    config.data.input_shape, config.data.num_classes = (size, size, 3), 2
    config.evals.segmentation.mask = "mask_full"
    config.train.batch_size, config.train.eval_batch_size = 16, 16
    config.train.steps, config.train.eval_every, config.train.checkpoint_every = 1500, 500, 500
    config.train.log_every = 50
    return config


def unet_pets() -> ml_collections.ConfigDict:
    """U-Net on the Oxford-IIIT Pet trimaps (pet vs background), 128 x 128."""
    return _pets(unet_synthetic())


def fcn8s_pets() -> ml_collections.ConfigDict:
    """FCN-8s on the Oxford-IIIT Pet trimaps, 128 x 128."""
    return _pets(fcn8s_synthetic())


def deeplab_pets() -> ml_collections.ConfigDict:
    """DeepLab-v3 (ResNet-18 at 1/4 width, output stride 8) on the Oxford-IIIT Pet trimaps."""
    config = _pets(deeplab_synthetic())
    config.model.rates = (6, 12, 18)
    return config


def unet_oxford_iiit_pet() -> ml_collections.ConfigDict:
    """U-Net on the full Oxford-IIIT Pet from TFDS (oxford_iiit_pet: trimaps as pet / background,
    the border ignored), 128 x 128; prepare the data first (the error gives the command)."""
    config = _pets(unet_synthetic())
    config.data.name, config.data.path = "oxford_iiit_pet", None
    # Scored at 128 px: TFDS images have no size bound to size a full-resolution canvas by
    # (add 'full_res_mask(N)|' in front of data.eval_pp and set evals.segmentation.mask).
    config.data.eval_pp, config.evals.segmentation.mask = "resize(128)", "mask"
    config.train.eval_batch_size = 50
    config.train.steps = 20000
    config.train.eval_every = config.train.checkpoint_every = 2000
    return config


CONFIGS = {
    "default": default,
    "unet_synthetic": unet_synthetic,
    "fcn8s_synthetic": fcn8s_synthetic,
    "deeplab_synthetic": deeplab_synthetic,
    "unet_pets": unet_pets,
    "fcn8s_pets": fcn8s_pets,
    "deeplab_pets": deeplab_pets,
    "unet_oxford_iiit_pet": unet_oxford_iiit_pet,
}
