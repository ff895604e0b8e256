"""A trained model's ``predict`` function as one file that runs without the experiment or flax.

``export_predictor(predictor, path)`` (``python -m jaxvision export``) writes a zip archive:

* ``model.jax_exported``: the predict function serialized by ``jax.export`` -- a StableHLO
  module (a flatbuffer, no pickle) with the model's variables embedded as constants, lowered
  for the chosen platforms, its batch dimension symbolic (``b``), so any batch size runs;
* ``meta.json``: the inputs (name, shape with ``"b"`` for the batch, dtype), the output names,
  the eval pipeline the inputs must have been through (``eval_pp``, statistics written out), the
  class names, and where it came from (workdir, experiment, step, jax version).

``load(path)`` reads both back with ``jax.export.deserialize`` and ``json``; no Python code
from the file is run (nothing is unpickled or imported), and neither flax nor the experiment
module is needed: only jax and numpy. The inputs are the model's inputs after the eval
pipeline: ``(b, H, W, C)`` arrays of ``meta["inputs"][i]["dtype"]``
(``jaxvision.inference.Predictor.prepare`` makes them from image files).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any, Sequence

import jax
import numpy as np

FORMAT = "jaxvision-export-1"
_MODEL, _META = "model.jax_exported", "meta.json"


def export_predictor(predictor: Any, path: str | Path, *,
                     platforms: Sequence[str] | None = None) -> dict:
    """Writes ``predictor`` (a ``jaxvision.inference.Predictor``) to ``path`` (see the module
    docstring); returns the metadata written. ``platforms``: e.g. ``('cpu', 'cuda')``; default
    the current backend."""
    import jax.numpy as jnp
    from jax import export as jex
    mi = predictor.model_info
    example = {k: np.zeros(mi.source_shape, np.uint8) for k in mi.keys}
    prepared = predictor.prepare(example)
    variables = jax.tree.map(jnp.asarray, predictor.variables)
    setup_data = predictor.run.setup.data
    keys = tuple(mi.keys)

    def fn(*images):
        batch = dict(zip(keys, images))
        batch["valid"] = jnp.ones((images[0].shape[0],), bool)
        return predictor.fn(variables, batch, setup_data)

    (b,) = jex.symbolic_shape("b")
    args = [jax.ShapeDtypeStruct((b, *np.shape(prepared[k])), np.asarray(prepared[k]).dtype)
            for k in keys]
    try:
        exported = jex.export(jax.jit(fn), platforms=tuple(platforms) if platforms else None)(*args)
    except Exception as e:  # shape polymorphism or an op with no lowering for a platform
        raise ValueError(f"cannot export {predictor.exp.spec}'s predict function for platforms "
                         f"{platforms or [jax.default_backend()]}: {type(e).__name__}: "
                         f"{str(e).splitlines()[0]}") from e
    outputs = jax.eval_shape(fn, *[jax.ShapeDtypeStruct((2, *a.shape[1:]), a.dtype) for a in args])
    meta = {
        "format": FORMAT,
        "inputs": [{"name": k, "shape": ["b", *map(int, a.shape[1:])], "dtype": str(a.dtype)}
                   for k, a in zip(keys, args)],
        "outputs": {k: {"shape": ["b", *map(int, v.shape[1:])], "dtype": str(v.dtype)}
                    for k, v in outputs.items()},
        "eval_pp": mi.eval_pp,
        "source_shape": list(mi.source_shape),
        "class_names": list(mi.info.class_names),
        "platforms": list(exported.platforms),
        "experiment": str(predictor.config.get("experiment", "")),
        "step": predictor.step,
        "jax_version": jax.__version__,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w") as z:
        z.writestr(_META, json.dumps(meta, indent=2))
        z.writestr(_MODEL, bytes(exported.serialize()))
    tmp.replace(path)
    return {**meta, "file": str(path), "bytes": path.stat().st_size}


class Exported:
    """A loaded export: ``meta`` (the dict of ``meta.json``) and ``__call__(*inputs) -> {name:
    numpy array}``, inputs in the order of ``meta['inputs']``."""

    def __init__(self, exported: Any, meta: dict):
        self.exported, self.meta = exported, meta

    @property
    def class_names(self) -> list[str]:
        return list(self.meta.get("class_names", []))

    def __call__(self, *inputs: Any) -> dict[str, np.ndarray]:
        specs = self.meta["inputs"]
        if len(inputs) != len(specs):
            raise ValueError(f"the model takes {len(specs)} input(s) "
                             f"({', '.join(s['name'] for s in specs)}), got {len(inputs)}.")
        args = []
        for x, spec in zip(inputs, specs):
            x = np.asarray(x)
            want = tuple(spec["shape"][1:])
            if x.ndim != len(want) + 1 or tuple(x.shape[1:]) != want:
                raise ValueError(f"input {spec['name']!r} must have shape (batch, "
                                 f"{', '.join(map(str, want))}), got {x.shape}.")
            args.append(x.astype(spec["dtype"]))
        return {k: np.asarray(v) for k, v in self.exported.call(*args).items()}


def load(path: str | Path) -> Exported:
    """Reads a file written by ``export_predictor``; runs no code from it (see the module
    docstring)."""
    from jax import export as jex
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as z:
            meta = json.loads(z.read(_META))
            blob = z.read(_MODEL)
    except (OSError, KeyError, zipfile.BadZipFile, ValueError) as e:
        raise ValueError(f"{str(path)!r} is not a model exported by `python -m jaxvision export` "
                         f"({type(e).__name__}: {e}).") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r}: unknown export format {meta.get('format')!r} "
                         f"(this jaxvision reads {FORMAT!r}).")
    return Exported(jex.deserialize(bytearray(blob)), meta)
