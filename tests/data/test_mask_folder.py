"""Tests of the ``mask_folder`` semantic-segmentation source (jaxvision.data.maskfiles) on tiny
images/ + masks/ layouts written into tmp_path, alone and through the loader."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jaxvision.data.config import data_config
from jaxvision.data.example import IGNORE_LABEL, validate_example
from jaxvision.data.maskfiles import read_mask
from jaxvision.data.pipeline import make_loader
from jaxvision.data.source import BadExample, DataError, build_source


def _cfg(path: Path | None, **kw):
    c = data_config("mask_folder")
    c.path = None if path is None else str(path)
    for k, v in kw.items():
        c[k] = v
    return c


def _image(path: Path, h: int, w: int) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(h * 100 + w).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return arr


def _mask(path: Path, ids: np.ndarray, palette: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(np.asarray(ids, np.uint8), "L")
    if palette:  # VOC-style: the colours differ from the indices, which are the class ids
        im = im.convert("P")
        im.putpalette([(37 * i) % 256 for i in range(768)])
        im.putdata(np.asarray(ids, np.uint8).ravel().tolist())
    im.save(path)


def _ids(h: int, w: int, seed: int, top: int = 3) -> np.ndarray:
    ids = np.random.default_rng(seed).integers(0, top, (h, w))
    ids[0, 0] = 255  # one ignored pixel
    return ids


def _flat(root: Path, n: int = 5, classes: str | None = "bg\ncat\n\ndog\n") -> dict[str, np.ndarray]:
    """n images a0..a<n-1> (8x10, a2 as JPEG) with 'L' masks, a1's a palette PNG; returns the ids."""
    out = {}
    for k in range(n):
        stem = f"a{k}"
        _image(root / "images" / (stem + (".jpg" if k == 2 else ".png")), 8, 10)
        out[stem] = _ids(8, 10, k)
        _mask(root / "masks" / f"{stem}.png", out[stem], palette=k == 1)
    if classes is not None:
        (root / "classes.txt").write_text(classes)
    return out


def _expected(ids: np.ndarray, ignore: int | None = 255) -> np.ndarray:
    return np.where(ids == ignore, IGNORE_LABEL, ids) if ignore is not None else ids


def test_reads_masks_exactly_with_classes_txt(tmp_path):
    ids = _flat(tmp_path)
    assert Image.open(tmp_path / "masks" / "a1.png").mode == "P"
    src = build_source(_cfg(tmp_path), "all")
    assert len(src) == 5 and src.info.keys == ("image", "mask") and src.files[2] == "a2.jpg"
    assert src.info.num_mask_classes == 3 and src.info.mask_class_names == ("bg", "cat", "dog")
    assert src.classes_from == "classes.txt"
    for i in range(5):
        ex = src[i]
        assert ex["image"].shape == (8, 10, 3) and ex["image"].dtype == np.uint8
        assert ex["mask"].dtype == np.int32 and ex["mask"][0, 0] == IGNORE_LABEL
        np.testing.assert_array_equal(ex["mask"], _expected(ids[f"a{i}"]))  # palette: indices
        validate_example(ex, info=src.info)
    np.testing.assert_array_equal(src[0]["image"], np.asarray(Image.open(tmp_path / "images/a0.png")))
    clone = pickle.loads(pickle.dumps(src))  # grain workers pickle sources
    np.testing.assert_array_equal(clone[1]["mask"], src[1]["mask"])
    assert build_source(_cfg(tmp_path, channels=1), "all")[0]["image"].shape == (8, 10, 1)
    assert len(build_source(_cfg(tmp_path), "all[1:3]")) == 2


def test_ignore_value_and_16_bit(tmp_path):
    ids = _flat(tmp_path, n=2, classes=None)
    # ignore_value=None (or -1): 255 is a class id like any other.
    for none in (None, -1):
        src = build_source(_cfg(tmp_path, ignore_value=none), "all")
        np.testing.assert_array_equal(src[0]["mask"], ids["a0"])
        assert src.info.num_mask_classes == 256
    # Another ignore value: pixels of class 0 are ignored, 255 stays.
    src = build_source(_cfg(tmp_path, ignore_value=0), "all")
    np.testing.assert_array_equal(src[0]["mask"], _expected(ids["a0"], 0))
    # A 16-bit PNG: ids beyond 255 read exactly.
    wide = np.arange(80, dtype=np.uint16).reshape(8, 10) * 700
    Image.fromarray(wide).save(tmp_path / "wide.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "wide.png", ignore_value=None), wide)
    with pytest.raises(DataError, match=r"data.ignore_value=-2"):
        build_source(_cfg(tmp_path, ignore_value=-2), "all")


def test_holdout_split_and_scanned_classes(tmp_path):
    _flat(tmp_path, n=5, classes=None)
    # No classes.txt: ids 0..2 plus the test image a4 holding a 6 -> 7 classes in every split.
    _mask(tmp_path / "masks" / "a4.png", np.full((8, 10), 6))
    train = build_source(_cfg(tmp_path, holdout=0.4), "train")
    test = build_source(_cfg(tmp_path, holdout=0.4), "test")
    assert train.files == ("a0.png", "a1.png", "a2.jpg") and test.files == ("a3.png", "a4.png")
    assert train.info.num_mask_classes == test.info.num_mask_classes == 7
    assert train.info.mask_class_names == () and train.classes_from == "scan"
    with pytest.raises(DataError, match=r"unknown split 'val'.*all, train, test"):
        build_source(_cfg(tmp_path), "val")


def test_split_subfolders(tmp_path):
    ids = {}
    for split, stems in (("train", ["x1", "x2"]), ("val", ["y1"])):
        for s in stems:
            # Cityscapes-style: one more folder level (a city) under the split.
            _image(tmp_path / "images" / split / "city" / f"{s}.png", 6, 7)
            ids[s] = _ids(6, 7, len(ids), top=4 if split == "val" else 2)
            _mask(tmp_path / "masks" / split / "city" / f"{s}.png", ids[s])
    train = build_source(_cfg(tmp_path), "train")
    assert train.files == ("train/city/x1.png", "train/city/x2.png")
    np.testing.assert_array_equal(train[1]["mask"], _expected(ids["x2"]))
    val = build_source(_cfg(tmp_path), "validation")  # 'validation' answers to val/
    assert len(val) == 1 and val.info.num_mask_classes == train.info.num_mask_classes == 4
    assert len(build_source(_cfg(tmp_path), "all")) == 3
    with pytest.raises(DataError, match=r"unknown split 'test'.*train, val"):
        build_source(_cfg(tmp_path), "test")


def test_bad_inputs_name_their_file(tmp_path):
    _flat(tmp_path, n=4)
    (tmp_path / "masks" / "a1.png").unlink()
    with pytest.raises(BadExample, match=r"images/a1\.png'.*has no mask: expected masks/a1\.png"):
        build_source(_cfg(tmp_path), "all")
    Image.new("L", (10, 8)).save(tmp_path / "masks" / "a1.jpg")  # lossy masks are not read
    with pytest.raises(BadExample, match=r"masks/a1\.jpg is there, but a JPEG"):
        build_source(_cfg(tmp_path), "all")
    src = build_source(_cfg(tmp_path, bad_examples="skip"), "all")
    with pytest.raises(BadExample, match=r"a1\.png"):
        src[1]
    _mask(tmp_path / "masks" / "a1.png", np.zeros((8, 10)))
    # A mask of another size than its image.
    _mask(tmp_path / "masks" / "a2.png", np.zeros((8, 9)))
    with pytest.raises(BadExample, match=r"masks/a2\.png'.*is 9x8 .*its image .*a2\.jpg.* is 10x8"):
        build_source(_cfg(tmp_path), "all")[2]
    _mask(tmp_path / "masks" / "a2.png", np.zeros((8, 10)))
    # An id beyond classes.txt (3 classes), with the value and where it is.
    bad = np.zeros((8, 10))
    bad[4, 6] = 7
    _mask(tmp_path / "masks" / "a3.png", bad)
    with pytest.raises(BadExample, match=re.escape("masks/a3.png': pixel (row 4, column 6) holds 7, "
                                                   "not a class id in [0, 3)")):
        build_source(_cfg(tmp_path), "all")[3]
    # An unreadable mask: found by the class scan when there is no classes.txt.
    (tmp_path / "classes.txt").unlink()
    (tmp_path / "masks" / "a3.png").write_bytes(b"not a png")
    with pytest.raises(BadExample, match=r"masks/a3\.png'.*not an image"):
        build_source(_cfg(tmp_path), "all")
    assert len(build_source(_cfg(tmp_path, bad_examples="skip"), "all")) == 4
    # An RGB (colour-coded) mask is refused with the fix.
    Image.new("RGB", (10, 8)).save(tmp_path / "masks" / "a3.png")
    with pytest.raises(BadExample, match=r"a3\.png'.*mode-'RGB'.*convert colour-coded masks"):
        build_source(_cfg(tmp_path), "all")
    with pytest.raises(DataError, match=r"data.path is not set"):
        build_source(_cfg(None), "all")


def test_through_the_loader(tmp_path):
    _flat(tmp_path, n=3)
    loader = make_loader(_cfg(tmp_path, eval_pp="resize(16)", prefetch=1), "all", mode="eval",
                         global_batch=2, seed=0, process_index=0, process_count=1)
    batch = next(iter(loader))
    assert batch["image"].shape == (2, 16, 16, 3)
    assert batch["mask"].shape == (2, 16, 16) and batch["mask"].dtype == np.int32
    # Nearest neighbour: only the source's ids and IGNORE_LABEL survive the resize.
    assert set(np.unique(batch["mask"]).tolist()) <= {IGNORE_LABEL, 0, 1, 2}
