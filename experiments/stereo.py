"""Stereo depth: the classical matching pipeline (SAD / SSD / NCC cost volume, winner-takes-all),
MC-CNN, DispNet-C and GC-Net, trained on ground-truth disparity or self-supervised.

The model reads the pair as one (B, H, W, 6) array (``prepare``: left channels first, values in
[0, 1]) and returns the left view's disparity at the input resolution
(``jaxvision/models/stereo.py``). ``config.loss.kind``:

* ``'supervised'``: smooth L1 (``loss.beta`` px) on the pixels with ground truth, summed over
  the model's output scales with ``loss.scale_weights`` (coarse to fine; DispNet's 4 scales);
* ``'self_supervised'`` (Godard et al., 2017): no ground truth; both views are rebuilt from the
  other with the predicted disparities (the right view's from the mirrored pair: the network
  run on ``(mirror(right), mirror(left))``), ``alpha`` x (1 - SSIM) / 2 + (1 - alpha) x L1,
  plus ``smoothness_weight`` x edge-aware smoothness and ``left_right_weight`` x left-right
  consistency (``losses.stereo_self_supervised_loss``).

The ``stereo`` evaluator scores EPE, bad-0.5/1/2/3 and D1 (pooled over pixels; also on the
non-occluded pixels when the right view's ground truth exists). Named configs: ``CONFIGS``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxvision import losses
from jaxvision.config import base_config
from jaxvision.data.source import SourceInfo
from jaxvision.evaluators import eval_config
from jaxvision.experiment import apply_model, model_kwargs, plots
from jaxvision.models.stereo import STEREO_MODELS

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"  # the real data sets
_OWN_KEYS = ("name", "max_disparity", "inference", "report_pictures", "baseline", "focal")
LOSS_KINDS = ("supervised", "self_supervised")


def prepare(config: Any, batch: dict) -> jax.Array:
    """The pair as (B, H, W, 2C): left then right channels, uint8 -> [0, 1]."""
    if "image_right" not in batch:
        raise ValueError(f"stereo needs 'image_right' in the batch (data.keys = {tuple(config.data.get('keys', ()))}"
                         "); use a stereo source (procedural, middlebury, kitti2015).")
    left, right = batch["image"], batch["image_right"]
    if left.shape != right.shape:
        raise ValueError(f"the left and right images differ in shape ({left.shape} vs "
                         f"{right.shape}); a rectified pair has one size.")
    dtype = jnp.bfloat16 if config.train.get("mixed_precision", False) else jnp.float32
    pair = jnp.concatenate([left, right], -1)
    return pair.astype(dtype) / 255.0 if pair.dtype == jnp.uint8 else pair.astype(dtype)


def build_model(config: Any, info: SourceInfo, *, axis_name: str | None = None):
    """The stereo model ``model.name`` with candidates 0 .. ``model.max_disparity``."""
    del info, axis_name
    m = config.model
    if m.name not in STEREO_MODELS:
        raise ValueError(f"model.name={m.name!r} is not a stereo model; models: {', '.join(STEREO_MODELS)}.")
    if int(m.max_disparity) < 1:
        raise ValueError(f"model.max_disparity={m.max_disparity} must be >= 1 (pixels).")
    aggregate = int(m.get("aggregate", 0))
    if aggregate > 1 and aggregate % 2 == 0 or aggregate < 0:
        raise ValueError(f"model.aggregate={aggregate} must be 0 (off) or an odd window in pixels.")
    dtype = jnp.bfloat16 if config.train.mixed_precision else jnp.float32
    return STEREO_MODELS[m.name](max_disparity=int(m.max_disparity), dtype=dtype,
                                 **model_kwargs(m, _OWN_KEYS))


def _mirror(x: jax.Array) -> jax.Array:
    return x[:, :, ::-1]


def _check_target(batch: dict, out: dict) -> None:
    if "disparity" in batch and batch["disparity"].shape != out["disparity"].shape:
        raise ValueError(f"batch 'disparity' has shape {batch['disparity'].shape} but the model "
                         f"predicts {out['disparity'].shape}: the ground truth must have the "
                         "image's (B, H, W); resize both together (data.*_pp).")


def _losses(config: Any, model, variables: dict, batch: dict, key, train: bool):
    c = config.loss
    x = prepare(config, batch)
    out, state = apply_model(model, variables, x, train=train, key=key)
    valid = batch["valid"].astype(jnp.float32)
    mets: dict = {}
    if c.kind == "supervised":
        if "disparity" not in batch:
            raise ValueError("loss.kind='supervised' needs 'disparity' in data.keys; use "
                             "loss.kind='self_supervised' for pairs without ground truth.")
        _check_target(batch, out)
        scales = out["disparities"]
        weights = tuple(c.scale_weights)[-len(scales):] if c.scale_weights else (1.0,) * len(scales)
        total = 0.0
        for w, d in zip(weights, scales):
            term = losses.disparity_loss(d, batch["disparity"], beta=float(c.beta))
            # Every scale is scored on the same ground-truth pixels, so one count serves all.
            total = total + float(w) * jnp.sum(term.values * valid)
        pixels = jnp.maximum(jnp.sum(term.pixels * valid), 1.0)
        total = total / pixels
        final = losses.disparity_loss(out["disparity"], batch["disparity"], beta=0.0)
        mets["loss"] = (jnp.sum(final.values * valid), jnp.sum(final.pixels * valid))  # EPE
    elif c.kind == "self_supervised":
        left, right = jnp.split(x.astype(jnp.float32), 2, -1)
        flipped = jnp.concatenate([_mirror(right), _mirror(left)], -1).astype(x.dtype)
        out_r, state_r = apply_model(model, variables if not state else {**variables, **state},
                                     flipped, train=train, key=key)
        state = state_r if state else state
        terms = losses.stereo_self_supervised_loss(
            left, right, out["disparity"], _mirror(out_r["disparity"]), alpha=float(c.alpha),
            smoothness_weight=float(c.smoothness_weight), left_right_weight=float(c.left_right_weight))
        total = losses.masked_mean(terms.total, valid)
        n = jnp.sum(valid)
        mets["loss"] = (jnp.sum(terms.total * valid), n)
        mets["appearance"] = (jnp.sum(terms.appearance * valid), n)
        mets["smoothness"] = (jnp.sum(terms.smoothness * valid), n)
        mets["left_right"] = (jnp.sum(terms.left_right * valid), n)
    else:
        raise ValueError(f"loss.kind={c.kind!r}; kinds: {', '.join(LOSS_KINDS)}.")
    return total, mets, state, out


def loss(config: Any, model, variables: dict, batch: dict, key, *, train: bool):
    """The configured loss (module docstring); metric ``loss``: the EPE of the final map
    (supervised) or the self-supervised total, with its terms."""
    total, mets, state, _ = _losses(config, model, variables, batch, key, train)
    return total, mets, state


def evaluate(config: Any, model, variables: dict, batch: dict):
    """The loss metrics as exact sums (``self_supervised`` needs no ground truth)."""
    if config.loss.kind == "supervised" and ("disparity" not in batch
                                             or batch["disparity"].shape != batch["image"].shape[:3]):
        return {}  # scored at another resolution: the stereo evaluator resizes, the loss cannot
    return _losses(config, model, variables, batch, None, False)[1]


def init(config: Any, model, batch: dict, key) -> dict:
    k1, k2 = jax.random.split(key)
    return model.init({"params": k1, "dropout": k2}, prepare(config, batch), train=False)


def predict(config: Any, model, variables: dict, batch: dict):
    """``pred_disparity`` (B, H, W) float32, the left view's disparity in input pixels (MC-CNN
    with ``model.inference='wta'``: winner-takes-all on its learned cost)."""
    out, _ = apply_model(model, variables, prepare(config, batch), train=False)
    disp = out["wta"] if config.model.get("inference", "") == "wta" and "wta" in out else out["disparity"]
    return {"pred_disparity": disp.astype(jnp.float32)}


def _file_disparity(config: Any, outputs: dict) -> np.ndarray:
    """The predicted disparity at the file's size, in the file's pixels."""
    d = np.asarray(outputs["pred_disparity"], np.float32)
    h, w = (int(v) for v in outputs.get("image_size", d.shape))
    if d.shape != (h, w):
        d = np.asarray(jax.image.resize(d, (h, w), "bilinear")) * np.float32(w / d.shape[1])
    return np.maximum(d, 0.0)


def _depth(config: Any, disparity: np.ndarray) -> np.ndarray | None:
    b, f = float(config.model.get("baseline", 0.0)), float(config.model.get("focal", 0.0))
    if b <= 0 or f <= 0:
        return None
    from jaxvision.ops.stereo import disparity_to_depth
    return np.asarray(disparity_to_depth(jnp.asarray(disparity), b, f))


def describe(config: Any, outputs: dict, info: SourceInfo) -> dict:
    """``predict``'s record of one pair: disparity statistics in the file's pixels and the
    maps as arrays (saved as ``.npy``): ``disparity`` (H, W) at the file's size and, with
    ``model.baseline`` and ``model.focal`` (pixels) set (``--config.model.baseline=0.54
    --config.model.focal=721``), ``depth`` = baseline * focal / disparity (0 where d = 0)."""
    d = _file_disparity(config, outputs)
    record = {"disparity": {"min": round(float(d.min()), 4), "median": round(float(np.median(d)), 4),
                            "max": round(float(d.max()), 4)}, "arrays": {"disparity": d}}
    z = _depth(config, d)
    if z is not None:
        record["depth_median"] = round(float(np.median(z[z > 0])), 4) if (z > 0).any() else None
        record["arrays"]["depth"] = z
    return record


def draw(config: Any, example: dict, outputs: dict, info: SourceInfo) -> np.ndarray:
    """The left image beside its disparity map (viridis, 0 to the largest value) and, with a
    camera, the depth map (magma, near bright)."""
    from jaxvision import viz
    d = _file_disparity(config, outputs)
    row = viz.disparity_panel(example["image"], d)
    z = _depth(config, d)
    if z is not None:
        near = np.where(z > 0, 1.0 / np.maximum(z, 1e-6), 0.0)
        row = np.concatenate([row, viz.colorize(near, float(near.max(initial=1e-6)), "magma")], 1)
    return (row * 255).round().astype(np.uint8)


def report(config: Any, workdir: Path, results: dict, info: SourceInfo) -> None:
    """Saves ``disparities.png`` (per eval pair: left image, predicted and true disparity on
    one colour scale, absolute error; unless ``train.plots`` is off) and ``per_image.json`` (EPE
    and bad-2 per eval image)."""
    workdir = Path(workdir)
    if results.get("EPE_per_image") is not None:
        rows = [{"image": i, "EPE": float(e), "bad2": float(b)} for i, (e, b) in
                enumerate(zip(np.asarray(results["EPE_per_image"]), np.asarray(results["bad2_per_image"])))]
        (workdir / "per_image.json").write_text(json.dumps(rows, indent=2))
    count = int(config.model.get("report_pictures", 4))
    if count > 0 and plots(config):
        _pictures(config, workdir, count)


def _pictures(config: Any, workdir: Path, count: int) -> None:
    from PIL import Image
    from jaxvision import viz
    from jaxvision.data.pipeline import make_loader
    from jaxvision.inference import load_predictor
    predictor = load_predictor(workdir, None, config=config)
    batch_size = 1 if config.train.eval_batch_size == 1 else count
    rows, loader = [], make_loader(config.data, str(config.data.eval_split), global_batch=batch_size,
                                   mode="eval", seed=0)
    for batch in loader:
        n = int(np.sum(batch["valid"]))
        outs = predictor([{"image": batch["image"][i], "image_right": batch["image_right"][i]} for i in range(n)])
        for i, out in enumerate(outs):
            rows.append(viz.disparity_panel(batch["image"][i], out["pred_disparity"],
                                            batch["disparity"][i] if "disparity" in batch else None))
        if len(rows) >= count:
            break
    width = max(r.shape[1] for r in rows[:count])
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=1.0) for r in rows[:count]]
    Image.fromarray((np.concatenate(rows, 0) * 255).round().astype(np.uint8)).save(workdir / "disparities.png")


# ----------------------------------------------------------------------------- configs


def _base(name: str, max_disparity: int = 12, **fields: Any) -> ml_collections.ConfigDict:
    """Procedural stereo scenes at 64 px with disparities up to 12 px, the stereo flip (it
    swaps and mirrors the views), supervised smooth L1, the ``stereo`` evaluator."""
    config = base_config()
    config.data.keys = ("image", "image_right", "disparity", "disparity_right")
    config.data.procedural.num_eval = 200
    config.data.procedural.max_disparity = float(max_disparity)
    config.data.train_pp = "flip_lr"
    config.data.input_shape = (64, 64, 3)
    config.model = ml_collections.ConfigDict(dict(name=name, max_disparity=max_disparity,
                                                  report_pictures=4, baseline=0.0, focal=0.0,
                                                  **fields))
    config.loss = ml_collections.ConfigDict(dict(
        kind="supervised", beta=1.0, scale_weights=(),
        alpha=0.85, smoothness_weight=0.1, left_right_weight=1.0))
    config.optim.update(dict(name="adam", lr=1e-3, schedule="cosine", warmup_steps=100))
    config.train.update(dict(batch_size=16, eval_batch_size=50, steps=2000, eval_every=500,
                             checkpoint_every=500, log_every=100, best_metric="EPE",
                             best_mode="min"))
    config.evals = ml_collections.ConfigDict({"stereo": eval_config("stereo")})
    return config


def ncc_baseline() -> ml_collections.ConfigDict:
    """No training: NCC over 9x9 windows, winner-takes-all with sub-pixel refinement, scored on
    the procedural eval scenes. It has no parameter: ``train`` runs one (empty) step, then
    evaluates."""
    config = _base("classical", cost="ncc", window=9)
    config.train.steps = config.train.eval_every = config.train.checkpoint_every = 1
    config.train.log_every = 1
    return config


def mccnn_synthetic() -> ml_collections.ConfigDict:
    """MC-CNN fast with 32 channels (the paper's 64 ran at 4.4 images/s here), 4 x 3x3
    convolutions, trained through the soft-argmin of its similarity; evaluated by
    winner-takes-all on its learned cost."""
    return _base("mccnn", width=32, depth=4, temperature=0.05, aggregate=0, inference="wta")


def dispnet_synthetic() -> ml_collections.ConfigDict:
    """DispNet-C (reduced widths 32-192), four output scales weighted 0.2 / 0.2 / 0.6 / 1."""
    config = _base("dispnet_c", widths=(32, 64, 128, 192))
    config.loss.scale_weights = (0.2, 0.2, 0.6, 1.0)
    return config


def gcnet_synthetic() -> ml_collections.ConfigDict:
    """GC-Net reduced for this CPU: 8-channel unary features and the cost volume at 1/4
    resolution (4 disparity levels), a 3-D encoder-decoder of 8-16 channels, soft-argmin over
    16 disparities (at 1/2 resolution and 16 channels a step took 18 s at batch 16 here)."""
    return _base("gcnet", width=8, unary_blocks=1, scale=4)


def default() -> ml_collections.ConfigDict:
    """DispNet-C on the procedural stereo scenes (benchmarks/NOTES.md, "Stereo")."""
    return dispnet_synthetic()


def middlebury_eval(config: ml_collections.ConfigDict, scale: float) -> ml_collections.ConfigDict:
    """Scores on the four Middlebury pairs of ../shared/data (``data.path``), one pair per
    batch, every pixel with ground truth, at full resolution: the model sees the pair resized
    by ``scale`` and the evaluator resizes its map back (values / ``scale``)."""
    config.data.name, config.data.path = "middlebury", str(SHARED / "stereo_middlebury")
    config.data.train_split = config.data.eval_split = "all"
    config.data.eval_pp = f"resize_inputs({scale})" if scale != 1 else ""
    config.train.eval_batch_size = 1
    return config


def ncc_middlebury() -> ml_collections.ConfigDict:
    """No training: the NCC baseline on the four Middlebury pairs at full resolution (13x13
    windows, disparities 0-64 for every pair)."""
    config = middlebury_eval(ncc_baseline(), 1.0)
    config.model.max_disparity, config.model.window = 64, 13
    config.train.batch_size = 1  # the one empty step reads a pair: they differ in size
    return config


def _selfsup_middlebury(config: ml_collections.ConfigDict, steps: int) -> ml_collections.ConfigDict:
    """``config``'s model trained self-supervised on the Middlebury pairs halved, in random
    128 x 128 crops, disparities 0-32 (~28 px at most at half size), scored at full size."""
    config = middlebury_eval(config, 0.5)
    config.model.max_disparity = 32
    config.data.train_pp = "resize_inputs(0.5)|random_crop(128)"
    config.data.input_shape = (128, 128, 3)
    config.loss.kind = "self_supervised"
    config.optim.lr, config.optim.warmup_steps = 1e-4, 0
    config.train.batch_size, config.train.steps = 4, steps
    config.train.eval_every = config.train.checkpoint_every = 250
    return config


def selfsup_middlebury() -> ml_collections.ConfigDict:
    """DispNet-C fine-tuned self-supervised on the four Middlebury pairs (no ground truth in
    training; scored against it on the same pairs: a transductive setting). The pairs are
    halved (disparities up to ~28 px) and cut into random 128 x 128 crops; start it from a
    procedural run of the same model and range with ``--config.transfer.workdir=...``
    (``dispnet_synthetic`` with ``--config.model.max_disparity=32``)."""
    return _selfsup_middlebury(dispnet_synthetic(), steps=1000)


def mccnn_selfsup_middlebury() -> ml_collections.ConfigDict:
    """MC-CNN fine-tuned self-supervised on the four Middlebury pairs (transductive, as
    ``selfsup_middlebury``): the pairs halved (disparities up to ~28 px), random 128 x 128
    crops, scored by winner-takes-all on its cost averaged over 5 x 5 windows. Start it from
    ``mccnn_synthetic`` with ``--config.transfer.workdir=...`` (its parameters do not depend
    on the disparity range)."""
    config = _selfsup_middlebury(mccnn_synthetic(), steps=500)
    config.model.aggregate = 5
    return config


def kitti2015() -> ml_collections.ConfigDict:
    """DispNet-C on KITTI 2015 for users with the data (``data.path``: the ``data_scene_flow``
    folder; not on this machine): trained on the first 160 training pairs halved, in random
    160 x 320 crops, scored on the other 40 at full resolution (``_noc`` on ``disp_noc_0``).
    Start it from a procedural run with ``--config.transfer.workdir=...``."""
    config = dispnet_synthetic()
    config.data.name, config.data.path = "kitti2015", None
    config.data.keys = ("image", "image_right", "disparity", "disparity_noc")
    config.data.train_split, config.data.eval_split = "train", "val"
    config.data.train_pp = "rescale(0.5)|random_crop((160, 320))"
    config.data.eval_pp = "resize_inputs(0.5)"
    config.data.input_shape = (160, 320, 3)
    config.model.max_disparity = 128
    config.train.batch_size, config.train.eval_batch_size = 8, 1
    config.train.steps, config.train.eval_every = 20000, 2000
    config.train.checkpoint_every = 2000
    return config


CONFIGS = {
    "default": default,
    "ncc_baseline": ncc_baseline,
    "mccnn_synthetic": mccnn_synthetic,
    "dispnet_synthetic": dispnet_synthetic,
    "gcnet_synthetic": gcnet_synthetic,
    "ncc_middlebury": ncc_middlebury,
    "selfsup_middlebury": selfsup_middlebury,
    "mccnn_selfsup_middlebury": mccnn_selfsup_middlebury,
    "kitti2015": kitti2015,
}
