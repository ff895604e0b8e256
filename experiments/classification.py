"""Image classification: softmax cross-entropy over ``label``; accuracy, top-5, confusion matrix.

Named configs (``experiments/classification.py:<name>``) are listed in ``CONFIGS`` at the bottom.
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
from jaxvision.experiment import Setup, apply_model, plots
from jaxvision.experiment import default_prepare as prepare


def build_model(config: Any, info: SourceInfo, *, axis_name: str | None = None):
    """The model named by ``config.model.name``; its other keys are the model's arguments.

    Zoo models take the pmap axis for batch norm from ``jaxvision.replica`` at trace time, so
    ``axis_name`` is not passed on.
    """
    del axis_name
    kwargs = {k: v for k, v in config.model.items() if k != "name"}
    if info.num_classes is None:
        raise ValueError(f"data '{info.name}' has no image-level 'label'; classification needs one.")
    kwargs.setdefault("num_classes", info.num_classes)
    if config.train.mixed_precision:
        kwargs["dtype"] = jnp.bfloat16
    return models.build_model(config.model.name, **kwargs)


def _apply(model, variables: dict, batch: dict, config: Any, key, train: bool):
    return apply_model(model, variables, prepare(config, batch), train=train, key=key)


def _metrics(logits: jax.Array, labels: jax.Array, per_example_loss: jax.Array, w: jax.Array):
    return {
        "loss": metrics.mean(per_example_loss, w),
        "accuracy": metrics.mean(metrics.topk_correct(logits, labels, 1), w),
        "top5_accuracy": metrics.mean(metrics.topk_correct(logits, labels, 5), w),
    }


def loss(config: Any, model, variables: dict, batch: dict, key, *, train: bool,
         setup: Setup | None = None):
    """Mean (label-smoothed) cross-entropy over the valid examples, its metrics, new model state.

    With a teacher in ``setup`` (knowledge distillation, see ``setup``) the per-example objective
    is ``alpha * distillation_loss + (1 - alpha) * cross-entropy``; the metric ``loss`` stays the
    cross-entropy and ``distill_loss`` is the soft term.
    """
    logits, new_state = _apply(model, variables, batch, config, key, train)
    per_example = losses.softmax_cross_entropy(logits, batch["label"],
                                               label_smoothing=float(config.loss.label_smoothing))
    w = batch["valid"]
    out = _metrics(logits, batch["label"], per_example, w)
    objective = per_example
    if train and setup is not None and "teacher" in setup.static:
        d = config.distill
        soft = losses.distillation_loss(logits, teacher_logits(setup, batch, logits.shape[-1]),
                                        float(d.temperature))
        objective = float(d.alpha) * soft + (1.0 - float(d.alpha)) * per_example
        out["distill_loss"] = metrics.mean(soft, w)
    return losses.masked_mean(objective, w), out, new_state


def evaluate(config: Any, model, variables: dict, batch: dict, setup: Setup | None = None):
    """Metric sums over the batch's valid examples, the confusion matrix included."""
    logits, _ = _apply(model, variables, batch, config, None, False)
    labels, w = batch["label"], batch["valid"]
    per_example = losses.softmax_cross_entropy(logits, labels)
    out = _metrics(logits, labels, per_example, w)
    cm = metrics.confusion_matrix(jnp.argmax(logits, -1), labels, logits.shape[-1], w)
    out["confusion_matrix"] = (cm, jnp.ones((), jnp.float32))
    return out


def predict(config: Any, model, variables: dict, batch: dict, setup: Setup | None = None):
    """Per example: ``logits`` (N, C) float32 and ``probabilities`` (N, C)."""
    logits, _ = _apply(model, variables, batch, config, None, False)
    logits = logits.astype(jnp.float32)
    return {"logits": logits, "probabilities": jax.nn.softmax(logits, axis=-1)}


def _class_name(info: SourceInfo, index: int) -> str:
    return info.class_names[index] if index < len(info.class_names) else str(index)


def describe(config: Any, outputs: dict, info: SourceInfo) -> dict:
    """``predict``'s record of one image: ``top5`` as ``[{"class", "index", "probability"}]``,
    most probable first (fewer with fewer classes)."""
    p = np.asarray(outputs["probabilities"], np.float64)
    order = np.argsort(-p, kind="stable")[:5]
    return {"top5": [{"class": _class_name(info, int(i)), "index": int(i),
                      "probability": round(float(p[i]), 6)} for i in order]}


def draw(config: Any, example: dict, outputs: dict, info: SourceInfo) -> np.ndarray:
    """The input image beside its top-5 classes and their probabilities."""
    from jaxvision import viz
    top = describe(config, outputs, info)["top5"]
    return viz.top_k_panel(example["image"], [t["class"] for t in top],
                           [t["probability"] for t in top], title=top[0]["class"])


def report(config: Any, workdir: Path, results: dict, info: SourceInfo) -> None:
    """Saves ``confusion_matrix.png`` (rows normalized; unless ``train.plots`` is off) and
    per-class precision/recall/F1 (``per_class.json``)."""
    from jaxvision import viz
    cm = results.get("confusion_matrix")
    if cm is None:
        return
    # A head wider than the data's classes (model.num_classes, e.g. after transfer) gets numbers.
    names = [*info.class_names[:cm.shape[0]], *map(str, range(len(info.class_names), cm.shape[0]))]
    if plots(config):
        viz.plot_confusion_matrix(np.asarray(cm), str(Path(workdir) / "confusion_matrix.png"),
                                  class_names=names)
    prf = metrics.precision_recall_f1(cm)
    rows = [{"class": n, **{k: float(v[i]) for k, v in prf.items()}} for i, n in enumerate(names)]
    (Path(workdir) / "per_class.json").write_text(json.dumps(rows, indent=2))


# ------------------------------------------------------------------------ distillation


def distill_config() -> ml_collections.ConfigDict:
    """The ``distill`` block: learn from a teacher run's temperature-softened predictions.

    ``teacher_workdir`` (None = off): a finished run (its ``config.json`` says its experiment and
    config); ``teacher_config``: the spec to assume for an older run that recorded no
    experiment; ``teacher_checkpoint``: None (latest),
    'best' or a step; ``temperature`` T of both softmaxes; ``alpha``: weight of the soft loss
    (KL * T^2), ``1 - alpha`` that of the cross-entropy. The teacher sees the student's batches.
    """
    return ml_collections.ConfigDict(dict(
        teacher_workdir=None, teacher_config="experiments/classification.py:default",
        teacher_checkpoint=None, temperature=4.0, alpha=0.9))


def setup(config: Any, info: SourceInfo) -> Setup:
    """When distilling: the teacher's experiment, config and model (static) and its evaluation
    variables (data), read once on the host; otherwise an empty ``Setup``."""
    d = config.get("distill")
    if d is None or not d.teacher_workdir:
        return Setup()
    if not float(d.temperature) > 0 or not 0.0 <= float(d.alpha) <= 1.0:
        raise ValueError(f"distill.temperature={d.temperature} must be > 0 and distill.alpha="
                         f"{d.alpha} in [0, 1] (the weight of the soft loss).")
    from jaxvision.config import workdir_config
    from jaxvision.experiment import resolve_experiment
    from jaxvision.train.transfer import read_variables
    variables, _ = read_variables(d.teacher_workdir, d.get("teacher_checkpoint"),
                                  what="distill.teacher_workdir")
    tconfig = workdir_config(d.teacher_workdir, default_spec=str(d.teacher_config or "") or None)
    texp = resolve_experiment(tconfig)
    # The teacher predicts the student's classes: its head is built for the student's count.
    tinfo = SourceInfo(name=str(tconfig.data.name), split=str(tconfig.data.train_split),
                       keys=("image", "label"), num_classes=info.num_classes)
    return Setup(static={"teacher": (texp, tconfig, texp.build_model(tconfig, tinfo)),
                         "teacher_workdir": str(d.teacher_workdir)},
                 data={"teacher": variables})


def teacher_logits(setup: Setup, batch: dict, num_classes: int) -> jax.Array:
    """The teacher's eval-mode logits (N, num_classes) on ``batch``, outside the gradient."""
    texp, tconfig, tmodel = setup.static["teacher"]
    logits = tmodel.apply(setup.data["teacher"], texp.prepare(tconfig, batch), train=False)
    n = batch["label"].shape[0]
    if tuple(logits.shape) != (n, num_classes):
        raise ValueError(f"distill: the teacher in {setup.static['teacher_workdir']} gives logits "
                         f"of shape {tuple(logits.shape)}, the student ({n}, {num_classes}); "
                         "teacher and student must predict the same classes.")
    return jax.lax.stop_gradient(logits)


# ----------------------------------------------------------------------------- configs
# Every config below reaches its regularizers from the command line, for example:
#   --config.optim.weight_decay=5e-4        weight decay (optim.weight_decay_mode: 'l2' or 'decoupled')
#   --config.model.dropout=0.3              dropout (small_cnn, alexnet, vgg, resnet; lenet5 has none)
#   --config.model.norm=batch               batch norm on / 'none' off (small_cnn, alexnet, vgg, resnet)
#   --config.data.train_pp="random_crop(28, pad=2)|flip_lr"      augmentation (jaxvision.data.transforms)
#   --config.loss.label_smoothing=0.1       label smoothing
#   --config.train.early_stopping_patience=3   stop after 3 evaluations without a better train.best_metric


def _base() -> ml_collections.ConfigDict:
    config = base_config()
    config.data.keys = ("image", "label")
    config.loss = ml_collections.ConfigDict(dict(label_smoothing=0.0))
    config.distill = distill_config()
    return config


def _declare(config: ml_collections.ConfigDict, input_shape: tuple[int, int, int],
             num_classes: int) -> ml_collections.ConfigDict:
    """Declares the model's input (H, W, C) after ``data.eval_pp`` and the class count, so that
    ``summary`` and the tests can build the model when the data set is absent (the data, when
    present, still decides; override both when pointing a config at other data)."""
    config.data.input_shape = tuple(input_shape)
    config.data.num_classes = int(num_classes)
    return config


def _steps(epochs: float, examples: int, batch: int) -> int:
    return int(round(epochs * examples / batch))


def _tfds(config: ml_collections.ConfigDict, name: str, *, eval_split: str = "test"
          ) -> ml_collections.ConfigDict:
    config.data.name = name
    config.data.train_split = "train"
    config.data.eval_split = eval_split
    return config


def default() -> ml_collections.ConfigDict:
    """Small CNN on the procedural scenes (48x48, 6 shapes): ~85% test (chance 17%) in ~2-4 min on 2 CPUs."""
    config = _declare(_base(), (48, 48, 3), 6)
    config.data.procedural.image_size = 48
    config.data.procedural.num_eval = 1000
    config.data.train_pp = "flip_lr"
    # Five narrow stages (48 -> 3 px) see a whole object where three wide ones (32-128) could not:
    # 85% vs 42% test at half the FLOPs (benchmarks/NOTES.md, "Classification results").
    config.model = ml_collections.ConfigDict(dict(name="small_cnn", widths=(16, 32, 64, 128, 256),
                                                  dropout=0.0, norm="batch"))
    config.optim.name = "adam"
    config.optim.lr = 3e-3
    config.optim.schedule = "cosine"
    config.optim.warmup_steps = 50
    config.train.batch_size = 64
    config.train.steps = 900
    config.train.eval_every = 300
    config.train.checkpoint_every = 300
    config.train.log_every = 50
    return config


def lenet_mnist() -> ml_collections.ConfigDict:
    """LeNet-5 (ReLU, max pool; 28x28 padded to 32) on TFDS mnist with +-2 px shifts: >= 99.2% test."""
    config = _declare(_tfds(_base(), "mnist"), (28, 28, 1), 10)
    # Random 2-pixel translations are the augmentation that matters for digits (no flips).
    config.data.train_pp = "random_crop(28, pad=2)"
    # The classic tanh / average-pool reading: --config.model.activation=tanh --config.model.pool=avg
    config.model = ml_collections.ConfigDict(dict(name="lenet5", activation="relu", pool="max",
                                                  pad_to_32=True))
    config.optim.name = "adam"
    config.optim.lr = 2e-3
    config.optim.schedule = "cosine"
    config.optim.warmup_steps = 200
    config.train.batch_size = 128
    config.train.eval_batch_size = 1000
    config.train.steps = _steps(15, 60000, 128)
    config.train.eval_every = 2000
    config.train.checkpoint_every = 2000
    config.train.log_every = 200
    return config


def cnn_fashion_mnist() -> ml_collections.ConfigDict:
    """Small CNN (4 stages 32-256, batch norm) on TFDS fashion_mnist with crops and flips: >= 91% test."""
    config = _declare(_tfds(_base(), "fashion_mnist"), (28, 28, 1), 10)
    config.data.train_pp = "random_crop(28, pad=2)|flip_lr"
    # A 4th stage (28 -> 14 -> 7 -> 3) widens the receptive field and the pooled features; it beat
    # 3 stages (32-128) by 3 points at equal epochs. Short runs underfit, so no dropout or decay.
    config.model = ml_collections.ConfigDict(dict(name="small_cnn", widths=(32, 64, 128, 256), blocks=1,
                                                  norm="batch", dropout=0.0))
    config.optim.name = "adam"
    config.optim.lr = 3e-3
    config.optim.schedule = "cosine"
    config.optim.warmup_steps = 200
    config.optim.weight_decay = 0.0
    config.train.batch_size = 128
    config.train.eval_batch_size = 1000
    config.train.steps = _steps(6, 60000, 128)
    config.train.eval_every = 1000
    config.train.checkpoint_every = 1000
    config.train.log_every = 200
    return config


def resnet18_cifar10() -> ml_collections.ConfigDict:
    """ResNet-18 (3x3 stem) on TFDS cifar10, SGD + cosine, crops and flips (~30 epochs; a GPU's job)."""
    config = _declare(_tfds(_base(), "cifar10"), (32, 32, 3), 10)
    config.data.train_pp = "random_crop(32, pad=4)|flip_lr"
    config.model = ml_collections.ConfigDict(dict(name="resnet18", stem="cifar", norm="batch",
                                                  dropout=0.0))
    config.optim.name = "nesterov"
    config.optim.lr = 0.1
    config.optim.momentum = 0.9
    config.optim.weight_decay = 5e-4
    config.optim.schedule = "cosine"
    config.optim.warmup_steps = 400
    config.loss.label_smoothing = 0.0
    config.train.batch_size = 128
    config.train.eval_batch_size = 500
    config.train.steps = _steps(30, 50000, 128)
    config.train.eval_every = 1000
    config.train.checkpoint_every = 1000
    config.train.log_every = 100
    return config


def _imagenet(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """ImageNet-2012 at 224x224: random-resized crops and flips, resize + centre crop for eval."""
    config = _declare(_tfds(config, "imagenet2012", eval_split="validation"), (224, 224, 3), 1000)
    config.data.train_pp = "random_resized_crop(224)|flip_lr|normalize(mean=(123.7, 116.3, 103.5), std=(58.4, 57.1, 57.4))"
    config.data.eval_pp = "resize_short(256)|center_crop(224)|normalize(mean=(123.7, 116.3, 103.5), std=(58.4, 57.1, 57.4))"
    config.data.num_workers = 8
    config.optim.name = "momentum"
    config.optim.momentum = 0.9
    config.optim.weight_decay = 5e-4
    config.optim.schedule = "step"
    config.optim.boundaries = (1 / 3, 2 / 3)
    config.optim.factor = 0.1
    config.train.batch_size = 256
    config.train.eval_batch_size = 500
    config.train.eval_every = 10000
    config.train.checkpoint_every = 5000
    config.train.log_every = 100
    config.train.best_metric = "accuracy"
    return config


def alexnet_imagenet() -> ml_collections.ConfigDict:
    """AlexNet (ungrouped, LRN, 62,378,344 params) on TFDS imagenet2012 at 224: for accelerators."""
    config = _imagenet(_base())
    config.model = ml_collections.ConfigDict(dict(name="alexnet", lrn=True, groups=1, dropout=0.5,
                                                  norm="none"))
    config.optim.lr = 0.01
    config.train.steps = _steps(90, 1281167, 256)
    return config


def vgg16_imagenet() -> ml_collections.ConfigDict:
    """VGG-16 (configuration D, 138,357,544 params) on TFDS imagenet2012 at 224: for accelerators."""
    config = _imagenet(_base())
    config.model = ml_collections.ConfigDict(dict(name="vgg16", dropout=0.5, norm="none"))
    config.optim.lr = 0.01
    config.train.steps = _steps(74, 1281167, 256)
    return config


def torchvision_imagenet() -> ml_collections.ConfigDict:
    """An ImageNet classifier with torchvision's weights (`import-weights` writes its workdir)."""
    config = _imagenet(_base())
    # torchvision's evaluation: shorter side 256, centre 224, its exact mean and std.
    config.data.eval_pp = ("resize_short(256)|center_crop(224)|normalize(mean=(123.675, 116.28, "
                           "103.53), std=(58.395, 57.12, 57.375))")
    config.model = ml_collections.ConfigDict(dict(name="resnet50"))
    config.optim.lr = 0.01
    return config


# AlexNet ablation (Zeiler & Fergus 2014, Table 3 in spirit): variant name -> layers removed.
ALEXNET_ABLATION = (
    ("full", ()),
    ("no_fc7", ("fc7",)),
    ("no_fc6_fc7", ("fc6", "fc7")),
    ("no_conv3_conv4", ("conv3", "conv4")),
    ("no_conv3_conv4_fc6_fc7", ("conv3", "conv4", "fc6", "fc7")),
)


def alexnet_ablation() -> ml_collections.ConfigDict:
    """AlexNet at 1/8 width on Fashion-MNIST at 32x32; `ablate` drops fc7, fc6+fc7, conv3+conv4, all four."""
    config = _declare(_tfds(_base(), "fashion_mnist"), (32, 32, 1), 10)
    config.data.train_pp = "resize(32)|random_crop(32, pad=2)|flip_lr"
    config.data.eval_pp = "resize(32)"
    # 1/8 width (conv 12-32-48-48-32, fc 512; 10 MFLOPs at 32x32) keeps 5 variants x 5 epochs
    # near half an hour on 2 CPU cores. Batch norm and no dropout: in runs this short, either
    # 3 epochs without batch norm or dropout 0.5 before fc6/fc7 left the full model underfit, so
    # removing the fc layers *helped* (benchmarks/NOTES.md); --config.model.dropout=0.5 restores it.
    # Run: python -m jaxvision ablate --config ...:alexnet_ablation --workdir DIR
    #      [--config.ablation.seeds="(0, 1)"]   (finished variant/seed runs are skipped)
    config.model = ml_collections.ConfigDict(dict(name="alexnet_small", width=0.125, stem_kernel=3,
                                                  stem_stride=1, grid=3, dropout=0.0, norm="batch",
                                                  remove=()))
    config.optim.name = "adam"
    config.optim.lr = 2e-3
    config.optim.schedule = "cosine"
    config.optim.warmup_steps = 100
    config.train.batch_size = 128
    config.train.eval_batch_size = 1000
    config.train.steps = _steps(5, 60000, 128)
    config.train.eval_every = 0
    config.train.checkpoint_every = 0
    config.train.log_every = 100
    from jaxvision.tools.ablation import ablation_config
    config.ablation = ablation_config(
        variants=tuple((name, {"model.remove": removed}) for name, removed in ALEXNET_ABLATION),
        seeds=(0,), metric="accuracy")
    return config


def alexnet_ablation_cifar10() -> ml_collections.ConfigDict:
    """The AlexNet ablation on the CIFAR-10 subset (npz, 4,000 train / 1,000 test), 3 seeds:
    natural images where depth should matter more than on Fashion-MNIST."""
    config = alexnet_ablation()
    config.data.name = "npz"
    config.data.path = str(Path(__file__).resolve().parents[1].parent / "shared" / "data"
                           / "cifar10" / "cifar10.npz")
    config.data.input_shape, config.data.num_classes = (32, 32, 3), 10
    config.data.train_pp = "random_crop(32, pad=4)|flip_lr"
    config.data.eval_pp = ""
    config.train.steps = _steps(30, 4000, 128)
    config.ablation.seeds = (0, 1, 2)
    return config


def alexnet_ablation_procedural() -> ml_collections.ConfigDict:
    """The AlexNet ablation on the procedural scenes at 64 px, 3 seeds: the label is the shape
    of the *largest* object, so the classifier must compare objects across the image (a task
    for large receptive fields)."""
    config = alexnet_ablation()
    config.data.name = "procedural"
    config.data.procedural.image_size = 64
    config.data.procedural.num_eval = 1000
    config.data.input_shape, config.data.num_classes = (64, 64, 3), 6
    config.data.train_pp, config.data.eval_pp = "flip_lr", ""
    config.model.update(dict(stem_kernel=5, stem_stride=2))
    config.train.batch_size, config.train.steps = 64, 2000
    config.ablation.seeds = (0, 1, 2)
    return config


CONFIGS = {
    "default": default,
    "lenet_mnist": lenet_mnist,
    "cnn_fashion_mnist": cnn_fashion_mnist,
    "resnet18_cifar10": resnet18_cifar10,
    "alexnet_imagenet": alexnet_imagenet,
    "vgg16_imagenet": vgg16_imagenet,
    "torchvision_imagenet": torchvision_imagenet,
    "alexnet_ablation": alexnet_ablation,
    "alexnet_ablation_cifar10": alexnet_ablation_cifar10,
    "alexnet_ablation_procedural": alexnet_ablation_procedural,
}
