"""What an experiment module provides, and the defaults for what it leaves out.

An experiment is a file in ``experiments/`` with ``CONFIGS`` (name -> ConfigDict factory) and a
few pure functions (``variables`` below is ``{'params': params, **model_state}``):

* ``build_model(config, info, *, axis_name=None) -> flax.linen.Module`` (``info`` is the training
  source's ``SourceInfo``; ``axis_name`` is the pmap axis for cross-device batch norm, or None);
* ``loss(config, model, variables, batch, key, *, train) -> (loss, metrics, new_model_state)``:
  the scalar loss to minimise, metrics as ``(total, count)`` pairs (``jaxvision.metrics``), and the
  updated model state (e.g. ``{'batch_stats': ...}``, ``{}`` if none);
* ``evaluate(config, model, variables, batch) -> metrics`` (sums over the valid examples);
* optional ``init(config, model, batch, key) -> variables`` (default: ``model.init`` on the
  batch's ``image``, prepared by ``prepare``);
* optional ``prepare(config, batch) -> array`` turning a batch into the model input (default:
  uint8 ``image`` -> float32 in [0, 1]);
* optional ``report(config, workdir, results, info)``: host-side work at the end of training
  (plots, tables); ``results`` holds the final eval metrics, array metrics included;
* optional ``predict(config, model, variables, batch, **setup) -> {name: (N, ...) array}``:
  per-example outputs (``logits``, ``embedding``, boxes, ...) that gathering evaluators
  (``jaxvision.evaluators``), ``ensemble``, ``probe`` and ``predict`` read, one row per example of
  the batch, never reduced over it;
* optional ``describe(config, outputs, info) -> dict``: the JSON record ``predict`` writes for one
  input (``outputs``: that example's ``predict`` outputs, numpy, no batch axis, plus
  ``image_size`` (H, W) of the file and ``input_size`` (H, W) of the model input, to map
  pixel outputs such as boxes back), e.g. the top-5 classes; default: every output as a
  (nested) list;
* optional ``draw(config, example, outputs, info) -> (H, W, 3) uint8``: the picture ``predict``
  saves for one input (``example``: its images as read from disk, before any transform);
  default: no picture;
* optional ``setup(config, info) -> Setup``: host-side, once per run (fresh or resumed, and for
  ``eval``), for what the traced functions need but must not build themselves: a teacher's model
  and variables, anchors, class names, a ground-truth index. ``Setup.static`` holds Python
  objects (modules, ints, strings) that are closed over; ``Setup.data`` a pytree of arrays that
  enters every compiled step as an argument (placed on the devices, never baked into the
  program, not optimized, not checkpointed). When the hook exists, ``loss``, ``evaluate`` and
  ``predict`` receive ``setup=Setup(static, data)`` (data traced) as a keyword. No file I/O or
  imports happen inside traced code.

The core (``jaxvision.train``) does everything else: data, optimizer, compiled steps over the
device mesh, evaluation, checkpoints, logs.
"""

from __future__ import annotations

import dataclasses
from types import ModuleType
from typing import Any, Callable

import jax
import jax.numpy as jnp

from jaxvision.config import ConfigError, load_module, normalize_spec, split_spec


def default_prepare(config: Any, batch: dict) -> jax.Array:
    """uint8 images -> float32 in [0, 1] (float images, e.g. normalized on host, pass through)."""
    image = batch["image"]
    dtype = jnp.bfloat16 if config.train.get("mixed_precision", False) else jnp.float32
    if image.dtype == jnp.uint8:
        return image.astype(dtype) / 255.0
    return image.astype(dtype)


def apply_model(model: Any, variables: dict, inputs: Any, *, train: bool, key: jax.Array | None = None,
                **kwargs: Any) -> tuple[Any, dict]:
    """``model.apply(variables, inputs, train=train, ...)`` -> ``(outputs, new_model_state)``.

    In training every collection but ``params`` (batch statistics) is mutable and its update is
    returned; in evaluation (or for a stateless model) the state is ``{}``. ``key`` feeds the
    ``dropout`` rng stream (also what samplers inside models draw from); ``kwargs`` go to the
    model."""
    # flax returns (out, state) for any list, even an empty one: stateless models get False.
    mutable = ([k for k in variables if k != "params"] if train else False) or False
    out = model.apply(variables, inputs, train=train, mutable=mutable,
                      rngs={"dropout": key} if key is not None else None, **kwargs)
    return out if mutable else (out, {})


def plots(config: Any) -> bool:
    """Whether a run draws its end-of-run figures (``train.plots``, default True); a report
    writes its JSON either way."""
    return bool(config.train.get("plots", True))


def output_classes(config: Any, data_classes: int | None, what: str) -> int:
    """The model's class count: ``config.model.num_classes`` when set (> 0), else the data's
    ``data_classes`` (falling back to ``config.data.num_classes``). ``what`` names the target in
    errors (e.g. "'mask' classes (num_mask_classes)"). Raises ValueError when neither is known
    or the model asks for fewer classes than the data has."""
    data = data_classes or config.data.get("num_classes", None)
    if not data:
        raise ValueError(f"the data has no {what}; check data.keys (the task's targets) or set "
                         "data.num_classes.")
    want = int(config.model.get("num_classes", 0) or 0)
    if want and want < data:
        raise ValueError(f"model.num_classes={want} is below the data's {data} {what}: class ids "
                         f"up to {data - 1} would have no output. Set it to 0 (= the data's).")
    return want or int(data)


def model_kwargs(model_config: Any, own_keys: tuple[str, ...]) -> dict:
    """``config.model`` minus the keys the experiment reads itself (``own_keys``), as keyword
    arguments for the model class (lists turned into tuples, as flax fields hash)."""
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in model_config.items()
            if k not in own_keys}


@dataclasses.dataclass(frozen=True)
class Setup:
    """What an experiment builds once per run on the host (see the module docstring).

    ``static``: Python objects closed over by the traced functions; ``data``: a pytree of arrays
    passed to them as traced arguments (None when there is none)."""

    static: dict = dataclasses.field(default_factory=dict)
    data: Any = None


@dataclasses.dataclass(frozen=True)
class Experiment:
    """The functions of one experiment module, with defaults filled in."""

    module: ModuleType
    build_model: Callable
    loss: Callable
    evaluate: Callable
    prepare: Callable = default_prepare
    init: Callable | None = None
    report: Callable | None = None
    predict: Callable | None = None
    setup: Callable | None = None
    describe: Callable | None = None
    draw: Callable | None = None
    spec: str = ""

    def build_setup(self, config: Any, info: Any) -> "Setup":
        """The experiment's ``setup`` hook, or an empty ``Setup``."""
        if self.setup is None:
            return Setup()
        out = self.setup(config, info)
        if not isinstance(out, Setup):
            raise TypeError(f"{self.spec or self.module.__name__}: setup() must return a "
                            f"jaxvision.experiment.Setup, got {type(out).__name__}.")
        return out

    def setup_kwargs(self, static: Any, data: Any) -> dict:
        """``{'setup': Setup(static, data)}`` when the experiment has a setup hook, else {}."""
        return {"setup": Setup(dict(static or {}), data)} if self.setup is not None else {}

    def init_variables(self, config: Any, model: Any, batch: dict, key: jax.Array) -> dict:
        if self.init is not None:
            return self.init(config, model, batch, key)
        params_key, dropout_key = jax.random.split(key)
        return model.init({"params": params_key, "dropout": dropout_key},
                          self.prepare(config, batch), train=False)


def load_experiment(spec_or_path: str) -> Experiment:
    """Loads the experiment functions from ``experiments/<task>.py[:name]``."""
    if not spec_or_path:
        raise ConfigError("no experiment given: pass --config experiments/<task>.py:<name> (or "
                          "set config.experiment to that spec).")
    module = load_module(split_spec(spec_or_path)[0])
    if hasattr(module, "aux"):
        raise ConfigError(f"{spec_or_path}: the experiment hook 'aux' was replaced by 'setup' "
                          "(returning jaxvision.experiment.Setup); see jaxvision/experiment.py.")
    missing = [f for f in ("build_model", "loss", "evaluate") if not hasattr(module, f)]
    if missing:
        raise ConfigError(f"{module.__file__} lacks {', '.join(missing)}: an experiment module "
                          "defines build_model, loss and evaluate (see jaxvision/experiment.py).")
    return Experiment(module=module, build_model=module.build_model, loss=module.loss,
                      evaluate=module.evaluate,
                      prepare=getattr(module, "prepare", default_prepare),
                      init=getattr(module, "init", None), report=getattr(module, "report", None),
                      predict=getattr(module, "predict", None), setup=getattr(module, "setup", None),
                      describe=getattr(module, "describe", None), draw=getattr(module, "draw", None),
                      spec=normalize_spec(spec_or_path))


def resolve_experiment(config: Any, experiment: "Experiment | str | None" = None) -> Experiment:
    """The experiment of a run: ``experiment`` when given (an ``Experiment`` or a spec), else the
    spec recorded in ``config.experiment``. There is no default task: a config without one is an
    error that says how to load it."""
    if isinstance(experiment, Experiment):
        return experiment
    spec = experiment or str(config.get("experiment", "") or "")
    if not spec:
        raise ConfigError("config.experiment is not set, so the task is unknown: load configs with "
                          "jaxvision.config.get_config('experiments/<task>.py:<name>') (which records "
                          "it), or set config.experiment to such a spec.")
    return load_experiment(spec)
