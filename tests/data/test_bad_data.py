"""Bad data: unreadable files and out-of-range targets in every local source. Under
``data.bad_examples='error'`` the loader stops with one line naming the file and the example;
under 'skip' it replaces the example deterministically and reports it (``Loader.skipped``).
Also ``data.max_pixels``, the value rules of ``validate_example`` and ``check_data_config``."""

from __future__ import annotations

import io
import re
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jaxvision.data import pipeline
from jaxvision.data.config import check_data_config, data_config
from jaxvision.data.example import ExampleError, validate_example
from jaxvision.data.loader import Loader, Skipped
from jaxvision.data.local import BadFile, read_image
from jaxvision.data.pipeline import make_loader
from jaxvision.data.source import ArraySource, BadExample, DataError, SourceInfo, build_source
from test_local import _cfg, _face_folder, _pets_tree, _save, _yolo_tree


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` gray pixels and holds none: PIL opens it (the
    header), and only decoding would fail, so a huge image costs 45 bytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"")


def _encoded(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), np.uint8)).save(buf, fmt)
    return buf.getvalue()


# kind -> (file contents, extra data settings, what the message says about the file)
BAD_IMAGES = {
    "empty": (b"", {}, "is empty (0 bytes)"),
    "text": (b"a text file, not an image\n", {}, "is not an image PIL can read"),
    "truncated_jpeg": (_encoded("JPEG")[:300], {}, "cannot be read (OSError"),
    "truncated_png": (_encoded("PNG")[:400], {}, "cannot be read (OSError"),
    "pil_bomb": (_png_header(30000, 30000), {}, "is 900,000,000 pixels, more than data.max_pixels"),
    # Above PIL's own bomb limit even when data.max_pixels allows it: PIL refuses, and says so.
    "pil_bomb_allowed": (_png_header(30000, 30000), {"max_pixels": 10**9},
                         "refused by PIL before decoding"),
    "max_pixels": (_png_header(100, 100), {"max_pixels": 1000},
                   "is 100x100 = 10,000 pixels, more than data.max_pixels=1,000"),
}


def _eval_pass(cfg, split: str, **settings) -> tuple[list[int], Loader]:
    """One eval pass (batch 1: the sources' images differ in size); returns the valid indices."""
    for key, value in settings.items():
        cfg[key] = value
    loader = make_loader(cfg, split, mode="eval", global_batch=1, seed=0)
    return [i for b in loader for i in b["index"][b["valid"]].tolist()], loader


def _assert_error(cfg, split: str, path: Path, index: int, says: str = "", **settings) -> None:
    """Asserts that the eval loader stops with a one-line DataError naming ``path`` and ``index``."""
    with pytest.raises(DataError) as info:
        _eval_pass(cfg, split, bad_examples="error", **settings)
    message = str(info.value)
    assert isinstance(info.value, BadExample) and info.value.index == index
    assert repr(str(path)) in message and f"[{index}]: " in message and says in message, message
    assert "data.bad_examples='skip'" in message and "\n" not in message


def _assert_skipped(cfg, split: str, path: Path, index: int, n: int, **settings) -> None:
    """Asserts that under 'skip' an eval pass yields every other example, the same each time,
    warns naming ``path``, and reports it in ``skipped()``."""
    with pytest.warns(UserWarning, match=re.escape(repr(str(path)))):
        seen, loader = _eval_pass(cfg, split, bad_examples="skip", **settings)
    assert sorted(seen) == [i for i in range(n) if i != index]
    assert loader.skipped() == Skipped(1, (str(path),))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert _eval_pass(cfg, split)[0] == seen


# ----------------------------------------------------------------------------- image_folder

@pytest.mark.parametrize("kind", list(BAD_IMAGES))
def test_image_folder_bad_file(tmp_path, kind):
    _face_folder(tmp_path, classes=("a", "b"), per_class=3)
    contents, settings, says = BAD_IMAGES[kind]
    bad = tmp_path / "a" / "3.pgm"  # index 2 of split 'all' (a/1, a/2, a/3, b/1, ...)
    bad.write_bytes(contents)
    with pytest.raises(BadFile, match=re.escape(says)):
        read_image(bad, 1, **settings)
    _assert_error(_cfg("image_folder", tmp_path), "all", bad, 2, says, **settings)
    _assert_skipped(_cfg("image_folder", tmp_path), "all", bad, 2, 6, **settings)


def test_bad_first_file_fails_at_build_and_train_skips_deterministically(tmp_path):
    _face_folder(tmp_path, classes=("a", "b"), per_class=3)
    bad = tmp_path / "a" / "1.pgm"
    bad.write_bytes(b"")
    # data.channels=0 reads the first image's header when the source is built.
    with pytest.raises(DataError, match=r"a/1\.pgm.*is empty.*data\.channels"):
        build_source(_cfg("image_folder", tmp_path), "all")
    with pytest.raises(BadExample, match=r"image_folder\[all\]\[0\]: .*a/1\.pgm"):
        build_source(_cfg("image_folder", tmp_path, channels=1), "all")
    cfg = _cfg("image_folder", tmp_path, bad_examples="skip")

    def two_epochs() -> tuple[list[int], Skipped]:
        loader = make_loader(cfg, "all", mode="train", global_batch=3, seed=4)
        it = iter(loader)
        return [i for _ in range(4) for i in next(it)["index"].tolist()], loader.skipped()

    with pytest.warns(UserWarning, match="a/1.pgm"):
        first, skipped = two_epochs()
    assert 0 not in first and skipped == Skipped(1, (str(bad),))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert two_epochs()[0] == first
    # A bare 'normalize' reads the training split outside the loader: the stand-in counts.
    cfg.train_split = "all"
    mean, _ = pipeline.train_stats(cfg)
    pipeline._STATS_CACHE.clear()
    assert mean.shape == (1,) and 0 < mean[0] < 255


def test_worker_processes_raise_and_skip_the_same(tmp_path):
    _face_folder(tmp_path, classes=("a",), per_class=4)
    bad = tmp_path / "a" / "2.pgm"
    bad.write_bytes(b"GIF89a broken")
    _assert_error(_cfg("image_folder", tmp_path, num_workers=1), "all", bad, 1)
    with pytest.warns(UserWarning, match="2.pgm"):
        seen, loader = _eval_pass(_cfg("image_folder", tmp_path, num_workers=1), "all",
                                  bad_examples="skip")
    assert sorted(seen) == [0, 2, 3] and loader.skipped() == Skipped(1, (str(bad),))


def test_all_examples_bad(tmp_path):
    _face_folder(tmp_path, classes=("a",), per_class=2)
    for f in (tmp_path / "a").glob("*.pgm"):
        f.write_bytes(b"")
    with pytest.raises(DataError, match="none of the 2 images"):
        build_source(_cfg("image_folder", tmp_path, bad_examples="skip"), "all")
    with warnings.catch_warnings(), pytest.raises(
            DataError, match=r"all 2 examples are bad.*e\.g\. .*\.pgm': is empty"):
        _eval_pass(_cfg("image_folder", tmp_path, channels=1), "all", bad_examples="skip")


# ----------------------------------------------------------------------------- npz

def _npz(path: Path, **arrays) -> Path:
    """Writes 4 gray 2x3 images (unless ``x_train`` is given) and ``arrays`` to ``path``."""
    if "x_train" not in arrays:
        arrays = {"train_image": np.zeros((4, 2, 3), np.uint8), **arrays}
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("arrays,name,index,says", [
    (dict(x_train=np.zeros((4, 2, 3), np.uint8), y_train=np.array([0, -1, 2, 1])),
     "y_train", 1, "'label' holds -1; expected an id in [0, 3)"),
    (dict(x_train=np.zeros((4, 2, 3), np.uint8), y_train=np.array([0, 1, 0.5, 1])),
     "y_train", 2, "'label' holds 0.5; expected a whole number"),
    (dict(x_train=np.zeros((4, 2, 3), np.uint8), y_train=np.array([0, 1, 2, 3]),
          class_names=np.array(["a", "b", "c"])), "y_train", 3, "'label' holds 3; expected an id in [0, 3)"),
    (dict(train_boxes=np.array([[[0, 0, 1, 1]]] * 2 + [[[5, 0, 2, 4]], [[0, 0, 1, 1]]], np.float32)),
     "train_boxes", 2, "'boxes' holds [5.0, 0.0, 2.0, 4.0] at index 0; expected finite"),
    (dict(train_mask=np.stack([np.zeros((2, 3), int)] * 3 + [np.full((2, 3), -2)])),
     "train_mask", 3, "'mask' holds -2 at position (0, 0); expected a class id"),
    (dict(train_identity=np.array([3, -3, 1, 0], np.int16)), "train_identity", 1, "'identity' holds -3"),
    (dict(train_disparity=np.stack([np.zeros((2, 3))] * 3 + [np.full((2, 3), np.nan)]).astype(np.float32)),
     "train_disparity", 3, "'disparity' holds nan"),
])
def test_npz_bad_targets(tmp_path, arrays, name, index, says):
    path = _npz(tmp_path / "d.npz", **arrays)
    _assert_error(_cfg("npz", path), "train", path, index, f"array '{name}': {says}")
    _assert_skipped(_cfg("npz", path), "train", path, index, 4)


def test_npz_refuses_object_and_string_arrays(tmp_path):
    labels = np.array([0, "one", 2, None], dtype=object)
    path = _npz(tmp_path / "o.npz", x_train=np.zeros((4, 2, 3), np.uint8), y_train=labels)
    for mode in ("error", "skip"):  # the whole array is unreadable: no example to skip to
        with pytest.raises(DataError, match=r"'y_train' \(label\) in .*o\.npz.* has dtype object; "
                                            "expected integers"):
            build_source(_cfg("npz", path, bad_examples=mode), "train")
    path = _npz(tmp_path / "s.npz", train_boxes=np.full((4, 1, 4), "1"))
    with pytest.raises(DataError, match=r"'train_boxes' \(boxes\).*dtype <U1; expected numbers"):
        build_source(_cfg("npz", path), "train")
    # Whole-number floats are ids too.
    path = _npz(tmp_path / "f.npz", x_train=np.zeros((4, 2, 3), np.uint8),
                y_train=np.array([0.0, 2.0, 1.0, 1.0]))
    assert [int(build_source(_cfg("npz", path), "train")[i]["label"]) for i in range(4)] == [0, 2, 1, 1]


# ----------------------------------------------------------------------------- middlebury

def _scenes(root: Path) -> None:
    for name in ("s1", "s2"):
        _save(root / name / "left.png", np.full((4, 6, 3), 50))
        _save(root / name / "right.png", np.full((4, 6, 3), 60))
        np.save(root / name / "disparity.npy", np.ones((4, 6), np.float32))


def test_middlebury_bad_files(tmp_path):
    _scenes(tmp_path)
    bad = tmp_path / "s2" / "right.png"
    bad.write_bytes(_encoded("PNG")[:200])
    _assert_error(_cfg("middlebury", tmp_path), "all", bad, 1, "cannot be read")
    _assert_skipped(_cfg("middlebury", tmp_path), "all", bad, 1, 2)
    _scenes(tmp_path)
    bad = tmp_path / "s1" / "disparity.npy"  # read when the source is built (max_disparity)
    bad.write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(BadExample, match=r"middlebury\[all\]\[0\]: .*s1/disparity\.npy': cannot be read"):
        build_source(_cfg("middlebury", tmp_path), "all")
    _assert_skipped(_cfg("middlebury", tmp_path), "all", bad, 0, 2)


# ----------------------------------------------------------------------------- yolo

@pytest.mark.parametrize("image,label,says", [
    (None, b"9 0.5 0.5 0.1 0.1\n", "line 1: class '9' is not a class id in [0, 4) (classes.txt)"),
    (None, b"1 0.5 0.5 0.1 0.1\n1.5 0.5 0.5 0.1 0.1\n", "line 2: class '1.5' is not a class id"),
    (None, b"1 0.5 0.5 0.1 -0.2\n", "'boxes' holds [12.0, 9.0, 8.0, 11.0] at index 0"),
    (None, b"1 0.5 nan 0.1 0.1\n", "'boxes' holds [nan"),
    (None, b"\xff\xfe\x00\x81 binary", "cannot be read (UnicodeDecodeError"),
    (b"", b"1 0.5 0.5 0.1 0.1\n", "is empty (0 bytes)"),
])
def test_yolo_bad_files(tmp_path, image, label, says):
    _yolo_tree(tmp_path)
    _save(tmp_path / "images" / "train" / "c.png", np.zeros((20, 20, 3)))  # index 2
    (tmp_path / "labels" / "train" / "c.txt").write_bytes(label)
    bad = tmp_path / ("labels/train/c.txt" if image is None else "images/train/c.png")
    if image is not None:
        bad.write_bytes(image)
    _assert_error(_cfg("yolo", tmp_path), "train", bad, 2, says)
    _assert_skipped(_cfg("yolo", tmp_path), "train", bad, 2, 3)


# ----------------------------------------------------------------------------- oxford_pets

@pytest.mark.parametrize("rel,contents,index,says", [
    ("annotations/xmls/Abyssinian_1.xml", b"<annotation><object>", 0, "cannot be read (ParseError"),
    ("annotations/xmls/Abyssinian_1.xml",
     b"<annotation><object><name>cat</name><bndbox><xmin>a</xmin></bndbox></object></annotation>", 0,
     "not four numbers"),
    ("annotations/trimaps/Bengal_3.png", b"", 3, "is empty (0 bytes)"),
    ("annotations/trimaps/Bengal_3.png", _encoded("PNG"), 3, "'mask' has spatial shape (16, 16)"),
    ("images/american_bulldog_1.jpg", b"not a jpeg", 2, "is not an image PIL can read"),
])
def test_oxford_pets_bad_files(tmp_path, rel, contents, index, says):
    _pets_tree(tmp_path)  # split 'all': Abyssinian_1, Abyssinian_2, american_bulldog_1, Bengal_3
    (tmp_path / rel).write_bytes(contents)
    _assert_error(_cfg("oxford_pets", tmp_path), "all", tmp_path / rel, index, says)
    _assert_skipped(_cfg("oxford_pets", tmp_path), "all", tmp_path / rel, index, 4)


# ----------------------------------------------------------------------------- value rules

@pytest.mark.parametrize("extra,match", [
    ({"label": np.int32(-1)}, r"'label' holds -1; expected an id in \[0, 5\)"),
    ({"label": np.int32(5)}, r"'label' holds 5; expected an id in \[0, 5\)"),
    ({"identity": np.int32(-2)}, r"'identity' holds -2; expected an id >= 0"),
    ({"mask": np.full((2, 2), 3, np.int32)}, r"'mask' holds 3 at position \(0, 0\); expected a class id "
                                             r"in \[0, 3\) or IGNORE_LABEL"),
    ({"boxes": np.array([[0, 3, 1, 1]], np.float32), "box_classes": np.zeros(1, np.int32)},
     r"'boxes' holds \[0.0, 3.0, 1.0, 1.0\] at index 0; expected finite \[y0, x0, y1, x1\] with "
     r"y0 <= y1 and x0 <= x1"),
    ({"boxes": np.zeros((1, 4), np.float32), "instance_mask": np.full((2, 2), 2, np.int32)},
     r"'instance_mask' holds 2 at position \(0, 0\)"),
    ({"disparity": np.full((2, 2), np.inf, np.float32)}, r"'disparity' holds inf"),
])
def test_validate_example_checks_values(extra, match):
    info = SourceInfo(name="s", split="train", keys=(), num_classes=5, num_mask_classes=3)
    example = {"image": np.zeros((2, 2, 3), np.uint8), **extra}
    with pytest.raises(ExampleError, match=r"^mine\[3\]: " + match) as e:
        validate_example(example, where="mine[3]", info=info)
    assert isinstance(e.value, DataError) and e.value.key in extra
    # IGNORE_LABEL and INVALID_DISPARITY are allowed.
    validate_example({"image": np.zeros((2, 2, 3), np.uint8), "mask": np.full((2, 2), -1, np.int32),
                      "disparity": np.full((2, 2), -1, np.float32)}, info=info)


def test_loader_refuses_negative_labels_of_an_array_source():
    src = ArraySource({"image": np.zeros((4, 2, 2, 3), np.uint8),
                       "label": np.array([0, 1, -1, 2], np.int32)}, name="mine", num_classes=3)
    with pytest.raises(ExampleError,
                       match=r"mine\[train\]\[2\]: 'label' holds -1; expected an id in \[0, 3\)"):
        list(Loader(src, global_batch=2, mode="eval", prefetch=1))


# ----------------------------------------------------------------------------- data config

@pytest.mark.parametrize("settings,match", [
    ({"num_workers": -1}, r"data\.num_workers=-1 must be >= 0 .*--config\.data\.num_workers=0"),
    ({"prefetch": 0}, r"data\.prefetch=0 must be >= 1"),
    ({"max_boxes": 0}, r"data\.max_boxes=0 must be >= 1"),
    ({"pk_identities": 0}, r"data\.pk_identities=0 must be >= 1"),
    ({"sampler": "pk", "pk_images": 1}, r"data\.pk_images=1 must be an integer >= 2 with data\.sampler='pk'"),
    ({"holdout": 1.0}, r"data\.holdout=1\.0 must be in \(0, 1\)"),
    ({"holdout": 0.0}, r"data\.holdout=0\.0 must be in \(0, 1\)"),
    ({"channels": 2}, r"data\.channels=2 must be one of 0, 1, 3"),
    ({"max_pixels": 0}, r"data\.max_pixels=0 must be >= 1"),
    ({"bad_examples": "ignore"}, r"data\.bad_examples='ignore' must be one of 'error', 'skip'"),
    ({"sampler": "balanced"}, r"data\.sampler='balanced' must be one of 'random', 'pk'"),
    ({"num_workers": 1.5}, r"data\.num_workers=1\.5 must be an integer"),
])
def test_data_config_ranges(settings, match):
    data = data_config()
    data.procedural.num_train, data.procedural.image_size = 8, 8
    for key, value in settings.items():
        if isinstance(value, float) and isinstance(data[key], int):
            del data[key]  # the ConfigDict would refuse a float; a loaded config may hold one
        data[key] = value
    with pytest.raises(DataError, match=match):
        check_data_config(data)
    with pytest.raises(DataError, match=match):
        make_loader(data, "train", mode="train", global_batch=4, seed=0)
    check_data_config(data_config())
