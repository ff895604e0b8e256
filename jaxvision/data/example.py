"""The one example format that every source produces and every transform keeps.

An *example* is a ``dict[str, np.ndarray]``. Every key is optional except ``image``;
a source fills the keys its data has. Conventions, stated once for the whole codebase:

===================  ==================  ========  ==============================================
key                  shape               dtype     meaning
===================  ==================  ========  ==============================================
``image``            (H, W, C), C∈{1,3}  uint8     the (left) image, NHWC without the batch axis
``label``            ()                  int32     image-level class id in [0, num_classes)
``boxes``            (N, 4)              float32   ``[y0, x0, y1, x1]`` in absolute pixels (below)
``box_classes``      (N,)                int32     class id of each box
``mask``             (H, W)              int32     semantic class per pixel; ``IGNORE_LABEL`` = skip
``instance_mask``    (H, W)              int32     0 = no instance, k ≥ 1 = the object of ``boxes[k-1]``
``image_right``      (H, W, C)           uint8     right view of a rectified stereo pair
``disparity``        (H, W)              float32   left-view disparity in pixels (below)
``disparity_right``  (H, W)              float32   right-view disparity in pixels (below)
``disparity_noc``    (H, W)              float32   ``disparity`` on the non-occluded pixels only (KITTI)
``identity``         ()                  int32     identity for metric learning (person, object id)
``box_crowd``        (N,)                bool      COCO ``iscrowd``: a crowd region, never a miss
``box_difficult``    (N,)                bool      PASCAL VOC ``difficult``: ignored by VOC AP
``box_area``         (N,)                float32   COCO ``area`` (the object's mask area, pixels²)
===================  ==================  ========  ==============================================

Keys added by the loader (never by a source):

=============  ========  ==================================================================
``index``      int64     the example's position in its source (so tests can count examples)
``valid``      bool      False for padding added to fill the last eval batch
``box_valid``  bool      (N_max,) False for padding rows of ``boxes`` / ``box_classes``
=============  ========  ==================================================================

**Boxes.** ``[y0, x0, y1, x1]``, float32, absolute pixel coordinates of the continuous image
plane: pixel ``(i, j)`` covers ``[i, i+1) x [j, j+1)``, the image spans ``[0, H] x [0, W]``.
A box that tightly encloses the pixels of rows ``r0..r1`` and columns ``c0..c1`` (inclusive) is
``[r0, c0, r1 + 1, c1 + 1]``; its area is ``(y1 - y0) * (x1 - x0)``. A horizontal flip maps
``x -> W - x``. Normalized boxes (TFDS, YOLO) are converted at the source.

**The box policy** (every source, every transform): coordinates must be finite with
``y0 <= y1`` and ``x0 <= x1``, else ``validate_example`` stops with an error naming the example
(its file for file sources). Parts of a box outside the image are clipped to it, and a box left
with a side below 1 px by clipping or cropping is dropped (a resize only scales boxes) with its per-box keys; the
loader counts dropped boxes (``Loader.dropped_boxes``; the trainer logs the count as
``dropped_boxes`` in its train records and in the eval results when it is not 0). An example with
more boxes than ``data.max_boxes`` is an error that gives the count to set.

**Per-box metadata.** ``box_crowd``, ``box_difficult`` and ``box_area`` follow ``boxes`` through
every transform (``box_area`` scales with the box: by ``sy * sx`` on a resize, by the kept
fraction of the box on a crop). Sources without them leave them out; the COCO evaluator then
treats every box as non-crowd with its box area, and VOC AP as non-difficult.

**Disparity.** For the left view, ``left[y, x] == right[y, x - disparity[y, x]]``; for the right
view, ``right[y, x] == left[y, x + disparity_right[y, x]]``. Pixels with unknown disparity hold
``INVALID_DISPARITY`` (any negative value counts as invalid: test with ``disparity_valid``).

**Masks.** ``IGNORE_LABEL`` marks pixels a loss and a metric skip (e.g. the trimap border).

**Values.** ``validate_example`` checks values too (``invalid_values``): ids are >= 0 and below
the source's count (``label`` < ``num_classes``, ...), masks may also hold ``IGNORE_LABEL``,
``instance_mask`` ids index ``boxes``, boxes are finite with ``y0 <= y1`` and ``x0 <= x1``, and
disparities are finite.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

Example = dict[str, np.ndarray]

IGNORE_LABEL = -1
INVALID_DISPARITY = -1.0

# key -> (rank, dtype); rank counts the per-example axes only (no batch axis).
SPEC: dict[str, tuple[int, np.dtype]] = {
    "image": (3, np.dtype(np.uint8)),
    "label": (0, np.dtype(np.int32)),
    "boxes": (2, np.dtype(np.float32)),
    "box_classes": (1, np.dtype(np.int32)),
    "mask": (2, np.dtype(np.int32)),
    "instance_mask": (2, np.dtype(np.int32)),
    "image_right": (3, np.dtype(np.uint8)),
    "disparity": (2, np.dtype(np.float32)),
    "disparity_right": (2, np.dtype(np.float32)),
    "disparity_noc": (2, np.dtype(np.float32)),
    "identity": (0, np.dtype(np.int32)),
    "box_crowd": (1, np.dtype(np.bool_)),
    "box_difficult": (1, np.dtype(np.bool_)),
    "box_area": (1, np.dtype(np.float32)),
    # Added by the loader.
    "index": (0, np.dtype(np.int64)),
    "valid": (0, np.dtype(np.bool_)),
    "box_valid": (1, np.dtype(np.bool_)),
}

# Keys whose two leading axes are the image's (H, W): spatial transforms move them together.
SPATIAL_KEYS = ("image", "mask", "instance_mask", "image_right", "disparity", "disparity_right",
                "disparity_noc")
# Keys that are images (uint8, channels last): photometric transforms touch only these.
IMAGE_KEYS = ("image", "image_right")
# Per-box keys: one row per row of ``boxes``, padded and dropped with it.
BOX_KEYS = ("box_classes", "box_crowd", "box_difficult", "box_area")
# Keys holding integer ids; a source must store them as integers (a float 0.5 would truncate).
ID_KEYS = ("label", "identity", "box_classes", "mask", "instance_mask")
# Id key -> the SourceInfo count that bounds it (None: only the lower bound is checked).
ID_LIMITS = {"label": "num_classes", "identity": "num_identities",
             "box_classes": "num_box_classes", "mask": "num_mask_classes", "instance_mask": None}


class DataError(ValueError):
    """Bad data configuration or input; the message says what is wrong and how to fix it.

    Defined here so that ``ExampleError`` is one; import it from ``jaxvision.data.source``.
    """


class ExampleError(DataError):
    """An example breaks the conventions above; the message names the key and the fix.

    ``key`` is the offending key (None when the example as a whole is wrong) and ``detail`` the
    message without its ``where`` prefix, so that a file source can restate it naming its file.
    """

    def __init__(self, message: str, key: str | None = None, detail: str | None = None):
        super().__init__(message)
        self.key, self.detail = key, message if detail is None else detail

    def __reduce__(self) -> tuple:
        # Grain pickles exceptions raised in worker processes; keep every field.
        return type(self), (str(self), self.key, self.detail)


def disparity_valid(disparity: np.ndarray) -> np.ndarray:
    """Returns a bool array, True where ``disparity`` holds a known value (finite, >= 0)."""
    return np.isfinite(disparity) & (disparity >= 0)


def invalid_values(key: str, values: Any, limit: int | None = None) -> tuple[np.ndarray, str]:
    """Returns ``(bad, expected)`` for the values of ``key``: ``bad`` is a bool array, True where a
    value breaks the conventions, and ``expected`` says what is allowed instead.

    ``values`` may hold one example or many (leading axes, e.g. a whole ``.npz`` array). For
    ``boxes`` there is one flag per ``[y0, x0, y1, x1]`` row. ``limit`` bounds the ids of an
    ``ID_KEYS`` key (a ``SourceInfo`` count, None = unknown). Keys without a value rule (images)
    give an all-False array.
    """
    values = np.asarray(values)
    if key in ID_KEYS:
        top = f"in [0, {limit})" if limit is not None else ">= 0"
        ok = (values >= 0) & (values < limit) if limit is not None else values >= 0
        if key == "mask":
            return ~ok & (values != IGNORE_LABEL), f"a class id {top} or IGNORE_LABEL ({IGNORE_LABEL})"
        if key == "instance_mask":
            return ~ok, "0 (no instance) or k >= 1, the object of boxes[k - 1]"
        return ~ok, f"an id {top}"
    if key == "boxes":
        if values.shape[-1:] != (4,):
            return np.zeros(values.shape[:-1], bool), ""
        y0, x0, y1, x1 = np.moveaxis(values, -1, 0)
        ok = np.isfinite(values).all(-1) & (y0 <= y1) & (x0 <= x1)
        return ~ok, "finite [y0, x0, y1, x1] with y0 <= y1 and x0 <= x1 (pixels)"
    if key in ("disparity", "disparity_right", "disparity_noc"):
        return ~np.isfinite(values), ("a finite disparity in pixels, INVALID_DISPARITY "
                                      f"({INVALID_DISPARITY:g}) if unknown")
    return np.zeros(values.shape, bool), ""


# Keys with value rules in ``invalid_values`` (the others are checked for shape and dtype only).
VALUE_KEYS = ID_KEYS + ("boxes", "disparity", "disparity_right", "disparity_noc")


def _plainly_valid(key: str, values: np.ndarray, limit: int | None) -> bool:
    """A fast check that passes most valid values without ``invalid_values``' full masks (this
    runs on every example): ids by their min and max, disparities by one ``isfinite``."""
    if values.size == 0:
        return True
    if key in ID_KEYS and values.dtype.kind in "biu":
        low = IGNORE_LABEL if key == "mask" else 0
        return bool(values.min() >= low and (limit is None or values.max() < limit))
    if key in ("disparity", "disparity_right", "disparity_noc"):
        return bool(np.isfinite(values).all())
    return False


def first_invalid(key: str, values: Any, limit: int | None = None) -> str | None:
    """Returns a description of the first value of ``key`` that ``invalid_values`` refuses
    (value, position, what is expected), or None if every value is valid."""
    values = np.asarray(values)
    if _plainly_valid(key, values, limit):
        return None
    bad, expected = invalid_values(key, values, limit)
    if not bad.any():
        return None
    pos = tuple(int(i) for i in np.argwhere(bad)[0])
    at = "" if not pos else f" at index {pos[0]}" if len(pos) == 1 else f" at position {pos}"
    return f"'{key}' holds {values[pos].tolist()!r}{at}; expected {expected}"


def validate_example(example: Mapping[str, Any], *, where: str = "example",
                     info: Any = None) -> Example:
    """Checks ``example`` against ``SPEC`` and the value rules of ``invalid_values``; returns it
    unchanged.

    ``info`` (a ``SourceInfo``, optional) bounds the ids: ``label`` < ``num_classes`` and so on.
    Raises ``ExampleError`` naming the key, the shape, dtype or value found, what was expected,
    and where the example came from (``where``, e.g. ``"mnist[train][17]"``).
    """
    def fail(detail: str, key: str | None = None) -> ExampleError:
        return ExampleError(f"{where}: {detail}", key, detail)

    if "image" not in example:
        raise fail(f"has no 'image' key (keys: {sorted(example)}); every source must produce an "
                   "(H, W, C) uint8 'image'.")
    for key, value in example.items():
        if key not in SPEC:
            continue  # extra keys are allowed and passed through untouched
        rank, dtype = SPEC[key]
        arr = np.asarray(value)
        if arr.ndim != rank:
            raise fail(f"'{key}' has shape {arr.shape} (rank {arr.ndim}); expected rank {rank}. "
                       "See jaxvision/data/example.py for the layouts.", key)
        if arr.dtype != dtype:
            raise fail(f"'{key}' has dtype {arr.dtype}; expected {dtype}. Convert it at the source "
                       f"(e.g. np.asarray(x, np.{dtype.name})).", key)
    image = np.asarray(example["image"])
    h, w, c = image.shape
    if c not in (1, 3):
        raise fail(f"'image' has {c} channels (shape {image.shape}); expected 1 or 3 (NHWC, "
                   "channels last). Drop alpha / convert to RGB at the source.", "image")
    for key in SPATIAL_KEYS:
        if key in example and np.shape(example[key])[:2] != (h, w):
            raise fail(f"'{key}' has spatial shape {np.shape(example[key])[:2]} but 'image' is "
                       f"{(h, w)}; every spatial target must match the image.", key)
    if "boxes" in example:
        boxes = np.asarray(example["boxes"])
        if boxes.shape[-1] != 4:
            raise fail(f"'boxes' has shape {boxes.shape}; expected (N, 4) as [y0, x0, y1, x1] in "
                       "pixels.", "boxes")
        for key in BOX_KEYS:
            if key in example and np.shape(example[key])[0] != boxes.shape[0]:
                raise fail(f"{boxes.shape[0]} boxes but {np.shape(example[key])[0]} {key}; "
                           "every per-box key has one entry per box.", key)
    for key in example:
        if key not in VALUE_KEYS:
            continue
        count = ID_LIMITS.get(key)
        limit = getattr(info, count, None) if count else None
        if key == "instance_mask" and "boxes" in example:
            limit = len(example["boxes"]) + 1
        problem = first_invalid(key, example[key], limit)
        if problem:
            raise fail(problem + ".", key)
    return dict(example)
