"""Host-side, task-aware transforms: every spatial target moves with the image.

A transform is a callable ``(example, rng) -> example`` (``Transform``). It returns a new dict and
never writes into the input's arrays, and it draws all its randomness from ``rng``: the loader
passes ``np.random.default_rng([seed, epoch, index])``, so augmentations are reproducible.

Spatial transforms (``resize``, ``random_crop``, ``center_crop``, ``random_resized_crop``,
``flip_lr``) move every key of ``SPATIAL_KEYS`` plus ``boxes``:

* images are resampled bilinearly, ``mask`` / ``instance_mask`` / disparity with nearest neighbour;
* disparity values are multiplied by the horizontal scale factor; invalid pixels (negative) stay
  exactly ``INVALID_DISPARITY``; padding is ``0`` for images and ``instance_mask``,
  ``IGNORE_LABEL`` for ``mask`` and ``INVALID_DISPARITY`` for disparity;
* boxes that a crop leaves smaller than 1 px are dropped together with their per-box keys
  (``BOX_KEYS``, ``box_valid``), and ``instance_mask`` is renumbered so that id ``k`` still
  means ``boxes[k-1]``; ``box_area`` scales with its box (see ``jaxvision/data/example.py``).

Photometric transforms (``color_jitter``, ``normalize``) touch both stereo views identically;
``cutout`` touches the left image only. ``normalize`` turns images into float32, which
``validate_example`` rejects by design: it must be the LAST host transform, if used at all.

Pipelines are written as strings (``data.train_pp`` / ``data.eval_pp``) and built by
``jaxvision.data.pp.parse_pp`` from the transforms ``register`` names here.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
from PIL import Image

from jaxvision.data.example import (BOX_KEYS, IGNORE_LABEL, IMAGE_KEYS, INVALID_DISPARITY,
                                    Example, disparity_valid)
from jaxvision.ops import boxes as box_ops


Transform = Callable[[Example, np.random.Generator], Example]
TRANSFORMS: dict[str, Callable[..., Transform]] = {}

_FILL = {"image": 0, "image_right": 0, "mask": IGNORE_LABEL, "instance_mask": 0,
         "disparity": INVALID_DISPARITY, "disparity_right": INVALID_DISPARITY,
         "disparity_noc": INVALID_DISPARITY}
_DISPARITY_KEYS = ("disparity", "disparity_right", "disparity_noc")
_BOX_ALIGNED = BOX_KEYS + ("box_valid",)  # per-box keys kept aligned with ``boxes`` rows
_LEFT_ONLY = ("mask", "instance_mask", "boxes", "disparity_noc") + _BOX_ALIGNED
MIN_BOX_SIDE = 1.0  # pixels: a box with a shorter side after clipping is dropped (the box policy)


def register(name: str) -> Callable[[type], type]:
    """Class decorator: makes the transform available to ``pp.parse_pp`` under ``name``."""
    def wrap(cls: type) -> type:
        cls.name = name
        TRANSFORMS[name] = cls
        return cls
    return wrap


class _Spec:
    """Base of the dataclass transforms: a ``size`` field becomes ``(h, w)``, and ``spec()`` gives
    the step string that ``parse_pp`` parses back."""

    name: ClassVar[str]

    def __post_init__(self):
        if hasattr(self, "size"):
            object.__setattr__(self, "size", _pair(self.size, self.name))

    def spec(self) -> str:
        args = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self))
        return f"{self.name}({args})"


def _pair(size: int | Sequence[int], what: str) -> tuple[int, int]:
    """Returns ``size`` as positive ``(h, w)`` ints; an int means a square."""
    hw = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
    if len(hw) != 2 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in hw):
        raise ValueError(f"{what}: size must be a positive int or a pair (height, width) of "
                         f"positive ints; got {size!r}.")
    return int(hw[0]), int(hw[1])


def _hw(example: Example) -> tuple[int, int]:
    h, w = np.shape(example["image"])[:2]
    return int(h), int(w)


# ----------------------------------------------------------------------------- geometric cores


def keep_boxes(example: Example, keep: np.ndarray) -> Example:
    """Returns ``example`` with only the boxes where ``keep`` (N,) is True.

    The per-box keys (``BOX_KEYS``, ``box_valid``) follow ``boxes``; ``instance_mask`` is renumbered so that id
    ``k`` still refers to ``boxes[k-1]`` (pixels of a dropped box, or of ids > N, become 0).
    """
    keep = np.asarray(keep, bool)
    if "boxes" not in example or keep.all():
        return example
    out = dict(example)
    out["boxes"] = example["boxes"][keep]
    for key in _BOX_ALIGNED:
        if key in example:
            out[key] = example[key][keep]
    if "instance_mask" in example:
        n = keep.shape[0]
        lut = np.zeros(n + 1, np.int32)
        lut[1:][keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
        inst = example["instance_mask"]
        out["instance_mask"] = np.where((inst >= 0) & (inst <= n), lut[np.clip(inst, 0, n)], 0
                                        ).astype(np.int32)
    return out


def crop(example: Example, top: int, left: int, height: int, width: int) -> Example:
    """Returns the window ``[top, top+height) x [left, left+width)`` of every spatial target.

    The window may reach outside the image (negative ``top`` / ``left`` or past the border); the
    outside is padded (see the module docstring for fill values). Boxes are translated, clipped
    to the window and dropped when a side gets below 1 px. Disparity values are unchanged: both
    stereo views are cut by the same window.
    """
    h_in, w_in = _hw(example)
    out = dict(example)
    inside = top >= 0 and left >= 0 and top + height <= h_in and left + width <= w_in
    for key, fill in _FILL.items():
        if key not in example:
            continue
        arr = example[key]
        if inside:
            out[key] = arr[top:top + height, left:left + width]
            continue
        res = np.full((height, width) + arr.shape[2:], fill, arr.dtype)
        sy0, sy1 = max(top, 0), min(top + height, h_in)
        sx0, sx1 = max(left, 0), min(left + width, w_in)
        if sy1 > sy0 and sx1 > sx0:
            res[sy0 - top:sy1 - top, sx0 - left:sx1 - left] = arr[sy0:sy1, sx0:sx1]
        out[key] = res
    if "boxes" in example:
        b = box_ops.clip(box_ops.translate(example["boxes"], -top, -left), height, width)
        out = _set_boxes(out, b)
    return out


def _set_boxes(example: Example, boxes: np.ndarray) -> Example:
    """Replaces ``boxes`` by ``boxes`` (clipped or cropped versions of the same boxes): scales
    ``box_area`` by the kept fraction of each box and drops boxes with a side below
    ``MIN_BOX_SIDE``."""
    out = dict(example)
    if "box_area" in example:
        before = box_ops.area(example["boxes"])
        kept = np.where(before > 0, box_ops.area(boxes) / np.where(before > 0, before, 1), 1)
        out["box_area"] = (example["box_area"] * kept).astype(np.float32)
    out["boxes"] = np.asarray(boxes, np.float32)
    return keep_boxes(out, box_ops.valid(boxes, MIN_BOX_SIDE))


def clip_boxes(example: Example) -> tuple[Example, int]:
    """The box policy at the source (``jaxvision/data/example.py``): returns ``(example with its
    boxes clipped to the image and those left below MIN_BOX_SIDE dropped, number dropped)``."""
    if "boxes" not in example or len(example["boxes"]) == 0:
        return example, 0
    h, w = _hw(example)
    b = np.asarray(example["boxes"], np.float32)
    clipped = box_ops.clip(b, h, w)
    if np.array_equal(clipped, b) and box_ops.valid(b, MIN_BOX_SIDE).all():
        return example, 0
    out = _set_boxes(example, clipped)
    return out, len(b) - len(out["boxes"])


def _resize_image(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear resize of an (H, W, C) uint8 or float image; PIL antialiases when shrinking."""
    if img.shape[:2] == (h, w):
        return img
    if img.dtype == np.uint8 and img.shape[2] in (1, 3):
        pil = Image.fromarray(img[..., 0] if img.shape[2] == 1 else img)
        res = np.asarray(pil.resize((w, h), Image.BILINEAR))
        return res.reshape(h, w, img.shape[2])
    chans = [np.asarray(Image.fromarray(img[..., c].astype(np.float32), mode="F")
                        .resize((w, h), Image.BILINEAR)) for c in range(img.shape[2])]
    res = np.stack(chans, axis=-1)
    if img.dtype == np.uint8:
        res = np.clip(np.rint(res), 0, 255)
    return res.astype(img.dtype)


def _nearest_index(n_out: int, n_in: int) -> np.ndarray:
    # Source index of the output pixel centre, in exact integer arithmetic, so an integer upscale
    # by k replicates each pixel exactly k times.
    return np.minimum(((2 * np.arange(n_out) + 1) * n_in) // (2 * n_out), n_in - 1)


def resize(example: Example, height: int, width: int) -> Example:
    """Returns ``example`` with every spatial target resized to ``(height, width)``.

    Images: bilinear. Masks: nearest. Disparity: nearest, valid values multiplied by
    ``width / W`` (invalid ones stay ``INVALID_DISPARITY``). Boxes: scaled, never dropped.
    """
    (h_in, w_in), out = _hw(example), dict(example)
    if (h_in, w_in) == (height, width):
        return out
    rows, cols = _nearest_index(height, h_in), _nearest_index(width, w_in)
    for key in IMAGE_KEYS:
        if key in example:
            out[key] = _resize_image(example[key], height, width)
    for key in ("mask", "instance_mask") + _DISPARITY_KEYS:
        if key in example:
            out[key] = v = example[key][rows[:, None], cols[None, :]]
            if key in _DISPARITY_KEYS:
                out[key] = np.where(disparity_valid(v), v * np.float32(width / w_in),
                                    np.float32(INVALID_DISPARITY)).astype(np.float32)
    if "boxes" in example:
        out["boxes"] = box_ops.scale(example["boxes"], height / h_in, width / w_in).astype(np.float32)
    if "box_area" in example:
        out["box_area"] = (example["box_area"] * np.float32(height * width / (h_in * w_in))
                           ).astype(np.float32)
    return out


def check_flippable(example: Example) -> None:
    """Raises ``ValueError`` if ``example`` has no valid horizontal flip (see ``flip``)."""
    if "image_right" not in example:
        return
    left_only = [k for k in _LEFT_ONLY if k in example]
    if left_only:
        raise ValueError(
            f"flip_lr: this stereo example (it has 'image_right') also holds left-view-only "
            f"targets {left_only}. The only valid flip of a rectified pair swaps and mirrors the "
            "views, and these targets have no right-view counterpart to swap in. Fix: drop "
            "flip_lr from the pipeline (data.train_pp) or drop these keys at the source.")
    for have, missing in (("disparity", "disparity_right"), ("disparity_right", "disparity")):
        if have in example and missing not in example:
            raise ValueError(
                f"flip_lr refused: this stereo example has '{have}' but no '{missing}'. The only "
                "valid flip of a rectified pair swaps AND mirrors the views (new left = mirrored "
                f"right), so the new view's disparity would be the mirrored '{missing}', which is "
                "unknown. Fix: drop flip_lr from the pipeline (data.train_pp) or use a source "
                f"that provides '{missing}'.")


def flip(example: Example) -> Example:
    """Returns the horizontally flipped example (``x -> W - x``).

    Mono: every spatial target is mirrored in place (a disparity map without ``image_right`` is a
    monocular depth target, which mirroring keeps valid). Stereo: mirrored views are swapped,
    ``image <- mirror(image_right)``, ``disparity <- mirror(disparity_right)`` and vice versa, which
    keeps ``left[y, x] == right[y, x - disparity[y, x]]``. Raises as ``check_flippable``.
    """
    check_flippable(example)
    mirror = lambda a: np.ascontiguousarray(a[:, ::-1])  # noqa: E731
    out = dict(example)
    if "image_right" in example:
        out["image"], out["image_right"] = mirror(example["image_right"]), mirror(example["image"])
        if "disparity" in example:
            out["disparity"] = mirror(example["disparity_right"])
            out["disparity_right"] = mirror(example["disparity"])
        return out
    for key in _FILL:
        if key in example:
            out[key] = mirror(example[key])
    if "boxes" in example:
        out["boxes"] = box_ops.flip_lr(example["boxes"], _hw(example)[1]).astype(np.float32)
    return out


# ----------------------------------------------------------------------------- spatial transforms


@register("resize")
@dataclasses.dataclass(frozen=True)
class Resize(_Spec):
    """Resizes to ``size`` (int = square, or (height, width)); see ``resize``."""

    size: int | tuple[int, int]

    def __call__(self, example: Example, rng: np.random.Generator) -> Example:
        return resize(example, *self.size)


@register("resize_short")
@dataclasses.dataclass(frozen=True)
class ResizeShort(_Spec):
    """Resizes so that the shorter side is ``side`` pixels, keeping the aspect ratio: the longer
    side becomes ``int(side * long / short)``, as torchvision's ``Resize(int)``. See ``resize``."""

    side: int

    def __post_init__(self):
        if not isinstance(self.side, (int, np.integer)) or self.side < 1:
            raise ValueError(f"resize_short: side must be a positive int; got {self.side!r}.")

    def __call__(self, example: Example, rng: np.random.Generator) -> Example:
        h, w = _hw(example)
        s = int(self.side)
        size = (s, max(1, int(s * w / h))) if h <= w else (max(1, int(s * h / w)), s)
        return resize(example, *size)


@register("random_crop")
@dataclasses.dataclass(frozen=True)
class RandomCrop(_Spec):
    """Pads every side by ``pad`` pixels, then cuts a uniformly random ``size`` window."""

    size: int | tuple[int, int]
    pad: int = 0

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.pad, (int, np.integer)) or self.pad < 0:
            raise ValueError(f"random_crop: pad must be an int >= 0; got {self.pad!r}.")

    def __call__(self, example: Example, rng: np.random.Generator) -> Example:
        (h, w), (hi, wi), p = self.size, _hw(example), int(self.pad)
        if hi + 2 * p < h or wi + 2 * p < w:
            raise ValueError(f"random_crop: crop {h}x{w} is larger than the image {hi}x{wi} padded "
                             f"by {p}; resize first or raise pad (e.g. random_crop({h}, pad="
                             f"{max(h - hi, w - wi, 0) // 2 + 1})).")
        top = int(rng.integers(0, hi + 2 * p - h + 1)) - p
        left = int(rng.integers(0, wi + 2 * p - w + 1)) - p
        return crop(example, top, left, h, w)


@register("random_scale")
@dataclasses.dataclass(frozen=True)
class RandomScale(_Spec):
    """Scale jitter for detection: resizes by a factor drawn uniformly from ``scale``, then cuts
    a uniformly random ``size`` window, padding where the scaled image is smaller (zooming out
    leaves a border of fill values). Boxes follow; those cut below 1 px are dropped."""

    size: int | tuple[int, int]
    scale: tuple[float, float] = (0.75, 1.25)

    def __post_init__(self):
        super().__post_init__()
        v = tuple(float(x) for x in self.scale)
        if len(v) != 2 or not 0 < v[0] <= v[1]:
            raise ValueError(f"random_scale: scale must be (min, max) with 0 < min <= max; got "
                             f"{self.scale!r}.")
        object.__setattr__(self, "scale", v)

    def __call__(self, example: Example, rng: np.random.Generator) -> Example:
        (h, w), (hi, wi) = self.size, _hw(example)
        f = rng.uniform(*self.scale)
        sh, sw = max(1, int(round(hi * f))), max(1, int(round(wi * f)))
        example = resize(example, sh, sw)
        top = int(rng.integers(min(0, sh - h), max(0, sh - h) + 1))
        left = int(rng.integers(min(0, sw - w), max(0, sw - w) + 1))
        return crop(example, top, left, h, w)


@register("rescale")
@dataclasses.dataclass(frozen=True)
class Rescale(_Spec):
    """Resizes by ``factor`` (each side rounded, at least 1 px), every target with it (a
    disparity's values scale too); see ``resize``."""

    factor: float

    def __post_init__(self):
        if not float(self.factor) > 0:
            raise ValueError(f"{self.name}: factor must be > 0; got {self.factor!r}.")

    def size_of(self, example: Example) -> tuple[int, int]:
        h, w = _hw(example)
        f = float(self.factor)
        return max(1, round(h * f)), max(1, round(w * f))

    def __call__(self, example: Example, rng: np.random.Generator) -> Example:
        return resize(example, *self.size_of(example))


@register("resize_inputs")
@dataclasses.dataclass(frozen=True)
class ResizeInputs(Rescale):
    """Resizes the images (``image``, ``image_right``) by ``factor`` and leaves every target at
    the file's resolution, for scoring there: evaluators that read a dense target of another
    size than the prediction (``stereo``, ``segmentation``) resize the prediction back. Use it
    in ``data.eval_pp`` with one example per eval batch when sizes differ (Middlebury)."""

    def __call__(self, example: Example, rng: np.random.Generator) -> Example:
        size = self.size_of(example)
        return {**example, **{k: _resize_image(example[k], *size) for k in IMAGE_KEYS if k in example}}


@register("full_res_mask")
@dataclasses.dataclass(frozen=True)
class FullResMask(_Spec):
    """Keeps the label at the file's resolution for scoring: adds ``mask_full`` (canvas_h,
    canvas_w) int32, the ``mask`` as read in the top-left corner of a ``canvas`` of
    ``IGNORE_LABEL`` (so examples of any size batch together), and ``mask_size`` (2,) int32, the
    mask's (H, W). Later transforms leave both alone (they move only ``SPATIAL_KEYS``), so put it
    first in ``data.eval_pp``: ``'full_res_mask(512)|resize(128)'``. The ``segmentation``
    evaluator with ``mask='mask_full'`` then resizes each prediction to its ``mask_size`` and
    scores at the label's own resolution. Without a ``mask`` (``predict`` on a user's image) it
    does nothing; a mask larger than the canvas is an error giving the size to set."""

    size: int | tuple[int, int]

    def __call__(self, example: Example, rng: np.random.Generator) -> Example:
        if "mask" not in example:
            return example
        mask = np.asarray(example["mask"])
        (ch, cw), (h, w) = self.size, mask.shape
        if h > ch or w > cw:
            raise ValueError(f"full_res_mask: a {h}x{w} mask does not fit the {ch}x{cw} canvas; "
                             f"raise it in data.eval_pp, e.g. 'full_res_mask({max(h, w)})'.")
        full = np.full((ch, cw), IGNORE_LABEL, np.int32)
        full[:h, :w] = mask
        return {**example, "mask_full": full, "mask_size": np.array([h, w], np.int32)}


@register("center_crop")
@dataclasses.dataclass(frozen=True)
class CenterCrop(_Spec):
    """Cuts the central ``size`` window (padding symmetrically if the image is smaller)."""

    size: int | tuple[int, int]

    def __call__(self, example: Example, rng: np.random.Generator) -> Example:
        (h, w), (hi, wi) = self.size, _hw(example)
        return crop(example, (hi - h) // 2, (wi - w) // 2, h, w)


@register("random_resized_crop")
@dataclasses.dataclass(frozen=True)
class RandomResizedCrop(_Spec):
    """Cuts a random window of ``scale`` x the image area and aspect ratio (w/h) in ``ratio``
    (log-uniform), then resizes it to ``size`` (Inception-style; 10 tries, then a centre crop)."""

    size: int | tuple[int, int]
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)

    def __post_init__(self):
        super().__post_init__()
        for arg, lo in (("scale", 0.0), ("ratio", 1e-9)):
            v = tuple(float(x) for x in getattr(self, arg))
            if len(v) != 2 or not lo < v[0] <= v[1]:
                raise ValueError(f"random_resized_crop: {arg} must be (min, max) with "
                                 f"{lo} < min <= max; got {getattr(self, arg)!r}.")
            object.__setattr__(self, arg, v)

    def window(self, height: int, width: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """Returns the crop window ``(top, left, h, w)`` for an image of ``height x width``."""
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = height * width * rng.uniform(*self.scale)
            r = math.exp(rng.uniform(*log_ratio))
            w, h = int(round(math.sqrt(target * r))), int(round(math.sqrt(target / r)))
            if 0 < w <= width and 0 < h <= height:
                return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
        aspect = width / height
        h, w = height, width
        if aspect < self.ratio[0]:
            h = max(1, int(round(width / self.ratio[0])))
        elif aspect > self.ratio[1]:
            w = max(1, int(round(height * self.ratio[1])))
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, example: Example, rng: np.random.Generator) -> Example:
        top, left, h, w = self.window(*_hw(example), rng)
        return resize(crop(example, top, left, h, w), *self.size)


@register("flip_lr")
@dataclasses.dataclass(frozen=True)
class FlipLR(_Spec):
    """Flips horizontally with probability ``p`` (see ``flip``; stereo pairs swap views)."""

    p: float = 0.5

    def __post_init__(self):
        if not 0.0 <= float(self.p) <= 1.0:
            raise ValueError(f"flip_lr: p must be in [0, 1]; got {self.p!r}.")

    def __call__(self, example: Example, rng: np.random.Generator) -> Example:
        check_flippable(example)  # before the draw, so a bad pipeline fails on every example
        return flip(example) if rng.random() < self.p else dict(example)


# ----------------------------------------------------------------------------- photometric


def _gray(x: np.ndarray) -> np.ndarray:
    """ITU-R 601-2 luma of a float (..., 3) image, shape (...)."""
    return x[..., 0] * 0.299 + x[..., 1] * 0.587 + x[..., 2] * 0.114


def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """Converts float RGB in [0, 1], (..., 3), to HSV in [0, 1] (hue in turns), (..., 3)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v, delta = rgb.max(-1), rgb.max(-1) - rgb.min(-1)
    s = np.where(v > 0, delta / np.where(v > 0, v, 1), 0)
    d = np.where(delta > 0, delta, 1)
    rc, gc, bc = (v - r) / d, (v - g) / d, (v - b) / d
    h = np.where(r == v, bc - gc, np.where(g == v, 2.0 + rc - bc, 4.0 + gc - rc))
    h = np.where(delta > 0, (h / 6.0) % 1.0, 0.0)
    return np.stack([h, s, v], axis=-1)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """Inverse of ``rgb_to_hsv``: HSV in [0, 1], (..., 3), to RGB in [0, 1], (..., 3)."""
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    i = np.floor(h * 6.0)
    f = h * 6.0 - i
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    i = i.astype(np.int32) % 6
    sel = [i == k for k in range(6)]
    return np.stack([np.select(sel, [v, q, p, p, t, v]), np.select(sel, [t, v, v, q, p, p]),
                     np.select(sel, [p, p, t, v, v, q])], axis=-1)


@register("color_jitter")
@dataclasses.dataclass(frozen=True)
class ColorJitter(_Spec):
    """Random brightness, contrast, saturation (factors in ``[max(0, 1-a), 1+a]``) and hue shift
    (in ``[-hue, hue]`` turns, ``hue <= 0.5``), applied in a random order; uint8 in, uint8 out.

    Both stereo views get the same factors, the same order and the same contrast reference (the
    left image's mean luma), so the change is one per-pixel function and photo-consistency holds.
    """

    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, (int, float)) or v < 0:
                raise ValueError(f"color_jitter: {f.name} must be a number >= 0; got {v!r}.")
        if self.hue > 0.5:
            raise ValueError(f"color_jitter: hue must be in [0, 0.5] turns; got {self.hue!r}.")

    def __call__(self, example: Example, rng: np.random.Generator) -> Example:
        # Every draw happens whatever the settings, so rng consumption does not depend on them.
        order = rng.permutation(4)
        factors = [rng.uniform(max(0.0, 1 - a), 1 + a)
                   for a in (self.brightness, self.contrast, self.saturation)]
        shift = rng.uniform(-self.hue, self.hue)
        image = example["image"]
        if image.dtype != np.uint8:
            raise ValueError(f"color_jitter expects uint8 images, got {image.dtype}; put it before "
                             "normalize in the pipeline.")
        rgb = image.shape[-1] == 3
        ref = float((_gray(image.astype(np.float32)) if rgb else image.astype(np.float32)).mean())
        out = dict(example)
        for key in IMAGE_KEYS:
            if key not in example:
                continue
            x = example[key].astype(np.float32)
            for op in order:
                if op == 0 and self.brightness:
                    x = np.clip(x * factors[0], 0, 255)
                elif op == 1 and self.contrast:
                    x = np.clip(ref + factors[1] * (x - ref), 0, 255)
                elif op == 2 and self.saturation and rgb:
                    g = _gray(x)[..., None]
                    x = np.clip(g + factors[2] * (x - g), 0, 255)
                elif op == 3 and self.hue and rgb:
                    hsv = rgb_to_hsv(x / 255.0)
                    hsv[..., 0] = (hsv[..., 0] + shift) % 1.0
                    x = np.clip(hsv_to_rgb(hsv) * 255.0, 0, 255)
            out[key] = np.rint(x).astype(np.uint8)
        return out


@register("cutout")
@dataclasses.dataclass(frozen=True)
class Cutout(_Spec):
    """Fills one ``size`` square (or (h, w) rectangle), centred at a uniformly random pixel and
    clipped to the image, with ``fill`` (a number or one value per channel). Left image only."""

    size: int | tuple[int, int]
    fill: float | tuple[float, ...] = 0

    def __call__(self, example: Example, rng: np.random.Generator) -> Example:
        (h, w), (sh, sw) = _hw(example), self.size
        cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
        y0, x0 = max(cy - sh // 2, 0), max(cx - sw // 2, 0)
        y1, x1 = min(cy - sh // 2 + sh, h), min(cx - sw // 2 + sw, w)
        image = example["image"].copy()
        image[y0:y1, x0:x1] = np.asarray(self.fill, np.float64).astype(image.dtype)
        return {**example, "image": image}


@register("normalize")
@dataclasses.dataclass(frozen=True)
class Normalize(_Spec):
    """Maps each image (both stereo views) to float32 ``(x - mean) / std`` per channel, with
    ``mean`` / ``std`` on the 0-255 scale (a number or one per channel). Use it last: its float
    images no longer pass ``validate_example``. ``normalize`` with no arguments in ``parse_pp``
    takes the dataset statistics from ``stats`` (see ``compute_mean_std``)."""

    mean: float | tuple[float, ...]
    std: float | tuple[float, ...]

    def __post_init__(self):
        for arg in ("mean", "std"):
            v = np.asarray(getattr(self, arg), np.float64)
            if v.ndim > 1 or not np.all(np.isfinite(v)) or (arg == "std" and np.any(v <= 0)):
                raise ValueError(f"normalize: {arg} must be a finite number or a 1-D sequence (one "
                                 f"per channel){', all > 0' if arg == 'std' else ''}; got {v!r}.")
            object.__setattr__(self, arg, tuple(float(x) for x in v.reshape(-1)))

    def __call__(self, example: Example, rng: np.random.Generator) -> Example:
        mean, std = np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32)
        out = dict(example)
        for key in IMAGE_KEYS:
            if key not in example:
                continue
            c = example[key].shape[-1]
            if mean.size not in (1, c) or std.size not in (1, c):
                raise ValueError(f"normalize: '{key}' has {c} channels but mean has {mean.size} and "
                                 f"std {std.size} values; give 1 or {c} values each.")
            out[key] = ((example[key].astype(np.float32) - mean) / std).astype(np.float32)
        return out


def compute_mean_std(source: Any, max_examples: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """Returns per-channel ``(mean (C,), std (C,))`` float64 of ``image`` on the 0-255 scale.

    Pixels of the first ``min(len(source), max_examples)`` examples count equally (population
    std, ``ddof=0``); per-example moments are merged with Chan et al.'s update, which is stable
    in one pass over the source.
    """
    n = min(len(source), int(max_examples))
    if n <= 0:
        raise ValueError(f"compute_mean_std: no examples to read (len(source)={len(source)}, "
                         f"max_examples={max_examples}).")
    count, mean, m2 = 0, None, None
    for i in range(n):
        image = np.asarray(source[i]["image"], np.float64)
        x = image.reshape(-1, image.shape[-1])
        if mean is not None and x.shape[1] != mean.shape[0]:
            raise ValueError(f"compute_mean_std: example {i} has {x.shape[1]} channels, earlier "
                             f"ones {mean.shape[0]}; the source must have one channel count.")
        k, mu = x.shape[0], x.mean(axis=0)
        m2_i = ((x - mu) ** 2).sum(axis=0)
        if mean is None:
            count, mean, m2 = k, mu, m2_i
            continue
        total = count + k
        delta = mu - mean
        mean = mean + delta * (k / total)
        m2 = m2 + m2_i + delta ** 2 * (count * k / total)
        count = total
    return mean, np.sqrt(m2 / count)
