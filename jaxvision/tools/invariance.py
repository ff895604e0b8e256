"""``python -m jaxvision invariance``: how a trained model's features and output change under a
transformation of its input, layer by layer (Zeiler & Fergus, 2014, figure 5; the course's
"robustness to transformations vs layer").

For ``num`` eval images (after ``data.eval_pp``) and each amount of the transformation:

* ``translate``: the image moved vertically by ``amount`` pixels (the uncovered rows black);
* ``scale``: zoomed by the factor ``amount`` about its centre (cut or padded black to its size);
* ``rotate``: rotated by ``amount`` degrees about its centre (corners black);

the features at every layer the model taps (its ``return_features``: the whole feature map,
not pooled) and the logits are compared with those of the original image by the **normalized
Euclidean distance** ``||f(T x) - f(x)|| / ||f(x)||``, averaged over the images, and the
softmax probability of the image's true ``label`` is averaged too. Writes
``invariance_<transform>.png`` (distance per layer against the amount, and the true-class
probability) and ``invariance_<transform>.csv`` (``amount, layer, value``; the layer
``p_true`` holds the probability) into the workdir unless ``out`` says otherwise.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

TRANSFORMS = ("translate", "scale", "rotate")
DEFAULT_RANGES = {"translate": (-16.0, 16.0, 9), "scale": (0.5, 1.5, 9), "rotate": (-90.0, 90.0, 9)}


def transform_image(image: np.ndarray, kind: str, amount: float) -> np.ndarray:
    """One (H, W, C) uint8 image transformed by ``amount`` (module docstring); same shape."""
    h, w, c = image.shape
    if kind == "translate":
        d = int(round(amount))
        out = np.zeros_like(image)
        if abs(d) >= h:
            return out
        if d >= 0:
            out[d:] = image[:h - d]
        else:
            out[:h + d] = image[-d:]
        return out
    pil = Image.fromarray(image[..., 0] if c == 1 else image)
    if kind == "rotate":
        res = pil.rotate(float(amount), resample=Image.BILINEAR, fillcolor=0)
    elif kind == "scale":
        if amount <= 0:
            raise ValueError(f"scale amounts must be > 0; got {amount}.")
        sh, sw = max(1, round(h * amount)), max(1, round(w * amount))
        zoomed = np.asarray(pil.resize((sw, sh), Image.BILINEAR)).reshape(sh, sw, c)
        out = np.zeros_like(image)
        # Centre the zoomed image on the canvas: cut where it is larger, pad where smaller.
        ty, tx = (sh - h) // 2, (sw - w) // 2
        ys, xs = max(ty, 0), max(tx, 0)
        yd, xd = max(-ty, 0), max(-tx, 0)
        hh, ww = min(h - yd, sh - ys), min(w - xd, sw - xs)
        out[yd:yd + hh, xd:xd + ww] = zoomed[ys:ys + hh, xs:xs + ww]
        return out
    else:
        raise ValueError(f"transform must be one of {TRANSFORMS}; got {kind!r}.")
    return np.asarray(res).reshape(h, w, c)


def _features_fn(run: Any):
    """Compiled ``(variables, batch) -> {layer: (N, D) flattened features}`` (numpy) in the
    model's layer order (taps, then ``logits``)."""
    from jaxvision.tools.probe import has_feature_taps
    if not has_feature_taps(run.model):
        raise ValueError(f"model {type(run.model).__name__} does not tap its features "
                         "(return_features): invariance needs a zoo model that does.")
    order: list[str] = []

    def fn(variables, batch):
        logits, taps = run.model.apply(variables, run.exp.prepare(run.config, batch), train=False,
                                       return_features=True)
        out = {**{k: v.reshape(v.shape[0], -1).astype(jnp.float32) for k, v in taps.items()},
               "logits": logits.astype(jnp.float32)}
        order[:] = list(out)  # a compiled function returns its dict sorted by key
        return out
    jitted = jax.jit(fn)

    def ordered(variables, batch):  # numpy, in layer order (device_get sorts dict keys too)
        out = jax.device_get(jitted(variables, batch))
        return {k: np.asarray(out[k]) for k in order}
    return ordered


def invariance(config: Any, workdir: str | Path, transform: str,
               amounts: Sequence[float] | None = None, *, num: int = 100,
               checkpoint: str = "latest", out: str | Path | None = None) -> dict:
    """Measures the curves (module docstring) for ``transform`` at ``amounts`` (default
    ``DEFAULT_RANGES``); returns ``{'amounts': [...], 'distance': {layer: [...]}, 'p_true':
    [...], 'png': path, 'csv': path}``."""
    from jaxvision.data.pipeline import make_loader
    from jaxvision.experiment import resolve_experiment
    from jaxvision.train import loop
    if transform not in TRANSFORMS:
        raise ValueError(f"--transform must be one of {', '.join(TRANSFORMS)}; got {transform!r}.")
    if amounts is None:
        lo, hi, n = DEFAULT_RANGES[transform]
        amounts = list(np.linspace(lo, hi, int(n)))
    amounts = [float(a) for a in amounts]
    run = loop.build(config, resolve_experiment(config), abstract=True)
    (restored,) = loop.restore_checkpoints(run, workdir, [checkpoint])
    variables = restored.state.eval_variables()
    loader = make_loader(config.data, str(config.data.eval_split), global_batch=int(num),
                         mode="eval", seed=0)
    batch = next(iter(loader))
    keep = np.asarray(batch["valid"], bool)
    images, labels = batch["image"][keep], np.asarray(batch["label"])[keep]
    fn = _features_fn(run)
    ref = fn(variables, {"image": images})
    norms = {k: np.linalg.norm(v, axis=1) + 1e-12 for k, v in ref.items()}
    distance: dict[str, list[float]] = {k: [] for k in ref}
    p_true: list[float] = []
    for a in amounts:
        moved = np.stack([transform_image(im, transform, a) for im in images])
        feats = fn(variables, {"image": moved})
        for k, v in feats.items():
            distance[k].append(float(np.mean(np.linalg.norm(v - ref[k], axis=1) / norms[k])))
        probs = np.asarray(jax.nn.softmax(feats["logits"], -1))
        p_true.append(float(np.mean(probs[np.arange(len(labels)), labels])))
    out_dir = Path(out) if out is not None else Path(workdir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = out_dir / f"invariance_{transform}.csv", out_dir / f"invariance_{transform}.png"
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["amount", "layer", "value"])
        for i, a in enumerate(amounts):
            for k, vals in distance.items():
                w.writerow([a, k, vals[i]])
            w.writerow([a, "p_true", p_true[i]])
    _plot(png_path, transform, amounts, distance, p_true, int(restored.step), len(labels))
    return {"transform": transform, "amounts": amounts, "distance": distance, "p_true": p_true,
            "images": int(len(labels)), "step": int(restored.step), "png": str(png_path),
            "csv": str(csv_path)}


def _plot(path: Path, transform: str, amounts: list[float], distance: dict, p_true: list[float],
          step: int, count: int) -> None:
    from matplotlib.figure import Figure
    unit = {"translate": "pixels (vertical)", "scale": "scale factor", "rotate": "degrees"}[transform]
    fig = Figure(figsize=(10, 3.8))
    ax1, ax2 = fig.subplots(1, 2)
    for k, vals in distance.items():
        ax1.plot(amounts, vals, marker="o", markersize=3, label=k)
    ax1.set_xlabel(unit)
    ax1.set_ylabel("||f(Tx) - f(x)|| / ||f(x)||")
    ax1.set_title(f"feature change per layer ({transform})", fontsize=9)
    ax1.legend(fontsize=6)
    ax1.grid(alpha=0.3)
    ax2.plot(amounts, p_true, marker="o", color="black")
    ax2.set_xlabel(unit)
    ax2.set_ylabel("P(true class)")
    ax2.set_ylim(0, 1)
    ax2.set_title(f"true-class probability ({count} images, step {step})", fontsize=9)
    ax2.grid(alpha=0.3)
    fig.savefig(path, dpi=110, bbox_inches="tight")
