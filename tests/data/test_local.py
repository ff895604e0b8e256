"""Tests of the local-file sources (jaxvision.data.local) on tiny synthetic layouts built in
tmp_path, and on the real folders in ../shared/data (skipped when absent)."""

from __future__ import annotations

import pickle
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from PIL import Image

from jaxvision.data.config import data_config
from jaxvision.data.example import IGNORE_LABEL, INVALID_DISPARITY, validate_example
from jaxvision.data.local import from_config, read_image, yolo_to_boxes
from jaxvision.data.source import DataError, build_source


def _cfg(name: str, path: Path | str | None, **kw):
    c = data_config(name)
    c.path = None if path is None else str(path)
    for k, v in kw.items():
        c[k] = v
    return c


def _save(path: Path, array: np.ndarray, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8)).save(path, format=fmt)


def _all(source) -> list[dict]:
    return [source[i] for i in range(len(source))]


def test_read_image_modes(tmp_path):
    deep = np.array([[0, 255, 256, 65535]], np.uint16)
    Image.fromarray(deep).save(tmp_path / "d.png")  # 16-bit gray: the top 8 bits are kept
    np.testing.assert_array_equal(read_image(tmp_path / "d.png", 1)[..., 0], [[0, 0, 1, 255]])
    assert read_image(tmp_path / "d.png", 3).shape == (1, 4, 3)
    pal = Image.fromarray(np.array([[0, 1]], np.uint8), mode="P")
    pal.putpalette([10, 20, 30, 40, 50, 60] + [0] * 762)
    pal.save(tmp_path / "p.png", transparency=0)  # palette + transparency -> RGB, alpha dropped
    np.testing.assert_array_equal(read_image(tmp_path / "p.png", 3), [[[10, 20, 30], [40, 50, 60]]])
    rgb = np.array([[[255, 0, 0], [0, 0, 255]]], np.uint8)
    _save(tmp_path / "c.png", rgb)  # RGB -> gray with PIL's ITU-R 601-2 luma
    np.testing.assert_array_equal(read_image(tmp_path / "c.png", 1)[..., 0],
                                  [[int(255 * 299 / 1000), int(255 * 114 / 1000)]])


# ----------------------------------------------------------------------------- npz

def test_npz_layout_a(tmp_path):
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, (5, 4, 6), dtype=np.uint8)           # grayscale (N, H, W)
    x_test = rng.integers(0, 256, (3, 4, 6, 4), dtype=np.uint8)         # RGBA: alpha dropped
    y_train, y_test = np.array([0, 2, 1, 2, 0], np.uint8), np.array([1, 1, 0], np.uint8)
    path = tmp_path / "d.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
             class_names=np.array(["a", "b", "c"]), train_index=np.arange(5, dtype=np.int32))
    train = build_source(_cfg("npz", path), "train")
    assert len(train) == 5 and train.info.keys == ("image", "label")
    assert train.info.num_classes == 3 and train.info.class_names == ("a", "b", "c")
    for i, ex in enumerate(_all(train)):
        assert set(ex) == {"image", "label"}  # train_index is not an example key
        np.testing.assert_array_equal(ex["image"], x_train[i][..., None])
        assert ex["label"].dtype == np.int32 and int(ex["label"]) == y_train[i]
    test = build_source(_cfg("npz", path), "test")
    np.testing.assert_array_equal(test[2]["image"], x_test[2, ..., :3])
    assert [int(e["label"]) for e in _all(test)] == [1, 1, 0]
    # Slices come from build_source and index the right rows.
    sliced = build_source(_cfg("npz", path), "train[1:3]")
    np.testing.assert_array_equal(sliced[1]["image"], x_train[2][..., None])
    # Pickled (as grain workers do), the source reloads its arrays and gives the same examples.
    clone = pickle.loads(pickle.dumps(train))
    np.testing.assert_array_equal(clone[4]["image"], train[4]["image"])


def test_npz_first_reads_from_many_threads_load_the_file_once(tmp_path, monkeypatch):
    """grain reads with threads: the first examples read at once load the arrays one time, and
    np.load's header parsing (ast, not thread-safe in CPython 3.11) runs in one thread at a
    time."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from jaxvision.data import local

    x = np.random.default_rng(1).integers(0, 256, (16, 4, 4, 3), dtype=np.uint8)
    path = tmp_path / "d.npz"
    np.savez(path, x_train=x, y_train=np.arange(16) % 3)
    # Pickled, as grain hands sources to its workers: the arrays load on the first read.
    source = pickle.loads(pickle.dumps(build_source(_cfg("npz", path), "train")))
    loads, inside, most = [], [0], [0]
    guard = threading.Lock()
    real_load = np.load

    def load(*a, **k):
        with guard:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        loads.append(1)
        try:
            return real_load(*a, **k)
        finally:
            with guard:
                inside[0] -= 1

    monkeypatch.setattr(local.np, "load", load)
    start = threading.Barrier(8)

    def read(i):
        start.wait()
        return source[i]["image"]

    with ThreadPoolExecutor(8) as pool:
        images = list(pool.map(read, range(8)))
    assert len(loads) == 1 and most[0] == 1
    for i, image in enumerate(images):
        np.testing.assert_array_equal(image, x[i])


def test_npz_layout_b_and_errors(tmp_path):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (4, 5, 6, 3), dtype=np.uint8)
    mask = rng.integers(-1, 4, (4, 5, 6)).astype(np.int64)
    corner = rng.uniform(0, 2, (4, 2, 2))
    boxes = np.concatenate([corner, corner + rng.uniform(0, 3, (4, 2, 2))], axis=-1)  # y0 <= y1
    path = tmp_path / "b.npz"
    np.savez(path, train_image=image, train_label=np.arange(4), train_mask=mask, train_boxes=boxes,
             train_box_classes=np.ones((4, 2), np.int64), val_image=image[:2], val_label=np.arange(2) + 5)
    src = build_source(_cfg("npz", path), "train")
    assert set(src.info.keys) == {"image", "label", "mask", "boxes", "box_classes"}
    # Counts are over every split of the file: labels go up to 6 (val), masks up to 3.
    assert src.info.num_classes == 7 and src.info.num_mask_classes == int(mask.max()) + 1
    ex = src[3]
    assert ex["mask"].dtype == np.int32 and ex["boxes"].dtype == np.float32
    np.testing.assert_array_equal(ex["mask"], mask[3])
    np.testing.assert_allclose(ex["boxes"], boxes[3].astype(np.float32))
    with pytest.raises(DataError, match=r"unknown split 'test'.*train, val"):
        build_source(_cfg("npz", path), "test")
    np.savez(tmp_path / "bad.npz", x_train=image, y_train=np.arange(3))
    with pytest.raises(DataError, match="different example counts"):
        build_source(_cfg("npz", tmp_path / "bad.npz"), "train")
    np.savez(tmp_path / "float.npz", x_train=image.astype(np.float32))
    with pytest.raises(DataError, match="expected uint8"):
        build_source(_cfg("npz", tmp_path / "float.npz"), "train")


@pytest.mark.parametrize("name", ["npz", "image_folder", "middlebury", "yolo", "oxford_pets"])
def test_missing_path_errors(tmp_path, name):
    with pytest.raises(DataError, match=r"data\.path is not set"):
        build_source(_cfg(name, None), "train")
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=r"data\.path=.*nowhere.*does not exist.*expects"):
        build_source(_cfg(name, missing), "train")


# ----------------------------------------------------------------------------- image_folder

def _face_folder(root: Path, classes=("s10", "s2", "s1"), per_class=10) -> dict[tuple[str, str], int]:
    """Writes gray 3x2 PGMs whose pixel value encodes (class, image); returns {(cls, file): value}."""
    values = {}
    (root / "README").parent.mkdir(parents=True, exist_ok=True)
    (root / "README").write_text("not an image")
    for ci, cls in enumerate(classes):
        (root / cls).mkdir(parents=True, exist_ok=True)
        (root / cls / "notes.txt").write_text("skip me")
        for k in range(1, per_class + 1):
            v = 20 * ci + k
            _save(root / cls / f"{k}.pgm", np.full((3, 2), v))
            values[(cls, f"{k}.pgm")] = v
    return values


def test_image_folder_natural_sort_labels_and_splits(tmp_path):
    values = _face_folder(tmp_path)
    # An RGB image in a gray folder is converted to the source's one channel.
    _save(tmp_path / "s2" / "11.png", np.full((3, 2, 3), [90, 90, 90]))
    everything = build_source(_cfg("image_folder", tmp_path), "all")
    assert everything.info.class_names == ("s1", "s2", "s10")
    assert len(everything) == 31 and everything.info.num_identities == 3
    order = [(cls, f"{k}.pgm") for cls in ("s1", "s2", "s10") for k in range(1, 11)]
    order.insert(20, ("s2", "11.png"))
    for ex, (cls, f) in zip(_all(everything), order, strict=True):
        assert ex["image"].shape == (3, 2, 1)
        assert int(ex["image"][0, 0, 0]) == values.get((cls, f), 90)
        assert int(ex["label"]) == int(ex["identity"]) == ("s1", "s2", "s10").index(cls)

    cfg = _cfg("image_folder", tmp_path, holdout=0.3, split_by="image")
    train, test = build_source(cfg, "train"), build_source(cfg, "test")
    # Per class: 10 images -> 7 train + last 3 test; s2 has 11 -> round(3.3) = 3 test.
    assert (len(train), len(test)) == (7 + 8 + 7, 3 + 3 + 3)
    test_vals = sorted(int(e["image"][0, 0, 0]) for e in _all(test))
    # Values: s10 -> 1..10, s2 -> 21..30 (+ 90 for 11.png), s1 -> 41..50.
    assert test_vals == sorted([48, 49, 50] + [29, 30, 90] + [8, 9, 10])
    train_vals = [int(e["image"][0, 0, 0]) for e in _all(train)]
    all_vals = [int(e["image"][0, 0, 0]) for e in _all(everything)]
    assert sorted(train_vals + test_vals) == sorted(all_vals)
    assert train.info.class_names == test.info.class_names == everything.info.class_names

    cfg = _cfg("image_folder", tmp_path, holdout=0.34, split_by="identity")
    train, test = build_source(cfg, "train"), build_source(cfg, "test")
    assert train.info.class_names == ("s1", "s2") and test.info.class_names == ("s10",)
    assert {int(e["label"]) for e in _all(test)} == {0} and len(test) == 10
    assert {int(e["identity"]) for e in _all(train)} == {0, 1} and len(train) == 21


@settings(max_examples=12, deadline=None)
@given(sizes=st.lists(st.integers(1, 5), min_size=1, max_size=4), holdout=st.floats(0.0, 0.95),
       split_by=st.sampled_from(["image", "identity"]))
def test_image_folder_splits_are_disjoint_and_cover(sizes, holdout, split_by):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for ci, n in enumerate(sizes):
            for k in range(n):
                _save(root / f"c{ci}" / f"{k}.png", np.full((1, 1), 10 * ci + k))
        cfg = _cfg("image_folder", root, holdout=holdout, split_by=split_by)

        def names(split):
            src = from_config(cfg, split)
            return [(src.info.class_names[int(e["label"])], int(e["image"][0, 0, 0])) for e in _all(src)]

        train, test, every = names("train"), names("test"), names("all")
        assert not set(train) & set(test)
        assert sorted(train + test) == sorted(every)
        if split_by == "image":  # every class keeps at least one training image
            assert {c for c, _ in train} == {f"c{i}" for i in range(len(sizes))}
        else:
            assert len({c for c, _ in train}) >= 1


def test_image_folder_errors(tmp_path):
    _face_folder(tmp_path, classes=("a",), per_class=2)
    with pytest.raises(DataError, match="unknown split 'val'"):
        build_source(_cfg("image_folder", tmp_path), "val")
    with pytest.raises(DataError, match=r"data\.holdout"):
        build_source(_cfg("image_folder", tmp_path, holdout=1.5), "train")
    with pytest.raises(DataError, match=r"data\.split_by"):
        build_source(_cfg("image_folder", tmp_path, split_by="person"), "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class folders with images"):
        build_source(_cfg("image_folder", tmp_path / "empty"), "all")
    with pytest.raises(DataError, match="is not a folder"):
        build_source(_cfg("image_folder", tmp_path / "README"), "all")


# ----------------------------------------------------------------------------- middlebury

def _stereo_pair(rng, h, w, disp):
    """Returns (left, right) with left[y, x] == right[y, x - disp[y, x]] wherever x - disp >= 0."""
    right = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    left = right.copy()
    for y in range(h):
        for x in range(w):
            if x - disp[y, x] >= 0:
                left[y, x] = right[y, x - disp[y, x]]
    return left, right


def test_middlebury_scenes(tmp_path):
    rng = np.random.default_rng(0)
    h, w = 6, 10
    disp = rng.integers(1, 4, (h, w))
    left, right = _stereo_pair(rng, h, w, disp)
    gray = disp * 16
    gray[0, :] = 0  # unknown border, as in tsukuba
    ts = tmp_path / "tsukuba"
    _save(ts / "scene1.row3.col3.ppm", left, "PPM")
    _save(ts / "scene1.row3.col4.ppm", right, "PPM")
    _save(ts / "truedisp.row3.col3.pgm", gray, "PPM")
    gen = tmp_path / "zgeneric"
    _save(gen / "left.png", left[..., 0])  # grayscale: converted to RGB
    _save(gen / "right.png", right)
    fdisp = disp.astype(np.float32) + 0.25
    fdisp[1, 1] = np.nan
    np.save(gen / "disparity.npy", fdisp)
    np.save(gen / "disparity_right.npy", np.full((h, w), 2.5, np.float32))
    (tmp_path / "notes").mkdir()  # folders without a scene are skipped

    for split in ("all", "train", "test"):
        src = build_source(_cfg("middlebury", tmp_path), split)
        assert len(src) == 2
        assert src.info.keys == ("image", "image_right", "disparity", "disparity_right")
        assert src.info.max_disparity == pytest.approx(float(np.nanmax(fdisp)))
    a, b = src[0], src[1]
    np.testing.assert_array_equal(a["image"], left)
    np.testing.assert_array_equal(a["image_right"], right)
    expected = np.where(gray > 0, gray / 16.0, INVALID_DISPARITY).astype(np.float32)
    np.testing.assert_array_equal(a["disparity"], expected)
    # tsukuba has no right-view disparity: all invalid, so every example has the same keys.
    assert np.all(a["disparity_right"] == INVALID_DISPARITY)
    # The disparity convention holds on the converted example.
    for y in range(1, h):
        for x in range(w):
            d = int(a["disparity"][y, x])
            if x - d >= 0:
                np.testing.assert_array_equal(a["image"][y, x], a["image_right"][y, x - d])
    np.testing.assert_array_equal(b["image"], np.repeat(left[..., :1], 3, axis=-1))
    assert b["disparity"][1, 1] == INVALID_DISPARITY
    np.testing.assert_allclose(np.delete(b["disparity"].ravel(), w + 1), np.delete(fdisp.ravel(), w + 1))
    assert np.all(b["disparity_right"] == 2.5)
    # data.path may also point at one scene folder.
    assert len(build_source(_cfg("middlebury", ts), "all")) == 1


def test_middlebury_errors(tmp_path):
    _save(tmp_path / "s" / "left.png", np.zeros((2, 2, 3)))
    with pytest.raises(DataError, match=r"right\.png"):
        build_source(_cfg("middlebury", tmp_path), "all")
    (tmp_path / "s" / "left.png").unlink()
    with pytest.raises(DataError, match="no stereo scene found"):
        build_source(_cfg("middlebury", tmp_path), "all")
    _save(tmp_path / "venus" / "im2.ppm", np.zeros((2, 2, 3)), "PPM")
    with pytest.raises(DataError, match=r"im6\.ppm"):
        build_source(_cfg("middlebury", tmp_path), "all")
    with pytest.raises(DataError, match="unknown split 'val'"):
        build_source(_cfg("middlebury", tmp_path), "val")


# ----------------------------------------------------------------------------- yolo

def _yolo_tree(root: Path, sub: str = "train") -> None:
    _save(root / "images" / sub / "a.png", np.full((20, 40, 3), 7))
    _save(root / "images" / sub / "b.jpg", np.full((10, 10), 200), "JPEG")  # gray JPEG, no labels
    (root / "labels" / sub).mkdir(parents=True, exist_ok=True)
    (root / "labels" / sub / "a.txt").write_text(
        "1 0.5 0.25 0.5 0.3\n\n2 0.1 0.2 0.3 0.2 0.3 0.6\n")  # a box and a polygon
    (root / "labels" / sub / "orphan.txt").write_text("0 0.5 0.5 0.1 0.1\n")  # no image: ignored
    (root / "classes.txt").write_text("zero\none\ntwo\nthree\n")


def test_yolo_boxes_and_layout(tmp_path):
    _yolo_tree(tmp_path)
    src = build_source(_cfg("yolo", tmp_path), "train")
    assert len(src) == 2 and src.info.keys == ("image", "boxes", "box_classes")
    assert src.info.num_box_classes == 4 and src.info.class_names == ("zero", "one", "two", "three")
    a, b = src[0], src[1]
    assert "label" not in a
    # Hand computation, H=20, W=40: cx=20, cy=5, w=20, h=6 -> [5-3, 20-10, 5+3, 20+10];
    # polygon x in [0.1, 0.3] (4..12 px), y in [0.2, 0.6] (4..12 px).
    np.testing.assert_allclose(a["boxes"], [[2, 10, 8, 30], [4, 4, 12, 12]], atol=1e-4)
    assert a["boxes"].dtype == np.float32 and a["box_classes"].tolist() == [1, 2]
    assert b["image"].shape == (10, 10, 3) and b["boxes"].shape == (0, 4) and b["box_classes"].shape == (0,)
    assert len(build_source(_cfg("yolo", tmp_path), "all")) == 2
    with pytest.raises(DataError, match="unknown split 'test'.*train"):
        build_source(_cfg("yolo", tmp_path), "test")


@settings(max_examples=30, deadline=None)
@given(st.floats(0.05, 0.95), st.floats(0.05, 0.95), st.floats(0.01, 0.1), st.floats(0.01, 0.1),
       st.integers(1, 500), st.integers(1, 500))
def test_yolo_to_boxes_matches_corner_formula(cx, cy, w, h, height, width):
    box = yolo_to_boxes(np.array([[cx, cy, w, h]]), height, width)[0]
    y0, x0 = (cy - h / 2) * height, (cx - w / 2) * width
    np.testing.assert_allclose(box, [y0, x0, y0 + h * height, x0 + w * width], rtol=1e-5, atol=1e-3)
    # Area and centre are kept (the box lies inside the image here).
    assert (box[2] - box[0]) * (box[3] - box[1]) == pytest.approx(w * h * height * width, rel=1e-4)


def test_yolo_subfolder_rules_and_errors(tmp_path):
    _yolo_tree(tmp_path / "c2017", "train2017")
    assert len(build_source(_cfg("yolo", tmp_path / "c2017"), "train")) == 2
    _yolo_tree(tmp_path / "one", "mine")  # a single subfolder answers to train and all
    (tmp_path / "one" / "classes.txt").unlink()
    src = build_source(_cfg("yolo", tmp_path / "one"), "train")
    assert len(src) == 2 and src.info.num_box_classes == 3 and src.info.class_names == ()
    _yolo_tree(tmp_path / "two", "train")
    _yolo_tree(tmp_path / "two", "val")
    assert len(build_source(_cfg("yolo", tmp_path / "two"), "validation")) == 2
    assert len(build_source(_cfg("yolo", tmp_path / "two"), "all")) == 4
    (tmp_path / "two" / "labels" / "val" / "a.txt").write_text("1 0.5 0.5\n")
    with pytest.raises(DataError, match=r"a\.txt.*line 1"):
        build_source(_cfg("yolo", tmp_path / "two"), "val")[0]
    _save(tmp_path / "nolabels" / "images" / "train" / "a.png", np.zeros((2, 2, 3)))
    with pytest.raises(DataError, match=r"folder .*labels.* not found"):
        build_source(_cfg("yolo", tmp_path / "nolabels"), "train")


# ----------------------------------------------------------------------------- oxford_pets

def _pets_tree(root: Path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    trimaps = {}
    sizes = {"Abyssinian_1": (8, 10), "Abyssinian_2": (6, 6), "american_bulldog_1": (7, 9), "Bengal_3": (5, 4)}
    for stem, (h, w) in sizes.items():
        trimaps[stem] = rng.integers(1, 4, (h, w))
        _save(root / "annotations" / "trimaps" / f"{stem}.png", trimaps[stem])
    img = root / "images"
    _save(img / "Abyssinian_1.jpg", rng.integers(0, 256, (8, 10, 4)), "PNG")  # RGBA PNG named .jpg
    _save(img / "Abyssinian_2.jpg", rng.integers(0, 4, (6, 6)), "GIF")       # GIF named .jpg
    _save(img / "american_bulldog_1.jpg", rng.integers(0, 256, (7, 9, 3)), "JPEG")
    _save(img / "Bengal_3.jpg", rng.integers(0, 256, (5, 4, 3)), "JPEG")
    (img / "Abyssinian_100.mat").write_bytes(b"\0")  # stray non-image, as in the real release
    (root / "annotations" / "xmls").mkdir(parents=True)
    (root / "annotations" / "xmls" / "Abyssinian_1.xml").write_text(
        "<annotation><filename>Abyssinian_1.jpg</filename><size><width>10</width><height>8</height>"
        "</size><object><name>cat</name><bndbox><xmin>3</xmin><ymin>2</ymin><xmax>5</xmax>"
        "<ymax>4</ymax></bndbox></object></annotation>")
    (root / "annotations" / "trainval.txt").write_text("Abyssinian_1 1 1 1\namerican_bulldog_1 2 2 1\n")
    (root / "annotations" / "test.txt").write_text("Bengal_3 6 1 6\nAbyssinian_2 1 1 1\n")
    return trimaps


def test_oxford_pets(tmp_path):
    trimaps = _pets_tree(tmp_path)
    every = build_source(_cfg("oxford_pets", tmp_path), "all")
    assert len(every) == 4 and every.info.class_names == ("Abyssinian", "american_bulldog", "Bengal")
    assert (every.info.num_classes, every.info.num_box_classes, every.info.num_mask_classes) == (3, 2, 2)
    train = build_source(_cfg("oxford_pets", tmp_path), "train")
    test = build_source(_cfg("oxford_pets", tmp_path), "test")
    assert len(train) == 2 and len(test) == 2
    a = train[0]
    assert a["image"].shape == (8, 10, 3) and a["image"].dtype == np.uint8
    expected = np.full(trimaps["Abyssinian_1"].shape, IGNORE_LABEL)
    for (i, j), t in np.ndenumerate(trimaps["Abyssinian_1"]):
        expected[i, j] = {1: 1, 2: 0}.get(int(t), IGNORE_LABEL)
    np.testing.assert_array_equal(a["mask"], expected)
    # VOC pixels 3..5 (x) and 2..4 (y), 1-based inclusive -> [1, 2, 4, 5] continuous.
    np.testing.assert_array_equal(a["boxes"], np.array([[1, 2, 4, 5]], np.float32))
    assert a["box_classes"].tolist() == [0] and int(a["label"]) == int(a["identity"]) == 0
    assert int(train[1]["label"]) == 1 and train[1]["boxes"].shape == (0, 4)
    bengal, gif = test[0], test[1]
    assert int(bengal["label"]) == 2 and bengal["box_classes"].shape == (0,)
    assert gif["image"].shape == (6, 6, 3) and gif["mask"].shape == (6, 6)
    for ex in _all(every):
        validate_example(ex)


def test_oxford_pets_head_splits_hold_out_every_fourth_boxed_image_of_each_breed(shared_data):
    cfg = _cfg("oxford_pets", shared_data / "oxford_pets")
    train, held = build_source(cfg, "heads_train"), build_source(cfg, "heads_eval")
    assert (len(train), len(held)) == (224, 72)  # 296 trainval images have head boxes
    assert train.info.box_class_names == ("cat", "dog")
    names = lambda src: [stem for stem, *_ in src._items]  # noqa: E731
    assert not set(names(train)) & set(names(held))
    for breed in ("Abyssinian", "american_bulldog", "Bengal"):
        n = sum(s.rsplit("_", 1)[0] == breed for s in names(held))
        m = sum(s.rsplit("_", 1)[0] == breed for s in names(train))
        assert n == (n + m) // 4, breed
    assert all(len(held[i]["boxes"]) >= 1 for i in range(0, 72, 9))


def test_oxford_pets_errors(tmp_path):
    _pets_tree(tmp_path)
    with pytest.raises(DataError, match="unknown split 'val'"):
        build_source(_cfg("oxford_pets", tmp_path), "val")
    (tmp_path / "annotations" / "test.txt").write_text("Sphynx_9 1 1 1\n")
    with pytest.raises(DataError, match="Sphynx_9"):
        build_source(_cfg("oxford_pets", tmp_path), "test")
    (tmp_path / "annotations" / "trimaps" / "Bengal_3.png").unlink()
    with pytest.raises(DataError, match=r"no trimap.*Bengal_3\.png"):
        build_source(_cfg("oxford_pets", tmp_path), "all")
    for f in (tmp_path / "annotations" / "trimaps").iterdir():
        f.unlink()
    (tmp_path / "annotations" / "trimaps").rmdir()
    with pytest.raises(DataError, match=r"trimaps.*not found.*expected"):
        build_source(_cfg("oxford_pets", tmp_path), "all")


def test_unknown_local_name():
    with pytest.raises(DataError, match="not a local file source"):
        from_config(_cfg("csv", "/tmp"), "train")


# ----------------------------------------------------------------------------- real data

def test_real_cifar10_npz(shared_data):
    src = build_source(_cfg("npz", shared_data / "cifar10" / "cifar10.npz"), "train")
    assert len(src) == 4000 and src.info.class_names[0] == "airplane"
    counts = np.bincount([int(src[i]["label"]) for i in range(len(src))], minlength=10)
    assert counts.tolist() == [396, 366, 420, 384, 422, 393, 414, 385, 407, 413]
    assert src[0]["image"].shape == (32, 32, 3)


def test_real_orl_faces(shared_data):
    root = shared_data / "orl_faces" / "att_faces"
    every = build_source(_cfg("image_folder", root), "all")
    assert len(every) == 400 and every.info.num_identities == 40
    assert every.info.class_names[:3] == ("s1", "s2", "s3") and every.info.class_names[-1] == "s40"
    assert every[0]["image"].shape == (112, 92, 1)
    cfg = _cfg("image_folder", root, holdout=0.3, split_by="image")
    assert (len(build_source(cfg, "train")), len(build_source(cfg, "test"))) == (280, 120)
    cfg = _cfg("image_folder", root, holdout=0.25, split_by="identity")
    test = build_source(cfg, "test")
    assert len(test) == 100 and test.info.class_names[0] == "s31"


def test_real_coco128(shared_data):
    src = build_source(_cfg("yolo", shared_data / "coco128"), "train")
    assert len(src) == 128 and src.info.num_box_classes == 80 and src.info.class_names[0] == "person"
    n_boxes, classes = 0, []
    for i in range(len(src)):
        ex = src[i]
        h, w = ex["image"].shape[:2]
        b = ex["boxes"]
        assert ex["image"].shape[2] == 3  # the grayscale JPEG too
        assert np.all((b[:, 0] >= 0) & (b[:, 2] <= h) & (b[:, 1] >= 0) & (b[:, 3] <= w))
        assert np.all(b[:, 2] > b[:, 0]) and np.all(b[:, 3] > b[:, 1])
        n_boxes += len(b)
        classes += ex["box_classes"].tolist()
    # README: 929 boxes on the 128 images; its "person 261" counts all label files, 7 of
    # those persons are in the two label files without an image.
    assert n_boxes == 929 and np.bincount(classes)[0] == 261 - 7


def test_real_oxford_pets(shared_data):
    root = shared_data / "oxford_pets"
    assert len(build_source(_cfg("oxford_pets", root), "all")) == 600
    test = build_source(_cfg("oxford_pets", root), "test")
    assert len(test) == 298
    train = build_source(_cfg("oxford_pets", root), "train")
    assert len(train) == 300 and train.info.class_names == ("Abyssinian", "american_bulldog", "Bengal")
    species, labels = [], []
    for i in range(len(train)):
        ex = train[i]
        h, w = ex["image"].shape[:2]
        assert ex["mask"].shape == (h, w) and set(np.unique(ex["mask"])) <= {IGNORE_LABEL, 0, 1}
        assert np.all(ex["boxes"][:, 2:] <= [h, w])
        species += ex["box_classes"].tolist()
        labels.append(int(ex["label"]))
    assert np.bincount(species).tolist() == [198, 99]  # 297 head boxes: 198 cat, 99 dog


def _warp_errors(src: np.ndarray, ref: np.ndarray, disparity: np.ndarray, sign: int) -> tuple[float, float]:
    """Mean abs error of ``src`` sampled at ``x + sign * disparity`` (linear) against ``ref``, and
    of ``src`` unwarped against ``ref``, over pixels with valid disparity that stay inside."""
    src, ref = src.astype(np.float64), ref.astype(np.float64)
    h, w = ref.shape[:2]
    xs = np.arange(w)[None, :] + sign * np.where(disparity >= 0, disparity, 0)
    ok = (disparity >= 0) & (xs >= 0) & (xs <= w - 1)
    x0 = np.clip(np.floor(xs).astype(int), 0, w - 1)
    x1 = np.clip(x0 + 1, 0, w - 1)
    f = (xs - x0)[..., None]
    rows = np.arange(h)[:, None]
    warped = (1 - f) * src[rows, x0] + f * src[rows, x1]
    return float(np.abs(warped - ref)[ok].mean()), float(np.abs(src - ref)[ok].mean())


def test_real_middlebury_warp(shared_data):
    src = build_source(_cfg("middlebury", shared_data / "stereo_middlebury"), "all")
    assert len(src) == 4 and src.info.max_disparity == pytest.approx(55.0)
    n_right = 0
    for i in range(len(src)):
        ex = src[i]
        # README: with GT/scale the error is 4-8 gray levels, with zero disparity 15-38 (a
        # scale off by 2 also lands there, so the 0.5 factor catches a wrong scale).
        err_gt, err_zero = _warp_errors(ex["image_right"], ex["image"], ex["disparity"], -1)
        assert err_gt < 10 and err_gt < 0.5 * err_zero, (i, err_gt, err_zero)
        if np.any(ex["disparity_right"] >= 0):  # right view: right[x] == left[x + d_right]
            n_right += 1
            err_gt, err_zero = _warp_errors(ex["image"], ex["image_right"], ex["disparity_right"], 1)
            assert err_gt < 10 and err_gt < 0.5 * err_zero, (i, err_gt, err_zero)
    assert n_right == 3  # venus, cones, teddy
