"""Tiny configs for the ablation, cross-validation and probe tests (built on the core's tiny one).

``model.name='mlp'`` builds the zoo MLP (which has feature taps); ``'tiny'`` builds the core
tests' TinyNet (which has none, so probes fall back to ``capture_intermediates``). No ``report``:
the tests do not need confusion matrices.
"""

from pathlib import Path

import ml_collections

from jaxvision.tools.ablation import ablation_config
from jaxvision.config import load_module

_HERE = Path(__file__).resolve().parents[1]
_tiny = load_module(_HERE / "train" / "tiny_experiment.py")
_classification = load_module(_HERE.parent / "experiments" / "classification.py")
loss = _tiny.loss
evaluate = _tiny.evaluate
predict = _tiny.predict


def build_model(config, info, *, axis_name=None):
    if config.model.name == "tiny":
        return _tiny.build_model(config, info, axis_name=axis_name)
    return _classification.build_model(config, info, axis_name=axis_name)


def _fast(config):
    config.train.steps = 4
    config.train.eval_every = 0
    config.train.checkpoint_every = 0
    config.train.log_every = 2
    config.parallel.num_devices = 1
    config.data.procedural.num_train = 64
    config.data.procedural.num_eval = 32
    return config


def mlp():
    """The core's tiny config with a one-hidden-layer zoo MLP, 4 steps on one device."""
    config = _fast(_tiny.tiny())
    config.model = ml_collections.ConfigDict(dict(name="mlp", hidden=(16,), norm="batch", dropout=0.0))
    return config


def tinynet():
    """The core's TinyNet (no feature taps), 4 steps on one device."""
    return _fast(_tiny.tiny())


def sweep():
    """Two variants (hidden width 16 vs 4) x two seeds."""
    config = mlp()
    config.ablation = ablation_config(
        variants=(("full", {}), ("narrow", {"model.hidden": (4,)})), seeds=(0, 1))
    return config


CONFIGS = {"mlp": mlp, "tinynet": tinynet, "sweep": sweep}
