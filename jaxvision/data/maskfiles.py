"""Semantic segmentation from a folder of images and masks: ``mask_folder``, the layout people keep
their own segmentation data in. ``data.name='mask_folder'`` picks it through
``jaxvision.data.source.build_source`` like the sources of ``jaxvision.data.local``, whose image
reading, bad-file handling (``BadExample`` naming the file, ``data.bad_examples``) and
``data.max_pixels`` limit it shares. Examples hold ``image`` and ``mask`` (see
``jaxvision.data.example``).

**Layout.** ``data.path`` is a folder with ``images/`` and ``masks/``, either flat::

    <data.path>/images/<stem>.<jpg|png|...>
    <data.path>/masks/<stem>.png
    <data.path>/classes.txt                       (optional: line i = the name of class i)

or with one subfolder per split, as VOC-style and Cityscapes-style releases have (files may sit in
further subfolders, e.g. one per city; the mask keeps its image's relative path)::

    <data.path>/images/<split>/[<sub>/]<stem>.<ext>
    <data.path>/masks/<split>/[<sub>/]<stem>.png

**Splits.** With split subfolders, split ``s`` reads ``images/s`` (``val`` and ``validation``
stand for each other) and ``all`` joins every split folder. Without them, ``all`` is every image,
and ``train`` / ``test`` split the natural-sorted images by ``data.holdout`` with
``image_folder``'s rule: the last ``round(n * holdout)`` images (at most n - 1) are ``test``.

**Masks.** A mask has its image's stem and size and one class id per pixel: an 8- or 16-bit
single-channel PNG, or a palette PNG whose indices are the class ids (as VOC's are: the indices
are read, not the colours). ``.png`` is looked for first; ``.tif``, ``.tiff``, ``.bmp``,
``.pgm`` and ``.gif`` are read too; a JPEG mask is refused (lossy compression alters the ids).
Pixels equal to ``data.ignore_value`` (default 255, VOC's border; -1 or None = none) become
``IGNORE_LABEL``. Masks without an image are not read.

**Classes.** From ``classes.txt`` (``num_mask_classes`` = its non-blank lines,
``mask_class_names`` = those lines); a mask pixel >= that count (other than the ignore value) is
a ``BadExample`` naming the mask, the value and its (row, column). Without ``classes.txt`` the
count is the largest id + 1 over the masks of *every* split (so that splits agree), found by
reading every mask once when the source is built (the images are not read); write
``classes.txt`` to skip that scan on a large dataset. ``mask_class_names`` is then ().

**Bad files.** An image without a mask (found while building), a mask of another size than its
image, a mask that is not single-channel integer ids, or a file that cannot be read raises
``BadExample`` naming the file; ``data.bad_examples='skip'`` skips such examples.

Images are read as RGB, or gray with ``data.channels=1`` (0 means RGB, as in ``boxfiles``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from jaxvision.data.boxfiles import _BoxFileSource, _channels, _split_names
from jaxvision.data.config import MAX_PIXELS
from jaxvision.data.example import IGNORE_LABEL, Example
from jaxvision.data.local import (BadFile, _get, holdout_split, _is_image, _natural_key, _open_image, _reading,
                                  _require, _require_path, _unknown_split, read_image)
from jaxvision.data.source import DataError, SourceInfo

NAME = "mask_folder"
# Mask suffixes, in the order they are looked for (lossless formats only).
MASK_SUFFIXES = (".png", ".tif", ".tiff", ".bmp", ".pgm", ".gif")
_LOSSY = (".jpg", ".jpeg", ".webp")

_LAYOUT = ("a folder with images/<stem>.<ext> and masks/<stem>.png (one class id per pixel: 8/16-bit "
           "gray or palette PNG, same size as the image), or images/<split>/... with "
           "masks/<split>/..., and an optional classes.txt (line i = class i)")


def read_mask(path: Path | str, *, max_pixels: int = MAX_PIXELS, ignore_value: int | None = 255,
              num_classes: int | None = None) -> np.ndarray:
    """Returns the mask at ``path`` as (H, W) int32 class ids, ``ignore_value`` -> IGNORE_LABEL.

    The stored values are read (a palette PNG gives its indices, a 16-bit PNG its 16-bit values).
    Raises ``BadFile`` naming the file for a file that cannot be read, an image that is not one
    channel of integers (RGB, gray + alpha, float), a negative value, or (``num_classes`` given)
    a value >= ``num_classes`` other than ``ignore_value``, with its (row, column).
    """
    with _open_image(path, max_pixels) as im:  # read errors become BadFile naming the file
        im.seek(0)
        mode, raw = im.mode, np.asarray(im)
    if raw.ndim != 2 or raw.dtype.kind not in "biu":
        raise BadFile(path, f"is a mode-{mode!r} image ({'x'.join(map(str, raw.shape))} "
                            f"{raw.dtype}); a mask holds one integer class id per pixel: an 8- or "
                            "16-bit gray PNG or a palette PNG (convert colour-coded masks to ids)")
    ids = raw.astype(np.int64)
    ignored = ids == ignore_value if ignore_value is not None and ignore_value >= 0 else None
    bad = ids < 0 if num_classes is None else (ids < 0) | (ids >= num_classes)
    if ignored is not None:
        bad &= ~ignored
    if bad.any():
        r, c = (int(i) for i in np.argwhere(bad)[0])
        allowed = (f"a class id in [0, {num_classes}) ({num_classes} classes in classes.txt)"
                   if num_classes is not None else "a class id >= 0")
        ignore = f" or data.ignore_value={ignore_value}" if ignored is not None else ""
        raise BadFile(path, f"pixel (row {r}, column {c}) holds {int(ids[r, c])}, not {allowed}"
                            f"{ignore}; {int(bad.sum())} pixels are out of range")
    if ignored is not None:
        ids[ignored] = IGNORE_LABEL
    return ids.astype(np.int32)


def _read_classes(path: Path) -> tuple[str, ...]:
    try:
        with _reading(path):
            lines = path.read_text().splitlines()
    except BadFile as e:
        raise DataError(f"{NAME}: {e}; classes.txt must be text, one class name per line.") from e
    names = tuple(line.strip() for line in lines if line.strip())
    if not names:
        raise DataError(f"{NAME}: {str(path)!r} lists no class names; write one name per line "
                        "(line i = class i), or remove it to count the classes from the masks.")
    return names


class MaskFolderSource(_BoxFileSource):
    """Images with semantic masks in ``images/`` and ``masks/`` (see the module docstring for the
    layout, splits, classes and errors). ``files[i]`` is the image path of example ``i``
    relative to ``data.path``; ``classes_from`` is ``'classes.txt'`` or ``'scan'`` (the masks
    were read to count the classes)."""

    kind = NAME

    def __init__(self, root: Path, split: str, *, holdout: float = 0.2, ignore_value: int | None = 255,
                 channels: int = 0, max_pixels: int = MAX_PIXELS, bad_examples: str = "error"):
        self._options(split, max_pixels, bad_examples)
        if ignore_value is not None and (isinstance(ignore_value, bool) or not isinstance(
                ignore_value, (int, np.integer)) or ignore_value < -1):
            raise DataError(f"data.ignore_value={ignore_value!r} must be a mask value >= 0 (the "
                            "pixels to ignore; 255 in VOC) or -1 / None for none.")
        if not 0.0 <= holdout < 1.0:
            raise DataError(f"{NAME}: data.holdout={holdout} must be in [0, 1) (the fraction held "
                            "out as split 'test').")
        self._channels, self._bad, self._root = _channels(channels), {}, root
        self._ignore = None if ignore_value is None or ignore_value < 0 else int(ignore_value)
        images = _require(root / "images", "folder", NAME, _LAYOUT)
        masks = _require(root / "masks", "folder", NAME, _LAYOUT)
        subs = sorted((d.name for d in images.iterdir() if d.is_dir() and not d.name.startswith(".")),
                      key=_natural_key)
        if subs:  # images/<split>/...: every split's files, for the class scan
            every = {s: self._list(images / s, recursive=True) for s in subs}
            chosen = subs if split == "all" else [n for n in _split_names(split) if n in subs][:1]
            if not chosen:
                raise _unknown_split(NAME, split, subs, images)
            for s in chosen:
                _require(masks / s, "mask folder of split " + repr(s), NAME, _LAYOUT)
            rels = [f for s in chosen for f in every[s]]
            others = [f for s in subs if s not in chosen for f in every[s]]
        else:
            if split not in ("all", "train", "test"):
                raise _unknown_split(NAME, split, ("all", "train", "test"), root)
            flat = self._list(images, recursive=False)
            rels = flat if split == "all" else holdout_split(flat, holdout, split)
            kept = set(rels)
            others = [f for f in flat if f not in kept]
        if not rels and not others:
            raise DataError(f"{NAME}: no images in {str(images)!r}; expected {_LAYOUT}.")
        self.files = tuple(rels)
        self._n = len(rels)
        self._masks = [self._mask_of(f) for f in rels]  # mask path relative to root, or None
        missing = [i for i, m in enumerate(self._masks) if m is None]
        for i in missing[:None if self._skip else 1]:
            self._fault(i, root / "images" / rels[i], self._no_mask(rels[i], len(missing)))
        class_file = root / "classes.txt"
        if class_file.exists():
            names, self.classes_from = _read_classes(class_file), "classes.txt"
            self._num_classes: int | None = len(names)
            num = len(names)
        else:
            names, self.classes_from, self._num_classes = (), "scan", None
            num = self._scan_classes(others)
        self.info = SourceInfo(name=NAME, split=split, keys=("image", "mask"),
                               num_mask_classes=num, mask_class_names=names)

    @staticmethod
    def _list(folder: Path, recursive: bool) -> list[str]:
        """Image paths under ``folder``, relative to ``images/``, natural-sorted."""
        found = folder.rglob("*") if recursive else folder.iterdir()
        base = folder.parent if recursive else folder
        rels = [f.relative_to(base).as_posix() for f in found
                if _is_image(f) and not any(p.startswith(".") for p in f.relative_to(base).parts)]
        return sorted(rels, key=_natural_key)

    def _mask_of(self, rel: str) -> str | None:
        stem = Path("masks") / Path(rel).with_suffix("")
        return next(((stem.parent / (stem.name + s)).as_posix() for s in MASK_SUFFIXES
                     if (self._root / stem.parent / (stem.name + s)).is_file()), None)

    def _no_mask(self, rel: str, count: int) -> str:
        stem = Path("masks") / Path(rel).with_suffix("")
        lossy = [(stem.parent / (stem.name + s)).as_posix() for s in _LOSSY
                 if (self._root / stem.parent / (stem.name + s)).is_file()]
        found = (f"; {lossy[0]} is there, but a JPEG/WebP mask alters the class ids: save masks "
                 "as PNG" if lossy else "")
        return (f"has no mask: expected {(stem.parent / (stem.name + '.png')).as_posix()} under "
                f"data.path (the image's stem){found} ({count} of the split's {self._n} images "
                f"{'lacks' if count == 1 else 'lack'} a mask)")

    def _scan_classes(self, others: Sequence[str]) -> int:
        """The largest class id + 1 over the masks of every split (no classes.txt): reads each
        mask once. A bad mask of this split raises ``BadExample`` (under 'skip' it is left out);
        one of another split raises ``DataError`` naming it."""
        def top(mask_rel: str) -> int:
            ids = read_mask(self._root / mask_rel, max_pixels=self._max_pixels,
                            ignore_value=self._ignore)
            return int(ids.max()) if ids.size else -1

        tops = [self._scan(i, lambda m=m: top(m)) for i, m in enumerate(self._masks)
                if m is not None and i not in self._bad]
        for rel in others:
            mask = self._mask_of(rel)
            if mask is None:
                continue  # that split's own source reports it
            try:
                tops.append(top(mask))
            except BadFile as e:
                if not self._skip:
                    raise DataError(f"{NAME}: {e}; without classes.txt the class count is the "
                                    "largest id over the masks of every split: fix or remove the "
                                    "file, write classes.txt (one class name per line), or set "
                                    "data.bad_examples='skip'.") from e
        return max((t for t in tops if t is not None), default=-1) + 1

    def _example_files(self, index: int) -> dict[str, Path]:
        files = {"image": self._root / "images" / self.files[index]}
        mask = self._masks[index]
        return files | ({"mask": self._root / mask} if mask else {})

    def _read(self, index: int) -> Example:
        files = self._example_files(index)
        image = read_image(files["image"], self._channels, self._max_pixels)
        mask = read_mask(files["mask"], max_pixels=self._max_pixels, ignore_value=self._ignore,
                         num_classes=self._num_classes)
        if mask.shape != image.shape[:2]:
            raise BadFile(files["mask"], f"is {mask.shape[1]}x{mask.shape[0]} (width x height) but "
                                         f"its image {str(files['image'])!r} is {image.shape[1]}x"
                                         f"{image.shape[0]}; a mask must have its image's size")
        return {"image": image, "mask": mask}


def from_config(config: Any, split: str) -> MaskFolderSource:
    """Returns the ``mask_folder`` source for base split ``split`` (no slice;
    ``source.build_source`` applies slices).

    Keys read: ``data.path``, ``data.holdout``, ``data.ignore_value`` (default 255; -1 or None =
    none), ``data.channels``, ``data.max_pixels``, ``data.bad_examples``.
    """
    name = str(config.name)
    if name != NAME:
        raise DataError(f"maskfiles.from_config: data.name={name!r} is not {NAME!r}.")
    ignore = config.get("ignore_value", 255) if hasattr(config, "get") else getattr(
        config, "ignore_value", 255)
    return MaskFolderSource(_require_path(config, name, _LAYOUT), split,
                            holdout=float(_get(config, "holdout", 0.2)), ignore_value=ignore,
                            channels=int(_get(config, "channels", 0)),
                            max_pixels=int(_get(config, "max_pixels", MAX_PIXELS)),
                            bad_examples=str(_get(config, "bad_examples", "error")))
