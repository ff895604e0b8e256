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
    mutable = [k for k in variables if k != "params"] if train else False
    out = model.apply(variables, prepare(config, batch), train=train,
                      rngs={"dropout": key} if key is not None else None, mutable=mutable)
    return out if train and mutable else (out, {})


def _metrics(logits: jax.Array, labels: jax.Array, per_example_loss: jax.Array, w: jax.Array):
    return {
        "loss": metrics.mean(per_example_loss, w),
        "accuracy": metrics.mean(metrics.topk_correct(logits, labels, 1), w),
        "top5_accuracy": metrics.mean(metrics.topk_correct(logits, labels, 5), w),
    }


def loss(config: Any, model, variables: dict, batch: dict, key, *, train: bool):
    """Mean (label-smoothed) cross-entropy over the valid examples, its metrics, new model state."""
    logits, new_state = _apply(model, variables, batch, config, key, train)
    per_example = losses.softmax_cross_entropy(logits, batch["label"],
                                               label_smoothing=float(config.loss.label_smoothing))
    w = batch["valid"]
    return losses.masked_mean(per_example, w), _metrics(logits, batch["label"], per_example, w), new_state


def evaluate(config: Any, model, variables: dict, batch: dict):
    """Metric sums over the batch's valid examples, the confusion matrix included."""
    logits, _ = _apply(model, variables, batch, config, None, False)
    labels, w = batch["label"], batch["valid"]
    per_example = losses.softmax_cross_entropy(logits, labels)
    out = _metrics(logits, labels, per_example, w)
    cm = metrics.confusion_matrix(jnp.argmax(logits, -1), labels, logits.shape[-1], w)
    out["confusion_matrix"] = (cm, jnp.ones((), jnp.float32))
    return out


def report(config: Any, workdir: Path, results: dict, info: SourceInfo) -> None:
    """Saves ``confusion_matrix.png`` (rows normalized) and per-class precision/recall/F1."""
    from jaxvision import viz
    cm = results.get("confusion_matrix")
    if cm is None:
        return
    names = list(info.class_names) or [str(i) for i in range(cm.shape[0])]
    viz.plot_confusion_matrix(np.asarray(cm), str(Path(workdir) / "confusion_matrix.png"),
                              class_names=names)
    prf = metrics.precision_recall_f1(cm)
    rows = [{"class": n, **{k: float(v[i]) for k, v in prf.items()}} for i, n in enumerate(names)]
    (Path(workdir) / "per_class.json").write_text(json.dumps(rows, indent=2))


# ----------------------------------------------------------------------------- configs


def _base() -> ml_collections.ConfigDict:
    config = base_config()
    config.data.keys = ("image", "label")
    config.loss = ml_collections.ConfigDict(dict(label_smoothing=0.0))
    return config


def default() -> ml_collections.ConfigDict:
    """Small CNN on the procedural scenes (48x48): well above chance in a minute or two on CPU."""
    config = _base()
    config.data.procedural.image_size = 48
    config.data.train_pp = "flip_lr"
    config.model = ml_collections.ConfigDict(dict(name="small_cnn", width=32, depth=3))
    config.optim.name = "adam"
    config.optim.lr = 3e-3
    config.optim.schedule = "cosine"
    config.optim.warmup_steps = 50
    config.train.batch_size = 64
    config.train.steps = 600
    config.train.eval_every = 200
    config.train.checkpoint_every = 200
    config.train.log_every = 50
    config.data.procedural.num_eval = 1000
    return config


CONFIGS = {
    "default": default,
}
