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
``identity``         ()                  int32     identity for metric learning (person, object id)
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

**Disparity.** For the left view, ``left[y, x] == right[y, x - disparity[y, x]]``; for the right
view, ``right[y, x] == left[y, x + disparity_right[y, x]]``. Pixels with unknown disparity hold
``INVALID_DISPARITY`` (any negative value counts as invalid: test with ``disparity_valid``).

**Masks.** ``IGNORE_LABEL`` marks pixels a loss and a metric skip (e.g. the trimap border).
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
    "identity": (0, np.dtype(np.int32)),
    # Added by the loader.
    "index": (0, np.dtype(np.int64)),
    "valid": (0, np.dtype(np.bool_)),
    "box_valid": (1, np.dtype(np.bool_)),
}

# Keys whose two leading axes are the image's (H, W): spatial transforms move them together.
SPATIAL_KEYS = ("image", "mask", "instance_mask", "image_right", "disparity", "disparity_right")
# Keys that are images (uint8, channels last): photometric transforms touch only these.
IMAGE_KEYS = ("image", "image_right")


class ExampleError(ValueError):
    """An example breaks the conventions above; the message names the key and the fix."""


def disparity_valid(disparity: np.ndarray) -> np.ndarray:
    """Returns a bool array, True where ``disparity`` holds a known value (finite, >= 0)."""
    return np.isfinite(disparity) & (disparity >= 0)


def validate_example(example: Mapping[str, Any], *, where: str = "example") -> Example:
    """Checks ``example`` against ``SPEC`` and returns it unchanged.

    Raises ``ExampleError`` naming the key, the shape or dtype found, what was expected, and
    where the example came from (``where``, e.g. ``"mnist[train][17]"``).
    """
    if "image" not in example:
        raise ExampleError(f"{where}: has no 'image' key (keys: {sorted(example)}); every "
                           "source must produce an (H, W, C) uint8 'image'.")
    for key, value in example.items():
        if key not in SPEC:
            continue  # extra keys are allowed and passed through untouched
        rank, dtype = SPEC[key]
        arr = np.asarray(value)
        if arr.ndim != rank:
            raise ExampleError(f"{where}: '{key}' has shape {arr.shape} (rank {arr.ndim}); "
                               f"expected rank {rank}. See jaxvision/data/example.py for the layouts.")
        if arr.dtype != dtype:
            raise ExampleError(f"{where}: '{key}' has dtype {arr.dtype}; expected {dtype}. "
                               f"Convert it at the source (e.g. np.asarray(x, np.{dtype.name})).")
    image = np.asarray(example["image"])
    h, w, c = image.shape
    if c not in (1, 3):
        raise ExampleError(f"{where}: 'image' has {c} channels (shape {image.shape}); expected 1 or 3 "
                           "(NHWC, channels last). Drop alpha / convert to RGB at the source.")
    for key in SPATIAL_KEYS:
        if key in example and np.shape(example[key])[:2] != (h, w):
            raise ExampleError(f"{where}: '{key}' has spatial shape {np.shape(example[key])[:2]} but "
                               f"'image' is {(h, w)}; every spatial target must match the image.")
    if "boxes" in example:
        boxes = np.asarray(example["boxes"])
        if boxes.shape[-1] != 4:
            raise ExampleError(f"{where}: 'boxes' has shape {boxes.shape}; expected (N, 4) as "
                               "[y0, x0, y1, x1] in pixels.")
        if "box_classes" in example and np.shape(example["box_classes"])[0] != boxes.shape[0]:
            raise ExampleError(f"{where}: {boxes.shape[0]} boxes but "
                               f"{np.shape(example['box_classes'])[0]} box_classes.")
    return dict(example)
