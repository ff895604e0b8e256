"""KITTI 2015 stereo (``data.name='kitti2015'``): the layout of the official ``data_scene_flow``
release, for users who have it (it is not redistributed here).

**Layout.** ``data.path`` is the folder holding ``training/`` (or the ``training`` folder itself)::

    training/image_2/000000_10.png     left view (frame 10 of each sequence)
    training/image_3/000000_10.png     right view
    training/disp_occ_0/000000_10.png  left-view disparity, all pixels with ground truth
    training/disp_noc_0/000000_10.png  the same without the occluded pixels

Disparity PNGs are 16-bit; the value / 256 is the disparity in pixels and 0 means no ground truth
(``INVALID_DISPARITY`` here). Only the ``_10`` frames carry ground truth.

**Examples.** ``image``, ``image_right`` (RGB), ``disparity`` (from ``disp_occ_0``: every pixel
with ground truth) and ``disparity_noc`` (from ``disp_noc_0``, when the folder exists): the
``stereo`` evaluator scores its ``_noc`` figures on the pixels where ``disparity_noc`` is valid.

**Splits.** ``training`` (or ``all``): the 200 pairs with ground truth, sorted by name; ``train``
the first ``round(n * (1 - data.holdout))`` of them and ``val`` the rest (KITTI ships no
validation split; with the default holdout 0.2, 160 / 40).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from jaxvision.data.config import MAX_PIXELS
from jaxvision.data.example import INVALID_DISPARITY, Example
from jaxvision.data.local import (BadFile, _FileSource, _get, _open_image, _require, _require_path,
                                  _unknown_split, holdout_split, read_image)
from jaxvision.data.source import DataError, SourceInfo

NAME = "kitti2015"
_LAYOUT = ("a folder with training/image_2/<id>_10.png (left), training/image_3/<id>_10.png (right), "
           "training/disp_occ_0/<id>_10.png (16-bit, value / 256 = pixels, 0 = invalid) "
           "[+ training/disp_noc_0/]")
SPLITS = ("training", "all", "train", "val")


def read_kitti_disparity(path: Path | str, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """A KITTI disparity PNG as (H, W) float32 pixels (value / 256), 0 -> ``INVALID_DISPARITY``.
    Raises ``BadFile`` for a file that is not a one-channel 16-bit (or 8-bit) image."""
    with _open_image(path, max_pixels) as im:
        raw = np.asarray(im)
    if raw.ndim != 2 or raw.dtype.kind not in "iu":
        raise BadFile(path, f"is a {raw.dtype} image of shape {raw.shape}; a KITTI disparity map is "
                            "a one-channel 16-bit PNG (value / 256 = pixels, 0 = invalid)")
    d = raw.astype(np.float32) / 256.0
    return np.where(raw > 0, d, INVALID_DISPARITY).astype(np.float32)


class Kitti2015Source(_FileSource):
    """The KITTI 2015 stereo training pairs (see the module docstring)."""

    kind = NAME

    def __init__(self, root: Path, split: str, *, holdout: float = 0.2,
                 max_pixels: int = MAX_PIXELS, bad_examples: str = "error"):
        self._options(split, max_pixels, bad_examples)
        if split not in SPLITS:
            raise _unknown_split(NAME, split, SPLITS, root)
        base = root / "training" if (root / "training").is_dir() else root
        left = _require(base / "image_2", "folder", NAME, _LAYOUT)
        _require(base / "image_3", "folder", NAME, _LAYOUT)
        _require(base / "disp_occ_0", "folder", NAME, _LAYOUT)
        names = sorted(f.name for f in left.iterdir() if f.name.endswith("_10.png"))
        if not names:
            raise DataError(f"{NAME}: no '<id>_10.png' left images in {str(left)!r}; expected {_LAYOUT}.")
        if split in ("train", "val"):
            names = holdout_split(names, float(holdout), "train" if split == "train" else "test")
        self._base, self._names, self._n = base, names, len(names)
        self._noc = (base / "disp_noc_0").is_dir()
        keys = ("image", "image_right", "disparity") + (("disparity_noc",) if self._noc else ())
        self.info = SourceInfo(name=NAME, split=split, keys=keys)

    def _example_files(self, index: int) -> dict[str, Path]:
        n, b = self._names[index], self._base
        files = {"image": b / "image_2" / n, "image_right": b / "image_3" / n,
                 "disparity": b / "disp_occ_0" / n}
        return files | ({"disparity_noc": b / "disp_noc_0" / n} if self._noc else {})

    def _load(self, index: int) -> Example:
        files, m = self._example_files(index), self._max_pixels
        for f in files.values():
            if not f.is_file():
                raise BadFile(f, f"is missing (every pair needs {_LAYOUT})")
        ex = {"image": read_image(files["image"], 3, m), "image_right": read_image(files["image_right"], 3, m),
              "disparity": read_kitti_disparity(files["disparity"], m)}
        if self._noc:
            ex["disparity_noc"] = read_kitti_disparity(files["disparity_noc"], m)
        return ex


def from_config(config: Any, split: str) -> Kitti2015Source:
    """The ``kitti2015`` source of ``config`` (``data.path``, ``data.holdout``)."""
    return Kitti2015Source(_require_path(config, NAME, _LAYOUT), split,
                           holdout=float(_get(config, "holdout", 0.2)),
                           max_pixels=int(_get(config, "max_pixels", MAX_PIXELS)),
                           bad_examples=str(_get(config, "bad_examples", "error")))
