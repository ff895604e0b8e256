"""Pictures a person looks at: example grids, detections, training curves, confusion matrices,
bar charts, precision / recall curves.

Every function writes one PNG and returns its path. Figures are built with
``matplotlib.figure.Figure`` and rendered by ``FigureCanvasAgg`` directly, never through
``pyplot``: no global backend switch, no global figure registry, safe to call from a training
loop, a notebook with another backend, or a headless machine.

Display conventions for examples (see ``jaxvision/data/example.py`` for the data conventions):

* boxes are drawn at exactly their ``[y0, x0, y1, x1]`` pixel coordinates; each box has the
  colour of its instance in the ``instance_mask`` panel (instance ``k`` is ``boxes[k - 1]``);
* ``mask`` pixels equal to ``IGNORE_LABEL`` are grey, every class has its own colour;
* disparities share one colour scale per row (left and right view), invalid pixels are black.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from jaxvision.data.example import IGNORE_LABEL, Example, ExampleError, disparity_valid
from jaxvision.data.source import SourceInfo

# Columns of the example grid, in display order; boxes and labels live on the "image" column.
VIEW_KEYS = ("image", "mask", "instance_mask", "image_right", "disparity", "disparity_right")
# Bookkeeping fields of a metrics.jsonl line that are not curves.
NON_METRIC_KEYS = frozenset({"step", "split", "time", "wall_time", "timestamp", "epoch"})
LR_KEYS = ("lr", "learning_rate")

_IGNORE_RGB = np.array([0.55, 0.55, 0.55])
_MASK_ALPHA = 0.6
_PANEL_IN = 2.4  # inches per example panel (the longer image side)
_WRAP_COLUMNS = 4


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------

def _new_figure(width_in: float, height_in: float, layout: str | None = "constrained") -> Figure:
    fig = Figure(figsize=(width_in, height_in), layout=layout)
    FigureCanvasAgg(fig)  # binds the Agg canvas to this figure only
    return fig


def _save(fig: Figure, out_path: str | os.PathLike, dpi: int) -> str:
    path = os.fspath(out_path)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png", facecolor="white")
    return path


# tab20 pairs a dark and a light shade of each hue (0/1, 2/3, ...): take the ten dark shades
# first so that consecutive class ids (background 0 vs class 1) get different hues.
_CLASS_ORDER = list(range(0, 20, 2)) + list(range(1, 20, 2))


def _palette(index: int) -> np.ndarray:
    """RGB colour in [0, 1] for a non-negative id (20 distinct colours, then cycles)."""
    return np.asarray(colormaps["tab20"](_CLASS_ORDER[int(index) % 20])[:3])


def _instance_colour(k: int) -> np.ndarray:
    return _palette(k - 1)


def _palette_rgb255(index: int) -> tuple[int, int, int]:
    """``_palette(index)`` as a PIL colour (three ints in [0, 255])."""
    r, g, b = (int(c * 255) for c in _palette(index))
    return r, g, b


def _short_name(names: Sequence[str], index: int) -> str:
    """``names[index]``, or the id itself when ``names`` does not cover it."""
    return str(names[index]) if 0 <= index < len(names) else str(index)


def _is_number(value: Any) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return False
    return isinstance(value, (int, float, np.integer, np.floating))


# --------------------------------------------------------------------------------------------
# Examples
# --------------------------------------------------------------------------------------------

def image_for_display(image: np.ndarray) -> np.ndarray:
    """Returns ``image`` (H, W, C), C in {1, 3}, as float64 RGB (H, W, 3) in [0, 1].

    uint8 is divided by 255; float images already in [0, 1] are kept; anything else (e.g. a
    mean/std-normalized image) is min-max rescaled to [0, 1] (a constant image becomes 0).
    Non-finite values are shown as 0.
    """
    image = np.asarray(image)
    if image.dtype == np.uint8:
        out = image.astype(np.float64) / 255.0
    else:
        out = image.astype(np.float64)
        finite = np.isfinite(out)
        out = np.where(finite, out, 0.0)
        if finite.any():
            lo, hi = out[finite].min(), out[finite].max()
            if lo < 0.0 or hi > 1.0:
                out = (out - lo) / (hi - lo) if hi > lo else np.zeros_like(out)
    if out.shape[-1] == 1:
        out = np.repeat(out, 3, axis=-1)
    return np.clip(out, 0.0, 1.0)


def _resized(image: np.ndarray, size: tuple[int, int]):
    """``image`` (H, W, C) as an RGB ``PIL.Image`` of ``size`` = (width, height): enlarged with
    nearest neighbours (pixels stay crisp squares), shrunk bilinearly."""
    from PIL import Image
    rgb = (image_for_display(image) * 255).round().astype(np.uint8)
    h, w = rgb.shape[:2]
    pic = Image.fromarray(rgb)
    if size == (w, h):
        return pic
    return pic.resize(size, Image.NEAREST if size[0] >= w and size[1] >= h else Image.BILINEAR)


def top_k_panel(image: np.ndarray, names: Sequence[str], values: Sequence[float], *,
                title: str = "") -> np.ndarray:
    """The image beside a bar chart of ``values`` in [0, 1] (e.g. the top-5 probabilities,
    highest first) labelled by ``names``; returns a (260, 640, 3) uint8 picture.

    Drawn with PIL, not matplotlib: ``predict`` makes one per input image (~1 ms, not ~150)."""
    from PIL import Image, ImageDraw, ImageFont
    canvas = Image.new("RGB", (640, 260), "white")
    h, w = np.shape(image)[:2]
    scale = 230 / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    pic = _resized(image, size)
    canvas.paste(pic, (10 + (230 - size[0]) // 2, 25 + (230 - size[1]) // 2))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=14)
    if title:
        draw.text((10, 4), str(title)[:32], fill="black", font=font)
    x0, bar_w = 430, 150
    for i, (name, v) in enumerate(zip(names, values)):
        y = 30 + i * 44
        colour = _palette_rgb255(i)
        draw.text((x0 - 8, y + 6), str(name)[:22], fill="black", font=font, anchor="ra")
        draw.rectangle((x0, y, x0 + bar_w, y + 28), outline=(200, 200, 200))
        draw.rectangle((x0, y, x0 + round(bar_w * min(max(float(v), 0.0), 1.0)), y + 28),
                       fill=colour)
        draw.text((x0 + bar_w + 6, y + 6), f"{float(v):.3f}", fill="black", font=font)
    return np.asarray(canvas)


def image_strip(images: Sequence[np.ndarray], captions: Sequence[str] = (), *,
                size: int | None = 112, columns: int | None = None) -> np.ndarray:
    """The ``images`` side by side (e.g. a query and its nearest gallery images), ``columns`` per
    row (default: all in one row); returns an (H, W, 3) uint8 picture on white.

    Each image is fitted in a ``size`` x ``size`` cell, or with ``size=None`` pasted unscaled in
    a cell as large as the largest image (smaller ones are padded), centred. Cells are 6 px
    apart with a 6 px border left and right and 3 px above and below each row; a row with
    ``captions`` (one per image, may be shorter) has 20 px more below the images for them.
    """
    from PIL import Image, ImageDraw, ImageFont
    font = ImageFont.load_default(size=12)
    n = len(images)
    cols = max(1, min(columns or n, n))
    rows = math.ceil(n / cols)
    shapes = [np.shape(img)[:2] for img in images]
    if size is None:
        cell_w, cell_h = max((w for _, w in shapes), default=1), max((h for h, _ in shapes), default=1)
    else:
        cell_w = cell_h = size
    row_h = cell_h + (26 if len(captions) else 6)
    canvas = Image.new("RGB", (cols * (cell_w + 6) + 6, rows * row_h), "white")
    draw = ImageDraw.Draw(canvas)
    for k, (img, (h, w)) in enumerate(zip(images, shapes)):
        if size is not None:
            scale = size / max(h, w)
            h, w = max(1, round(h * scale)), max(1, round(w * scale))
        x0, y0 = 6 + (k % cols) * (cell_w + 6), (k // cols) * row_h
        canvas.paste(_resized(img, (w, h)), (x0 + (cell_w - w) // 2, y0 + 3 + (cell_h - h) // 2))
        if k < len(captions):
            draw.text((x0, y0 + cell_h + 8), str(captions[k])[: max(18, cell_w // 7)],
                      fill="black", font=font)
    return np.asarray(canvas)


def overlay_labels(image_rgb: np.ndarray, labels: np.ndarray, *, instance: bool = False) -> np.ndarray:
    """Returns ``image_rgb`` (H, W, 3) in [0, 1] blended with one colour per id of ``labels`` (H, W).

    The image is turned to gray first so that the colours keep their hue (a class looks the same
    on every object and matches the legend). Semantic masks (``instance=False``): class ``c`` gets
    palette colour ``c``, ``IGNORE_LABEL`` (and any other negative value) is grey. Instance
    masks: 0 is left as the gray image, ``k >= 1`` gets the colour of box ``k - 1``.
    """
    labels = np.asarray(labels)
    gray = np.asarray(image_rgb, dtype=np.float64) @ np.array([0.299, 0.587, 0.114])
    out = np.repeat(gray[..., None], 3, axis=-1)
    for value in np.unique(labels):
        where = labels == value
        if instance:
            if value <= 0:
                continue
            colour = _instance_colour(int(value))
        else:
            colour = _IGNORE_RGB if value < 0 else _palette(int(value))
        alpha = 0.8 if (not instance and value < 0) else _MASK_ALPHA
        out[where] = (1.0 - alpha) * out[where] + alpha * colour
    return out


def _check_examples(examples: Sequence[Mapping[str, Any]]) -> None:
    if isinstance(examples, Mapping):
        raise ValueError("show_examples: `examples` is a single dict; pass a list of examples "
                         "(e.g. [example]).")
    if len(examples) == 0:
        raise ValueError("show_examples: `examples` is empty; pass at least one example dict "
                         "(e.g. jaxvision.data.source.take(source, range(8))).")
    for i, ex in enumerate(examples):
        where = f"examples[{i}]"
        if not isinstance(ex, Mapping) or "image" not in ex:
            keys = sorted(ex) if isinstance(ex, Mapping) else type(ex).__name__
            raise ExampleError(f"{where} has no 'image' (got {keys}); every example needs an "
                               "(H, W, C) 'image'.")
        image = np.asarray(ex["image"])
        for key in ("image", "image_right"):
            if key not in ex:
                continue
            arr = np.asarray(ex[key])
            if arr.ndim != 3 or arr.shape[-1] not in (1, 3):
                hint = (" It looks batched: split a batch into per-example dicts first."
                        if arr.ndim == 4 else "")
                raise ExampleError(f"{where}['{key}'] has shape {arr.shape} (rank {arr.ndim}); "
                                   f"expected (H, W, C) with C in {{1, 3}}.{hint}")
        for key in ("mask", "instance_mask", "disparity", "disparity_right", "image_right"):
            if key in ex and np.shape(ex[key])[:2] != image.shape[:2]:
                raise ExampleError(f"{where}['{key}'] has shape {np.shape(ex[key])}; expected "
                                   f"spatial size {image.shape[:2]} (that of 'image').")
            if key in ex and key != "image_right" and np.ndim(ex[key]) != 2:
                raise ExampleError(f"{where}['{key}'] has shape {np.shape(ex[key])}; expected "
                                   f"(H, W) = {image.shape[:2]}.")
        if "boxes" in ex:
            boxes = np.asarray(ex["boxes"])
            if boxes.ndim != 2 or boxes.shape[-1] != 4:
                raise ExampleError(f"{where}['boxes'] has shape {boxes.shape}; expected (N, 4) "
                                   "as [y0, x0, y1, x1] in pixels.")


def _name(names: Sequence[str], index: int) -> str:
    if 0 <= index < len(names):
        return names[index] if names[index] == str(index) else f"{names[index]} ({index})"
    return str(index)


def _class_names(info: SourceInfo | None, count: int | None) -> tuple[str, ...]:
    """The names to use for a class id space of ``count`` classes.

    ``SourceInfo.class_names`` name the image-level classes; another target (boxes, mask)
    reuses them only when its class count is the same, otherwise ids are shown.
    """
    if info is None or not info.class_names:
        return ()
    if count is None or count == info.num_classes == len(info.class_names):
        return tuple(info.class_names)
    return ()


def _image_title(ex: Mapping[str, Any], info: SourceInfo | None) -> str:
    parts = []
    if "index" in ex:
        parts.append(f"#{int(np.asarray(ex['index']))}")
    if "label" in ex:
        names = info.class_names if info is not None else ()
        parts.append(f"label {_name(names, int(np.asarray(ex['label'])))}")
    if "identity" in ex:
        parts.append(f"id {int(np.asarray(ex['identity']))}")
    if "valid" in ex and not bool(np.asarray(ex["valid"])):
        parts.append("(padding)")
    return "image" + (": " + ", ".join(parts) if parts else "")


def _draw_boxes(ax, ex: Mapping[str, Any], box_names: Sequence[str]) -> None:
    boxes = np.asarray(ex["boxes"], dtype=np.float64).reshape(-1, 4)
    classes = np.asarray(ex["box_classes"]).reshape(-1) if "box_classes" in ex else None
    valid = np.asarray(ex["box_valid"]).reshape(-1) if "box_valid" in ex else None
    for i, (y0, x0, y1, x1) in enumerate(boxes):
        if valid is not None and i < len(valid) and not valid[i]:
            continue
        colour = _instance_colour(i + 1)
        # imshow puts pixel centres at integers, so pixel column j spans [j - 0.5, j + 0.5].
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False,
                               edgecolor=colour, linewidth=1.5))
        if classes is not None and i < len(classes):
            ax.text(x0 - 0.5, y0 - 0.5, _short_name(box_names, int(classes[i])), fontsize=7,
                    color="white", va="bottom", ha="left", clip_on=True,
                    bbox=dict(facecolor=colour, edgecolor="none", pad=0.5, alpha=0.85))


def _mask_legend(ax, mask: np.ndarray, names: Sequence[str], max_entries: int = 10) -> None:
    values = [int(v) for v in np.unique(mask)]
    handles = []
    for v in values[:max_entries]:
        if v < 0:
            handles.append(Patch(color=_IGNORE_RGB, label="ignore" if v == IGNORE_LABEL else str(v)))
        else:
            label = names[v] if v < len(names) else str(v)
            handles.append(Patch(color=_palette(v), label=label))
    if len(values) > max_entries:
        handles.append(Patch(color="white", label=f"+{len(values) - max_entries} more"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=6,
              frameon=False, borderaxespad=0.0, handlelength=1.0)


def _draw_disparity(fig, ax, disparity: np.ndarray, vmax: float, title: str) -> None:
    disparity = np.asarray(disparity, dtype=np.float64)
    valid = disparity_valid(disparity)
    cmap = colormaps["viridis"].with_extremes(bad="black")
    im = ax.imshow(np.ma.masked_array(disparity, mask=~valid), cmap=cmap, vmin=0.0, vmax=vmax,
                   interpolation="nearest")
    invalid = 1.0 - valid.mean()
    ax.set_title(f"{title} ({invalid:.0%} invalid)" if invalid > 0 else title, fontsize=8)
    cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    cbar.ax.tick_params(labelsize=6)
    cbar.set_label("px", fontsize=6)


def colorize(values: np.ndarray, vmax: float, cmap: str = "viridis") -> np.ndarray:
    """(H, W) values -> (H, W, 3) float RGB in [0, 1] on ``cmap`` over [0, vmax]; negative or
    non-finite values (invalid disparity) black."""
    v = np.asarray(values, np.float64)
    ok = np.isfinite(v) & (v >= 0)
    rgb = colormaps[cmap](np.clip(np.where(ok, v, 0) / max(vmax, 1e-9), 0, 1))[..., :3]
    return np.where(ok[..., None], rgb, 0.0)


def resize_nearest(a: np.ndarray, hw: Sequence[int]) -> np.ndarray:
    """``a`` (h, w, ...) resized to ``hw`` by nearest-neighbour indexing (labels stay labels)."""
    h, w = int(hw[0]), int(hw[1])
    if a.shape[:2] == (h, w):
        return a
    rows = np.minimum(np.arange(h) * a.shape[0] // h, a.shape[0] - 1)
    cols = np.minimum(np.arange(w) * a.shape[1] // w, a.shape[1] - 1)
    return a[rows[:, None], cols[None, :]]


def disparity_panel(image: np.ndarray, pred: np.ndarray, target: np.ndarray | None = None) -> np.ndarray:
    """One row (H, k * W, 3) float in [0, 1]: the left image, the predicted disparity, and
    when ``target`` is given the true disparity on the same colour scale (viridis, 0 to the
    largest true or predicted value) and the absolute error (magma, 0-5 px; black where there
    is no ground truth). Drawn at the size of ``target`` when given, else of ``image``; the
    image and a ``pred`` of another size are resized (nearest) to it, ``pred``'s values scaled
    with its width."""
    img = image_for_display(image)
    h, w = np.shape(target)[:2] if target is not None else img.shape[:2]
    img = resize_nearest(img, (h, w))
    pred = np.asarray(pred, np.float64)
    if pred.shape != (h, w):
        pred = resize_nearest(pred, (h, w)) * (w / pred.shape[1])
    panels = [img]
    if target is None:
        panels.append(colorize(pred, float(np.nanmax(pred, initial=1.0))))
        return np.concatenate(panels, 1)
    target = np.asarray(target, np.float64)
    vmax = float(max(np.max(target, initial=1.0), np.percentile(pred, 99)))
    err = np.where(target >= 0, np.abs(pred - target), -1.0)
    panels += [colorize(pred, vmax), colorize(target, vmax), colorize(err, 5.0, "magma")]
    return np.concatenate(panels, 1)


def show_examples(examples: list[Example], out_path: str, *, info: SourceInfo | None = None,
                  title: str | None = None, max_examples: int = 8, dpi: int = 100) -> str:
    """Saves a PNG grid of ``examples`` to ``out_path`` and returns ``out_path``.

    One row per example (the first ``max_examples``; images alone, e.g. classification, wrap
    into rows of four instead), one column per view any example has
    (``VIEW_KEYS`` order): the image with boxes, class names and label / identity in the title;
    ``mask`` and ``instance_mask`` as colour overlays on the image; ``image_right``;
    ``disparity`` / ``disparity_right`` as colour maps (invalid = black) with a colourbar.
    ``info`` supplies class names and the disparity range. Raises ``ValueError`` for an empty
    list and ``ExampleError`` (a ``ValueError``) for an array of the wrong rank or size.
    """
    _check_examples(examples)
    if max_examples < 1:
        raise ValueError(f"show_examples: max_examples={max_examples}; expected >= 1.")
    rows = list(examples[:max_examples])
    columns = [k for k in VIEW_KEYS if any(k in ex for ex in rows)]
    box_names = _class_names(info, info.num_box_classes if info is not None else None)
    mask_names = _class_names(info, info.num_mask_classes if info is not None else None)

    h, w = np.shape(rows[0]["image"])[:2]
    scale = _PANEL_IN / max(h, w)
    panel_w, panel_h = max(w * scale, 1.2), max(h * scale, 1.2)
    extra_w = sum(0.9 for k in columns if k in ("mask", "disparity", "disparity_right"))
    # Images alone (classification) wrap into a grid instead of one tall column.
    wrap = min(len(rows), _WRAP_COLUMNS) if columns == ["image"] else 1
    grid_rows, grid_cols = math.ceil(len(rows) / wrap), len(columns) * wrap
    fig = _new_figure(panel_w * grid_cols + extra_w,
                      (panel_h + 0.35) * grid_rows + (0.4 if title else 0.0))
    grid = np.asarray(fig.subplots(grid_rows, grid_cols, squeeze=False))
    for ax in grid.reshape(-1)[len(rows) * len(columns):]:
        ax.set_axis_off()
    axes = grid.reshape(-1)[: len(rows) * len(columns)].reshape(len(rows), len(columns))
    if title:
        fig.suptitle(title, fontsize=10)

    for r, ex in enumerate(rows):
        image_rgb = image_for_display(ex["image"])
        disparities = [np.asarray(ex[k], np.float64) for k in ("disparity", "disparity_right") if k in ex]
        if info is not None and info.max_disparity:
            vmax = float(info.max_disparity)
        else:
            vals = [d[disparity_valid(d)] for d in disparities]
            vmax = max((float(v.max()) for v in vals if v.size), default=1.0) or 1.0
        for c, key in enumerate(columns):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if key not in ex:
                ax.set_axis_off()
                ax.text(0.5, 0.5, f"no {key}", ha="center", va="center", fontsize=7,
                        color="grey", transform=ax.transAxes)
                continue
            if key == "image":
                ax.imshow(image_rgb, interpolation="nearest")
                ax.set_title(_image_title(ex, info), fontsize=8)
                if "boxes" in ex:
                    _draw_boxes(ax, ex, box_names)
                    ax.set_xlim(-0.5, image_rgb.shape[1] - 0.5)
                    ax.set_ylim(image_rgb.shape[0] - 0.5, -0.5)
            elif key == "mask":
                ax.imshow(overlay_labels(image_rgb, ex["mask"]), interpolation="nearest")
                ax.set_title("mask", fontsize=8)
                _mask_legend(ax, np.asarray(ex["mask"]), mask_names)
            elif key == "instance_mask":
                inst = np.asarray(ex["instance_mask"])
                ax.imshow(overlay_labels(image_rgb, inst, instance=True), interpolation="nearest")
                ax.set_title(f"instances ({len(np.unique(inst[inst > 0]))})", fontsize=8)
            elif key == "image_right":
                ax.imshow(image_for_display(ex["image_right"]), interpolation="nearest")
                ax.set_title("image_right", fontsize=8)
            else:
                _draw_disparity(fig, ax, ex[key], vmax, key)
    return _save(fig, out_path, dpi)


# --------------------------------------------------------------------------------------------
# Training curves
# --------------------------------------------------------------------------------------------

def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Returns the JSON objects of a ``.jsonl`` file, one dict per non-blank line, in order.

    A malformed *last* line without a trailing newline (a writer still running) is skipped;
    any other malformed line raises ``ValueError`` with its line number.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"read_jsonl: no file {path!r}; metrics are written to "
                                "<workdir>/metrics.jsonl by training.")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if number == len(lines) and not text.endswith("\n"):
                break
            raise ValueError(f"read_jsonl: {path}:{number} is not valid JSON ({err.msg}).") from err
        if not isinstance(record, dict):
            raise ValueError(f"read_jsonl: {path}:{number} is a {type(record).__name__}; "
                             "expected a JSON object per line.")
        records.append(record)
    return records


def collect_curves(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Returns ``{metric: {split: (steps, values)}}`` from metrics.jsonl records, sorted by step.

    Non-numeric values (strings, lists, bools, None) and ``NON_METRIC_KEYS`` are skipped; a
    record without ``split`` counts as ``'train'``. Raises ``ValueError`` for a record without
    a numeric ``step``.
    """
    points: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for i, rec in enumerate(records):
        if not isinstance(rec, Mapping) or not _is_number(rec.get("step")):
            raise ValueError(f"plot_curves: records[{i}] has no numeric 'step' "
                             f"(got {rec!r:.120}); every metrics.jsonl line needs one.")
        split = str(rec.get("split", "train"))
        for key, value in rec.items():
            if key in NON_METRIC_KEYS or not _is_number(value):
                continue
            points.setdefault(key, {}).setdefault(split, []).append((float(rec["step"]), float(value)))
    curves = {}
    for key, by_split in points.items():
        curves[key] = {}
        for split, pts in by_split.items():
            pts.sort(key=lambda p: p[0])
            arr = np.asarray(pts, dtype=np.float64)
            curves[key][split] = (arr[:, 0], arr[:, 1])
    return curves


def _metric_order(name: str) -> tuple[int, str]:
    if name == "loss":
        return (0, name)
    if name in LR_KEYS:
        return (2, name)
    return (1, name)


def _split_order(item: tuple[str, Any]) -> tuple[int, str]:
    return ({"train": 0, "eval": 1}.get(item[0], 2), item[0])


def plot_curves(records: list[dict], out_path: str, *, title: str | None = None,
                dpi: int = 100) -> str:
    """Saves one subplot per metric of ``records`` (metrics.jsonl lines) and returns ``out_path``.

    Train and eval (any ``split``) curves of the same metric share axes; ``loss`` comes first
    and the learning rate last, in its own subplot (log scale when it spans > 20x).
    Raises ``ValueError`` when there are no records or no numeric metric in them.
    """
    if len(records) == 0:
        raise ValueError("plot_curves: `records` is empty; pass the lines of metrics.jsonl "
                         "(jaxvision.viz.read_jsonl(path)).")
    curves = collect_curves(records)
    if not curves:
        raise ValueError("plot_curves: the records hold no numeric metric besides "
                         f"{sorted(NON_METRIC_KEYS)}; nothing to plot.")
    names = sorted(curves, key=_metric_order)
    ncols = min(3, len(names))
    nrows = math.ceil(len(names) / ncols)
    # Fixed margins and gaps in inches instead of constrained layout, which measures every tick
    # label of every panel: half the time of a figure of 18 panels went to it.
    left, right, bottom, top = 0.62, 0.15, 0.45, 0.3 + (0.35 if title else 0.0)
    wgap, hgap = 0.85, 0.75
    width, height = 3.2 * ncols, 2.4 * nrows + top - 0.3
    panel_w = (width - left - right - (ncols - 1) * wgap) / ncols
    panel_h = (height - bottom - top - (nrows - 1) * hgap) / nrows
    fig = _new_figure(width, height, layout=None)
    fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height,
                        top=1 - top / height, wspace=wgap / panel_w, hspace=hgap / panel_h)
    axes = np.asarray(fig.subplots(nrows, ncols, squeeze=False)).reshape(-1)
    if title:
        fig.suptitle(title, fontsize=10, y=1 - 0.08 / height, va="top")
    split_style = {"train": dict(color="tab:blue", linewidth=1.2),
                   "eval": dict(color="tab:orange", linewidth=1.2, marker="o", markersize=3)}
    for ax, name in zip(axes, names):
        for j, (split, (steps, values)) in enumerate(sorted(curves[name].items(), key=_split_order)):
            style = split_style.get(split, dict(color=f"C{j + 2}", marker=".", markersize=3))
            if len(steps) == 1:
                style = {**style, "marker": style.get("marker") or "o"}
            ax.plot(steps, values, label=split, **style)
        if name in LR_KEYS:
            vals = np.concatenate([v for _, v in curves[name].values()])
            vals = vals[np.isfinite(vals)]
            if vals.size and vals.min() > 0 and vals.max() / vals.min() > 20:
                ax.set_yscale("log")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes[len(names):]:
        ax.set_axis_off()
    return _save(fig, out_path, dpi)


# --------------------------------------------------------------------------------------------
# Confusion matrix and bar charts
# --------------------------------------------------------------------------------------------

def normalize_confusion_matrix(cm: np.ndarray, normalize: str | None = "true") -> np.ndarray:
    """Returns ``cm`` (C, C), rows = true class, columns = predicted, as float64.

    ``normalize``: ``'true'`` divides each row by its sum, ``'pred'`` each column, ``'all'``
    by the total, ``None`` keeps counts. A row / column / matrix that sums to zero stays zero.
    """
    cm = np.asarray(cm, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix has shape {cm.shape}; expected square (C, C) with "
                         "rows = true class, columns = predicted class.")
    if normalize is None:
        return cm
    if normalize == "true":
        sums = cm.sum(axis=1, keepdims=True)
    elif normalize == "pred":
        sums = cm.sum(axis=0, keepdims=True)
    elif normalize == "all":
        sums = np.full((1, 1), cm.sum())
    else:
        raise ValueError(f"normalize={normalize!r}; expected 'true', 'pred', 'all' or None.")
    return np.divide(cm, sums, out=np.zeros_like(cm), where=sums != 0)


def plot_confusion_matrix(cm: np.ndarray, out_path: str, *, class_names: Sequence[str] | None = None,
                          normalize: str | None = "true", title: str | None = None,
                          dpi: int = 100) -> str:
    """Saves ``cm`` (C, C; rows = true, columns = predicted) as a heat map; returns ``out_path``.

    Normalized as in ``normalize_confusion_matrix`` (default: each row sums to 1); values are
    written in the cells when C <= 20.
    """
    values = normalize_confusion_matrix(cm, normalize)
    c = values.shape[0]
    if class_names is not None and len(class_names) != c:
        raise ValueError(f"plot_confusion_matrix: {len(class_names)} class_names for a {c}x{c} "
                         "matrix; pass one name per class or None.")
    names = list(class_names) if class_names is not None else [str(i) for i in range(c)]
    side = float(np.clip(0.4 * c + 2.0, 3.0, 14.0))
    fig = _new_figure(side + 0.8, side)
    ax = fig.subplots()
    vmax = 1.0 if normalize is not None else max(float(values.max()), 1.0)
    im = ax.imshow(values, cmap="Blues", vmin=0.0, vmax=vmax, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03).ax.tick_params(labelsize=7)
    if c <= 50:
        ax.set_xticks(range(c), names, rotation=45, ha="right", rotation_mode="anchor", fontsize=7)
        ax.set_yticks(range(c), names, fontsize=7)
    ax.set_xlabel("predicted", fontsize=8)
    ax.set_ylabel("true", fontsize=8)
    default = "confusion matrix" + (f" (normalized: {normalize})" if normalize else " (counts)")
    ax.set_title(title or default, fontsize=9)
    if c <= 20:
        integer = normalize is None and np.all(values == np.round(values))
        for i in range(c):
            for j in range(c):
                v = values[i, j]
                text = f"{v:.0f}" if integer else f"{v:.2f}"
                ax.text(j, i, text, ha="center", va="center", fontsize=6 if c > 10 else 7,
                        color="white" if v > 0.5 * vmax else "black")
    return _save(fig, out_path, dpi)


def plot_bars(names: list[str], values: list[float], out_path: str, *,
              errors: Sequence[float] | None = None, ylabel: str = "", title: str | None = None,
              dpi: int = 100) -> str:
    """Saves a bar chart of ``values`` (one bar per name, ± ``errors`` if given); returns ``out_path``.

    Each bar is annotated with its value. Raises ``ValueError`` when the lengths differ.
    """
    values_arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if len(names) == 0 or len(names) != len(values_arr):
        raise ValueError(f"plot_bars: {len(names)} names and {len(values_arr)} values; expected "
                         "the same non-zero number of each.")
    err = None
    if errors is not None:
        err = np.asarray(errors, dtype=np.float64).reshape(-1)
        if len(err) != len(values_arr):
            raise ValueError(f"plot_bars: {len(err)} errors for {len(values_arr)} values; pass "
                             "one error per bar (e.g. a std over seeds) or errors=None.")
    n = len(names)
    long_names = max(len(str(s)) for s in names) > 8 or n > 8
    fig = _new_figure(float(np.clip(0.7 * n + 1.8, 3.0, 14.0)), 3.0 + (0.6 if long_names else 0.0))
    ax = fig.subplots()
    x = np.arange(n)
    ax.bar(x, values_arr, yerr=err, capsize=3, color=[_palette(i) for i in range(n)],
           error_kw=dict(elinewidth=1.0))
    for i, v in enumerate(values_arr):
        if not np.isfinite(v):
            continue
        top = v + (err[i] if err is not None and np.isfinite(err[i]) else 0.0) * (1 if v >= 0 else -1)
        ax.annotate(f"{v:.3g}", (i, top), textcoords="offset points",
                    xytext=(0, 2 if v >= 0 else -2), ha="center",
                    va="bottom" if v >= 0 else "top", fontsize=7)
    ax.margins(y=0.12)
    if np.nanmin(values_arr) < 0:
        ax.axhline(0.0, color="black", linewidth=0.8)
    if long_names:
        ax.set_xticks(x, [str(s) for s in names], rotation=30, ha="right", rotation_mode="anchor",
                      fontsize=8)
    else:
        ax.set_xticks(x, [str(s) for s in names], fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(axis="y", labelsize=7)
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, out_path, dpi)


# --------------------------------------------------------------------------------------------
# Embeddings
# --------------------------------------------------------------------------------------------

def pca_2d(x: np.ndarray) -> np.ndarray:
    """The rows of ``x`` (N, D) projected on their first two principal components -> (N, 2)."""
    x = np.asarray(x, np.float64)
    x = x - x.mean(0)
    if len(x) < 2 or x.shape[1] < 2:
        return np.pad(x[:, :2], ((0, 0), (0, max(0, 2 - x.shape[1]))))
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return x @ vt[:2].T


def plot_embedding_map(embeddings: np.ndarray, ids: np.ndarray, out_path: str, *,
                       dpi: int = 100) -> str:
    """Saves a 2-D map of ``embeddings`` (N, D) coloured by ``ids`` (N,): PCA, and beside it
    t-SNE when scikit-learn is installed (it is in the ``test`` extra); returns ``out_path``."""
    try:
        from sklearn.manifold import TSNE
    except ImportError:
        TSNE = None
    maps = [("PCA", pca_2d(embeddings))]
    if TSNE is not None and len(embeddings) > 5:
        from threadpoolctl import threadpool_limits   # a dependency of scikit-learn
        tsne = TSNE(2, init="pca", random_state=0, perplexity=min(30.0, len(embeddings) / 4))
        # Barnes-Hut t-SNE syncs its OpenMP threads every iteration. On small inputs, with
        # another process busy on the cores, the waits dominate: 48 points took 36 s on the
        # 2-core test machine, 0.3 s on one thread.
        with threadpool_limits(1 if len(embeddings) < 5000 else None, user_api="openmp"):
            maps.append(("t-SNE", tsne.fit_transform(np.asarray(embeddings, np.float64))))
    fig = _new_figure(4.2 * len(maps), 4.0)
    axes = np.atleast_1d(fig.subplots(1, len(maps)))
    colours = np.asarray([_palette(int(i)) for i in np.asarray(ids).reshape(-1)])
    for ax, (name, xy) in zip(axes, maps):
        ax.scatter(xy[:, 0], xy[:, 1], s=4, c=colours, linewidths=0)
        ax.set_title(f"{name} of {len(xy)} embeddings, by identity", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    return _save(fig, out_path, dpi)


def plot_neighbours(images: np.ndarray, embeddings: np.ndarray, ids: np.ndarray, out_path: str,
                    *, queries: int = 6, k: int = 8, dpi: int = 100) -> str:
    """Saves one row per query (the first of ``queries`` evenly spaced items): the query, then
    its ``k`` nearest other items by euclidean distance, framed green when of the query's
    identity and red otherwise; returns ``out_path``."""
    emb = np.asarray(embeddings, np.float64)
    ids = np.asarray(ids).reshape(-1)
    n = len(emb)
    k = int(min(k, n - 1))
    rows = np.unique(np.linspace(0, n - 1, min(queries, n)).astype(int))
    fig = _new_figure(1.1 * (k + 1), 1.2 * len(rows))
    axes = np.asarray(fig.subplots(len(rows), k + 1, squeeze=False))
    for r, q in enumerate(rows):
        d = np.sum((emb - emb[q]) ** 2, 1)
        d[q] = np.inf
        nearest = np.lexsort((np.arange(n), d))[:k]
        for c, i in enumerate([q, *nearest.tolist()]):
            ax = axes[r, c]
            ax.imshow(image_for_display(images[i]), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            colour = "black" if c == 0 else ("tab:green" if ids[i] == ids[q] else "tab:red")
            for side in ax.spines.values():
                side.set_edgecolor(colour)
                side.set_linewidth(3 if c else 1)
            if c == 0:
                ax.set_title("query", fontsize=7)
    return _save(fig, out_path, dpi)


def plot_roc(fpr: np.ndarray, tpr: np.ndarray, out_path: str, *, title: str = "",
             dpi: int = 100) -> str:
    """Saves the ROC curve ``tpr`` against ``fpr`` (log-scaled false accept axis beside a linear
    one); returns ``out_path``."""
    fig = _new_figure(7.0, 3.2)
    lin, log = fig.subplots(1, 2)
    for ax in (lin, log):
        ax.plot(fpr, tpr, color="tab:blue")
        ax.set_xlabel("false accept rate", fontsize=8)
        ax.set_ylabel("true accept rate", fontsize=8)
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelsize=7)
    lin.plot([0, 1], [0, 1], color="gray", linestyle=":", linewidth=0.8)
    positive = np.asarray(fpr) > 0
    if positive.any():
        log.set_xscale("log")
        log.set_xlim(max(float(np.min(np.asarray(fpr)[positive])), 1e-4), 1)
    if title:
        lin.set_title(title, fontsize=9)
    return _save(fig, out_path, dpi)


# --------------------------------------------------------------------------------------------
# Detections
# --------------------------------------------------------------------------------------------

GT_RGB = (255, 255, 255)  # ground-truth boxes: dashed white; predictions: solid class colour
_DETECTION_SHORT_SIDE = 256


def _pixel_boxes(boxes: np.ndarray | None, scale: float, width: int, height: int
                 ) -> list[tuple[int, tuple[int, int, int, int]]]:
    """``(index, (x0, y0, x1, y1))`` for each ``[y0, x0, y1, x1]`` box of ``boxes`` (N, 4),
    scaled and clipped to a ``width`` x ``height`` picture as inclusive PIL pixel corners; boxes
    that are non-finite or fall outside the picture after clipping are left out."""
    out: list[tuple[int, tuple[int, int, int, int]]] = []
    if boxes is None:
        return out
    for i, (y0, x0, y1, x1) in enumerate(np.asarray(boxes, np.float64).reshape(-1, 4) * scale):
        if not np.all(np.isfinite((y0, x0, y1, x1))):
            continue
        # A box covers pixels [x0, x1) x [y0, y1): its last pixel column is x1 - 1.
        a, b = max(round(x0), 0), min(round(x1) - 1, width - 1)
        c, d = max(round(y0), 0), min(round(y1) - 1, height - 1)
        if a <= b and c <= d:
            out.append((i, (a, c, b, d)))
    return out


def _dashed_rectangle(draw, xy: tuple[int, int, int, int], colour, width: int,
                      dash: int = 6, gap: int = 4) -> None:
    """Draws the outline of the inclusive box ``xy`` = (x0, y0, x1, y1) as ``width``-px dashes
    (inside the box, as ``ImageDraw.rectangle`` does); each dash starts from a corner."""
    x0, y0, x1, y1 = xy
    wx, wy = min(width, x1 - x0 + 1), min(width, y1 - y0 + 1)
    for x in range(x0, x1 + 1, dash + gap):
        end = min(x + dash - 1, x1)
        draw.rectangle((x, y0, end, y0 + wy - 1), fill=colour)
        draw.rectangle((x, y1 - wy + 1, end, y1), fill=colour)
    for y in range(y0, y1 + 1, dash + gap):
        end = min(y + dash - 1, y1)
        draw.rectangle((x0, y, x0 + wx - 1, end), fill=colour)
        draw.rectangle((x1 - wx + 1, y, x1, end), fill=colour)


def _box_label(draw, font, text: str, xy: tuple[int, int, int, int], fill, size: tuple[int, int],
               *, below: bool = False) -> None:
    """Writes ``text`` on a ``fill`` tag just above the box ``xy`` (or just below it), moved
    inside the box where the picture of ``size`` = (width, height) has no room."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    tw, th = right - left + 4, bottom - top + 2
    x0, y0, x1, y1 = xy
    if below:
        y = y1 + 1 if y1 + 1 + th <= size[1] else max(y1 - th + 1, 0)
    else:
        y = y0 - th if y0 - th >= 0 else min(y0, max(size[1] - th, 0))
    x = max(min(x0, size[0] - tw), 0)
    light = 0.299 * fill[0] + 0.587 * fill[1] + 0.114 * fill[2] > 140
    draw.rectangle((x, y, x + tw - 1, y + th - 1), fill=fill)
    draw.text((x + 2 - left, y + 1 - top), text, fill="black" if light else "white", font=font)


def draw_detections(image: np.ndarray, boxes: np.ndarray | None, classes: np.ndarray | None,
                    scores: np.ndarray | None, class_names: Sequence[str], *,
                    gt_boxes: np.ndarray | None = None, gt_classes: np.ndarray | None = None,
                    min_score: float = 0.0, scale: float | None = None) -> np.ndarray:
    """The ``image`` (H, W, C), C in {1, 3} (or (H, W)), with its detections and ground truth;
    returns an (H', W', 3) uint8 picture, H' = round(H * scale), W' = round(W * scale).

    ``scale`` defaults to the smallest integer that makes the short side >= 256 px (1 for larger
    images); the image is enlarged with nearest neighbours so its pixels stay visible. Boxes are
    ``[y0, x0, y1, x1]`` in pixels of ``image`` ((N, 4), N may be 0; ``None`` = none), ``classes``
    (N,) index ``class_names``. Detections with ``scores`` (N,) >= ``min_score`` (all of them when
    ``scores`` is None) are solid 2-px rectangles in their class colour (``_palette``, as in the
    other plots) tagged "name 0.87" above; ``gt_boxes`` (M, 4) with ``gt_classes`` (M,) are drawn
    on top as dashed white rectangles (``GT_RGB``) tagged with the class name below. Boxes are
    clipped to the image; non-finite ones are skipped.
    """
    from PIL import ImageDraw, ImageFont
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(f"draw_detections: image has shape {image.shape}; expected (H, W, C) "
                         "with C in {1, 3}.")
    h, w = image.shape[:2]
    if scale is None:
        scale = max(1, math.ceil(_DETECTION_SHORT_SIDE / max(min(h, w), 1)))
    if not scale > 0:
        raise ValueError(f"draw_detections: scale={scale}; expected a positive number.")
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    canvas = _resized(image, size)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=11)

    def _column(values: np.ndarray | None, n: int, what: str) -> np.ndarray | None:
        if values is None:
            return None
        values = np.asarray(values).reshape(-1)
        if len(values) != n:
            raise ValueError(f"draw_detections: {len(values)} {what} for {n} boxes; expected one "
                             "per box.")
        return values

    n = 0 if boxes is None else len(np.asarray(boxes).reshape(-1, 4))
    classes = _column(classes, n, "classes")
    scores = _column(scores, n, "scores")
    for i, xy in _pixel_boxes(boxes, scale, *size):
        if scores is not None and not scores[i] >= min_score:
            continue
        cls = int(classes[i]) if classes is not None else 0
        colour = _palette_rgb255(cls)
        draw.rectangle(xy, outline=colour, width=2)
        text = _short_name(class_names, cls) if classes is not None else ""
        if scores is not None:
            text = f"{text} {float(scores[i]):.2f}".strip()
        if text:
            _box_label(draw, font, text, xy, colour, size)

    m = 0 if gt_boxes is None else len(np.asarray(gt_boxes).reshape(-1, 4))
    gt_classes = _column(gt_classes, m, "gt_classes")
    for i, xy in _pixel_boxes(gt_boxes, scale, *size):
        _dashed_rectangle(draw, xy, GT_RGB, width=2)
        if gt_classes is not None:
            _box_label(draw, font, _short_name(class_names, int(gt_classes[i])), xy, GT_RGB, size,
                       below=True)
    return np.asarray(canvas)


def detection_grid(panels: Sequence[np.ndarray], path: str | os.PathLike, *, columns: int = 4,
                   title: str | None = None) -> str:
    """Saves ``panels`` (e.g. ``draw_detections`` pictures, of any sizes) as one PNG grid of
    ``columns`` per row and returns ``path``.

    The layout is ``image_strip(panels, size=None, columns=columns)``: cells as large as the
    largest panel, smaller ones padded with white; a ``title`` adds a 24 px band on top.
    """
    from PIL import Image, ImageDraw, ImageFont
    if len(panels) == 0:
        raise ValueError("detection_grid: `panels` is empty; pass at least one picture "
                         "(e.g. from draw_detections).")
    if columns < 1:
        raise ValueError(f"detection_grid: columns={columns}; expected >= 1.")
    grid = Image.fromarray(image_strip(panels, size=None, columns=columns))
    if title:
        titled = Image.new("RGB", (grid.width, grid.height + 24), "white")
        titled.paste(grid, (0, 24))
        ImageDraw.Draw(titled).text((6, 5), str(title), fill="black",
                                    font=ImageFont.load_default(size=14))
        grid = titled
    path = os.fspath(path)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    grid.save(path, format="PNG")
    return path


def plot_pr_curves(precision: np.ndarray, path: str | os.PathLike, *, class_names: Sequence[str],
                   recall: np.ndarray | None = None, title: str = "precision / recall at IoU 0.5",
                   dpi: int = 100) -> str:
    """Saves one precision / recall curve per class and returns ``path``.

    ``precision`` (C, R) holds the precision at ``recall`` (R,) (default ``np.linspace(0, 1, R)``,
    COCO's 101 points when R = 101), e.g. one IoU / area / max-detections slice of COCO's
    precision array; -1 marks "no value". Rows that are all -1 (classes without ground truth)
    are left out (the legend says how many); each other row is one line in its class colour,
    labelled "name (AP 0.83)" with AP the mean of its entries > -1, legend sorted by AP; the
    title ends with the mean AP of the plotted classes. Raises ``ValueError`` for a wrong shape or when no row has a value.
    """
    precision = np.asarray(precision, np.float64)
    if precision.ndim != 2:
        raise ValueError(f"plot_pr_curves: precision has shape {precision.shape}; expected "
                         "(C, R): one row of precisions per class.")
    c, r = precision.shape
    if len(class_names) != c:
        raise ValueError(f"plot_pr_curves: {len(class_names)} class_names for {c} classes; pass "
                         "one name per row of precision.")
    recall = np.linspace(0.0, 1.0, r) if recall is None else np.asarray(recall, np.float64)
    if recall.shape != (r,):
        raise ValueError(f"plot_pr_curves: recall has shape {recall.shape}; expected ({r},), "
                         "one recall per column of precision.")
    curves = []
    for k in range(c):
        valid = precision[k] > -1
        if valid.any():
            ap = float(precision[k][valid].mean())
            curves.append((ap, k, np.where(valid, precision[k], np.nan)))
    if not curves:
        raise ValueError("plot_pr_curves: every row of precision is -1 (no class has ground "
                         "truth); nothing to plot.")
    curves.sort(key=lambda t: (-t[0], t[1]))
    ncol = math.ceil(len(curves) / 25)
    fig = _new_figure(4.6 + 1.6 * ncol, 4.0)
    ax = fig.subplots()
    for ap, k, row in curves:
        ax.plot(recall, row, color=_palette(k), linestyle=("-", "--", ":", "-.")[(k // 20) % 4],
                linewidth=1.2, label=f"{_short_name(class_names, k)} (AP {ap:.2f})")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("recall", fontsize=8)
    ax.set_ylabel("precision", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(True, alpha=0.3)
    mean_ap = float(np.mean([ap for ap, _, _ in curves]))
    ax.set_title(f"{title}: mAP {mean_ap:.3f}" if title else f"mAP {mean_ap:.3f}", fontsize=9)
    skipped = c - len(curves)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=6, frameon=False,
              borderaxespad=0.0, ncol=ncol,
              title=f"{skipped} without ground truth not shown" if skipped else None,
              title_fontsize=6)
    return _save(fig, path, dpi)
