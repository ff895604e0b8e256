"""Tests of the COCO-JSON and PASCAL-VOC-XML box sources (jaxvision.data.boxfiles) on tiny
layouts written into tmp_path, alone and through the loader."""

from __future__ import annotations

import json
import math
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jaxvision.data.boxfiles import VOC_CLASSES
from jaxvision.data.config import data_config
from jaxvision.data.example import validate_example
from jaxvision.data.pipeline import make_loader
from jaxvision.data.source import BadExample, DataError, build_source


def _cfg(name: str, path: Path | None, **kw):
    c = data_config(name)
    c.path = None if path is None else str(path)
    for k, v in kw.items():
        c[k] = v
    return c


def _save(path: Path, height: int, width: int, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(height * 100 + width)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path, format=fmt)


# ----------------------------------------------------------------------------- coco_json

def _coco(root: Path, split: str = "train", image_dir: str | None = None, **changes) -> Path:
    """Writes three images (a 20x30, b 16x16, c 10x12 without annotations) and their JSON;
    ``changes`` replace top-level JSON entries. Returns the JSON path."""
    folder = root / (split if image_dir is None else image_dir)
    _save(folder / "a.png", 20, 30)
    _save(folder / "sub" / "b.jpg", 16, 16, "JPEG")
    _save(folder / "c.png", 10, 12)
    data = {
        "images": [{"id": 11, "file_name": "a.png", "width": 30, "height": 20},
                   {"id": 5, "file_name": "sub/b.jpg", "width": 16, "height": 16},
                   {"id": 30, "file_name": "c.png"}],
        # Non-contiguous, unsorted ids: 3 -> class 0 (cat), 7 -> 1 (dog), 90 -> 2 (zebra).
        "categories": [{"id": 7, "name": "dog"}, {"id": 90, "name": "zebra"}, {"id": 3, "name": "cat"}],
        "annotations": [
            {"id": 1, "image_id": 11, "category_id": 7, "bbox": [2, 4, 10, 6], "area": 40.5, "iscrowd": 0},
            {"id": 3, "image_id": 5, "category_id": 3, "bbox": [1, 1, 4, 4], "area": 10.0, "iscrowd": 0},
            {"id": 2, "image_id": 11, "category_id": 90, "bbox": [0.5, 1.5, 3, 2], "iscrowd": 1},
        ],
    } | changes
    path = root / "annotations" / f"instances_{split}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def test_coco_json_reads_boxes_classes_crowd_area(tmp_path):
    _coco(tmp_path)
    src = build_source(_cfg("coco_json", tmp_path), "train")
    assert len(src) == 3 and src.info.keys == ("image", "boxes", "box_classes", "box_crowd", "box_area")
    assert src.info.num_box_classes == 3 and src.info.class_names == ("cat", "dog", "zebra")
    assert src.category_ids == (3, 7, 90) and src.image_ids == (11, 5, 30)
    a, b, c = (src[i] for i in range(3))
    assert a["image"].shape == (20, 30, 3) and a["image"].dtype == np.uint8
    # [x, y, w, h] = [2, 4, 10, 6] -> [y, x, y + h, x + w] = [4, 2, 10, 12]; file order within an image.
    np.testing.assert_array_equal(a["boxes"], np.array([[4, 2, 10, 12], [1.5, 0.5, 3.5, 3.5]], np.float32))
    assert a["boxes"].dtype == np.float32 and a["box_classes"].dtype == np.int32
    assert a["box_classes"].tolist() == [1, 2] and a["box_crowd"].tolist() == [False, True]
    # area as given, else the box's area (3 x 2).
    np.testing.assert_array_equal(a["box_area"], np.array([40.5, 6.0], np.float32))
    assert a["box_crowd"].dtype == np.bool_ and a["box_area"].dtype == np.float32
    np.testing.assert_array_equal(b["boxes"], [[1, 1, 5, 5]])
    assert b["box_classes"].tolist() == [0] and b["box_area"].tolist() == [10.0]
    # An image without annotations: zero boxes, every per-box key empty with its dtype.
    assert c["image"].shape == (10, 12, 3) and c["boxes"].shape == (0, 4)
    assert c["boxes"].dtype == np.float32 and c["box_classes"].shape == (0,)
    assert c["box_crowd"].dtype == np.bool_ and c["box_area"].shape == (0,)
    for ex in (a, b, c):
        validate_example(ex, info=src.info)
    # Deterministic, picklable (grain workers), sliceable through build_source.
    clone = pickle.loads(pickle.dumps(src))
    np.testing.assert_array_equal(clone[0]["boxes"], a["boxes"])
    np.testing.assert_array_equal(clone[0]["image"], a["image"])
    assert len(build_source(_cfg("coco_json", tmp_path), "train[1:]")) == 2
    gray = build_source(_cfg("coco_json", tmp_path, channels=1), "train")
    assert gray[0]["image"].shape == (20, 30, 1)


def test_coco_json_layouts(tmp_path):
    # The COCO 2017 names: instances_val2017.json with val2017/; 'validation' answers to val.
    _coco(tmp_path / "c2017", "val2017")
    assert len(build_source(_cfg("coco_json", tmp_path / "c2017"), "validation")) == 3
    # Images in images/<split>/ or images/.
    _coco(tmp_path / "nested", "train", image_dir="images/train")
    assert build_source(_cfg("coco_json", tmp_path / "nested"), "train")[1]["boxes"].shape == (1, 4)
    _coco(tmp_path / "flat", "train", image_dir="images")
    assert len(build_source(_cfg("coco_json", tmp_path / "flat"), "train")) == 3
    # No annotations list at all (an image-info file): every image has zero boxes.
    path = _coco(tmp_path / "test", "test")
    data = json.loads(path.read_text())
    del data["annotations"]
    path.write_text(json.dumps(data))
    src = build_source(_cfg("coco_json", tmp_path / "test"), "test")
    assert all(src[i]["boxes"].shape == (0, 4) for i in range(3))


def _annotation(**kw) -> dict:
    return {"id": 42, "image_id": 11, "category_id": 7, "bbox": [1, 1, 2, 2], "iscrowd": 0} | kw


@pytest.mark.parametrize("bad, says", [
    (_annotation(bbox=[1, 1, -2, 2]), r"bbox \[1, 1, -2, 2\] has a negative width"),
    (_annotation(bbox=[1, 1, 2, -0.5]), r"negative height"),
    (_annotation(bbox=[1, math.nan, 2, 2]), r"is not finite"),
    (_annotation(bbox=[1, 1, 2]), r"is not four numbers \[x, y, width, height\]"),
    (_annotation(category_id=8), r"category_id 8 is not the id of one of the file's categories \(3, 7, 90\)"),
    (_annotation(area=-1), r"area -1 is not a finite number >= 0"),
])
def test_coco_json_bad_annotation_names_file_and_annotation(tmp_path, bad, says):
    path = _coco(tmp_path)
    data = json.loads(path.read_text())
    _coco(tmp_path, annotations=data["annotations"] + [bad])
    with pytest.raises(BadExample, match=re.escape(str(path)) + r".*annotation id 42 \(image 'a\.png', id 11\): .*"
                       + says) as e:
        build_source(_cfg("coco_json", tmp_path), "train")
    assert e.value.path == str(path) and e.value.index == 0
    # Under 'skip' the source builds and that example is skipped when loaded.
    src = build_source(_cfg("coco_json", tmp_path, bad_examples="skip"), "train")
    with pytest.raises(BadExample, match="annotation id 42"):
        src[0]
    assert src[1]["boxes"].shape == (1, 4)


def test_coco_json_file_errors(tmp_path):
    with pytest.raises(DataError, match=r"data\.path is not set"):
        build_source(_cfg("coco_json", None), "train")
    (tmp_path / "annotations").mkdir()
    expected = re.escape(str(tmp_path / "annotations" / "instances_train.json"))
    with pytest.raises(DataError, match=expected + r"' not found for split 'train'.*Set data\.path"):
        build_source(_cfg("coco_json", tmp_path), "train")
    path = _coco(tmp_path, "val")
    with pytest.raises(DataError, match=r"instances_val\.json.*data\.train_split"):
        build_source(_cfg("coco_json", tmp_path), "train")
    # An annotation of an image the file does not list: the whole file is wrong.
    _coco(tmp_path, "val", annotations=[_annotation(image_id=99)])
    with pytest.raises(DataError, match=re.escape(str(path)) + r".*annotation id 42 has image_id 99"):
        build_source(_cfg("coco_json", tmp_path), "val")
    path.write_text("{not json")
    with pytest.raises(DataError, match=re.escape(str(path)) + ".*JSONDecodeError"):
        build_source(_cfg("coco_json", tmp_path), "val")
    # A listed image missing from the folder: names the image and the JSON.
    _coco(tmp_path, "val")
    (tmp_path / "val" / "c.png").unlink()
    with pytest.raises(BadExample, match=re.escape(str(tmp_path / "val" / "c.png")) + ".*is missing: "
                       + re.escape(repr(str(path))) + " lists it as image id 30"):
        build_source(_cfg("coco_json", tmp_path), "val")
    # An image whose size differs from the JSON's width and height.
    _coco(tmp_path, "val", images=[{"id": 11, "file_name": "a.png", "width": 31, "height": 20}],
          annotations=[])
    with pytest.raises(BadExample, match=r"a\.png.*is 30x20 .* gives 31x20"):
        build_source(_cfg("coco_json", tmp_path), "val")


# ----------------------------------------------------------------------------- voc_xml

def _xml(objects: list[tuple], size: tuple[int, int] | None = None) -> str:
    """VOC XML of ``(name, difficult, xmin, ymin, xmax, ymax)`` objects; size = (height, width)."""
    head = f"<size><width>{size[1]}</width><height>{size[0]}</height><depth>3</depth></size>" if size else ""
    body = "".join(f"<object><name>{n}</name><pose>Left</pose><difficult>{d}</difficult><bndbox>"
                   f"<xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox>"
                   "</object>" for n, d, x0, y0, x1, y1 in objects)
    return f"<annotation><folder>VOC2007</folder>{head}{body}</annotation>"


def _voc(root: Path) -> None:
    objects = {"000005": [("dog", 0, 3, 2, 10, 8), ("person", 1, 1, 1, 4, 12)],
               "000012": [("tvmonitor", 0, 5, 5, 5, 5)],
               "000017": []}
    for (id_, objs), (h, w) in zip(objects.items(), [(12, 16), (8, 8), (6, 10)]):
        _save(root / "JPEGImages" / f"{id_}.jpg", h, w, "JPEG")
        (root / "Annotations").mkdir(parents=True, exist_ok=True)
        (root / "Annotations" / f"{id_}.xml").write_text(_xml(objs, (h, w)))
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "train.txt").write_text("000005\n000012\n000017\n")
    (root / "ImageSets" / "Main" / "val.txt").write_text("000012\n")
    (root / "ImageSets" / "Main" / "dog_train.txt").write_text("000005  1\n")  # class lists: not splits


def test_voc_xml_reads_boxes_classes_difficult(tmp_path):
    _voc(tmp_path)
    src = build_source(_cfg("voc_xml", tmp_path), "train")
    assert len(src) == 3 and src.ids == ("000005", "000012", "000017")
    assert src.info.keys == ("image", "boxes", "box_classes", "box_difficult")
    assert src.info.class_names == VOC_CLASSES and src.info.num_box_classes == 20
    a, b, c = (src[i] for i in range(3))
    assert a["image"].shape == (12, 16, 3)
    # 1-based inclusive xmin..xmax = 3..10, ymin..ymax = 2..8 -> [ymin - 1, xmin - 1, ymax, xmax].
    np.testing.assert_array_equal(a["boxes"], np.array([[1, 2, 8, 10], [0, 0, 12, 4]], np.float32))
    assert a["box_classes"].tolist() == [VOC_CLASSES.index("dog"), VOC_CLASSES.index("person")] == [11, 14]
    assert a["box_difficult"].tolist() == [False, True] and a["box_difficult"].dtype == np.bool_
    np.testing.assert_array_equal(b["boxes"], [[4, 4, 5, 5]])  # one pixel: [4, 5) x [4, 5)
    assert c["boxes"].shape == (0, 4) and c["box_difficult"].shape == (0,)
    for ex in (a, b, c):
        validate_example(ex, info=src.info)
    assert len(build_source(_cfg("voc_xml", tmp_path), "validation")) == 1
    # Own class names (data.class_names is a tuple).
    for names in (("person", "dog", "tvmonitor"),):
        own = build_source(_cfg("voc_xml", tmp_path, class_names=names), "train")
        assert own.info.class_names == ("person", "dog", "tvmonitor") and own.info.num_box_classes == 3
        assert own[0]["box_classes"].tolist() == [1, 0]


def test_voc_xml_errors(tmp_path):
    with pytest.raises(DataError, match=r"data\.path is not set"):
        build_source(_cfg("voc_xml", None), "train")
    _voc(tmp_path)
    lists = tmp_path / "ImageSets" / "Main"
    with pytest.raises(DataError, match=re.escape(str(lists / "test.txt")) +
                       r"' not found for split 'test'; split lists there: train, val\. Set data\.path"):
        build_source(_cfg("voc_xml", tmp_path), "test")
    # A class name outside the list: names the XML and the name.
    xml = tmp_path / "Annotations" / "000012.xml"
    xml.write_text(_xml([("dog", 0, 1, 1, 2, 2), ("unicorn", 0, 1, 1, 2, 2)]))
    with pytest.raises(BadExample, match=re.escape(str(xml)) + r".*object 2 has class name 'unicorn'"
                       r", which is not among the 20 VOC classes \('aeroplane'.*set data\.class_names"):
        build_source(_cfg("voc_xml", tmp_path), "val")
    with pytest.raises(BadExample, match=r"'dog', which is not among the 2 names of data\.class_names \('cat', 'unicorn'\)"):
        build_source(_cfg("voc_xml", tmp_path, class_names=("cat", "unicorn")), "val")
    xml.write_text(_xml([("dog", 0, 5, 1, 2, 2)]))  # xmax < xmin
    with pytest.raises(BadExample, match=re.escape(str(xml)) + r".*'boxes' holds \[0\.0, 4\.0, 2\.0, 2\.0\]"):
        build_source(_cfg("voc_xml", tmp_path), "val")
    xml.write_text("<annotation><object>")
    with pytest.raises(BadExample, match=re.escape(str(xml)) + ".*cannot be read"):
        build_source(_cfg("voc_xml", tmp_path), "val")
    xml.unlink()
    with pytest.raises(BadExample, match=re.escape(str(xml)) + r".*is missing: .*val\.txt' lists id '000012'"):
        build_source(_cfg("voc_xml", tmp_path), "val")
    (tmp_path / "JPEGImages" / "000017.jpg").unlink()
    src = build_source(_cfg("voc_xml", tmp_path, bad_examples="skip"), "train")
    with pytest.raises(BadExample, match=r"000017\.jpg.*is missing"):
        src[2]


# ----------------------------------------------------------------------------- through the loader

def test_loader_pads_per_box_keys(tmp_path):
    _coco(tmp_path / "coco")
    data = _cfg("coco_json", tmp_path / "coco", eval_pp="resize(32)", max_boxes=3, prefetch=1)
    batch = next(iter(make_loader(data, "train", mode="eval", global_batch=4, seed=0)))
    assert set(batch) == {"image", "boxes", "box_classes", "box_crowd", "box_area", "box_valid",
                          "index", "valid"}
    assert batch["image"].shape == (4, 32, 32, 3) and batch["boxes"].shape == (4, 3, 4)
    assert batch["valid"].tolist() == [True, True, True, False]  # 3 examples, one padding slot
    assert batch["box_valid"][:3].tolist() == [[True, True, False], [True, False, False], [False] * 3]
    # Image a (20x30) resized to 32x32: y by 1.6, x by 32/30; areas by 1.6 * 32/30.
    sy, sx = 32 / 20, 32 / 30
    np.testing.assert_allclose(batch["boxes"][0, :2], [[4 * sy, 2 * sx, 10 * sy, 12 * sx],
                                                      [1.5 * sy, 0.5 * sx, 3.5 * sy, 3.5 * sx]], rtol=1e-5)
    np.testing.assert_allclose(batch["box_area"][0], [40.5 * sy * sx, 6 * sy * sx, 0], rtol=1e-5)
    assert batch["box_classes"][0].tolist() == [1, 2, 0] and batch["box_crowd"][0].tolist() == [False, True, False]
    assert batch["box_crowd"].dtype == np.bool_ and batch["box_area"].dtype == np.float32
    assert (batch["boxes"][~batch["box_valid"]] == 0).all()

    _voc(tmp_path / "voc")
    data = _cfg("voc_xml", tmp_path / "voc", eval_pp="resize(24)", max_boxes=2, prefetch=1)
    batch = next(iter(make_loader(data, "train", mode="eval", global_batch=3, seed=0)))
    assert set(batch) == {"image", "boxes", "box_classes", "box_difficult", "box_valid", "index", "valid"}
    assert batch["box_valid"].tolist() == [[True, True], [True, False], [False, False]]
    assert batch["box_difficult"].tolist() == [[False, True], [False, False], [False, False]]
    np.testing.assert_allclose(batch["boxes"][0, 0], [1 * 2, 2 * 1.5, 8 * 2, 10 * 1.5], rtol=1e-5)
    assert batch["box_classes"][0].tolist() == [11, 14]
