"""A classifier whose answer depends only on the top-left 8 x 8 pixels of its 16 x 16 input
(plus the 3 x 3 convolution's 1-pixel halo): for the ``explain`` tests."""

import flax.linen as nn
import ml_collections

from jaxvision.config import load_module
from jaxvision.models import layers

_tiny = load_module("tests/train/tiny_experiment.py")
loss, evaluate, predict, report = _tiny.loss, _tiny.evaluate, _tiny.predict, _tiny.report


class RegionNet(nn.Module):
    num_classes: int

    @nn.compact
    def __call__(self, x, *, train: bool = False, return_features: bool = False):
        del train
        h = nn.relu(nn.Conv(4, (3, 3), name="conv1")(x))
        h = layers.tap(self, "conv1", h)
        out = nn.Dense(self.num_classes, name="head")(h[:, :8, :8].mean((1, 2)))
        return (out, {"conv1": h}) if return_features else out


def build_model(config, info, *, axis_name=None):
    del axis_name
    return RegionNet(info.num_classes)


def region() -> ml_collections.ConfigDict:
    config = _tiny.tiny()
    config.model = ml_collections.ConfigDict(dict(name="region", dropout=0.0))
    config.train.steps, config.train.eval_every = 3, 0
    return config


CONFIGS = {"region": region}
