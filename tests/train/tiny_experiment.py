"""A tiny experiment for the core's tests: an MLP with batch norm and dropout on 16x16 scenes.

It reuses the classification experiment's loss and evaluation, so only the model differs.
"""

import flax.linen as nn
import ml_collections

from jaxvision.config import base_config, load_module
from jaxvision.models.layers import Dropout

_classification = load_module("experiments/classification.py")
loss = _classification.loss
evaluate = _classification.evaluate
predict = _classification.predict
report = _classification.report


class TinyNet(nn.Module):
    num_classes: int
    axis_name: str | None = None
    dropout: float = 0.2
    blind: bool = False  # ignores its input (the overfit tool's diagnosis test)

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        x = x.reshape((x.shape[0], -1))
        if self.blind:
            x = x * 0.0
        x = nn.Dense(32, name="fc1")(x)
        x = nn.BatchNorm(use_running_average=not train, axis_name=self.axis_name, name="bn1")(x)
        x = nn.relu(x)
        x = Dropout(self.dropout)(x, deterministic=not train)
        return nn.Dense(self.num_classes, name="head")(x)


def build_model(config, info, *, axis_name=None):
    return TinyNet(info.num_classes, axis_name=axis_name, dropout=config.model.dropout,
                   blind=bool(config.model.get("blind", False)))


def tiny() -> ml_collections.ConfigDict:
    """16x16 procedural scenes, 12 steps: for tests."""
    config = base_config()
    config.loss = ml_collections.ConfigDict(dict(label_smoothing=0.0))
    config.model = ml_collections.ConfigDict(dict(name="tiny", dropout=0.2))
    config.data.keys = ("image", "label")
    p = config.data.procedural
    p.image_size, p.num_train, p.num_eval = 16, 256, 100
    config.data.prefetch = 1
    config.optim.name = "momentum"
    config.optim.lr = 0.05
    config.train.batch_size = 16
    config.train.eval_batch_size = 32
    config.train.steps = 12
    config.train.eval_every = 6
    config.train.checkpoint_every = 4
    config.train.log_every = 2
    config.train.async_checkpoint = False
    config.train.plots = False   # the figures cost more than these runs train
    return config


CONFIGS = {"tiny": tiny}
