"""A non-classification test experiment: identities of procedural scenes, scored by retrieval.

A small MLP with batch norm is trained with a softmax head over the 36 procedural identities
(shape x colour); its penultimate features are the ``embedding`` that the ``retrieval`` evaluator
scores with Recall@K and MAP@R over the whole eval split. A ``metrics`` evaluator (softmax loss
and identity accuracy, exact sums) and a ``confusion`` evaluator over the identity logits run
beside it, so the run exercises all three built-in evaluators, a name clash and two schedules.
No metric-learning loss: that is the metric-learning issue's job.
"""

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from jaxvision import losses, metrics
from jaxvision.config import base_config
from jaxvision.evaluators import eval_config
from jaxvision.experiment import default_prepare


class EmbedNet(nn.Module):
    num_identities: int
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        x = x.reshape((x.shape[0], -1))
        x = nn.Dense(64, name="fc1")(x)
        x = nn.BatchNorm(use_running_average=not train, axis_name=self.axis_name, name="bn1")(x)
        embedding = nn.relu(x)
        return nn.Dense(self.num_identities, name="head")(embedding), embedding


def build_model(config, info, *, axis_name=None):
    return EmbedNet(info.num_identities, axis_name=axis_name)


def _forward(config, model, variables, batch, train):
    if train:
        (logits, emb), state = model.apply(variables, default_prepare(config, batch), train=True,
                                           mutable=["batch_stats"])
        return logits, emb, state
    logits, emb = model.apply(variables, default_prepare(config, batch), train=False)
    return logits, emb, {}


def _sums(logits, labels, w):
    per_example = losses.softmax_cross_entropy(logits, labels)
    return per_example, {"loss": metrics.mean(per_example, w),
                         "accuracy": metrics.mean(metrics.topk_correct(logits, labels), w)}


def loss(config, model, variables, batch, key, *, train):
    del key
    logits, _, state = _forward(config, model, variables, batch, train)
    per_example, out = _sums(logits, batch["identity"], batch["valid"])
    return losses.masked_mean(per_example, batch["valid"]), out, state


def evaluate(config, model, variables, batch):
    logits, _, _ = _forward(config, model, variables, batch, False)
    return _sums(logits, batch["identity"], batch["valid"])[1]


def predict(config, model, variables, batch):
    """Per example: identity ``logits`` (N, 36) and the penultimate ``embedding`` (N, 64)."""
    logits, emb, _ = _forward(config, model, variables, batch, False)
    return {"logits": logits.astype(jnp.float32), "embedding": emb.astype(jnp.float32)}


def retrieval() -> ml_collections.ConfigDict:
    """16x16 procedural scenes, identities; Recall@K picks the best checkpoint."""
    config = base_config()
    config.data.keys = ("image", "identity")
    p = config.data.procedural
    p.image_size, p.num_train, p.num_eval = 16, 256, 90   # 90 = 2 batches of 48, the last padded
    config.data.prefetch = 1
    config.optim.name = "adam"
    config.optim.lr = 1e-2
    config.train.batch_size = 16
    config.train.eval_batch_size = 48
    config.train.steps = 12
    config.train.eval_every = 4
    config.train.checkpoint_every = 4
    config.train.log_every = 4
    config.train.async_checkpoint = False
    config.train.best_metric = "recall_at_1"
    config.evals = ml_collections.ConfigDict(dict(
        identity=eval_config("metrics"),
        retrieval=eval_config("retrieval", embedding="embedding", label="identity"),
        # Same keys as 'retrieval', so they are logged as retrieval_cosine/recall_at_1, ...
        retrieval_cosine=eval_config("retrieval", distance="cosine", ks=(1,)),
        # Only at the end: its 'confusion_matrix' etc. never clash; its 'accuracy'-like scalars
        # are named macro_f1 / balanced_accuracy.
        zconfusion=eval_config("confusion", label="identity", every=0),
    ))
    return config


CONFIGS = {"retrieval": retrieval}
