"""A trained model as a function of images: what ``predict``, ``export`` and the tools load.

``load_predictor(workdir)`` reads a run's recorded config, its checkpoint's evaluation
variables (EMA when kept) and its ``model_info.json``, and returns a ``Predictor`` that turns
images as read from disk into the experiment's ``predict`` outputs on the device mesh, without
the run's data set.

``model_info.json`` (written by ``train`` when a run starts, and by ``import-weights``) holds what
the data set would otherwise have to say: the training source's ``SourceInfo`` (class names and
counts), the eval pipeline with its statistics written out (a bare ``normalize`` becomes
``normalize(mean=..., std=...)``), the image size of the eval examples before that pipeline and
the model input after it. Runs from before the file existed fall back to building the source.

How a user's image of any size reaches the model (``Predictor.prepare``): it is read with the
run's channel count (gray <-> RGB converted), resized to the size of the run's eval examples
(no aspect kept) unless the eval pipeline starts by resizing (``resize``, ``resize_short``),
then put through the eval pipeline, and finally resized to the model input if the pipeline did
not already produce it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from jaxvision.data.example import Example
from jaxvision.data.source import SourceInfo

MODEL_INFO = "model_info.json"
# Eval pipelines starting with one of these accept images of any size.
_RESIZING = ("resize", "resize_short", "random_resized_crop", "rescale", "resize_inputs")
# Steps that touch only labels (skipped when looking for that first resize).
_LABEL_ONLY = ("full_res_mask",)


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What a trained model expects and knows, without its data set (see the module docstring).

    ``input_shape``: the model input (H, W, C) after ``eval_pp``; ``source_shape``: an eval
    example's image (H, W, C) before it; ``keys``: the image keys of an input (``image``, and
    ``image_right`` for stereo)."""

    info: SourceInfo
    input_shape: tuple[int, int, int]
    source_shape: tuple[int, int, int]
    eval_pp: str
    keys: tuple[str, ...] = ("image",)

    def to_json(self) -> dict:
        return {"info": dataclasses.asdict(self.info), "input_shape": list(self.input_shape),
                "source_shape": list(self.source_shape), "eval_pp": self.eval_pp,
                "keys": list(self.keys)}

    @classmethod
    def from_json(cls, d: dict) -> "ModelInfo":
        fields = {f.name for f in dataclasses.fields(SourceInfo)}
        info = {k: (tuple(v) if isinstance(v, list) else v)
                for k, v in d["info"].items() if k in fields}
        return cls(info=SourceInfo(**info), input_shape=tuple(d["input_shape"]),
                   source_shape=tuple(d["source_shape"]), eval_pp=str(d["eval_pp"]),
                   keys=tuple(d.get("keys", ("image",))))

    @property
    def channels(self) -> int:
        return int(self.source_shape[-1])


def model_info_of(data: Any, source: Any, info: SourceInfo | None = None) -> ModelInfo:
    """The ``ModelInfo`` of ``data`` (a ``config.data``) whose eval split is ``source``;
    ``info``: the training source's (what the model was built from; default ``source.info``)."""
    from jaxvision.data.pipeline import make_transform
    transform = make_transform(data, str(data.eval_pp))
    raw = source[0]
    example = transform(raw, np.random.default_rng(0))
    keys = tuple(k for k in ("image", "image_right") if k in raw)
    return ModelInfo(info=info or source.info, input_shape=tuple(int(s) for s in np.shape(example["image"])),
                     source_shape=tuple(int(s) for s in np.shape(raw["image"])),
                     eval_pp=transform.spec(), keys=keys)


def write_model_info(workdir: str | Path, model_info: ModelInfo) -> None:
    """Writes ``workdir/model_info.json`` atomically."""
    path = Path(workdir) / MODEL_INFO
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(model_info.to_json(), indent=2))
    os.replace(tmp, path)


def read_model_info(workdir: str | Path, config: Any) -> ModelInfo:
    """``workdir/model_info.json``, or for older runs the same built from ``config``'s data
    (which must then be there)."""
    path = Path(workdir) / MODEL_INFO
    if path.is_file():
        try:
            return ModelInfo.from_json(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path} is not a model info file jaxvision wrote ({e}); delete it "
                             "to rebuild it from the run's data.") from None
    from jaxvision.data.source import build_source
    return model_info_of(config.data, build_source(config.data, config.data.eval_split),
                         build_source(config.data, config.data.train_split).info)


def starts_with_resize(eval_pp: str) -> bool:
    """Whether the pipeline's first step resizes (so it takes images of any size)."""
    from jaxvision.data.pp import _split_steps
    names = [s.split("(")[0].strip() for s in _split_steps(eval_pp or "") if s.strip()]
    first = next((n for n in names if n not in _LABEL_ONLY), "")
    return first in _RESIZING


class Predictor:
    """A trained model on the device mesh: ``prepare`` (host) and ``__call__`` (batched)."""

    def __init__(self, config: Any, exp: Any, model_info: ModelInfo, variables: dict, step: int,
                 batch_size: int = 0):
        from jaxvision.data.pp import parse_pp
        from jaxvision.train.loop import inference_run
        if exp.predict is None:
            raise ValueError(f"experiment {exp.spec or exp.module.__name__} has no predict hook, so "
                             "its models cannot be run on images (see jaxvision/experiment.py).")
        self.config, self.exp, self.model_info, self.step = config, exp, model_info, int(step)
        self.variables = variables
        self.run, self.device_state = inference_run(config, exp, model_info.info, variables)
        self.transform = parse_pp(model_info.eval_pp)
        n = self.run.strategy.num_devices
        self.batch_size = -(-int(batch_size or config.train.eval_batch_size) // n) * n
        static = self.run.setup.static

        def fn(variables: dict, batch: dict, setup_data: Any = None) -> dict:
            return exp.predict(config, self.run.model, variables, batch,
                               **exp.setup_kwargs(static, setup_data))

        self.fn = fn

    @property
    def info(self) -> SourceInfo:
        return self.model_info.info

    def prepare(self, example: Example) -> Example:
        """An example of images as read (any size, the run's channels) -> the model's input."""
        from jaxvision.data.transforms import resize
        mi = self.model_info
        if not starts_with_resize(mi.eval_pp):
            example = resize(example, *mi.source_shape[:2])
        example = self.transform(example, np.random.default_rng(0))
        if np.shape(example["image"])[:2] != tuple(mi.input_shape[:2]):
            example = resize(example, *mi.input_shape[:2])
        return example

    def __call__(self, examples: Sequence[Example]) -> list[dict[str, np.ndarray]]:
        """The ``predict`` outputs of prepared ``examples``, one dict of numpy arrays each.

        Batches of ``batch_size``; a shorter last batch is padded to the next power of two (a
        multiple of the device count), so a single image does not pay for a whole batch and at
        most log2(batch_size) programs are compiled."""
        from jaxvision.train.loop import predict
        out: list[dict] = []
        n = self.run.strategy.num_devices
        for start in range(0, len(examples), self.batch_size):
            chunk = list(examples[start:start + self.batch_size])
            size = min(self.batch_size, -(-(1 << (len(chunk) - 1).bit_length()) // n) * n)
            batch = {k: np.stack([np.asarray(e[k]) for e in chunk]) for k in self.model_info.keys}
            batch = {k: _pad(v, size) for k, v in batch.items()}
            batch["valid"] = np.arange(size) < len(chunk)
            outputs = predict(self.run, self.device_state, self.fn, [batch])
            out.extend({k: v[i] for k, v in outputs.items()} for i in range(len(chunk)))
        return out


def _pad(x: np.ndarray, n: int) -> np.ndarray:
    if len(x) == n:
        return x
    return np.concatenate([x, np.repeat(x[:1], n - len(x), axis=0)])


def load_predictor(workdir: str | Path, checkpoint: Any = "latest", *, config: Any = None,
                   overrides: Sequence[str] = (), batch_size: int = 0) -> Predictor:
    """The ``Predictor`` of the run in ``workdir`` at ``checkpoint`` ('latest', 'best' or a step).

    ``config``: a config (or spec) replacing the recorded one (only for runs from before the
    experiment was recorded)."""
    from jaxvision.config import workdir_config
    from jaxvision.experiment import resolve_experiment
    from jaxvision.train.transfer import read_variables
    if config is None or isinstance(config, str):
        config = workdir_config(workdir, config, overrides)
    exp = resolve_experiment(config)
    model_info = read_model_info(workdir, config)
    variables, step = read_variables(workdir, checkpoint)
    return Predictor(config, exp, model_info, variables, step, batch_size)



def predict_eval_batch(workdir: str | Path, config: Any, count: int,
                       checkpoint: Any = None) -> tuple[dict, list[dict[str, np.ndarray]]]:
    """The first ``count`` examples of the run's eval split (as the eval loader gives them:
    a batch dict of numpy arrays) and the run's ``predict`` outputs for each valid one (a list,
    shorter than ``count`` when the split is). For the pictures of an experiment's report."""
    from jaxvision.data.pipeline import make_loader
    predictor = load_predictor(workdir, checkpoint, config=config)
    loader = make_loader(config.data, str(config.data.eval_split), global_batch=count, mode="eval",
                         seed=0)
    batch = next(iter(loader))
    n = int(np.sum(batch["valid"]))
    return batch, predictor([{"image": batch["image"][i]} for i in range(n)])
