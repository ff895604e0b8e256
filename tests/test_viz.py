"""Tests for jaxvision.viz: every plot writes a readable, non-blank PNG; helpers match numpy."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from jaxvision import viz
from jaxvision.data.example import IGNORE_LABEL, INVALID_DISPARITY, ExampleError, validate_example
from jaxvision.data.source import SourceInfo

DPI = 60


def _read_png(path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG"
        arr = np.asarray(im.convert("RGB"))
    assert arr.size > 0 and arr.shape[0] > 10 and arr.shape[1] > 10
    assert arr.astype(np.float64).var() > 0, f"{path} is a blank image"
    return arr


def _full_example(h: int = 36, w: int = 48, seed: int = 0) -> dict:
    """A procedural-like example with every key, built by hand."""
    rng = np.random.default_rng(seed)
    image = np.full((h, w, 3), 30, np.uint8)
    mask = np.zeros((h, w), np.int32)
    instance = np.zeros((h, w), np.int32)
    boxes, classes = [], []
    for k, (r0, c0, r1, c1, cls) in enumerate([(4, 5, 15, 20, 1), (18, 24, 32, 44, 2)], start=1):
        image[r0:r1 + 1, c0:c1 + 1] = rng.integers(80, 255, size=3, dtype=np.uint8)
        mask[r0:r1 + 1, c0:c1 + 1] = cls
        instance[r0:r1 + 1, c0:c1 + 1] = k
        boxes.append([r0, c0, r1 + 1, c1 + 1])
        classes.append(cls)
    mask[0:2, :] = IGNORE_LABEL  # an ignored border band
    disparity = np.where(instance > 0, 6.0, 2.0).astype(np.float32)
    disparity[:, :3] = INVALID_DISPARITY  # occluded left border
    disparity_right = disparity.copy()
    disparity_right[:, -3:] = INVALID_DISPARITY
    disparity_right[:, :3] = 2.0
    image_right = np.roll(image, -2, axis=1)
    example = {
        "image": image, "label": np.int32(1), "identity": np.int32(7),
        "boxes": np.asarray(boxes, np.float32), "box_classes": np.asarray(classes, np.int32),
        "mask": mask, "instance_mask": instance, "image_right": image_right,
        "disparity": disparity, "disparity_right": disparity_right,
    }
    return validate_example(example)


INFO = SourceInfo(name="procedural", split="train", keys=tuple(_full_example()),
                  num_classes=3, class_names=("background", "square", "disc"), num_box_classes=3,
                  num_mask_classes=3, num_identities=10, max_disparity=8.0)


# ------------------------------------------------------------------------------ show_examples

def test_show_examples_classification_only(tmp_path):
    rng = np.random.default_rng(0)
    examples = [{"image": rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), "label": np.int32(i)}
                for i in range(3)]
    info = SourceInfo(name="toy", split="train", keys=("image", "label"), num_classes=3,
                      class_names=("cat", "dog", "bird"))
    out = viz.show_examples(examples, str(tmp_path / "cls.png"), info=info, title="toy", dpi=DPI)
    assert out == str(tmp_path / "cls.png")
    _read_png(out)


def test_show_examples_full_example(tmp_path):
    examples = [_full_example(seed=s) for s in range(2)]
    out = viz.show_examples(examples, str(tmp_path / "sub" / "full.png"), info=INFO,
                            title="procedural", dpi=DPI)
    arr = _read_png(out)
    # Six view columns side by side make a wide figure.
    assert arr.shape[1] > 2 * arr.shape[0]


def test_show_examples_box_classes_without_names_and_mixed_keys(tmp_path):
    info = SourceInfo(name="x", split="train", keys=("image",), num_classes=2,
                      class_names=("a", "b"), num_box_classes=5)
    full = _full_example()
    partial = {"image": full["image"], "boxes": full["boxes"], "box_classes": full["box_classes"],
               "box_valid": np.array([True, False])}
    out = viz.show_examples([full, partial], str(tmp_path / "mixed.png"), info=info, dpi=DPI)
    _read_png(out)


def test_show_examples_max_examples_limits_rows(tmp_path):
    examples = [{"image": np.full((8, 8, 3), 40 * i, np.uint8),
                 "mask": np.full((8, 8), i % 2, np.int32)} for i in range(1, 6)]
    one = _read_png(viz.show_examples(examples, str(tmp_path / "one.png"), max_examples=1, dpi=DPI))
    five = _read_png(viz.show_examples(examples, str(tmp_path / "five.png"), dpi=DPI))
    three = _read_png(viz.show_examples(examples, str(tmp_path / "3.png"), max_examples=3, dpi=DPI))
    assert five.shape[0] > 4 * one.shape[0] and five.shape[0] > three.shape[0] > 2 * one.shape[0]
    with pytest.raises(ValueError, match="max_examples"):
        viz.show_examples(examples, str(tmp_path / "x.png"), max_examples=0)


def test_show_examples_images_only_wrap_into_a_grid(tmp_path):
    examples = [{"image": np.full((8, 8, 3), 30 * i, np.uint8)} for i in range(1, 9)]
    arr = _read_png(viz.show_examples(examples, str(tmp_path / "grid.png"), dpi=DPI))
    assert arr.shape[1] > arr.shape[0]  # 4 columns x 2 rows, not one tall column


def test_show_examples_grayscale_and_float(tmp_path):
    rng = np.random.default_rng(1)
    gray = [{"image": rng.integers(0, 256, (12, 20, 1), dtype=np.uint8), "label": np.int32(0),
             "image_right": rng.integers(0, 256, (12, 20, 1), dtype=np.uint8)}]
    _read_png(viz.show_examples(gray, str(tmp_path / "gray.png"), dpi=DPI))
    normalized = [{"image": rng.normal(size=(16, 16, 3)).astype(np.float32)},
                  {"image": rng.normal(size=(16, 16, 1)).astype(np.float32)}]
    _read_png(viz.show_examples(normalized, str(tmp_path / "float.png"), dpi=DPI))


def test_show_examples_errors(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        viz.show_examples([], str(tmp_path / "x.png"))
    with pytest.raises(ValueError, match=r"'image'.*rank 2"):
        viz.show_examples([{"image": np.zeros((8, 8), np.uint8)}], str(tmp_path / "x.png"))
    with pytest.raises(ValueError, match="batched"):
        viz.show_examples([{"image": np.zeros((2, 8, 8, 3), np.uint8)}], str(tmp_path / "x.png"))
    with pytest.raises(ExampleError, match="'mask'"):
        viz.show_examples([{"image": np.zeros((8, 8, 3), np.uint8), "mask": np.zeros((4, 8), np.int32)}],
                          str(tmp_path / "x.png"))
    with pytest.raises(ValueError, match="no 'image'"):
        viz.show_examples([{"label": np.int32(0)}], str(tmp_path / "x.png"))
    with pytest.raises(ValueError, match="single dict"):
        viz.show_examples(_full_example(), str(tmp_path / "x.png"))


def test_image_for_display_matches_numpy():
    rng = np.random.default_rng(2)
    u8 = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)
    np.testing.assert_allclose(viz.image_for_display(u8), u8 / 255.0)
    gray = rng.integers(0, 256, (5, 6, 1), dtype=np.uint8)
    np.testing.assert_allclose(viz.image_for_display(gray), np.repeat(gray / 255.0, 3, axis=-1))
    normalized = rng.normal(size=(5, 6, 3)).astype(np.float32) * 3
    expected = (normalized - normalized.min()) / (normalized.max() - normalized.min())
    np.testing.assert_allclose(viz.image_for_display(normalized), expected, atol=1e-6)
    unit = rng.uniform(0.2, 0.8, size=(5, 6, 3))
    np.testing.assert_allclose(viz.image_for_display(unit), unit)  # already in [0, 1]: kept
    assert np.all(viz.image_for_display(np.full((3, 3, 3), 5.0)) == 0.0)


def test_overlay_labels_ignore_is_grey_and_background_instance_untouched():
    image = np.full((4, 4, 3), 0.2)
    mask = np.array([[IGNORE_LABEL, 0, 1, 1]] * 4, np.int32)
    out = viz.overlay_labels(image, mask)
    np.testing.assert_allclose(out[0, 0], 0.2 * 0.2 + 0.8 * 0.55)  # grey, alpha 0.8
    assert not np.allclose(out[0, 1], out[0, 2])  # different classes, different colours
    assert np.allclose(out[:, 2], out[0, 2])  # the same class, the same colour
    inst = np.array([[0, 0, 1, 2]] * 4, np.int32)
    out = viz.overlay_labels(image, inst, instance=True)
    np.testing.assert_allclose(out[:, :2], 0.2)
    assert not np.allclose(out[0, 2], out[0, 3])
    # Overlays sit on the gray (luminance) image, so a class keeps its hue on any object.
    red, blue = np.zeros((1, 2, 3)), np.zeros((1, 2, 3))
    red[..., 0], blue[..., 2] = 1.0, 1.0
    one = np.ones((1, 2), np.int32)
    on_red, on_blue = viz.overlay_labels(red, one), viz.overlay_labels(blue, one)
    np.testing.assert_allclose(on_red - on_blue, (0.299 - 0.114) * 0.4)
    np.testing.assert_allclose(viz.overlay_labels(red, 0 * one, instance=True), 0.299)


def test_box_is_drawn_at_its_pixel_coordinates():
    # Render an 8x12 image at k output pixels per image pixel; the box [y0, x0, y1, x1] covers
    # image pixels rows y0..y1-1, cols x0..x1-1, so its edges land at output rows k*y0, k*y1 and
    # columns k*x0, k*x1.
    h, w, k = 8, 12, 10
    fig = Figure(figsize=(w * k / 100, h * k / 100), dpi=100)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    ax.imshow(np.zeros((h, w, 3)), interpolation="nearest")
    y0, x0, y1, x1 = 2, 3, 6, 8
    viz._draw_boxes(ax, {"boxes": np.array([[y0, x0, y1, x1]], np.float32)}, ())
    canvas.draw()
    drawn = np.asarray(canvas.buffer_rgba())[..., :3].astype(int).sum(-1) > 60
    cols, rows = drawn.sum(0), drawn.sum(1)
    assert abs(int(np.argmax(cols[: w * k // 2])) - k * x0) <= 1
    assert abs(int(np.argmax(cols[w * k // 2:])) + w * k // 2 - k * x1) <= 1
    assert abs(int(np.argmax(rows[: h * k // 2])) - k * y0) <= 1
    assert abs(int(np.argmax(rows[h * k // 2:])) + h * k // 2 - k * y1) <= 1


def test_import_does_not_touch_pyplot():
    code = ("import sys, jaxvision.viz; "
            "assert 'matplotlib.pyplot' not in sys.modules, 'viz imported pyplot'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ------------------------------------------------------------------------------ curves

def _records() -> list[dict]:
    records = []
    for step in range(0, 100, 10):
        rec = {"step": step, "split": "train", "loss": 2.0 / (1 + step), "lr": 1e-3 * 0.9 ** step,
               "time": 0.1 * step, "note": "warmup" if step < 20 else "main"}
        if step >= 50:
            rec["accuracy"] = step / 100.0  # a metric that appears only later
        records.append(rec)
    records.append({"step": 50, "split": "eval", "loss": 0.5, "accuracy": 0.6, "per_class": [0.1, 0.2]})
    records.append({"step": 99, "split": "eval", "loss": 0.4, "accuracy": 0.7, "miou": None})
    return records


def test_collect_curves_groups_and_skips_non_numeric():
    recs = _records()
    recs.insert(0, {"step": 95, "split": "train", "loss": 0.01})  # out of order on purpose
    curves = viz.collect_curves(recs)
    assert set(curves) == {"loss", "lr", "accuracy"}
    assert set(curves["loss"]) == {"train", "eval"} and set(curves["lr"]) == {"train"}
    steps, values = curves["loss"]["train"]
    assert np.all(np.diff(steps) >= 0)
    np.testing.assert_allclose(values[steps == 95], [0.01])
    np.testing.assert_allclose(curves["accuracy"]["eval"][1], [0.6, 0.7])
    assert len(curves["accuracy"]["train"][0]) == 5


def test_plot_curves_png_and_errors(tmp_path):
    _read_png(viz.plot_curves(_records(), str(tmp_path / "curves.png"), title="run", dpi=DPI))
    _read_png(viz.plot_curves([{"step": 1, "split": "eval", "loss": 1.0}], str(tmp_path / "one.png"),
                              dpi=DPI))
    with pytest.raises(ValueError, match="empty"):
        viz.plot_curves([], str(tmp_path / "x.png"))
    with pytest.raises(ValueError, match="records\\[1\\].*'step'"):
        viz.plot_curves([{"step": 0, "loss": 1.0}, {"loss": 2.0}], str(tmp_path / "x.png"))
    with pytest.raises(ValueError, match="no numeric metric"):
        viz.plot_curves([{"step": 0, "split": "train", "time": 1.0}], str(tmp_path / "x.png"))


def test_read_jsonl(tmp_path):
    recs = _records()
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in recs) + "\n\n")
    assert viz.read_jsonl(path) == recs
    # A writer still running leaves a partial last line: skipped.
    path.write_text(json.dumps(recs[0]) + "\n" + '{"step": 1, "lo')
    assert viz.read_jsonl(path) == recs[:1]
    path.write_text('{"step": 1, "lo\n' + json.dumps(recs[0]) + "\n")
    with pytest.raises(ValueError, match=":1 is not valid JSON"):
        viz.read_jsonl(path)
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        viz.read_jsonl(tmp_path / "nope.jsonl")


# ------------------------------------------------------------------------------ confusion, bars

def _normalize_loop(cm: np.ndarray, normalize):
    cm = cm.astype(np.float64)
    out = np.zeros_like(cm)
    c = cm.shape[0]
    total = cm.sum()
    for i in range(c):
        for j in range(c):
            denom = {"true": cm[i].sum(), "pred": cm[:, j].sum(), "all": total, None: 1.0}[normalize]
            out[i, j] = cm[i, j] / denom if denom else 0.0
    return out


def test_normalize_confusion_matrix_zero_row():
    cm = np.array([[3, 1, 0], [0, 0, 0], [2, 2, 4]])
    got = viz.normalize_confusion_matrix(cm)
    np.testing.assert_allclose(got, [[0.75, 0.25, 0], [0, 0, 0], [0.25, 0.25, 0.5]])
    np.testing.assert_allclose(got.sum(1), [1, 0, 1])
    assert np.all(viz.normalize_confusion_matrix(np.zeros((2, 2)), "all") == 0)


@pytest.mark.filterwarnings("ignore:A single label was found")
@settings(max_examples=30, deadline=None)
@given(c=st.integers(1, 6), data=st.data(),
       normalize=st.sampled_from(["true", "pred", "all", None]))
def test_normalize_confusion_matrix_matches_loop_and_sklearn(c, data, normalize):
    from sklearn.metrics import confusion_matrix
    n = data.draw(st.integers(0, 30))
    y_true = np.asarray(data.draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n)), int)
    y_pred = np.asarray(data.draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n)), int)
    cm = np.zeros((c, c), np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    got = viz.normalize_confusion_matrix(cm, normalize)
    np.testing.assert_allclose(got, _normalize_loop(cm, normalize), atol=1e-12)
    if n > 0:
        ref = confusion_matrix(y_true, y_pred, labels=list(range(c)), normalize=normalize)
        np.testing.assert_allclose(got, np.nan_to_num(ref), atol=1e-12)
    if normalize == "true":
        sums = got.sum(1)
        assert np.allclose(sums[cm.sum(1) > 0], 1.0) and np.all(sums[cm.sum(1) == 0] == 0)


def test_plot_confusion_matrix_png_and_errors(tmp_path):
    cm = np.array([[5, 1, 0], [0, 0, 0], [1, 2, 7]])
    _read_png(viz.plot_confusion_matrix(cm, str(tmp_path / "cm.png"), class_names=["a", "b", "c"],
                                        dpi=DPI))
    _read_png(viz.plot_confusion_matrix(np.eye(25) * 3 + 1, str(tmp_path / "cm25.png"),
                                        normalize=None, dpi=DPI))
    with pytest.raises(ValueError, match="square"):
        viz.plot_confusion_matrix(np.zeros((2, 3)), str(tmp_path / "x.png"))
    with pytest.raises(ValueError, match="class_names"):
        viz.plot_confusion_matrix(cm, str(tmp_path / "x.png"), class_names=["a"])
    with pytest.raises(ValueError, match="normalize"):
        viz.plot_confusion_matrix(cm, str(tmp_path / "x.png"), normalize="rows")


def test_plot_bars_png_and_errors(tmp_path):
    names = ["baseline", "+augment", "+mixup", "no-pretrain"]
    _read_png(viz.plot_bars(names, [0.71, 0.75, 0.78, -0.1], str(tmp_path / "bars.png"),
                            errors=[0.01, 0.02, 0.015, 0.03], ylabel="accuracy", title="ablation",
                            dpi=DPI))
    _read_png(viz.plot_bars(["a", "b"], [1.0, float("nan")], str(tmp_path / "nan.png"), dpi=DPI))
    with pytest.raises(ValueError, match="2 names and 3 values"):
        viz.plot_bars(["a", "b"], [1, 2, 3], str(tmp_path / "x.png"))
    with pytest.raises(ValueError, match="1 errors for 2 values"):
        viz.plot_bars(["a", "b"], [1, 2], str(tmp_path / "x.png"), errors=[0.1])


# ------------------------------------------------------------------------------ detections

NAMES = ("background", "cat", "dog", "car")


def _rgb(cls: int) -> tuple[int, int, int]:
    return viz._palette_rgb255(cls)


def test_draw_detections_colours_at_scaled_pixels():
    image = np.zeros((32, 48, 3), np.uint8)  # short side 32 -> scale 8
    boxes = np.array([[4, 8, 20, 30], [24, 2, 30, 10]], np.float32)
    out = viz.draw_detections(image, boxes, np.array([1, 2]), np.array([0.9, 0.2]), NAMES,
                              gt_boxes=np.array([[10, 20, 28, 44]]), gt_classes=np.array([3]),
                              min_score=0.5)
    assert out.shape == (256, 384, 3) and out.dtype == np.uint8
    # Detection of class 1: solid 2-px edges inside the box, in its class colour.
    assert tuple(out[8 * 12, 8 * 8]) == tuple(out[8 * 12, 8 * 8 + 1]) == _rgb(1)  # left edge
    assert tuple(out[8 * 20 - 1, 8 * 15]) == _rgb(1)  # bottom edge: last row of the box
    assert tuple(out[8 * 12, 8 * 8 + 2]) == (0, 0, 0)  # not filled
    # Ground truth: dashed white, starting at each corner, over the detection.
    assert tuple(out[8 * 10, 8 * 20]) == tuple(out[8 * 28 - 1, 8 * 44 - 1]) == viz.GT_RGB
    top = out[8 * 10, 8 * 20: 8 * 44]
    assert 0 < np.all(top == 255, axis=-1).mean() < 1  # dashes and gaps
    # The low-score detection (class 2) is left out, everywhere.
    assert not np.any(np.all(out == _rgb(2), axis=-1))
    # With min_score 0 it is drawn.
    low = viz.draw_detections(image, boxes, np.array([1, 2]), np.array([0.9, 0.2]), NAMES)
    assert tuple(low[8 * 27, 8 * 2]) == _rgb(2)


def test_draw_detections_empty_no_scores_gray_scale_and_clipping():
    gray = np.full((20, 30, 1), 50, np.uint8)
    empty = viz.draw_detections(gray, np.zeros((0, 4)), np.zeros((0,), np.int32),
                                np.zeros((0,)), NAMES, scale=2)
    assert empty.shape == (40, 60, 3)
    np.testing.assert_array_equal(empty, 50)  # gray became RGB, nothing drawn
    # Ground truth only (scores and detections None), partly outside the image.
    gt = viz.draw_detections(gray, None, None, None, NAMES, gt_boxes=np.array([[-5, 20, 12, 40.0]]),
                             gt_classes=np.array([1]), scale=2)
    assert tuple(gt[0, 40]) == viz.GT_RGB and tuple(gt[5, 59]) == viz.GT_RGB  # clipped edges
    # Boxes without scores: all drawn, labelled by class name only; a 2-D image works too.
    plain = viz.draw_detections(gray[..., 0], np.array([[2, 2, 10, 10]]), np.array([2]), None,
                                NAMES)
    assert plain.shape == (260, 390, 3)  # the short side 20 -> ceil(256 / 20) = 13 px per pixel
    assert tuple(plain[13 * 6, 13 * 2]) == _rgb(2)
    with pytest.raises(ValueError, match="1 scores for 2 boxes"):
        viz.draw_detections(gray, np.zeros((2, 4)), np.zeros(2), np.zeros(1), NAMES)


def test_detection_grid_pads_to_the_largest_panel(tmp_path):
    panels = [np.full((40, 60, 3), 90, np.uint8), np.full((50, 30, 3), 160, np.uint8),
              np.full((20, 20, 3), 220, np.uint8)]
    out = viz.detection_grid(panels, str(tmp_path / "sub" / "grid.png"), columns=2)
    arr = _read_png(out)
    cell_h, cell_w = 50, 60  # the largest height and width
    assert arr.shape == (2 * (cell_h + 6), 2 * (cell_w + 6) + 6, 3)
    # The second panel is centred in its cell, the rest of the cell is white padding.
    x0 = 6 + cell_w + 6
    np.testing.assert_array_equal(arr[3:3 + 50, x0 + 15: x0 + 45], 160)
    np.testing.assert_array_equal(arr[3:3 + 50, x0: x0 + 15], 255)
    titled = _read_png(viz.detection_grid(panels, str(tmp_path / "t.png"), columns=4, title="val"))
    assert titled.shape == (24 + cell_h + 6, 3 * (cell_w + 6) + 6, 3)  # 4 columns, 3 panels
    with pytest.raises(ValueError, match="empty"):
        viz.detection_grid([], str(tmp_path / "x.png"))


def test_image_strip_default_layout_unchanged():
    strip = viz.image_strip([np.zeros((10, 20, 3), np.uint8)] * 3, ["q", "a", "b"])
    assert strip.shape == (112 + 26, 3 * (112 + 6) + 6, 3)


def test_plot_pr_curves_skips_classes_without_ground_truth(tmp_path, monkeypatch):
    recall = np.linspace(0, 1, 101)
    precision = np.stack([1 - recall ** 2, np.full(101, -1.0), 1 - recall, np.full(101, 0.6)])
    figures = []
    save = viz._save
    monkeypatch.setattr(viz, "_save", lambda fig, *a: figures.append(fig) or save(fig, *a))
    out = viz.plot_pr_curves(precision, str(tmp_path / "pr.png"), class_names=NAMES)
    _read_png(out)
    (ax,) = figures[0].axes
    labels = [line.get_label() for line in ax.get_lines()]
    ap = [precision[k].mean() for k in (0, 2, 3)]
    assert labels == [f"background (AP {ap[0]:.2f})", f"car (AP {ap[2]:.2f})",
                      f"dog (AP {ap[1]:.2f})"]  # sorted by AP, "cat" (all -1) left out
    assert "1 without ground truth" in ax.get_legend().get_title().get_text()
    with pytest.raises(ValueError, match="every row"):
        viz.plot_pr_curves(-np.ones((2, 101)), str(tmp_path / "x.png"), class_names=["a", "b"])
    with pytest.raises(ValueError, match="class_names"):
        viz.plot_pr_curves(precision, str(tmp_path / "x.png"), class_names=["a"])
