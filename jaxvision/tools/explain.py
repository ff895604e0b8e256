"""``python -m jaxvision explain --workdir W INPUT...``: what a classification run looks at
(Zeiler & Fergus, 2014: occlusion and first-layer filters; Selvaraju et al., 2017: Grad-CAM).

Each input image is read and prepared as ``predict`` does (``jaxvision/inference.py``), and
explained for its ``target`` class (``--class``, default the predicted one):

* **occlusion sensitivity**: a grey square (value 128) of ``patch`` pixels slid over the
  prepared image with ``stride`` (the last row and column of positions reach the far edges);
  the target's probability with the square at each position, an (ny, nx) grid run through the
  run's own ``predict``. Low values mark the regions the decision needs.
* **Grad-CAM** at ``layer`` (default: the last feature map (B, h, w, C) the model taps with
  ``return_features``): ``relu(sum_c alpha_c A_c)`` with ``alpha_c`` the spatial mean of
  d logit_target / d A_c (the gradient read through ``layers.tap``), (h, w), then resized
  bilinearly to the image and divided by its maximum (all zero stays zero).
* the **first-layer filters**: the kernels of the first convolution (the 4-D kernel whose
  input channels equal the image's), each min-max scaled, as one grid image.

Writes ``explain_<name>.png`` per input (image | occlusion map on its own range, dark = the
lowest probability | Grad-CAM over the image),
``filters.png`` and ``explain.json`` (per input: target, its probability, the occlusion grid,
the Grad-CAM map at the layer's resolution) into ``out`` (default ``W/explain``).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxvision.models.layers import TAP_COLLECTION

GREY = 128


def occlusion_positions(size: int, patch: int, stride: int) -> list[int]:
    """Top (or left) edges of the square along one axis: 0, stride, ... and ``size - patch``."""
    if patch > size:
        raise ValueError(f"--patch {patch} is larger than the model's input ({size} px).")
    if patch < 1 or stride < 1:
        raise ValueError(f"--patch and --stride must be >= 1; got {patch}, {stride}.")
    out = list(range(0, size - patch + 1, stride))
    return out if out[-1] == size - patch else out + [size - patch]


def occlusion_map(prob_fn: Callable[[np.ndarray], np.ndarray], image: np.ndarray, target: int,
                  patch: int, stride: int, chunk: int = 64) -> np.ndarray:
    """(ny, nx) probabilities of class ``target`` with the grey square at each position.

    ``prob_fn``: (N, H, W, C) uint8 images -> (N, classes) probabilities; ``image`` (H, W, C)."""
    h, w = image.shape[:2]
    ys, xs = occlusion_positions(h, patch, stride), occlusion_positions(w, patch, stride)
    out = np.empty(len(ys) * len(xs), np.float64)
    spots = [(y, x) for y in ys for x in xs]
    for start in range(0, len(spots), chunk):
        batch = np.repeat(image[None], len(spots[start:start + chunk]), 0)
        for i, (y, x) in enumerate(spots[start:start + chunk]):
            batch[i, y:y + patch, x:x + patch] = GREY
        out[start:start + len(batch)] = prob_fn(batch)[:, target]
    return out.reshape(len(ys), len(xs))


def grad_cam(model: Any, variables: dict, inputs: jax.Array, target: jax.Array, layer: str
             ) -> np.ndarray:
    """(N, h, w) Grad-CAM maps (not normalized) of class ``target`` (N,) at the tapped feature
    ``layer`` (N, h, w, C) of ``model`` (a zoo model: ``return_features`` and ``layers.tap``);
    ``inputs``: the model's prepared input batch."""
    return np.asarray(_grad_cam(model, layer, variables, inputs, jnp.asarray(target)))


@functools.partial(jax.jit, static_argnums=(0, 1))
def _grad_cam(model: Any, layer: str, variables: dict, inputs: jax.Array, target: jax.Array
              ) -> jax.Array:
    # Compiled once per model, layer and shape (`explain` calls it per image): run eagerly,
    # each primitive of the forward and backward pass dispatched and compiled on its own.
    def forward(taps):
        logits, feats = model.apply({**variables, TAP_COLLECTION: taps}, inputs, train=False,
                                    return_features=True)
        return jnp.sum(jnp.take_along_axis(logits.astype(jnp.float32), target[:, None], 1)), feats

    (_, feats), taps = model.apply(variables, inputs, train=False, return_features=True,
                                   mutable=[TAP_COLLECTION])
    if layer not in feats or feats[layer].ndim != 4:   # shapes are static: raised while tracing
        maps = [k for k, v in feats.items() if v.ndim == 4]
        raise ValueError(f"--layer {layer!r} is not a feature map the model taps; its maps: "
                         f"{', '.join(maps) or 'none'}.")
    grads = jax.grad(lambda t: forward(t)[0])(taps[TAP_COLLECTION])
    g = grads[f"{layer}_tap"].astype(jnp.float32)
    a = feats[layer].astype(jnp.float32)
    alpha = jnp.mean(g, axis=(1, 2))                               # (N, C)
    return jax.nn.relu(jnp.einsum("nhwc,nc->nhw", a, alpha))


def last_feature_map(model: Any, variables: dict, inputs: jax.Array) -> str:
    """The name of the last (N, h, w, C) feature the model taps, in the model's order."""
    order: list[str] = []

    def fn(v, x):
        _, feats = model.apply(v, x, train=False, return_features=True)
        order[:] = [k for k, f in feats.items() if f.ndim == 4]  # traced: the model's own order
        return feats
    jax.eval_shape(fn, variables, inputs)      # (its result's dict comes back sorted by key)
    if not order:
        raise ValueError(f"model {type(model).__name__} taps no (N, h, w, C) feature map: "
                         "Grad-CAM needs a convolutional model.")
    return order[-1]


def first_conv_kernel(params: dict, channels: int) -> tuple[str, np.ndarray]:
    """(path, (kh, kw, channels, out) kernel) of the first convolution: the first 4-D kernel
    in the parameters' order whose input channels equal the image's."""
    found = []

    def walk(tree, path):
        for k, v in tree.items():
            if isinstance(v, dict) or hasattr(v, "items"):
                walk(v, path + (k,))
            elif k == "kernel" and np.ndim(v) == 4 and np.shape(v)[2] == channels:
                found.append(("/".join(path + (k,)), np.asarray(v, np.float32)))
    walk(params, ())
    if not found:
        raise ValueError(f"no convolution kernel with {channels} input channels in the model: "
                         "first-layer filters need a convolutional first layer.")
    return found[0]


def filter_grid(kernel: np.ndarray, cell: int = 24) -> np.ndarray:
    """(rows * cell', cols * cell', 3) float image in [0, 1] of the (kh, kw, C, out) kernels,
    each min-max scaled on its own and enlarged by whole pixels, 1 px white between cells."""
    kh, kw, c, n = kernel.shape
    zoom = max(1, cell // max(kh, kw))
    cols = int(np.ceil(np.sqrt(n)))
    rows = -(-n // cols)
    ch, cw = kh * zoom + 1, kw * zoom + 1
    out = np.ones((rows * ch, cols * cw, 3), np.float32)
    for i in range(n):
        k = kernel[..., i]
        k = (k - k.min()) / max(float(k.max() - k.min()), 1e-12)
        k = np.repeat(k, 3, -1) if c == 1 else (k[..., :3] if c >= 3 else np.pad(k, ((0, 0), (0, 0), (0, 3 - c))))
        k = np.kron(k, np.ones((zoom, zoom, 1), np.float32))
        r, q = divmod(i, cols)
        out[r * ch:r * ch + kh * zoom, q * cw:q * cw + kw * zoom] = k
    return out


def _resize01(m: np.ndarray, hw: Sequence[int]) -> np.ndarray:
    up = np.asarray(jax.image.resize(jnp.asarray(m, jnp.float32), tuple(hw), "bilinear"))
    top = float(up.max())
    return up / top if top > 0 else up


def explain(predictor: Any, inputs: Sequence[str | Path], out: str | Path, *, target: int | None = None,
            patch: int = 0, stride: int = 0, layer: str | None = None) -> dict:
    """Explains each of ``inputs`` (image files or folders) with ``predictor`` (a
    classification run's ``Predictor``); writes the files of the module docstring into ``out``
    and returns ``{'inputs': [...records], 'layer', 'filters', 'out'}``. ``patch`` / ``stride``
    default to 1/4 and 1/8 of the input side."""
    from PIL import Image
    from jaxvision import viz
    from jaxvision.tools.predict import _read, list_inputs
    config, run = predictor.config, predictor.run
    if "probabilities" not in jax.eval_shape(
            lambda: predictor.exp.predict(config, run.model, predictor.variables,
                                          {"image": jnp.zeros((1, *predictor.model_info.input_shape), jnp.uint8)})):
        raise ValueError("explain needs a classification run (predict returns 'probabilities').")
    files = list_inputs(inputs)
    if not files:
        raise ValueError("no input images given.")
    h, w, c = predictor.model_info.input_shape
    patch = int(patch or max(1, min(h, w) // 4))
    stride = int(stride or max(1, patch // 2))
    max_pixels = int(config.data.get("max_pixels", 50_000_000))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    def probs(images: np.ndarray) -> np.ndarray:
        return np.stack([o["probabilities"] for o in predictor([{"image": im} for im in images])])

    variables = predictor.variables
    records, name = [], layer
    for path in files:
        example = predictor.prepare({"image": _read(Path(path), c, max_pixels)})
        image = np.asarray(example["image"], np.uint8)
        p = probs(image[None])[0]
        num_classes = len(p)
        cls = int(np.argmax(p)) if target is None else int(target)
        if not 0 <= cls < num_classes:
            raise ValueError(f"--class {cls} is outside the model's {num_classes} classes.")
        x = predictor.exp.prepare(config, {"image": jnp.asarray(image[None])})
        name = name or last_feature_map(run.model, variables, x)   # the same for every input
        cam = grad_cam(run.model, variables, x, jnp.asarray([cls]), name)[0]
        occ = occlusion_map(probs, image, cls, patch, stride)
        occ_up = viz.resize_nearest(occ, (h, w))
        rgb = viz.image_for_display(image)
        heat = viz.colorize(_resize01(cam, (h, w)), 1.0, "jet")
        panel = np.concatenate([rgb, viz.colorize(occ_up - occ.min(), float(occ.max() - occ.min()), "viridis"), 0.5 * rgb + 0.5 * heat], 1)
        png = out / f"explain_{Path(path).stem}.png"
        Image.fromarray((np.clip(panel, 0, 1) * 255).round().astype(np.uint8)).resize(
            (panel.shape[1] * max(1, 192 // h), panel.shape[0] * max(1, 192 // h)), Image.NEAREST).save(png)
        records.append({"input": str(path), "target": cls,
                        "class": predictor.info.class_names[cls] if cls < len(predictor.info.class_names) else str(cls),
                        "probability": float(p[cls]), "occlusion": occ.round(6).tolist(),
                        "occlusion_min": float(occ.min()), "gradcam": cam.round(6).tolist(),
                        "layer": name, "png": str(png)})
    kpath, kernel = first_conv_kernel(variables["params"], c)
    Image.fromarray((filter_grid(kernel) * 255).round().astype(np.uint8)).save(out / "filters.png")
    result = {"inputs": records, "patch": patch, "stride": stride, "filters": str(out / "filters.png"),
              "filters_from": kpath, "out": str(out)}
    (out / "explain.json").write_text(json.dumps(result, indent=1))
    return result
