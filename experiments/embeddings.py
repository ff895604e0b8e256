"""Metric learning: an embedding where distances carry meaning, trained with contrastive,
triplet (batch-all, batch-hard, semi-hard mining), ArcFace or CosFace losses; evaluated by
retrieval (Recall@K, MAP@R, kNN accuracy, NMI) and verification (10-fold accuracy, ROC AUC,
TAR at FAR = 1e-3), usually on classes the network never saw in training.

Named configs are listed in ``CONFIGS`` at the bottom. The loss (``config.loss``):

* ``name``: ``triplet`` (``mining`` batch_all | batch_hard | semi_hard, ``margin``,
  ``distance`` euclidean | squared | cosine), ``contrastive`` (``pos_margin``, ``neg_margin``,
  ``distance``), ``arcface`` / ``cosface`` (``scale``, ``margin``: additive angular / cosine
  margin softmax over the training identities);
* ``softmax``: plain cross-entropy of a linear classifier over the training identities on top
  of the (unnormalized: set ``model.normalize=False``) embedding, the baseline of a network
  trained to classify whose penultimate layer is used as the embedding;
* ``identity_key``: the batch key whose equal values make a positive pair (``identity``, or
  ``label`` where classes are the identities).

The model (``config.model``): a zoo backbone whose head projects to ``dim``, optional
``batch_norm``, L2 ``normalize``; ``represent='pool'`` ships the pooled backbone features as the
embedding instead of the projection the loss trains (``jaxvision.models.embedding``).

Pair and triplet losses mine inside each global batch (one array under ``jit``; under ``pmap``
each device mines its own shard). Batches are P identities x K images (``data.sampler='pk'``).
"""

from __future__ import annotations

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
from jaxvision.experiment import default_prepare as prepare
from jaxvision.experiment import plots
from jaxvision.models.embedding import EmbeddingNet

PAIR_LOSSES = ("triplet", "contrastive")
MARGIN_LOSSES = ("arcface", "cosface")
CLASS_LOSSES = MARGIN_LOSSES + ("softmax",)
_EMBEDDING_KEYS = ("dim", "batch_norm", "normalize", "represent")


def _num_identities(config: Any, info: SourceInfo) -> int:
    key = str(config.loss.identity_key)
    n = info.num_identities if key == "identity" else info.num_classes
    n = info.num_classes if n is None else n   # a source whose classes are its identities
    if n is None:
        raise ValueError(f"loss.name={config.loss.name!r} needs the number of training "
                         f"identities, but data '{info.name}' does not say how many "
                         f"'{key}' values it has; set loss.identity_key.")
    return int(n)


def build_model(config: Any, info: SourceInfo, *, axis_name: str | None = None):
    """``EmbeddingNet`` over the zoo model ``config.model.name`` (its head projects to
    ``model.dim``); class weights for ArcFace / CosFace. Other ``model`` keys go to the zoo."""
    del axis_name
    name = str(config.loss.name)
    if name not in PAIR_LOSSES + CLASS_LOSSES:
        raise ValueError(f"loss.name={name!r} must be one of {PAIR_LOSSES + CLASS_LOSSES}.")
    m = config.model
    kwargs = {k: v for k, v in m.items() if k not in ("name",) + _EMBEDDING_KEYS}
    kwargs["num_classes"] = int(m.dim)
    if config.train.mixed_precision:
        kwargs["dtype"] = jnp.bfloat16
    backbone = models.build_model(m.name, **kwargs)
    classes = _num_identities(config, info) if name in CLASS_LOSSES else 0
    return EmbeddingNet(backbone, batch_norm=bool(m.batch_norm), normalize=bool(m.normalize),
                        num_classes=classes, head="linear" if name == "softmax" else "cosine",
                        represent=str(m.get("represent", "") or ""))


def _ids(config: Any, batch: dict) -> jax.Array:
    key = str(config.loss.identity_key)
    if key not in batch:
        raise ValueError(f"loss.identity_key={key!r} is not a batch key (the batch has "
                         f"{sorted(batch)}); use 'label' where classes are the identities.")
    return batch[key].astype(jnp.int32)


def _pair_loss(config: Any, emb: jax.Array, ids: jax.Array, valid: jax.Array) -> losses.PairLoss:
    c = config.loss
    if c.name == "triplet":
        return losses.triplet_loss(emb, ids, valid, margin=float(c.margin), mining=str(c.mining),
                                   distance=str(c.distance))
    return losses.contrastive_loss(emb, ids, valid, pos_margin=float(c.pos_margin),
                                   neg_margin=float(c.neg_margin), distance=str(c.distance))


def loss(config: Any, model, variables: dict, batch: dict, key, *, train: bool):
    """The configured loss over the batch (see the module docstring), its metrics (``loss``,
    ``active_fraction`` of the pair/triplet terms, or ``accuracy`` of the margin head) and the
    new model state."""
    mutable = [k for k in variables if k != "params"] if train else False
    classify = config.loss.name in CLASS_LOSSES
    out = model.apply(variables, prepare(config, batch), train=train, return_scores=classify,
                      projection=True, rngs={"dropout": key}, mutable=mutable or False)
    out, new_state = out if mutable else (out, {})
    ids, valid = _ids(config, batch), batch["valid"]
    if classify:
        emb, scores = out
        c = config.loss
        logits = scores if c.name == "softmax" else losses.margin_logits(
            scores, ids, kind=str(c.name), scale=float(c.scale), margin=float(c.margin))
        per_example = losses.softmax_cross_entropy(logits, ids)
        return losses.masked_mean(per_example, valid), {
            "loss": metrics.mean(per_example, valid),
            "accuracy": metrics.mean(metrics.topk_correct(scores, ids, 1), valid),
        }, new_state
    parts = _pair_loss(config, out, ids, valid)
    return parts.mean, {
        "loss": (jnp.sum(parts.values), jnp.sum(parts.weights)),
        "active_fraction": (jnp.sum(parts.active), jnp.sum(parts.total)),
    }, new_state


def _embed(config: Any, model, variables: dict, batch: dict) -> jax.Array:
    return model.apply(variables, prepare(config, batch), train=False).astype(jnp.float32)


def evaluate(config: Any, model, variables: dict, batch: dict):
    """Mean distance between embeddings of one identity and of two, over the pairs of each eval
    batch (how far apart the embedding puts what it should tell apart)."""
    emb = _embed(config, model, variables, batch)
    d = losses.pairwise_distances(emb, kind="euclidean")
    ids, v = _ids(config, batch), batch["valid"].astype(bool)
    both = v[:, None] & v[None, :] & ~jnp.eye(len(ids), dtype=bool)
    same = (ids[:, None] == ids[None, :]) & both
    diff = (ids[:, None] != ids[None, :]) & both
    return {"positive_distance": (jnp.sum(jnp.where(same, d, 0.0)), jnp.sum(same.astype(jnp.float32))),
            "negative_distance": (jnp.sum(jnp.where(diff, d, 0.0)), jnp.sum(diff.astype(jnp.float32)))}


def predict(config: Any, model, variables: dict, batch: dict):
    """Per example: ``embedding`` (N, dim) float32, what retrieval and verification read."""
    return {"embedding": _embed(config, model, variables, batch)}


def describe(config: Any, outputs: dict, info: SourceInfo) -> dict:
    """``predict``'s record of one image: its embedding (rounded) and the embedding's norm."""
    e = np.asarray(outputs["embedding"], np.float64)
    return {"embedding": np.round(e, 5).tolist(), "norm": round(float(np.linalg.norm(e)), 6)}


def report(config: Any, workdir: Path, results: dict, info: SourceInfo) -> None:
    """Saves ``embedding_map.png`` (PCA, and t-SNE where scikit-learn is present, coloured by
    identity), ``neighbours.png`` (queries and their 8 nearest neighbours, right ones marked)
    and ``roc.png`` (when verification ran) for the final checkpoint on the eval split; nothing
    when ``train.plots`` is off."""
    from jaxvision import viz
    if not plots(config):
        return
    if "roc_fpr" in results and np.size(results["roc_fpr"]):
        viz.plot_roc(np.asarray(results["roc_fpr"]), np.asarray(results["roc_tpr"]),
                     str(Path(workdir) / "roc.png"),
                     title=f"AUC {float(results.get('verification_auc', np.nan)):.4f}")
    from jaxvision.tools.embed import embed_split
    images, emb, ids = embed_split(config, workdir, key=str(config.loss.identity_key),
                                   max_examples=2000)
    if len(emb) < 3:
        return
    viz.plot_embedding_map(emb, ids, str(Path(workdir) / "embedding_map.png"))
    viz.plot_neighbours(images, emb, ids, str(Path(workdir) / "neighbours.png"), queries=6, k=8)


# ----------------------------------------------------------------------------- configs


def _base(identity_key: str = "identity") -> ml_collections.ConfigDict:
    config = base_config()
    config.data.keys = ("image", identity_key)
    config.data.sampler = "pk"
    config.data.pk_identities, config.data.pk_images = 16, 4
    config.model = ml_collections.ConfigDict(dict(name="small_cnn", widths=(32, 64, 128),
                                                  norm="batch", dropout=0.0, flatten=False,
                                                  dim=64, batch_norm=False, normalize=True,
                                                  represent=""))
    config.loss = ml_collections.ConfigDict(dict(
        # batch_all: batch-hard collapsed (loss == margin) on the procedural identities at
        # lr 1e-3 (benchmarks/NOTES.md, "Metric learning").
        name="triplet", identity_key=identity_key, mining="batch_all", margin=0.2,
        distance="euclidean", pos_margin=0.0, neg_margin=1.0, scale=30.0))
    config.optim.name = "adam"
    config.optim.lr = 1e-3
    config.optim.schedule = "cosine"
    config.optim.warmup_steps = 100
    config.train.batch_size = 64
    config.train.eval_batch_size = 500
    config.train.best_metric = "recall_at_1"
    config.evals = ml_collections.ConfigDict(dict(
        eval=eval_config("metrics"),
        retrieval=eval_config("retrieval", label=identity_key, knn=5, nmi=True),
        verification=eval_config("verification", label=identity_key, every=0),
    ))
    return config


def _unseen(config: ml_collections.ConfigDict, train: tuple, test: tuple) -> ml_collections.ConfigDict:
    """Trains on the classes ``train`` and evaluates on the unseen ``test``: every training
    class in every batch (P = the class count, K images each, about 60 per batch)."""
    config.data.train_classes, config.data.eval_classes = tuple(train), tuple(test)
    config.data.pk_identities, config.data.pk_images = len(train), 60 // len(train)
    config.train.batch_size = len(train) * (60 // len(train))
    return config


def default() -> ml_collections.ConfigDict:
    """Triplet (batch-hard) embedding of procedural scenes' identities (shape x colour, 36)."""
    config = _base("identity")
    p = config.data.procedural
    p.image_size, p.num_train, p.num_eval = 32, 4000, 1000
    config.data.train_pp = "flip_lr"
    config.model.widths = (16, 32, 64)
    config.model.dim = 32
    config.data.pk_identities, config.data.pk_images = 8, 4
    config.train.batch_size = 32
    config.train.steps = 800
    config.train.eval_every = 400
    config.train.checkpoint_every = 400
    config.train.log_every = 50
    return config


def _digits(name: str, train: tuple, test: tuple) -> ml_collections.ConfigDict:
    config = _unseen(_base("label"), train, test)
    config.data.name = name
    # Declared for `summary` and the tests without the data: input, and label ids 0-9.
    config.data.input_shape, config.data.num_classes = (28, 28, 1), 10
    config.data.train_pp = "random_crop(28, pad=2)"
    config.model.widths = (32, 64, 128)
    config.model.dim = 64
    # Ship the pooled backbone features, not the projection the loss sees: on the unseen digits
    # they retrieve better (benchmarks/NOTES.md, "Metric learning").
    config.model.represent = "pool"
    config.train.steps = 3000
    config.train.eval_every = 1000
    config.train.checkpoint_every = 1000
    config.train.log_every = 100
    return config


def triplet_mnist() -> ml_collections.ConfigDict:
    """Triplet embedding of TFDS mnist digits 0-4; retrieval among the unseen digits 5-9."""
    return _digits("mnist", (0, 1, 2, 3, 4), (5, 6, 7, 8, 9))


def contrastive_mnist() -> ml_collections.ConfigDict:
    """Contrastive (siamese pairs from the batch) embedding of mnist 0-4; unseen digits 5-9."""
    config = triplet_mnist()
    config.loss.name = "contrastive"
    return config


def triplet_fashion_mnist() -> ml_collections.ConfigDict:
    """Triplet embedding of TFDS fashion_mnist tops and dresses; retrieval among shoes and bags."""
    # 0 T-shirt 1 trouser 2 pullover 3 dress 4 coat 6 shirt | 5 sandal 7 sneaker 8 bag 9 boot
    return _digits("fashion_mnist", (0, 1, 2, 3, 4, 6), (5, 7, 8, 9))


def triplet_cifar10() -> ml_collections.ConfigDict:
    """Triplet embedding of the CIFAR-10 subset's classes 0-4 (npz); retrieval among 5-9."""
    config = _unseen(_base("label"), (0, 1, 2, 3, 4), (5, 6, 7, 8, 9))
    config.data.name = "npz"
    config.data.path = str(Path(__file__).resolve().parents[1].parent / "shared" / "data"
                           / "cifar10" / "cifar10.npz")
    config.data.input_shape, config.data.num_classes = (32, 32, 3), 10
    config.data.train_pp = "random_crop(32, pad=4)|flip_lr"
    config.model.widths = (32, 64, 128)
    config.model.represent = "pool"
    config.train.steps = 3000
    config.train.eval_every = 1000
    config.train.checkpoint_every = 1000
    config.train.log_every = 100
    return config


def _orl(loss: str) -> ml_collections.ConfigDict:
    config = _base("identity")
    config.data.name = "image_folder"
    config.data.path = str(Path(__file__).resolve().parents[1].parent / "shared" / "data"
                           / "orl_faces" / "att_faces")
    # The last 10 of the 40 subjects are never trained on: verify and retrieve among them.
    config.data.split_by, config.data.holdout = "identity", 0.25
    config.data.channels = 1
    config.data.input_shape, config.data.num_classes = (56, 48, 1), 30   # training subjects
    config.data.train_pp = "resize((60, 52))|random_crop((56, 48))|flip_lr"
    config.data.eval_pp = "resize((60, 52))|center_crop((56, 48))"
    config.data.pk_identities, config.data.pk_images = 10, 4
    config.train.batch_size = 40
    config.train.eval_batch_size = 100
    config.model.widths = (32, 64, 128)
    config.model.dim = 64
    config.loss.name = loss
    if loss in MARGIN_LOSSES:
        config.loss.margin = 0.5 if loss == "arcface" else 0.35
    config.evals.verification.pairs = 2000
    config.train.steps = 1500
    config.train.eval_every = 500
    config.train.checkpoint_every = 500
    config.train.log_every = 50
    return config


def siamese_orl() -> ml_collections.ConfigDict:
    """Contrastive (siamese) embedding of 30 ORL faces; verification among the 10 unseen."""
    return _orl("contrastive")


def arcface_orl() -> ml_collections.ConfigDict:
    """ArcFace embedding of 30 ORL faces; verification and retrieval among the 10 unseen."""
    return _orl("arcface")


CONFIGS = {
    "default": default,
    "triplet_mnist": triplet_mnist,
    "contrastive_mnist": contrastive_mnist,
    "triplet_fashion_mnist": triplet_fashion_mnist,
    "triplet_cifar10": triplet_cifar10,
    "siamese_orl": siamese_orl,
    "arcface_orl": arcface_orl,
}
