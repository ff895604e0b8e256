"""Detection sources in the two layouts people keep their own boxes in: ``coco_json`` (a COCO
detection JSON) and ``voc_xml`` (PASCAL VOC XML files). ``data.name`` picks them through
``jaxvision.data.source.build_source`` like the sources of ``jaxvision.data.local``, whose
image reading, bad-file handling (``BadExample`` naming the file, ``data.bad_examples``) and
``data.max_pixels`` limit they share. Examples follow ``jaxvision.data.example``: ``boxes`` are
``[y0, x0, y1, x1]`` float32 in absolute pixels of the continuous image plane.

**coco_json.** ``data.path`` is a folder in the COCO layout::

    <data.path>/annotations/instances_<split>.json
    <data.path>/<split>/<file_name>        (else images/<split>/<file_name>, else images/<file_name>)

Split ``s`` also answers to ``instances_s2017.json`` with ``s2017/`` (``val`` and
``validation`` stand for each other), so ``data.path`` may be the COCO 2017 release itself.
The JSON holds ``images`` (``id``, ``file_name``, optional ``width`` / ``height``, checked
against the image), ``annotations`` (``image_id``, ``category_id``, ``bbox`` = absolute
``[x, y, width, height]``, optional ``area`` and ``iscrowd``; may be absent) and ``categories``
(``id``, ``name``). Examples are the ``images`` in file order: ``image``, ``boxes`` =
``[y, x, y + height, x + width]``, ``box_classes``, ``box_crowd`` (``iscrowd``) and
``box_area`` (``area``, else the box's area); an image without annotations has zero boxes.
Category ids (arbitrary, not contiguous in COCO) map to ``box_classes`` 0..C-1 in increasing id
order; ``class_names`` are the categories' names in that order and ``category_ids[c]`` is the
id of class ``c`` (``image_ids[i]`` the id of example ``i``), to write COCO results back.

**voc_xml.** ``data.path`` is a folder in the PASCAL VOC layout (e.g. ``VOCdevkit/VOC2007``)::

    <data.path>/ImageSets/Main/<split>.txt   (one id per line)
    <data.path>/Annotations/<id>.xml
    <data.path>/JPEGImages/<id>.jpg

Examples: ``image``, ``boxes``, ``box_classes``, ``box_difficult`` (``<difficult>``). VOC
corners are 1-based inclusive pixel indices, so ``<xmin>..<xmax>``, ``<ymin>..<ymax>`` become
``[ymin - 1, xmin - 1, ymax, xmax]`` (pixels ``xmin..xmax`` cover ``[xmin - 1, xmax)``).
``class_names`` are the 20 VOC classes in the standard order (``VOC_CLASSES``) unless
``data.class_names`` lists others (a tuple, or one comma-separated string).

Both read images as RGB, or gray with ``data.channels=1`` (0 means RGB here: COCO mixes a few
gray images among RGB ones). A bad annotation of one image (a negative or non-finite box, an
unknown category id or class name) or a missing or unreadable file raises ``BadExample`` naming
the file (and the annotation id); ``data.bad_examples='skip'`` skips such examples. A file
that breaks the whole split (an unreadable JSON, an annotation of an image the JSON does not
list, a missing split list) raises ``DataError`` saying which path was expected.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from jaxvision.data.config import MAX_PIXELS
from jaxvision.data.example import Example
from jaxvision.data.local import (IMAGE_SUFFIXES, BadFile, _FileSource, _get, _natural_key,
                                  _reading, _require, _require_path, read_image, read_voc_boxes)
from jaxvision.data.source import BadExample, DataError, SourceInfo

NAMES = ("coco_json", "voc_xml")

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep",
               "sofa", "train", "tvmonitor")

_COCO_LAYOUT = ("a folder with annotations/instances_<split>.json (COCO detection JSON: images, "
                "annotations with bbox [x, y, width, height] in pixels, categories) and the images "
                "in <split>/, images/<split>/ or images/ (e.g. annotations/instances_val2017.json "
                "with val2017/)")
_VOC_LAYOUT = ("a PASCAL VOC folder (e.g. VOCdevkit/VOC2007) with ImageSets/Main/<split>.txt "
               "(one id per line), Annotations/<id>.xml and JPEGImages/<id>.jpg")


def _split_names(split: str) -> list[str]:
    """The names split ``split`` may have on disk, in order of preference."""
    aliases = ["val", "validation"] if split in ("val", "validation") else [split]
    return [n for a in aliases for n in (a, f"{a}2017")]


def _channels(channels: int) -> int:
    channels = int(channels) or 3
    if channels not in (1, 3):
        raise DataError(f"data.channels={channels} must be 0 or 3 (RGB) or 1 (gray).")
    return channels


def _check_size(path: Path, image: np.ndarray, size: tuple[int, int] | None, where: str) -> None:
    """Raises ``BadFile`` if ``image`` is not ``size`` (height, width) as its annotation says."""
    if size is not None and image.shape[:2] != size:
        raise BadFile(path, f"is {image.shape[1]}x{image.shape[0]} (width x height) but {where} "
                            f"gives {size[1]}x{size[0]}; the boxes are in those pixels: fix the "
                            "annotation or the image (an EXIF rotation?)")


def _ids(ids: Sequence[Any], most: int = 10) -> str:
    return ", ".join(map(repr, ids[:most])) + (", ..." if len(ids) > most else "")


class _BoxFileSource(_FileSource):
    """``_FileSource`` with per-example faults found while building: ``_bad[i] = (file,
    reason)``. Under 'error' the first raises ``BadExample`` (``_fault``); under 'skip' example
    ``i`` raises it when loaded, so the loader skips it."""

    _bad: dict[int, tuple[str, str]]

    def _fault(self, index: int, path: Path | str, reason: str) -> None:
        self._bad.setdefault(index, (str(path), reason))
        if not self._skip:
            raise BadExample(self._where(index), index, str(path), reason)

    def _load(self, index: int) -> Example:
        if index in self._bad:
            raise BadFile(*self._bad[index])
        return self._read(index)

    def _read(self, index: int) -> Example:
        raise NotImplementedError


# ----------------------------------------------------------------------------- coco_json

def _coco_box(ann: dict, classes: dict[int, int]) -> tuple[list[float], int, bool, float] | str:
    """Returns ``([y0, x0, y1, x1], class, crowd, area)`` of a COCO annotation, or (a string)
    why it is bad."""
    bbox = ann.get("bbox")
    try:
        if not isinstance(bbox, (list, tuple)):
            raise TypeError
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        return f"bbox {bbox!r} is not four numbers [x, y, width, height]"
    if not all(map(math.isfinite, (x, y, w, h))):
        return f"bbox {bbox!r} is not finite"
    if w < 0 or h < 0:
        return (f"bbox {bbox!r} has a negative {'width' if w < 0 else 'height'}; expected "
                "[x, y, width, height] with width, height >= 0 (pixels)")
    cat = ann.get("category_id")
    if not isinstance(cat, int) or cat not in classes:
        return f"category_id {cat!r} is not the id of one of the file's categories ({_ids(list(classes))})"
    area = ann.get("area")
    if area is None:
        area = w * h
    else:
        try:
            area = float(area)
        except (TypeError, ValueError):
            area = math.nan
        if not math.isfinite(area) or area < 0:
            return f"area {ann.get('area')!r} is not a finite number >= 0 (pixels²)"
    crowd = ann.get("iscrowd", 0)
    if crowd not in (0, 1):
        return f"iscrowd {crowd!r} is not 0 or 1"
    return [y, x, y + h, x + w], classes[cat], bool(crowd), area


class CocoJsonSource(_BoxFileSource):
    """COCO detection JSON + image folder (see the module docstring for the layout and keys).

    ``category_ids[c]`` is the COCO category id of box class ``c``; ``image_ids[i]`` the COCO
    image id of example ``i``; ``annotation_file`` the JSON read.
    """

    kind = "coco_json"

    def __init__(self, root: Path, split: str, *, channels: int = 0, max_pixels: int = MAX_PIXELS,
                 bad_examples: str = "error"):
        self._options(split, max_pixels, bad_examples)
        self._channels, self._bad = _channels(channels), {}
        ann_dir = root / "annotations"
        name = next((n for n in _split_names(split)
                     if (ann_dir / f"instances_{n}.json").is_file()), None)
        if name is None:
            present = sorted(f.name for f in ann_dir.glob("instances_*.json")) if ann_dir.is_dir() else []
            raise DataError(
                f"coco_json: annotation file {str(ann_dir / f'instances_{split}.json')!r} not found "
                f"for split {split!r}; annotation files there: {', '.join(present) or '(none)'}. "
                f"Set data.path to {_COCO_LAYOUT}, and data.train_split / data.eval_split to the "
                "<split> of its files.")
        self.annotation_file = path = ann_dir / f"instances_{name}.json"
        image_dir = next((d for d in (root / name, root / "images" / name, root / "images")
                          if d.is_dir()), None)
        if image_dir is None:
            raise DataError(f"coco_json: no image folder for {str(path)!r}: none of "
                            f"{name}/, images/{name}/, images/ exists under data.path="
                            f"{str(root)!r}; expected {_COCO_LAYOUT}.")
        self._image_dir, self._json = image_dir, str(path)
        images, anns, cats = self._parse(path)

        def fail(what: str) -> DataError:
            return DataError(f"coco_json: {str(path)!r}: {what}; expected the COCO detection "
                             "format (images with id and file_name; annotations with image_id, "
                             "category_id, bbox; categories with id and name).")

        # Categories: sorted ids -> contiguous classes.
        by_id: dict[int, str] = {}
        for k, cat in enumerate(cats):
            if not isinstance(cat, dict) or not isinstance(cat.get("id"), int) or "name" not in cat:
                raise fail(f"categories[{k}] = {str(cat)[:80]} needs an integer 'id' and a 'name'")
            if cat["id"] in by_id:
                raise fail(f"category id {cat['id']} appears twice")
            by_id[cat["id"]] = str(cat["name"])
        self.category_ids = tuple(sorted(by_id))
        classes = {c: i for i, c in enumerate(self.category_ids)}
        # Images, in file order.
        self._images: list[tuple[str, tuple[int, int] | None]] = []  # (file_name, (h, w) or None)
        index_of: dict[Any, int] = {}
        for k, im in enumerate(images):
            if not isinstance(im, dict) or "id" not in im or not isinstance(im.get("file_name"), str):
                raise fail(f"images[{k}] = {str(im)[:80]} needs an 'id' and a 'file_name'")
            if im["id"] in index_of:
                raise fail(f"image id {im['id']!r} appears twice (images[{index_of[im['id']]}] "
                           f"and images[{k}])")
            index_of[im["id"]] = k
            h, w = im.get("height"), im.get("width")
            size = (h, w) if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0 else None
            self._images.append((im["file_name"], size))
        self.image_ids = tuple(im["id"] for im in images)
        self._n = len(self._images)
        # Annotations, grouped by image into flat arrays (small to pickle for grain workers).
        owner, rows, labels, crowd, area = [], [], [], [], []
        for k, ann in enumerate(anns):
            aid = f"annotation id {ann['id']!r}" if isinstance(ann, dict) and "id" in ann else \
                f"annotations[{k}]"
            if not isinstance(ann, dict) or ann.get("image_id") not in index_of:
                iid = ann.get("image_id") if isinstance(ann, dict) else None
                raise fail(f"{aid} has image_id {iid!r}, which is not the id of one of the "
                           f"file's {self._n} images: fix or remove the annotation")
            i = index_of[ann["image_id"]]
            box = _coco_box(ann, classes)
            if isinstance(box, str):
                self._fault(i, path, f"{aid} (image {self._images[i][0]!r}, id "
                                     f"{ann['image_id']!r}): {box}")
                continue
            owner.append(i)
            rows.append(box[0])
            labels.append(box[1])
            crowd.append(box[2])
            area.append(box[3])
        order = np.argsort(np.asarray(owner, np.int64), kind="stable")
        self._offsets = np.searchsorted(np.asarray(owner, np.int64)[order], np.arange(self._n + 1))
        self._boxes = np.asarray(rows, np.float64).reshape(-1, 4)[order].astype(np.float32)
        self._classes = np.asarray(labels, np.int32)[order]
        self._crowd = np.asarray(crowd, bool)[order]
        self._area = np.asarray(area, np.float32)[order]
        missing = [i for i, (f, _) in enumerate(self._images) if not (image_dir / f).is_file()]
        for i in missing[:None if self._skip else 1]:
            self._fault(i, image_dir / self._images[i][0],
                        f"is missing: {str(path)!r} lists it as image id {self.image_ids[i]!r} "
                        f"({len(missing)} of its {self._n} images are not in {str(image_dir)!r})")
        self.info = SourceInfo(name="coco_json", split=split,
                               keys=("image", "boxes", "box_classes", "box_crowd", "box_area"),
                               num_box_classes=len(classes),
                               class_names=tuple(by_id[c] for c in self.category_ids))

    @staticmethod
    def _parse(path: Path) -> tuple[list, list, list]:
        """Returns the ``images``, ``annotations`` and ``categories`` lists of the JSON."""
        try:
            with _reading(path), open(path, "rb") as f:
                data = json.load(f)
        except BadFile as e:
            raise DataError(f"coco_json: {e}; expected a COCO detection JSON.") from e
        parts = [data.get(k, [] if k == "annotations" else None) if isinstance(data, dict) else None
                 for k in ("images", "annotations", "categories")]
        if not all(isinstance(p, list) for p in parts):
            keys = sorted(data)[:10] if isinstance(data, dict) else type(data).__name__
            raise DataError(f"coco_json: {str(path)!r} has no 'images' and 'categories' lists "
                            f"(found: {keys}); expected a COCO detection JSON (images, "
                            "annotations, categories).")
        return parts[0], parts[1], parts[2]

    def _example_files(self, index: int) -> dict[str, Path]:
        json_path = Path(self._json)
        return {"image": self._image_dir / self._images[index][0], "boxes": json_path,
                "box_classes": json_path, "box_crowd": json_path, "box_area": json_path}

    def _read(self, index: int) -> Example:
        name, size = self._images[index]
        path = self._image_dir / name
        image = read_image(path, self._channels, self._max_pixels)
        _check_size(path, image, size, f"{self._json!r} (image id {self.image_ids[index]!r})")
        a, b = self._offsets[index], self._offsets[index + 1]
        return {"image": image, "boxes": self._boxes[a:b].copy(),
                "box_classes": self._classes[a:b].copy(), "box_crowd": self._crowd[a:b].copy(),
                "box_area": self._area[a:b].copy()}


# ----------------------------------------------------------------------------- voc_xml

_FLAGS = {"": False, "0": False, "false": False, "1": True, "true": True}


def read_voc_objects(path: Path, class_names: Sequence[str]
                     ) -> tuple[np.ndarray, tuple[int, int] | None]:
    """Returns ``(difficult (N,) bool, (height, width) or None)`` of a PASCAL-VOC XML, its
    objects in the order ``local.read_voc_boxes`` reads their boxes. Raises ``BadFile`` for a
    file that does not parse, an object whose ``<name>`` is not in ``class_names`` or whose
    ``<difficult>`` is not 0 or 1."""
    with _reading(path):
        root = ET.parse(path).getroot()
    difficult = []
    for k, obj in enumerate(root.iter("object"), 1):
        name = (obj.findtext("name") or "").strip()
        if name not in class_names:
            known = ("the 20 VOC classes" if tuple(class_names) == VOC_CLASSES
                     else f"the {len(class_names)} names of data.class_names")
            raise BadFile(path, f"object {k} has class name {name!r}, which is not among {known} "
                                f"({_ids(list(class_names), 30)}); set data.class_names to the names "
                                "the XML files use")
        flag = (obj.findtext("difficult") or "").strip().lower()
        if flag not in _FLAGS:
            raise BadFile(path, f"object {k} ({name!r}) has <difficult>{flag}</difficult>; "
                                "expected 0 or 1")
        difficult.append(_FLAGS[flag])
    try:
        h, w = int(root.findtext("size/height") or 0), int(root.findtext("size/width") or 0)
    except ValueError:
        h = w = 0
    return np.asarray(difficult, bool), ((h, w) if h > 0 and w > 0 else None)


def _class_names(value: Any) -> tuple[str, ...]:
    """``data.class_names`` as a tuple (a comma-separated string works too); () = VOC_CLASSES."""
    if isinstance(value, str):
        value = value.split(",")
    names = tuple(n for n in (str(v).strip() for v in (value or ())) if n) or VOC_CLASSES
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise DataError(f"data.class_names lists {twice} more than once; each class name once.")
    return names


class VocXmlSource(_BoxFileSource):
    """PASCAL VOC XML boxes (see the module docstring for the layout, keys and coordinates).

    Splits are the lists ``ImageSets/Main/<split>.txt`` (``val`` and ``validation`` stand for
    each other); ``ids[i]`` is the VOC id of example ``i``. An XML without objects gives zero
    boxes.
    """

    kind = "voc_xml"

    def __init__(self, root: Path, split: str, *, class_names: Sequence[str] = VOC_CLASSES,
                 channels: int = 0, max_pixels: int = MAX_PIXELS, bad_examples: str = "error"):
        self._options(split, max_pixels, bad_examples)
        self._channels, self._bad, self._root = _channels(channels), {}, root
        self._class_names = _class_names(class_names)
        ann = _require(root / "Annotations", "folder", "voc_xml", _VOC_LAYOUT)
        jpeg = _require(root / "JPEGImages", "folder", "voc_xml", _VOC_LAYOUT)
        lists = root / "ImageSets" / "Main"
        listing = next((lists / f"{n}.txt" for n in _split_names(split)
                        if (lists / f"{n}.txt").is_file()), None)
        if listing is None:
            present = sorted((f.stem for f in lists.glob("*.txt") if "_" not in f.stem),
                             key=_natural_key) if lists.is_dir() else []
            raise DataError(
                f"voc_xml: split list {str(lists / f'{split}.txt')!r} not found for split "
                f"{split!r}; split lists there: {', '.join(present) or '(none)'}. Set data.path to "
                f"{_VOC_LAYOUT}, and data.train_split / data.eval_split to one of its splits.")
        try:
            with _reading(listing):
                lines = listing.read_text().splitlines()
        except BadFile as e:
            raise DataError(f"voc_xml: split list {e}; expected one image id per line.") from e
        self.ids = tuple(ln.split()[0] for ln in lines if ln.strip() and not ln.startswith("#"))
        self._n = len(self.ids)
        self._images: list[str] = []  # image file name in JPEGImages/
        faults = []
        for i, id_ in enumerate(self.ids):
            image = next((f"{id_}{s}" for s in sorted(IMAGE_SUFFIXES, key=lambda s: s != ".jpg")
                          if (jpeg / f"{id_}{s}").is_file()), None)
            self._images.append(image or f"{id_}.jpg")
            xml = ann / f"{id_}.xml"
            if image is None or not xml.is_file():
                faults.append((i, jpeg / f"{id_}.jpg" if image is None else xml))
        for i, path in faults[:None if self._skip else 1]:
            self._fault(i, path, f"is missing: {str(listing)!r} lists id {self.ids[i]!r} "
                                 f"({len(faults)} of its {self._n} ids lack an image in "
                                 "JPEGImages/ or an XML in Annotations/)")
        self.info = SourceInfo(name="voc_xml", split=split,
                               keys=("image", "boxes", "box_classes", "box_difficult"),
                               num_box_classes=len(self._class_names),
                               class_names=self._class_names)

    def _example_files(self, index: int) -> dict[str, Path]:
        xml = self._root / "Annotations" / f"{self.ids[index]}.xml"
        return {"image": self._root / "JPEGImages" / self._images[index], "boxes": xml,
                "box_classes": xml, "box_difficult": xml}

    def _read(self, index: int) -> Example:
        files = self._example_files(index)
        # Two passes over one small XML: local.read_voc_boxes reads the boxes, this module the
        # rest (and names an unknown class more precisely, so it goes first).
        difficult, size = read_voc_objects(files["boxes"], self._class_names)
        boxes, classes = read_voc_boxes(files["boxes"], self._class_names)
        image = read_image(files["image"], self._channels, self._max_pixels)
        _check_size(files["image"], image, size, f"{str(files['boxes'])!r} (<size>)")
        return {"image": image, "boxes": boxes, "box_classes": classes, "box_difficult": difficult}


# ----------------------------------------------------------------------------- dispatch

def from_config(config: Any, split: str) -> _BoxFileSource:
    """Returns the source named by ``config.name`` (``coco_json`` or ``voc_xml``) for base
    split ``split`` (no slice; ``source.build_source`` applies slices).

    Keys read: ``data.path`` (the layout's folder), ``data.channels``, ``data.max_pixels``,
    ``data.bad_examples`` and, for ``voc_xml``, ``data.class_names`` (default ``VOC_CLASSES``).
    """
    name = str(config.name)
    options = dict(channels=int(_get(config, "channels", 0)),
                   max_pixels=int(_get(config, "max_pixels", MAX_PIXELS)),
                   bad_examples=str(_get(config, "bad_examples", "error")))
    if name == "coco_json":
        return CocoJsonSource(_require_path(config, name, _COCO_LAYOUT), split, **options)
    if name == "voc_xml":
        return VocXmlSource(_require_path(config, name, _VOC_LAYOUT), split,
                            class_names=_get(config, "class_names", ()), **options)
    raise DataError(f"boxfiles.from_config: data.name={name!r} is not one of {', '.join(NAMES)}.")
