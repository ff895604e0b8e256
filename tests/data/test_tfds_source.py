"""Tests of the TFDS source (jaxvision.data.tfds_source).

TFDS writes ``array_record`` datasets without TensorFlow when the images come as encoded PNG
bytes, so two tiny builders here are prepared in tmp_path and read back through
``build_source``. A real prepared mnist is read when one is found (``$JAXVISION_TFDS_DATA_DIR``
or ``~/tensorflow_datasets``).
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from jaxvision.data import tfds_source
from jaxvision.data.config import data_config
from jaxvision.data.example import IGNORE_LABEL, validate_example
from jaxvision.data.source import DataError, build_source

MNIST_FILES = ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz",
               "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]


def _png(array: np.ndarray) -> io.BytesIO:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(array, np.uint8)).save(buf, format="PNG")
    buf.seek(0)
    return buf


def _det_example(i: int) -> dict:
    """Example i of the tiny detection set: (H, W) = (6 + i, 8), i % 3 boxes, mask with 255s,
    per-box crowd / difficult flags and areas that differ between the two boxes."""
    h, w = 6 + i, 8
    rng = np.random.default_rng(i)
    mask = rng.integers(0, 3, (h, w))
    mask[0, :] = 255
    n = i % 3
    return {"image": rng.integers(0, 256, (h, w, 3)), "label": i % 3, "mask": mask,
            "bbox": [[0.5, 0.25, 1.0, 0.75], [0.0, 0.0, 0.5, 0.125]][:n], "box_label": [1, 0][:n],
            "is_crowd": [True, False][:n], "is_difficult": [False, True][:n],
            "area": [100 * i + 17, 3][:n], "is_truncated": [True, True][:n]}


class JaxvisionTinyDet(tfds.core.GeneratorBasedBuilder):
    """A 5 + 2 example detection / segmentation set written with numpy and PIL only."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        f = tfds.features
        return tfds.core.DatasetInfo(builder=self, features=f.FeaturesDict({
            "image": f.Image(shape=(None, None, 3)),
            "label": f.ClassLabel(names=["a", "b", "c"]),
            "segmentation_mask": f.Image(shape=(None, None, 1)),
            # Per-box features named as in TFDS coco/2017 (is_crowd, area) and voc (is_difficult,
            # is_truncated, which is not read).
            "objects": f.Sequence({"bbox": f.BBoxFeature(), "label": f.ClassLabel(names=["x", "y"]),
                                   "is_crowd": np.bool_, "area": np.int64, "is_difficult": np.bool_,
                                   "is_truncated": np.bool_}),
        }))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(range(5)), "test": self._generate_examples(range(5, 7))}

    def _generate_examples(self, indices):
        for i in indices:
            e = _det_example(i)
            yield i, {"image": _png(e["image"]), "label": e["label"],
                      "segmentation_mask": _png(e["mask"]),
                      "objects": {"bbox": [tfds.features.BBox(*b) for b in e["bbox"]],
                                  "label": e["box_label"],
                                  **{k: e[k] for k in ("is_crowd", "area", "is_difficult", "is_truncated")}}}


class FakePets(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Written under the name of the real ``oxford_iiit_pet`` to test its feature mapping."""

    name = "oxford_iiit_pet"
    VERSION = tfds.core.Version("3.2.0")

    def _info(self):
        f = tfds.features
        return tfds.core.DatasetInfo(builder=self, features=f.FeaturesDict({
            "image": f.Image(shape=(None, None, 3)), "label": f.ClassLabel(names=["p", "q"]),
            "species": f.ClassLabel(names=["Cat", "Dog"]), "head_bbox": f.BBoxFeature(),
            "segmentation_mask": f.Image(shape=(None, None, 1)), "file_name": f.Text()}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i in range(2):
            trimap = (np.arange(20).reshape(4, 5) % 3 + 1).astype(np.uint8)
            box = tfds.features.BBox(0.25, 0.2, 0.75, 0.6) if i == 0 else tfds.features.BBox(0.0, 0.0, 0.0, 0.0)
            yield i, {"image": _png(np.full((4, 5, 3), i)), "label": i, "species": 1 - i,
                      "head_bbox": box, "segmentation_mask": _png(trimap), "file_name": f"{i}.jpg"}


def _prepare(builder_cls, data_dir: Path) -> None:
    skip_stats = tfds.download.DownloadConfig(compute_stats=tfds.download.ComputeStatsMode.SKIP)
    builder_cls(data_dir=str(data_dir), file_format="array_record").download_and_prepare(
        download_config=skip_stats)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    data_dir = tmp_path_factory.mktemp("tfds")
    _prepare(JaxvisionTinyDet, data_dir)
    _prepare(FakePets, data_dir)
    return data_dir


def _cfg(name: str, data_dir: Path | str | None):
    c = data_config(name)
    c.data_dir = None if data_dir is None else str(data_dir)
    return c


def test_registered_names():
    names = tfds_source.registered_names()
    assert names == sorted(names) and "mnist" in names and "oxford_iiit_pet" in names
    for name in ("mnist", "mnist:3.0.1", "tfds:cifar10", "voc/2007", "jaxvision_tiny_det"):
        assert tfds_source.is_registered(name), name
    assert not tfds_source.is_registered("no_such_dataset_xyz")
    assert "tensorflow" not in sys.modules


def test_unknown_name_suggests(tmp_path):
    with pytest.raises(DataError, match=r"unknown dataset name 'mnits' \(data\.name\).*Did you mean: .*mnist"):
        build_source(_cfg("mnits", tmp_path), "train")
    with pytest.raises(DataError, match="Did you mean: .*fashion_mnist"):
        tfds_source.prepare("fashion_mnis", None, str(tmp_path))


def test_unprepared_dataset_gives_prepare_command(tmp_path):
    with pytest.raises(DataError) as err:
        build_source(_cfg("mnist", tmp_path), "train")
    msg = str(err.value)
    assert "python -m jaxvision data prepare mnist --manual_dir " in msg
    assert f"--data_dir {tmp_path}" in msg and "pip install -e '.[prepare]'" in msg
    assert "data.data_dir" in msg


def test_missing_manual_files_are_named(tmp_path):
    assert tfds_source.manual_files("mnist") == MNIST_FILES
    manual = tmp_path / "manual"
    manual.mkdir()
    for f in MNIST_FILES[:2]:
        (manual / f).write_bytes(b"")
    with pytest.raises(DataError) as err:
        tfds_source.prepare("mnist", str(manual), str(tmp_path / "out"))
    msg = str(err.value)
    assert str(manual) in msg and MNIST_FILES[2] in msg and MNIST_FILES[3] in msg
    assert MNIST_FILES[0] not in msg
    with pytest.raises(DataError, match="is not a folder"):
        tfds_source.prepare("mnist", str(tmp_path / "nowhere"), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()  # nothing was written


def test_missing_tensorflow_message(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # makes `import tensorflow` fail
    for f in MNIST_FILES:
        (tmp_path / f).write_bytes(b"")
    with pytest.raises(DataError, match=r"needs tensorflow.*pip install -e '\.\[prepare\]'"):
        tfds_source.prepare("mnist", str(tmp_path), str(tmp_path / "out"))


def test_tiny_detection_dataset_round_trip(tiny_dir):
    src = build_source(_cfg("jaxvision_tiny_det", tiny_dir), "train")
    assert len(src) == 5
    info = src.info
    assert info.keys == ("image", "label", "mask", "boxes", "box_classes",
                         "box_crowd", "box_difficult", "box_area")
    assert (info.num_classes, info.class_names, info.num_box_classes) == (3, ("a", "b", "c"), 2)
    assert info.box_class_names == ("x", "y")
    seen = set()
    for i in range(len(src)):
        ex = validate_example(src[i])
        # TFDS shuffles at prepare time: find the written example by its label and size.
        k = next(j for j in range(5) if _det_example(j)["image"].shape[0] == ex["image"].shape[0])
        seen.add(k)
        e = _det_example(k)
        np.testing.assert_array_equal(ex["image"], e["image"])
        assert ex["label"].dtype == np.int32 and int(ex["label"]) == e["label"]
        np.testing.assert_array_equal(ex["mask"], np.where(e["mask"] == 255, IGNORE_LABEL, e["mask"]))
        h, w = e["image"].shape[:2]
        # Hand computation: normalized [ymin, xmin, ymax, xmax] times [H, W, H, W].
        expected = [[0.5 * h, 0.25 * w, 1.0 * h, 0.75 * w], [0.0, 0.0, 0.5 * h, 0.125 * w]][: k % 3]
        np.testing.assert_allclose(ex["boxes"], np.asarray(expected, np.float32).reshape(-1, 4), atol=1e-5)
        assert ex["boxes"].dtype == np.float32 and ex["box_classes"].tolist() == e["box_label"]
        # Row k of every per-box key is box k (the two boxes' values differ).
        assert ex["box_crowd"].dtype == np.bool_ and ex["box_crowd"].tolist() == e["is_crowd"]
        assert ex["box_difficult"].dtype == np.bool_ and ex["box_difficult"].tolist() == e["is_difficult"]
        assert ex["box_area"].dtype == np.float32 and ex["box_area"].tolist() == e["area"]
        assert all(ex[key].shape == (k % 3,) for key in ("box_crowd", "box_difficult", "box_area"))
        assert "is_truncated" not in ex and "box_truncated" not in ex
    assert seen == set(range(5))
    # Pickled as grain workers do: reopens lazily and reads the same data.
    clone = pickle.loads(pickle.dumps(src))
    np.testing.assert_array_equal(clone[3]["image"], src[3]["image"])
    assert len(build_source(_cfg("tfds:jaxvision_tiny_det", tiny_dir), "train[1:4]")) == 3
    assert len(build_source(_cfg("jaxvision_tiny_det", tiny_dir), "test")) == 2
    with pytest.raises(DataError, match="split 'val' is not available.*train, test"):
        build_source(_cfg("jaxvision_tiny_det", tiny_dir), "val")
    with pytest.raises(DataError, match="is empty"):
        build_source(_cfg("jaxvision_tiny_det", tiny_dir), "test[:10%]")
    with pytest.raises(IndexError):
        src[5]


def test_oxford_iiit_pet_mapping(tiny_dir):
    src = build_source(_cfg("oxford_iiit_pet", tiny_dir), "train")
    assert src.info.num_box_classes == 2 and src.info.num_mask_classes == 2
    # The head boxes' classes are the species, not the breeds of `label`.
    assert src.info.box_class_names == ("Cat", "Dog")
    assert src.info.keys == ("image", "label", "mask", "boxes", "box_classes")
    assert not {"box_crowd", "box_difficult", "box_area"} & (set(src[0]) | set(src[1]))
    trimap = np.arange(20).reshape(4, 5) % 3 + 1
    by_label = {int(src[i]["label"]): src[i] for i in range(2)}
    for ex in by_label.values():
        np.testing.assert_array_equal(ex["mask"], np.select([trimap == 1, trimap == 2], [1, 0], IGNORE_LABEL))
    # Species Dog (1) for label 0, with head box [0.25, 0.2, 0.75, 0.6] * [4, 5, 4, 5].
    np.testing.assert_allclose(by_label[0]["boxes"], [[1.0, 1.0, 3.0, 3.0]], atol=1e-5)
    assert by_label[0]["box_classes"].tolist() == [1]
    assert by_label[1]["boxes"].shape == (0, 4) and by_label[1]["box_classes"].shape == (0,)


def test_real_voc_and_coco_features_map_per_box_keys(tmp_path):
    """The feature names of the real TFDS builders: voc/2007 from the installed builder (its
    info needs no TensorFlow), coco/2017's ``objects`` as written in TFDS's coco.py (whose info
    imports TensorFlow)."""
    f = tfds.features
    voc = tfds.builder("voc/2007", data_dir=str(tmp_path)).info.features
    plan = tfds_source._feature_plan(voc, "voc/2007")
    assert plan["box_label"] == "label" and plan["box_meta"] == {"box_difficult": "is_difficult"}
    assert plan["box_class_names"][:3] == ("aeroplane", "bicycle", "bird") and plan["num_box_classes"] == 20
    coco = f.FeaturesDict({"image": f.Image(encoding_format="jpeg"), "image/filename": f.Text(),
                           "image/id": np.int64,
                           "objects": f.Sequence({"id": np.int64, "area": np.int64, "bbox": f.BBoxFeature(),
                                                  "label": f.ClassLabel(names=["person", "bicycle"]),
                                                  "is_crowd": np.bool_})})
    plan = tfds_source._feature_plan(coco, "coco/2017")
    assert plan["box_meta"] == {"box_crowd": "is_crowd", "box_area": "area"}
    assert plan["box_class_names"] == ("person", "bicycle") and plan["label"] is None
    assert "tensorflow" not in sys.modules


def _prepared_mnist_dir() -> str:
    for d in (os.environ.get("JAXVISION_TFDS_DATA_DIR"), os.path.expanduser("~/tensorflow_datasets")):
        if d and any(Path(d, "mnist").glob("*/mnist-test.array_record*")):
            return d
    pytest.skip("no prepared mnist (array_record) in $JAXVISION_TFDS_DATA_DIR or ~/tensorflow_datasets")


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path) as f:
        data = f.read()
    ndim = data[3]
    shape = np.frombuffer(data[4: 4 + 4 * ndim], ">u4")
    return np.frombuffer(data[4 + 4 * ndim:], np.uint8).reshape(shape)


def test_real_prepared_mnist():
    data_dir = _prepared_mnist_dir()
    train = build_source(_cfg("mnist", data_dir), "train")
    assert len(train) == 60000 and train.info.num_classes == 10
    test = build_source(_cfg("mnist", data_dir), "test")
    examples = [test[i] for i in range(len(test))]
    assert all(e["image"].shape == (28, 28, 1) and e["image"].dtype == np.uint8 for e in examples)
    labels = np.array([int(e["label"]) for e in examples])
    # The well-known MNIST test label counts.
    assert np.bincount(labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    raw = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mnist"
    if raw.is_dir():  # TFDS shuffles; compare as multisets of (pixels, label) with the IDX files
        images, idx_labels = _idx(raw / "t10k-images-idx3-ubyte.gz"), _idx(raw / "t10k-labels-idx1-ubyte.gz")
        ours = sorted((e["image"].tobytes(), int(e["label"])) for e in examples)
        assert ours == sorted((im.tobytes(), int(y)) for im, y in zip(images, idx_labels, strict=True))


def test_prepare_gives_each_dataset_its_own_download_folder(tmp_path, monkeypatch):
    """TFDS names extracted manual files after the archive alone, so mnist and fashion_mnist
    (same file names) prepared into one data_dir must not share a download folder: the second
    would silently be built from the first's extraction."""
    import tensorflow_datasets as tfds
    from jaxvision.data import tfds_source
    calls = []

    class FakeBuilder:
        data_dir = str(tmp_path / "prepared")

        def download_and_prepare(self, **kwargs):
            calls.append(kwargs)

    monkeypatch.setattr(tfds_source, "_require_prepare_deps", lambda: None)
    monkeypatch.setattr(tfds_source, "check_manual_dir", lambda name, manual_dir: None)
    monkeypatch.setattr(tfds, "builder", lambda name, data_dir: FakeBuilder())
    for name in ("mnist", "fashion_mnist", "coco/2017"):
        tfds_source.prepare(name, manual_dir=str(tmp_path), data_dir=str(tmp_path / "tfds"))
    folders = [c["download_dir"] for c in calls]
    assert folders == [str(tmp_path / "tfds" / "downloads" / n)
                       for n in ("mnist", "fashion_mnist", "coco_2017")]
    assert all(c["download_config"].manual_dir == str(tmp_path) for c in calls)
