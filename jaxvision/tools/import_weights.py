"""``python -m jaxvision import-weights``: a torchvision state dict -> a jaxvision workdir.

The state dict is read from a ``.safetensors`` file with numpy (``safetensors.numpy``: no torch,
no pickle). Save one from PyTorch with::

    from safetensors.torch import save_file
    save_file(torchvision.models.resnet50(weights="IMAGENET1K_V2").state_dict(), "resnet50.safetensors")

The workdir holds what a trained run holds: ``config.json`` (experiment
``experiments/classification.py:torchvision_imagenet`` with the model named), a checkpoint at
step 0 (the converted parameters and batch statistics, a fresh optimizer state) and
``model_info.json`` (ImageNet's class names -- the WordNet ids of TFDS's ``imagenet2012``, in
torchvision's order, unless ``--classes`` gives a file of names -- and torchvision's eval
transform: shorter side 256, centre 224, its mean and std). So ``transfer.workdir`` can start
from it, and ``predict`` and ``export`` run it. The class count is read from the file (a
torchvision model fine-tuned to other classes imports too).
"""

from __future__ import annotations

import importlib.resources
import json
from pathlib import Path

import jax
import numpy as np

SPEC = "experiments/classification.py:torchvision_imagenet"


def read_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """The tensors of a ``.safetensors`` file as numpy arrays (``convert`` casts to float32)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--from {str(path)!r}: no such file.")
    try:
        return load_file(str(path))
    except (SafetensorError, ValueError, TypeError, OSError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        hint = (" (bfloat16 tensors: convert the state dict to float32 before saving)"
                if "bf16" in msg.lower() or "bfloat16" in msg.lower() else "")
        raise ValueError(f"--from {str(path)!r} is not a readable safetensors file: {msg}{hint}. "
                         "Save one with safetensors.torch.save_file(model.state_dict(), FILE)."
                         ) from None


def imagenet_class_names() -> tuple[str, ...]:
    """ImageNet-1k's 1000 WordNet ids in torchvision's (sorted) class order, from TFDS's files."""
    ref = importlib.resources.files("tensorflow_datasets") / "datasets" / "imagenet2012" / "labels.txt"
    return tuple(line.strip() for line in ref.read_text().splitlines() if line.strip())


def _class_names(classes: str | None, num_classes: int) -> tuple[str, ...]:
    if classes:
        names = tuple(n.strip() for n in Path(classes).read_text().splitlines() if n.strip())
        what = f"--classes {classes!r}"
    else:
        names, what = imagenet_class_names(), "ImageNet"
        if num_classes != len(names):
            return tuple(str(i) for i in range(num_classes))
    if len(names) != num_classes:
        raise ValueError(f"{what} lists {len(names)} class names but the model has {num_classes} "
                         "classes; give one name per line, in the model's class order.")
    return names


def import_weights(model: str, source: str | Path, out: str | Path, *,
                   classes: str | None = None) -> dict:
    """Converts the torchvision ``model`` state dict in ``source`` into the workdir ``out``
    (see the module docstring); returns a summary (``params``, ``num_classes``, ``tensors``).

    Refuses a workdir that already holds checkpoints (nothing is overwritten)."""
    from jaxvision import inference, optim
    from jaxvision.config import get_config, to_dict, config_hash
    from jaxvision.data.source import SourceInfo
    from jaxvision.experiment import resolve_experiment
    from jaxvision.models.torchvision import TORCHVISION_MODELS, convert, head_key
    from jaxvision.train import state as state_lib
    from jaxvision.train.checkpoint import Checkpointer
    import ml_collections

    if model not in TORCHVISION_MODELS:
        raise ValueError(f"--model {model!r}: no torchvision layout for it; supported: "
                         f"{', '.join(TORCHVISION_MODELS)}.")
    out = Path(out)
    if (out / "checkpoints").exists() or (out / "config.json").exists():
        raise FileExistsError(f"--out {str(out)!r} already holds a run; choose a new workdir.")
    tensors = read_safetensors(source)
    head = head_key(model)
    if head not in tensors or np.ndim(tensors[head]) != 2:
        raise ValueError(f"--from {str(source)!r}: no 2-D {head!r} (the classifier of a "
                         f"torchvision {model}); is this a torchvision {model} state dict?")
    num_classes = int(np.shape(tensors[head])[0])
    names = _class_names(classes, num_classes)

    config = get_config(SPEC)
    zoo, kwargs = TORCHVISION_MODELS[model]
    config.model = ml_collections.ConfigDict({"name": zoo, **kwargs})
    config.data.num_classes = num_classes
    info = SourceInfo(name=str(config.data.name), split=str(config.data.train_split),
                      keys=("image", "label"), num_classes=num_classes, class_names=names)
    exp = resolve_experiment(config)
    net = exp.build_model(config, info)
    h, w, c = config.data.input_shape
    template = jax.eval_shape(lambda x: net.init(jax.random.key(0), x, train=False),
                              jax.ShapeDtypeStruct((1, h, w, c), np.float32))
    variables = convert(model, tensors, template, source=repr(str(source)))
    optimizer = optim.make_optimizer(config.optim, int(config.train.steps))
    state = state_lib.create(variables, optimizer, jax.random.key(int(config.seed)), ema=False)

    out.mkdir(parents=True, exist_ok=True)
    meta = {"config": to_dict(config), "config_hash": config_hash(config),
            "imported_from": str(source), "torchvision_model": model}
    with Checkpointer(out / "checkpoints", async_save=False, max_to_keep=None) as ckpt:
        ckpt.save(0, jax.device_get(state), meta=meta, force=True)
    (out / "config.json").write_text(json.dumps(meta["config"], indent=2))
    inference.write_model_info(out, inference.ModelInfo(
        info=info, input_shape=(h, w, c), source_shape=(h, w, c),
        eval_pp=str(config.data.eval_pp)))
    params = int(sum(np.size(x) for x in jax.tree.leaves(variables["params"])))
    return {"model": model, "zoo_model": zoo, "num_classes": num_classes, "params": params,
            "tensors": len(tensors), "workdir": str(out)}
