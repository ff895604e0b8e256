"""TensorFlow-Datasets datasets as sources: read prepared ``array_record`` files without TensorFlow.

Reading needs only ``tensorflow-datasets`` (its data sources decode images with PIL and parse
examples with its own protobuf copy). Writing the files (``prepare``) runs the dataset's
builder, which needs TensorFlow: ``pip install -e '.[prepare]'`` in a separate environment, then

    python -m jaxvision data prepare mnist --manual_dir /path/to/mnist --data_dir DIR

Feature mapping to the example format (``jaxvision.data.example``):

* the image (``image``, else the first 3-D ``Image`` feature) -> ``image`` uint8 (H, W, C);
* ``label`` (ClassLabel) -> ``label`` int32;
* ``objects/bbox`` (BBoxFeature, normalized ymin, xmin, ymax, xmax) -> ``boxes`` in pixels,
  ``objects/label`` (else the first ClassLabel in ``objects``) -> ``box_classes``, its names ->
  ``SourceInfo.box_class_names`` (the category names for ``coco``, ``voc``). Where ``objects``
  has them: ``objects/is_crowd`` (bool, ``coco/2017``) -> ``box_crowd``; ``objects/area``
  (int64 pixels², ``coco/2017``: COCO's float mask area truncated by TFDS) -> ``box_area``
  float32, used as is since TFDS coco stores its images at their original size (the size the
  area was measured at); ``objects/is_difficult`` (bool, ``voc/2007``, ``voc/2012``) ->
  ``box_difficult``. ``objects/is_truncated``, ``objects/pose`` (voc) and ``objects/id``
  (coco) are not read. (``coco/2017_panoptic`` names its sequence ``panoptic_objects``, which
  is not read either.)
* ``segmentation_mask`` / ``segmentation_label`` / ``mask`` -> ``mask`` int32, 255 -> IGNORE_LABEL;
  ``oxford_iiit_pet`` trimaps map as in the local source (pet 1, background 0, border ignored),
  and its ``head_bbox`` becomes one box of class ``species`` (cat 0, dog 1).
"""

from __future__ import annotations

import difflib
import functools
import re
import importlib
import inspect
import os
from pathlib import Path
from typing import Any

import numpy as np

from jaxvision.data.example import IGNORE_LABEL, Example, validate_example
from jaxvision.data.local import trimap_to_mask
from jaxvision.data.source import DataError, SourceInfo

_PREPARE_DEPS = "pip install -e '.[prepare]'"
_MASK_KEYS = ("segmentation_mask", "segmentation_label", "mask")
# Where the shared offline data sets live, beside the repository (for hints in messages).
_SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def _base_name(name: str) -> str:
    """``'coco/2017:1.1.0'`` -> ``'coco'``."""
    return name.split("/")[0].split(":")[0]


@functools.lru_cache(maxsize=1)
def _registered() -> tuple[str, ...]:
    from tensorflow_datasets.core import registered
    return tuple(sorted(registered.list_imported_builders()))


def registered_names() -> list[str]:
    """Returns the sorted names of the TFDS builders that ship with tensorflow-datasets (cached;
    imports no TensorFlow)."""
    return list(_registered())


def is_registered(name: str) -> bool:
    """Returns whether ``name`` (``NAME[/CONFIG][:VERSION]``, or ``tfds:NAME``) is a TFDS builder."""
    base = _base_name(name.removeprefix("tfds:"))
    if base in _registered():
        return True
    # Builders defined after the cache was filled (user or test datasets) register on import.
    from tensorflow_datasets.core import registered
    return base in registered.list_imported_builders()


def default_data_dir(data_dir: str | None = None) -> str:
    """Returns the TFDS data dir in use: ``data_dir``, else ``$TFDS_DATA_DIR``, else
    ``~/tensorflow_datasets``."""
    return os.path.expanduser(str(data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"))


def prepare_command(name: str, data_dir: str, manual_dir: str | None = None) -> str:
    """Returns the shell command that prepares ``name`` into ``data_dir``."""
    if manual_dir is None:
        shared = _SHARED_DATA / _base_name(name)
        manual_dir = str(shared) if shared.is_dir() else "DIR"
    return f"python -m jaxvision data prepare {name} --manual_dir {manual_dir} --data_dir {data_dir}"


def _not_prepared(name: str, data_dir: str, why: str) -> DataError:
    return DataError(
        f"TFDS dataset {name!r} is not prepared in data_dir {data_dir!r} (data.data_dir; {why}). "
        f"Prepare it once with:\n  {prepare_command(name, data_dir)}\n"
        "where --manual_dir holds the dataset's original files (without it TFDS downloads them). "
        f"Preparing runs TensorFlow, so it needs {_PREPARE_DEPS} (better in a separate venv); "
        "reading the prepared files afterwards does not.")


# ----------------------------------------------------------------------------- features

# Per-box example key -> (scalar feature inside TFDS ``objects``, accepted numpy dtype kinds),
# as named by the TFDS coco (``is_crowd``, ``area``) and voc (``is_difficult``) builders.
_BOX_META: dict[str, tuple[str, str]] = {
    "box_crowd": ("is_crowd", "b"),
    "box_difficult": ("is_difficult", "b"),
    "box_area": ("area", "iuf"),
}
_BOX_META_DTYPES = {"box_crowd": np.bool_, "box_difficult": np.bool_, "box_area": np.float32}

def _feature_plan(features: Any, name: str) -> dict[str, Any]:
    """Returns which TFDS feature feeds which example key, and the class counts."""
    from tensorflow_datasets.core import features as F
    items = dict(features.items())
    images = [k for k, f in items.items() if isinstance(f, F.Image) and len(f.shape) == 3
              and k not in _MASK_KEYS]
    image = "image" if "image" in images else (images[0] if images else None)
    if image is None:
        raise DataError(f"TFDS dataset {name!r} has no image feature (features: {sorted(items)}); "
                        "only image datasets can be read as sources.")
    plan: dict[str, Any] = {"image": image, "label": None, "mask": None, "objects": None,
                            "box_label": None, "head_bbox": None, "class_names": (),
                            "num_box_classes": None, "box_class_names": (),
                            "box_meta": {}}   # example key -> feature inside ``objects``
    if isinstance(items.get("label"), F.ClassLabel):
        plan["label"] = "label"
        plan["class_names"] = tuple(items["label"].names)
    plan["mask"] = next((k for k in _MASK_KEYS if isinstance(items.get(k), F.Image)), None)
    objects = items.get("objects")
    if isinstance(objects, F.Sequence) and isinstance(objects.feature, F.FeaturesDict):
        sub = dict(objects.feature.items())
        if isinstance(sub.get("bbox"), F.BBoxFeature):
            plan["objects"] = "objects"
            labels = [k for k, f in sub.items() if isinstance(f, F.ClassLabel)]
            plan["box_label"] = "label" if "label" in labels else (labels[0] if labels else None)
            if plan["box_label"]:
                plan["num_box_classes"] = sub[plan["box_label"]].num_classes
                plan["box_class_names"] = tuple(sub[plan["box_label"]].names)
            for key, (feature, kinds) in _BOX_META.items():
                f = sub.get(feature)
                if (isinstance(f, F.Tensor) and not isinstance(f, (F.ClassLabel, F.BBoxFeature))
                        and tuple(f.shape) == () and np.dtype(f.np_dtype).kind in kinds):
                    plan["box_meta"][key] = feature
    if (plan["objects"] is None and isinstance(items.get("head_bbox"), F.BBoxFeature)
            and isinstance(items.get("species"), F.ClassLabel)):
        plan["head_bbox"] = "head_bbox"
        plan["num_box_classes"] = items["species"].num_classes
        plan["box_class_names"] = tuple(items["species"].names)
    return plan


def _to_mask(value: np.ndarray, trimap: bool) -> np.ndarray:
    mask = np.asarray(value).astype(np.int32)  # before IGNORE_LABEL, which uint8 cannot hold
    mask = mask[..., 0] if mask.ndim == 3 else mask
    if trimap:
        return trimap_to_mask(mask)
    # 255 is the usual "void / border" value of uint8 label maps (VOC, Cityscapes).
    return np.where(mask == 255, IGNORE_LABEL, mask)


def _boxes(normalized: Any, height: int, width: int) -> np.ndarray:
    """Normalized (N, 4) ``[ymin, xmin, ymax, xmax]`` -> float32 pixel ``[y0, x0, y1, x1]``."""
    boxes = np.asarray(normalized, np.float32).reshape(-1, 4)
    return (boxes * np.asarray([height, width, height, width], np.float32)).astype(np.float32)


_LABELS: dict[tuple[str, str], np.ndarray] = {}   # (prepared dir, split) -> labels


class TfdsSource:
    """A prepared TFDS split (slices such as ``train[:80%]`` allowed), read from ``array_record``.

    Reads through a read-only builder made from the prepared files (``dataset_info.json``), so
    no dataset code is imported: some builder modules import TensorFlow. The TFDS data source is
    opened lazily and dropped when pickled, so grain workers reopen their own.
    """

    def __init__(self, name: str, split: str, data_dir: str | None = None):
        from tensorflow_datasets.core import file_adapters, read_only_builder, registered
        self._name, self._split, self._data_dir = name, split, default_data_dir(data_dir)
        self._ds = None
        try:
            builder = read_only_builder.builder_from_files(name, data_dir=self._data_dir)
        except (registered.DatasetNotFoundError, FileNotFoundError) as e:
            raise _not_prepared(name, self._data_dir, "no prepared files found") from e
        fmt = builder.info.file_format
        if fmt not in (file_adapters.FileFormat.ARRAY_RECORD, file_adapters.FileFormat.PARQUET):
            raise _not_prepared(name, self._data_dir,
                                f"it is prepared as {getattr(fmt, 'value', fmt)} in {builder.data_dir}, "
                                "which has no random access; prepare it again into another data_dir")
        try:
            self._n = int(builder.info.splits[split].num_examples)
        except (KeyError, ValueError) as e:
            raise DataError(f"TFDS dataset {name!r}: split {split!r} is not available ({e}); splits: "
                            f"{', '.join(builder.info.splits)}. Set data.train_split / data.eval_split.") from e
        self._builder_dir = str(builder.data_dir)
        self._plan = _feature_plan(builder.info.features, name)
        plan, base = self._plan, _base_name(name)
        self._trimap = base == "oxford_iiit_pet"
        keys = ["image"] + [k for k, on in (("label", plan["label"]), ("mask", plan["mask"]),
                                            ("boxes", plan["objects"] or plan["head_bbox"]),
                                            ("box_classes", plan["objects"] or plan["head_bbox"]))
                            if on] + [k for k in _BOX_META if k in plan["box_meta"]]
        self.info = SourceInfo(
            name=name, split=split, keys=tuple(keys),
            num_classes=len(plan["class_names"]) or None, class_names=plan["class_names"],
            num_box_classes=plan["num_box_classes"], box_class_names=plan["box_class_names"],
            num_mask_classes=2 if self._trimap and plan["mask"] else None)

    def __len__(self) -> int:
        return self._n

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_ds": None}

    def _source(self):
        if self._ds is None:
            import tensorflow_datasets as tfds
            self._ds = tfds.builder_from_directory(self._builder_dir).as_data_source(split=self._split)
        return self._ds

    def labels(self) -> np.ndarray:
        """The (N,) int ``label`` of every example (a class filter's and the pk sampler's fast
        path): read in batches of records, about 3x faster than one by one, and cached per
        process (the records still decode their images: TFDS skips decoding only with
        TensorFlow installed)."""
        if not self._plan["label"]:
            raise DataError(f"TFDS dataset {self._name!r} has no 'label'.")
        key = (self._builder_dir, self._split)
        if key not in _LABELS:
            ds = self._source()
            parts = [np.asarray([r["label"] for r in ds.__getitems__(list(range(a, min(a + 1000, self._n))))],
                                np.int64) for a in range(0, self._n, 1000)]
            _LABELS[key] = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        return _LABELS[key].copy()

    def __getitem__(self, index: int) -> Example:
        index = int(index)
        if not 0 <= index < self._n:
            raise IndexError(f"index {index} out of range for {self._name}[{self._split}] of length {self._n}")
        raw, plan = self._source()[index], self._plan
        image = np.asarray(raw[plan["image"]], np.uint8)
        image = image[..., None] if image.ndim == 2 else image[..., :3]  # drop alpha
        h, w = image.shape[:2]
        ex: Example = {"image": image}
        if plan["label"]:
            ex["label"] = np.asarray(raw["label"], np.int32)
        if plan["mask"]:
            ex["mask"] = _to_mask(raw[plan["mask"]], self._trimap)
        if plan["objects"]:
            objects = raw["objects"]
            ex["boxes"] = _boxes(objects["bbox"], h, w)
            ex["box_classes"] = (np.asarray(objects[plan["box_label"]], np.int32).reshape(-1)
                                 if plan["box_label"] else np.zeros(len(ex["boxes"]), np.int32))
            # Row k of each is object k, as for ``bbox``. TFDS coco images are stored at their
            # original size, so ``area`` (pixels² of that image) needs no scaling.
            for key, feature in plan["box_meta"].items():
                ex[key] = np.asarray(objects[feature]).astype(_BOX_META_DTYPES[key]).reshape(-1)
        elif plan["head_bbox"]:
            box = _boxes(raw["head_bbox"], h, w)
            keep = (box[:, 2] > box[:, 0]) & (box[:, 3] > box[:, 1])  # images without a head box
            ex["boxes"] = box[keep]
            ex["box_classes"] = np.asarray([raw["species"]], np.int32)[keep]
        return validate_example(ex, where=f"{self._name}[{self._split}][{index}]")


def from_config(config: Any, name: str, split: str) -> TfdsSource:
    """Returns the TFDS source ``name`` for ``split`` (slices allowed), read from ``data.data_dir``.

    Raises ``DataError`` with the prepare command when the dataset is not prepared there.
    """
    data_dir = config.get("data_dir", None) if hasattr(config, "get") else getattr(config, "data_dir", None)
    return TfdsSource(name, split, data_dir)


# ----------------------------------------------------------------------------- prepare

def _url_infos(builder_cls: Any) -> dict:
    """Returns the builder's registered ``{url: UrlInfo}`` (empty if none)."""
    try:
        return dict(builder_cls.url_infos or {})
    except ModuleNotFoundError:
        # TFDS 4.9.10 looks up its checksum file through `importlib_resources`, which Python
        # >= 3.9 installs do not get; find the file as TFDS does, without it.
        from tensorflow_datasets.core.download import checksums
        import tensorflow_datasets as tfds
        new = Path(inspect.getfile(builder_cls)).parent / "checksums.tsv"
        legacy = Path(tfds.__file__).parent / "url_checksums" / f"{builder_cls.name}.txt"
        path = new if new.exists() else legacy
        return dict(checksums.load_url_infos(path)) if path.exists() else {}


def manual_files(name: str) -> list[str]:
    """Returns the file names TFDS takes from ``manual_dir`` instead of downloading (the
    ``filename`` column of the builder's registered checksums), sorted."""
    import tensorflow_datasets as tfds
    infos = _url_infos(tfds.builder_cls(_base_name(name)))
    return sorted({i.filename for i in infos.values() if i.filename})


def check_manual_dir(name: str, manual_dir: str) -> None:
    """Raises ``DataError`` naming every file TFDS looks for in ``manual_dir`` that is missing.

    For builders with several configs, the registered files cover all configs, so one present
    file is enough. Builders with no registered files need a non-empty ``manual_dir``.
    """
    import tensorflow_datasets as tfds
    folder = Path(manual_dir).expanduser()
    if not folder.is_dir():
        raise DataError(f"--manual_dir {str(folder)!r} is not a folder; it must hold the original "
                        f"files of {name!r}.")
    expected = manual_files(name)
    if not expected:
        if not any(folder.iterdir()):
            cls = tfds.builder_cls(_base_name(name))
            raise DataError(f"--manual_dir {str(folder)!r} is empty; {name!r} needs its files there. "
                            f"TFDS says: {getattr(cls, 'MANUAL_DOWNLOAD_INSTRUCTIONS', '') or 'see its catalog page'}")
        return
    missing = [f for f in expected if not (folder / f).exists()]
    configs = getattr(tfds.builder_cls(_base_name(name)), "BUILDER_CONFIGS", None) or []
    if missing and (len(configs) <= 1 or len(missing) == len(expected)):
        raise DataError(f"--manual_dir {str(folder)!r} lacks {len(missing)} file(s) that TFDS looks "
                        f"for to prepare {name!r}: {', '.join(missing)}. Put the original files "
                        "there under exactly these names.")


def _require_prepare_deps() -> None:
    missing = []
    for module in ("tensorflow", "importlib_resources"):
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise DataError(f"preparing a TFDS dataset needs {' and '.join(missing)} (not installed "
                        f"here): run {_PREPARE_DEPS} (tensorflow-cpu; best in a separate venv, "
                        "since training never needs TensorFlow).")


def prepare(name: str, manual_dir: str | None = None, data_dir: str | None = None) -> str:
    """Writes TFDS dataset ``name`` as ``array_record`` into ``data_dir``; returns the prepared
    dataset folder (``DATA_DIR/NAME/VERSION``).

    With ``manual_dir``, TFDS takes the original files from there instead of downloading them;
    they are checked first. Raises ``DataError`` for an unknown name, a missing manual file, or
    missing TensorFlow.
    """
    if not is_registered(name):
        close = difflib.get_close_matches(_base_name(name), registered_names(), n=5)
        raise DataError(f"unknown TFDS dataset {name!r}." + (f" Did you mean: {', '.join(close)}?" if close else ""))
    if manual_dir is not None:
        check_manual_dir(name, manual_dir)
    _require_prepare_deps()
    import tensorflow_datasets as tfds
    data_dir = default_data_dir(data_dir)
    builder = tfds.builder(name, data_dir=data_dir)
    config = tfds.download.DownloadConfig(
        manual_dir=str(Path(manual_dir).expanduser()) if manual_dir else None)
    # One download folder per dataset: TFDS names extracted files after the archive alone
    # ('GZIP.train-images-idx3-ubyte.gz'), so mnist and fashion_mnist prepared into one shared
    # folder would silently reuse each other's extraction.
    builder.download_and_prepare(file_format="array_record", download_config=config,
                                 download_dir=str(Path(data_dir) / "downloads" / re.sub(r"[^\w.-]", "_", name)))
    return str(builder.data_dir)
