"""Sources that read local files under ``data.path``: ``npz``, ``image_folder``, ``middlebury``,
``yolo`` and ``oxford_pets`` (each class's docstring gives its layout, splits and targets).

``from_config(config, split)`` builds the one named by ``config.name``; ``split`` is a base name
(``source.build_source`` applies slices). Each source indexes its files when built and decodes
one example per ``__getitem__``, so building is cheap and the objects pickle small (grain worker
processes pickle them). Examples follow ``jaxvision.data.example``.

A file that cannot be read (empty, truncated, not an image, more pixels than ``data.max_pixels``,
an unparsable annotation) or an example whose values break the conventions raises
``BadExample`` naming the example and the file; the loader skips it under
``data.bad_examples='skip'``. Under 'skip', what a source reads when it is built (class counts,
the largest disparity) leaves such files out instead of raising.
"""

from __future__ import annotations

import contextlib
import re
import threading
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple, Sequence, TypeVar

import numpy as np
from PIL import Image

from jaxvision.data.config import BAD_EXAMPLES, MAX_PIXELS
from jaxvision.data.example import (ID_KEYS, ID_LIMITS, IGNORE_LABEL, INVALID_DISPARITY, SPEC,
                                    Example, ExampleError, first_invalid, invalid_values,
                                    validate_example)
from jaxvision.data.source import BadExample, DataError, SourceInfo

T = TypeVar("T")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".pgm", ".ppm", ".pbm", ".bmp", ".gif", ".tif",
                  ".tiff", ".webp")
# Keys a source may hold; the rest of SPEC is added by the loader.
_SOURCE_KEYS = tuple(k for k in SPEC if k not in ("index", "valid", "box_valid"))


# ----------------------------------------------------------------------------- helpers

def _get(config: Any, key: str, default: Any) -> Any:
    """Returns ``config.key``, or ``default`` where the key is absent or None."""
    value = config.get(key, None) if hasattr(config, "get") else getattr(config, key, None)
    return default if value is None else value


def _natural_key(text: str) -> list:
    """Sort key that orders embedded numbers by value (``s2`` < ``s10``)."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


class BadFile(DataError):
    """The file at ``path`` cannot be read; ``reason`` says why (one line)."""

    def __init__(self, path: Path | str, reason: str):
        super().__init__(f"{str(path)!r}: {reason}")
        self.path, self.reason = str(path), reason

    def __reduce__(self) -> tuple:
        return type(self), (self.path, self.reason)


def _why(path: Path, error: Exception) -> str:
    """Returns one line saying why reading ``path`` raised ``error``."""
    try:
        size = path.stat().st_size
    except OSError:
        return "is missing or unreadable (moved or deleted after the source was built?)"
    if size == 0:
        return "is empty (0 bytes)"
    if isinstance(error, Image.UnidentifiedImageError):
        return f"is not an image PIL can read ({size} bytes of an unknown format)"
    return f"cannot be read ({type(error).__name__}: {_one_line(error, path)})"


def _one_line(error: Exception, path: Path | str) -> str:
    """Returns ``error``'s message on one line, without the path (the caller names it)."""
    return " ".join(str(error).replace(str(path), "<file>").split()).rstrip(".")


@contextlib.contextmanager
def _reading(path: Path | str) -> Iterator[None]:
    """Turns any error raised while reading ``path`` into a ``BadFile`` naming it: decoders
    raise many types (OSError, SyntaxError, ValueError, zlib.error, ...) for one bad file."""
    try:
        yield
    except BadFile:
        raise
    except Exception as e:
        raise BadFile(path, _why(Path(path), e)) from e


@contextlib.contextmanager
def _open_image(path: Path | str, max_pixels: int) -> Iterator[Image.Image]:
    """Opens the image at ``path`` (header only) and refuses it if width x height >
    ``max_pixels``, before anything is decoded; errors raise ``BadFile``."""
    with _reading(path):
        try:
            im = Image.open(path)
        except Image.DecompressionBombError as e:  # PIL's own limit, checked on opening
            m = re.search(r"\((\d+) pixels\)", str(e))
            if m and int(m[1]) > max_pixels:
                raise BadFile(path, f"is {int(m[1]):,} pixels, more than data.max_pixels="
                                    f"{max_pixels:,} (raise data.max_pixels if the image is "
                                    "genuine)") from e
            raise BadFile(path, f"is refused by PIL before decoding ({_one_line(e, path)}); "
                                f"data.max_pixels={max_pixels:,}") from e
        with im:
            w, h = im.size
            if w * h > max_pixels:
                raise BadFile(path, f"is {w}x{h} = {w * h:,} pixels, more than data.max_pixels="
                                    f"{max_pixels:,} (raise data.max_pixels if the image is genuine)")
            yield im


def read_image(path: Path | str, channels: int, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Returns the image at ``path`` as (H, W, channels) uint8, ``channels`` 1 (gray) or 3 (RGB).

    PIL opens by content, not by suffix, so a GIF or an RGBA PNG named ``.jpg`` loads too; the
    first frame is used and alpha is dropped. Raises ``BadFile`` (a ``DataError`` naming the
    file) for a file that cannot be decoded or has more than ``max_pixels`` pixels.
    """
    with _open_image(path, max_pixels) as im:
        im.seek(0)
        if im.mode == "P" and "transparency" in im.info:
            im = im.convert("RGBA")  # palette transparency would warn on a direct convert
        if im.mode.startswith("I"):
            # 16-bit gray: keep the top 8 bits (PIL's convert would clip at 255).
            gray = (np.asarray(im).astype(np.uint32) >> 8).astype(np.uint8)[..., None]
            return gray if channels == 1 else np.repeat(gray, 3, axis=-1)
        arr = np.asarray(im.convert("L" if channels == 1 else "RGB"), np.uint8)
    return arr[..., None] if channels == 1 else arr


def _read_raw_image(path: Path, max_pixels: int) -> np.ndarray:
    """Returns the stored values of the image at ``path`` (a label map: no colour conversion)."""
    with _open_image(path, max_pixels) as im:
        return np.asarray(im)


def _image_channels(path: Path, max_pixels: int) -> int:
    """Returns 1 if the image at ``path`` is grayscale, else 3 (reads the header only)."""
    with _open_image(path, max_pixels) as im:
        return 1 if im.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "F") else 3


def _require_path(config: Any, kind: str, layout: str, folder: bool = True) -> Path:
    path = _get(config, "path", None)
    if path is None:
        raise DataError(f"data.path is not set; data.name={kind!r} reads local files. Set "
                        f"data.path to {layout}.")
    path = Path(str(path)).expanduser()
    if not path.exists():
        raise DataError(f"data.path={str(path)!r} does not exist; data.name={kind!r} expects "
                        f"{layout}.")
    if path.is_dir() != folder:
        raise DataError(f"data.path={str(path)!r} is {'not ' * folder}a folder; data.name={kind!r} "
                        f"expects {layout}.")
    return path


def _require(path: Path, what: str, kind: str, layout: str) -> Path:
    if not path.exists():
        raise DataError(f"{kind}: {what} {str(path)!r} not found (under data.path); expected "
                        f"{layout}.")
    return path


def _unknown_split(kind: str, split: str, splits: Sequence[str], path: Path) -> DataError:
    return DataError(f"{kind}: unknown split {split!r} in {str(path)!r}; splits present: "
                     f"{', '.join(splits) or '(none)'}. Set data.train_split / data.eval_split.")


class _FileSource:
    """Random-access base: subclasses call ``_options`` first, set ``info`` and ``_n``, and
    implement ``_load(i)`` and ``_example_files(i)``. ``__getitem__`` checks every example with
    ``validate_example`` and turns a bad file or a bad value into a ``BadExample``."""

    kind: str
    info: SourceInfo
    _n: int
    _split: str
    _max_pixels: int = MAX_PIXELS
    _skip: bool = False

    def _options(self, split: str, max_pixels: int, bad_examples: str) -> None:
        if bad_examples not in BAD_EXAMPLES:
            raise DataError(f"data.bad_examples={bad_examples!r} must be one of "
                            f"{', '.join(map(repr, BAD_EXAMPLES))}.")
        self._split, self._max_pixels, self._skip = split, int(max_pixels), bad_examples == "skip"

    def __len__(self) -> int:
        return self._n

    def _where(self, index: int) -> str:
        return f"{self.kind}[{self._split}][{index}]"

    def __getitem__(self, index: int) -> Example:
        index = int(index)
        if not 0 <= index < self._n:
            raise IndexError(f"index {index} out of range for {self.kind}[{self._split}] of "
                             f"length {self._n}")
        where = self._where(index)
        try:
            return validate_example(self._load(index), where=where, info=self.info)
        except BadFile as e:
            raise BadExample(where, index, e.path, e.reason) from e
        except ExampleError as e:
            files = self._example_files(index)
            raise BadExample(where, index, files.get(e.key, files["image"]), e.detail.rstrip(".")) from e

    def _scan(self, index: int, read: Callable[[], T]) -> T | None:
        """Returns ``read()``, a read of example ``index``'s files while the source is built.
        A bad file raises ``BadExample``, or under 'skip' gives None: the example is skipped
        when it is loaded."""
        try:
            return read()
        except BadFile as e:
            if self._skip:
                return None
            raise BadExample(self._where(index), index, e.path, e.reason) from e

    def _load(self, index: int) -> Example:
        raise NotImplementedError

    def _example_files(self, index: int) -> dict[str, Path]:
        """Returns ``{example key: the file it is read from}``; holds at least ``image``."""
        raise NotImplementedError


# ----------------------------------------------------------------------------- npz

_NPZ_LAYOUT = ("an .npz file with x_<split> / y_<split> arrays (images (N,H,W[,C]) uint8, labels) "
               "or <split>_<key> arrays (train_image, train_label, train_mask, ...)")


# np.load parses each array's header with ast.literal_eval, and CPython 3.11's AST constructor
# keeps its recursion depth per interpreter, not per thread: two threads parsing at once can
# fail with "SystemError: AST constructor recursion depth mismatch" (python/cpython#106905; it
# failed this project's CI once, in grain's threads). Loads from these files take turns.
_NP_LOAD = threading.Lock()


def _npz_shapes(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Returns ``{name: (shape, dtype)}`` of every array in the .npz, reading headers only."""
    out = {}
    with zipfile.ZipFile(path) as zf:
        for member in zf.namelist():
            if not member.endswith(".npy"):
                continue
            with zf.open(member) as f:
                major, _ = np.lib.format.read_magic(f)
                read = (np.lib.format.read_array_header_1_0 if major == 1
                        else np.lib.format.read_array_header_2_0)
                with _NP_LOAD:
                    shape, _, dtype = read(f)
            out[member[:-4]] = (tuple(shape), np.dtype(dtype))
    return out


def _npz_key(name: str) -> tuple[str, str] | None:
    """Returns ``(split, example key)`` that the array ``name`` holds, or None (e.g. ``class_names``)."""
    if name.startswith("x_"):
        return name[2:], "image"
    if name.startswith("y_"):
        return name[2:], "label"
    # Longest key first so that 'train_image_right' is not read as split 'train_image', key 'right'.
    for key in sorted(_SOURCE_KEYS, key=len, reverse=True):
        if name.endswith("_" + key) and len(name) > len(key) + 1:
            return name[: -len(key) - 1], key
    return None


def _top(array: np.ndarray) -> float | None:
    """Returns the largest finite value of ``array``, None if it has none."""
    array = np.asarray(array)
    if array.dtype.kind == "f":
        array = array[np.isfinite(array)]
    return float(array.max()) if array.size else None


@contextlib.contextmanager
def _npz_errors(path: Path) -> Iterator[None]:
    """Turns an error while loading arrays of ``path`` into a ``DataError`` naming it; the whole
    file is damaged then, so no example could be skipped in its place."""
    try:
        yield
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"npz: {str(path)!r} {_why(path, e)}; the file is damaged: write it again "
                        "(np.savez).") from e


class NpzSource(_FileSource):
    """Examples stored as arrays in one ``.npz`` (see the module docstring for the layouts).

    Class counts (``num_classes`` etc.) are ``len(class_names)`` where given, else the largest id
    over all splits + 1, so that every split of one file agrees.

    The split's target arrays are checked when the source is built: ids (``ID_KEYS``) must be
    integers (a float array only with whole values), in range (``invalid_values``); boxes finite
    with y0 <= y1 and x0 <= x1; disparities finite. The first violation raises ``BadExample``
    naming the file, the array, the example and the value; under 'skip' every offending example
    is skipped when loaded. Object and string arrays are refused outright.
    """

    kind = "npz"

    def __init__(self, path: Path, split: str, *, max_pixels: int = MAX_PIXELS,
                 bad_examples: str = "error"):
        self._options(split, max_pixels, bad_examples)
        self._path, self._arrays = path, None
        try:
            shapes = _npz_shapes(path)
        except (zipfile.BadZipFile, ValueError, OSError) as e:
            raise DataError(f"npz: cannot read {str(path)!r} ({e}); data.path must be {_NPZ_LAYOUT}.") from e
        keyed = {n: sk for n in shapes if (sk := _npz_key(n)) is not None}
        for n, (_, key) in keyed.items():
            dtype = shapes[n][1]
            if key not in ("image", "image_right") and dtype.kind not in "biuf":
                raise DataError(f"npz: array '{n}' ({key}) in {str(path)!r} has dtype {dtype}; "
                                f"expected {'integers' if key in ID_KEYS else 'numbers'} (object "
                                "and string arrays cannot be read): store it with a numeric dtype.")
        splits = sorted({s for s, k in keyed.values() if k == "image"})
        # Array name in the file -> example key, for this split; x_/y_ win over <split>_image/label.
        self._names: dict[str, str] = {}
        for n, (s, key) in sorted(keyed.items(), key=lambda kv: not kv[0].startswith(("x_", "y_"))):
            if s == split and key not in self._names.values():
                self._names[n] = key
        if "image" not in self._names.values():
            raise _unknown_split("npz", split, splits, path)
        counts = {n: shapes[n][0][0] if shapes[n][0] else 0 for n in self._names}
        if len(set(counts.values())) != 1:
            raise DataError(f"npz: arrays of split {split!r} in {str(path)!r} have different "
                            f"example counts {counts}; each needs one row per example.")
        for name, key in self._names.items():
            shape, dtype = shapes[name]
            if key in ("image", "image_right") and (
                    dtype != np.uint8 or len(shape) not in (3, 4)
                    or (len(shape) == 4 and shape[-1] not in (1, 3, 4))):
                raise DataError(f"npz: '{name}' in {str(path)!r} is {dtype} {shape}; expected uint8 "
                                "(N, H, W) or (N, H, W, C) with C in 1, 3, 4 (alpha is dropped).")
        self._n = next(counts[n] for n, k in self._names.items() if k == "image")
        present = set(self._names.values())
        with _NP_LOAD, _npz_errors(path), np.load(path, allow_pickle=False) as npz:
            names = tuple(str(c) for c in npz["class_names"]) if "class_names" in shapes else ()

            def count(key: str) -> int | None:
                if key not in present:
                    return None
                tops = [t for n, (_, k) in keyed.items() if k == key and (t := _top(npz[n])) is not None]
                return int(max(tops)) + 1 if tops else None

            disp = [_top(npz[n]) for n, k in self._names.items() if k == "disparity"]
            self.info = SourceInfo(
                name="npz", split=split, keys=tuple(k for k in _SOURCE_KEYS if k in present),
                num_classes=(len(names) or count("label")) if "label" in present else None,
                class_names=names, num_box_classes=count("box_classes"),
                num_mask_classes=count("mask"), num_identities=count("identity"),
                max_disparity=disp[0] if disp else None)
            self._bad: dict[int, str] = {}  # example index -> what is wrong with it
            for name, key in self._names.items():
                if key not in ("image", "image_right"):
                    self._check(name, key, npz[name])

    def _check(self, name: str, key: str, values: np.ndarray) -> None:
        """Records in ``self._bad`` the examples whose row of array ``name`` breaks the rules of
        ``key``: all of them under 'skip', else raises ``BadExample`` for the first."""
        if not len(values):
            return
        count = ID_LIMITS.get(key)
        limit = getattr(self.info, count) if count else None
        bad = invalid_values(key, values, limit)[0]
        whole = key in ID_KEYS and values.dtype.kind == "f"
        if whole:  # a float id array is fine while every value is a whole number
            bad |= ~np.isfinite(values) | (values != np.round(values))
        rows = np.flatnonzero(bad.reshape(len(values), -1).any(axis=1))
        for i in rows.tolist()[: None if self._skip else 1]:
            row = values[i]
            problem = first_invalid(key, row, limit)
            if whole and not problem:
                pos = tuple(int(j) for j in np.argwhere(np.asarray(row) != np.round(row))[0])
                problem = (f"'{key}' holds {np.asarray(row)[pos].item()!r}"
                           + (f" at position {pos}" if pos else "")
                           + "; expected a whole number (a float id would be truncated): store "
                           "ids as integers")
            self._bad[i] = f"array '{name}': {problem}"
        if rows.size and not self._skip:
            i = int(rows[0])
            raise BadExample(self._where(i), i, str(self._path), self._bad[i])

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_arrays": None}  # arrays reload lazily in the worker

    def _example_files(self, index: int) -> dict[str, Path]:
        return {"image": self._path}

    def _load(self, index: int) -> Example:
        if index in self._bad:
            raise BadFile(self._path, self._bad[index])
        if self._arrays is None:
            with _NP_LOAD:
                if self._arrays is None:   # another thread may have loaded them meanwhile
                    with _npz_errors(self._path), np.load(self._path, allow_pickle=False) as npz:
                        self._arrays = {key: npz[name] for name, key in self._names.items()}
        ex = {}
        for key, array in self._arrays.items():
            value = np.asarray(array[index], SPEC[key][1])
            if key in ("image", "image_right"):
                value = value[..., None] if value.ndim == 2 else value[..., :3]
            ex[key] = value
        return ex


# ----------------------------------------------------------------------------- image_folder

_FOLDER_LAYOUT = "a folder with one subfolder per class / identity, each holding image files"


def holdout_split(items: Sequence[Any], holdout: float, split: str) -> list:
    """The ``train`` or ``test`` part of ``items`` (in their order): the last ``round(n *
    holdout)`` of them, at most n - 1, are ``test``."""
    n_test = min(len(items) - 1, int(round(len(items) * holdout)))
    cut = len(items) - max(n_test, 0)
    return list(items[:cut] if split == "train" else items[cut:])


class ImageFolderSource(_FileSource):
    """``<class>/<image>`` folders; ``label`` = ``identity`` = class index.

    Classes are the natural-sorted names of the subfolders that hold images (``s2`` < ``s10``);
    files that are not images (README, ...) are skipped. Splits:

    * ``all``: every image;
    * ``train`` / ``test`` with ``split_by='image'``: the last ``holdout`` fraction
      (``round(n * holdout)``, at most n - 1) of each class's natural-sorted images is ``test``;
      every class is in both splits and labels index all classes;
    * ``train`` / ``test`` with ``split_by='identity'``: the last ``round(K * holdout)`` classes
      are ``test`` (unseen identities, for metric learning). Labels and ``class_names`` are
      contiguous within the split, since a test identity never has a train label to match.

    Images are converted to ``channels`` (``data.channels``; 0 = 1 if the first image is
    grayscale, else 3).
    """

    kind = "image_folder"

    def __init__(self, root: Path, split: str, *, holdout: float = 0.2, split_by: str = "image",
                 channels: int = 0, max_pixels: int = MAX_PIXELS, bad_examples: str = "error"):
        self._options(split, max_pixels, bad_examples)
        if not 0.0 <= holdout < 1.0:
            raise DataError(f"image_folder: data.holdout={holdout} must be in [0, 1) (the fraction "
                            "held out as split 'test').")
        if split_by not in ("image", "identity"):
            raise DataError(f"image_folder: data.split_by={split_by!r} must be 'image' or 'identity'.")
        if split not in ("all", "train", "test"):
            raise _unknown_split("image_folder", split, ("all", "train", "test"), root)
        folders = sorted((d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")),
                         key=lambda d: _natural_key(d.name))
        per_class = [(d.name, sorted((f.name for f in d.iterdir() if _is_image(f)), key=_natural_key))
                     for d in folders]
        per_class = [(c, files) for c, files in per_class if files]
        if not per_class:
            raise DataError(f"image_folder: no class folders with images in data.path={str(root)!r}; "
                            f"expected {_FOLDER_LAYOUT} (suffixes {', '.join(IMAGE_SUFFIXES)}).")
        every = [root / c / f for c, files in per_class for f in files]  # before the split
        if split_by == "identity" and split != "all":
            per_class = holdout_split(per_class, holdout, split)
        self._root = root
        self._files: list[tuple[str, int]] = []  # (relative path, class index)
        for label, (cls, files) in enumerate(per_class):
            if split_by == "image" and split != "all":
                files = holdout_split(files, holdout, split)
            self._files += [(f"{cls}/{f}", label) for f in files]
        self._n = len(self._files)
        self._channels = int(channels) or self._first_channels(every)
        if self._channels not in (1, 3):
            raise DataError(f"image_folder: data.channels={channels} must be 0 (auto), 1 or 3.")
        names = tuple(c for c, _ in per_class)
        self.info = SourceInfo(name="image_folder", split=split, keys=("image", "label", "identity"),
                               num_classes=len(names), class_names=names, num_identities=len(names))

    def _first_channels(self, files: Sequence[Path]) -> int:
        """Returns the channels of the first image of ``files`` (every split's, so that all
        splits agree); under 'skip', of the first one that opens."""
        for path in files:
            try:
                return _image_channels(path, self._max_pixels)
            except BadFile as e:
                if not self._skip:
                    raise DataError(f"image_folder: {e}; data.channels=0 takes the channels of this "
                                    "first image: fix or remove the file, set data.channels to 1 or "
                                    "3, or set data.bad_examples='skip'.") from e
        raise DataError(f"image_folder: none of the {len(files)} images under {str(self._root)!r} "
                        "can be read; data.path must be " + _FOLDER_LAYOUT + ".")

    def identities(self) -> np.ndarray:
        """(N,) int32 identity of every example, without reading an image (pk sampler)."""
        return np.asarray([label for _, label in self._files], np.int32)

    def _example_files(self, index: int) -> dict[str, Path]:
        return {"image": self._root / self._files[index][0]}

    def _load(self, index: int) -> Example:
        rel, label = self._files[index]
        return {"image": read_image(self._root / rel, self._channels, self._max_pixels),
                "label": np.asarray(label, np.int32), "identity": np.asarray(label, np.int32)}


# ----------------------------------------------------------------------------- middlebury

class _Scene(NamedTuple):
    name: str
    left: Path
    right: Path
    disparity: Path
    disparity_right: Path | None
    scale: float | None  # gray value / scale = pixels; None: float32 .npy in pixels


# name -> (left candidates, right candidates, disparity, right-view disparity, scale); shared README.
_MIDDLEBURY = {
    "tsukuba": (("scene1.row3.col3.ppm", "scene1.row3.col3.png"),
                ("scene1.row3.col4.ppm", "scene1.row3.col4.png"), "truedisp.row3.col3.pgm", None, 16.0),
    "venus": (("im2.ppm", "im2.png"), ("im6.ppm", "im6.png"), "disp2.pgm", "disp6.pgm", 8.0),
    "cones": (("im2.png", "im2.ppm"), ("im6.png", "im6.ppm"), "disp2.pgm", "disp6.pgm", 4.0),
    "teddy": (("im2.png", "im2.ppm"), ("im6.png", "im6.ppm"), "disp2.pgm", "disp6.pgm", 4.0),
}
_MIDDLEBURY_LAYOUT = ("scene folders: tsukuba/ (scene1.row3.col3.ppm, scene1.row3.col4.ppm, "
                      "truedisp.row3.col3.pgm), venus/ cones/ teddy/ (im2, im6 as .ppm or .png, "
                      "disp2.pgm [+ disp6.pgm]), or any folder with left.png, right.png, "
                      "disparity.npy (float32 pixels) [+ disparity_right.npy]")


def _find_scene(folder: Path) -> _Scene | None:
    """Returns the scene stored in ``folder``, None if it holds no scene; DataError if incomplete."""
    if folder.name in _MIDDLEBURY:
        lefts, rights, disp, disp_r, scale = _MIDDLEBURY[folder.name]
        left = next((folder / n for n in lefts if (folder / n).exists()), folder / lefts[0])
        right = next((folder / n for n in rights if (folder / n).exists()), folder / rights[0])
        r = folder / disp_r if disp_r and (folder / disp_r).exists() else None
        files, scene = (left, right, folder / disp), _Scene(folder.name, left, right, folder / disp, r, scale)
    elif (folder / "left.png").exists():
        r = folder / "disparity_right.npy"
        files = (folder / "left.png", folder / "right.png", folder / "disparity.npy")
        scene = _Scene(folder.name, *files, r if r.exists() else None, None)
    else:
        return None
    for f in files:
        _require(f, f"scene file of {folder.name!r}", "middlebury", _MIDDLEBURY_LAYOUT)
    return scene


def _read_disparity(path: Path, scale: float | None, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Returns (H, W) float32 disparity in pixels, unknown pixels = INVALID_DISPARITY."""
    if scale is None:
        with _reading(path), _NP_LOAD:
            d = np.asarray(np.load(path, allow_pickle=False), np.float32)
        if d.ndim == 3 and d.shape[-1] == 1:
            d = d[..., 0]
        if d.ndim != 2:
            raise BadFile(path, f"holds an array of shape {d.shape}; expected (H, W) float32 "
                                "disparity in pixels")
        return np.where(np.isfinite(d) & (d >= 0), d, INVALID_DISPARITY).astype(np.float32)
    gray = read_image(path, 1, max_pixels)[..., 0].astype(np.float32)
    # Gray 0 is Middlebury's "unknown" (e.g. the tsukuba border), not disparity 0.
    return np.where(gray > 0, gray / scale, INVALID_DISPARITY).astype(np.float32)


class MiddleburySource(_FileSource):
    """Rectified stereo scenes with ground-truth disparity, one example per scene (sorted by name).

    Example: ``image`` (left, RGB), ``image_right``, ``disparity`` (left view, pixels),
    ``disparity_right`` (right view) when any scene has it; a scene without it (tsukuba) gets an
    all-INVALID_DISPARITY map, so that every example holds the same keys. Splits ``all``,
    ``train`` and ``test`` are the same scenes: these small benchmarks are evaluated on the scenes
    they come with (train a model elsewhere, or fit per scene as classical methods do).
    """

    kind = "middlebury"

    def __init__(self, root: Path, split: str, *, max_pixels: int = MAX_PIXELS,
                 bad_examples: str = "error"):
        self._options(split, max_pixels, bad_examples)
        if split not in ("all", "train", "test"):
            raise _unknown_split("middlebury", split, ("all", "train", "test"), root)
        scene = _find_scene(root)  # data.path may also be one scene folder
        scenes = [scene] if scene else [
            s for d in sorted(root.iterdir(), key=lambda d: _natural_key(d.name))
            if d.is_dir() and (s := _find_scene(d)) is not None]
        if not scenes:
            raise DataError(f"middlebury: no stereo scene found in data.path={str(root)!r}; expected "
                            f"{_MIDDLEBURY_LAYOUT}.")
        self._scenes, self._n = scenes, len(scenes)
        self.scene_names = tuple(s.name for s in scenes)
        self._with_right = any(s.disparity_right is not None for s in scenes)
        # Disparity maps are small; reading them here gives an exact max_disparity.
        maps = [self._scan(i, lambda s=s: _read_disparity(s.disparity, s.scale, self._max_pixels))
                for i, s in enumerate(scenes)]
        max_d = max((float(d.max()) for d in maps if d is not None), default=None)
        keys = ("image", "image_right", "disparity") + (("disparity_right",) if self._with_right else ())
        self.info = SourceInfo(name="middlebury", split=split, keys=keys, max_disparity=max_d)

    def _example_files(self, index: int) -> dict[str, Path]:
        s = self._scenes[index]
        files = {"image": s.left, "image_right": s.right, "disparity": s.disparity}
        return files | ({"disparity_right": s.disparity_right} if s.disparity_right else {})

    def _load(self, index: int) -> Example:
        s, m = self._scenes[index], self._max_pixels
        ex = {"image": read_image(s.left, 3, m), "image_right": read_image(s.right, 3, m),
              "disparity": _read_disparity(s.disparity, s.scale, m)}
        if self._with_right:
            ex["disparity_right"] = (_read_disparity(s.disparity_right, s.scale, m) if s.disparity_right
                                     else np.full(ex["disparity"].shape, INVALID_DISPARITY, np.float32))
        return ex


# ----------------------------------------------------------------------------- yolo

_YOLO_LAYOUT = ("images/<split>/*.jpg with labels/<split>/*.txt (lines 'class cx cy w h', "
                "normalized to [0, 1]) and optional classes.txt (Ultralytics layout)")


def yolo_to_boxes(rows: np.ndarray, height: int, width: int) -> np.ndarray:
    """Converts normalized ``(N, 4)`` ``[cx, cy, w, h]`` to ``(N, 4)`` float32 ``[y0, x0, y1, x1]``
    in pixels, clipped to the image."""
    rows = np.asarray(rows, np.float64).reshape(-1, 4)
    cx, cy, w, h = rows.T
    boxes = np.stack([(cy - h / 2) * height, (cx - w / 2) * width,
                      (cy + h / 2) * height, (cx + w / 2) * width], axis=-1)
    return np.clip(boxes, 0, [height, width, height, width]).astype(np.float32)


def _read_yolo_labels(path: Path, num_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Returns ``(classes (N,) int32, normalized cx cy w h (N, 4))`` from a YOLO label file.

    A line with more than 5 fields is an Ultralytics segment (``class x1 y1 x2 y2 ...``); its
    box is the polygon's bounding box. Raises ``BadFile`` for a file that is not text, a
    malformed line, or a class that is not a whole number in ``[0, num_classes)``.
    """
    with _reading(path):
        text = path.read_text()
    classes, rows = [], []
    for lineno, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        try:
            values = [float(v) for v in fields]
        except ValueError:
            values = []
        if len(values) < 5 or (len(values) > 5 and len(values) % 2 == 0):
            raise BadFile(path, f"line {lineno}: {line[:80]!r} is not 'class cx cy w h' "
                                "(normalized) nor 'class x1 y1 x2 y2 ...' (a polygon)")
        top = f"[0, {num_classes})" if num_classes is not None else ">= 0"
        if values[0] != int(values[0]) or values[0] < 0 or (num_classes is not None
                                                            and values[0] >= num_classes):
            raise BadFile(path, f"line {lineno}: class {fields[0]!r} is not a class id in {top}"
                                + (" (classes.txt)" if num_classes is not None else ""))
        classes.append(int(values[0]))
        if len(values) == 5:
            rows.append(values[1:])
        else:
            xs, ys = np.asarray(values[1::2]), np.asarray(values[2::2])
            x0, x1, y0, y1 = xs.min(), xs.max(), ys.min(), ys.max()
            rows.append([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0])
    return np.asarray(classes, np.int32), np.asarray(rows, np.float64).reshape(-1, 4)


class YoloSource(_FileSource):
    """Detection data in the Ultralytics layout; examples hold ``image`` (RGB), ``boxes``,
    ``box_classes`` (no image-level ``label``).

    Split ``s`` reads ``images/s`` or ``images/s2017`` (``val`` and ``validation`` stand for each
    other); if neither exists and ``images/`` has exactly one subfolder, ``train`` and ``all`` use
    it, and ``all`` with several subfolders joins them all. Images without a label file have zero
    boxes; label files without an image are ignored. Classes come from ``classes.txt`` (line i =
    class i) or else are ``0 .. max id`` found in the label files (leaving out, under 'skip',
    label files that cannot be read).
    """

    kind = "yolo"

    def __init__(self, root: Path, split: str, *, max_pixels: int = MAX_PIXELS,
                 bad_examples: str = "error"):
        self._options(split, max_pixels, bad_examples)
        images = _require(root / "images", "folder", "yolo", _YOLO_LAYOUT)
        labels = _require(root / "labels", "folder", "yolo", _YOLO_LAYOUT)
        subs = sorted(d.name for d in images.iterdir() if d.is_dir() and not d.name.startswith("."))
        aliases = ["val", "val2017", "validation"] if split in ("val", "validation") else []
        chosen = [n for n in [split, f"{split}2017", *aliases] if n in subs][:1]
        if not chosen and (split == "all" or (split == "train" and len(subs) == 1)):
            chosen = subs
        if not subs and split in ("train", "all") and any(_is_image(f) for f in images.iterdir()):
            chosen = [""]  # images/*.jpg without subfolders
        if not chosen:
            raise _unknown_split("yolo", split, subs, images)
        self._root = root
        self._items: list[tuple[str, str | None]] = []  # (image path, label path or None)
        for sub in chosen:
            for f in sorted((images / sub).iterdir(), key=lambda f: _natural_key(f.name)):
                if _is_image(f):
                    lab = labels / sub / (f.stem + ".txt")
                    self._items.append((str(f.relative_to(root)),
                                        str(lab.relative_to(root)) if lab.exists() else None))
        self._n = len(self._items)
        class_file = root / "classes.txt"
        self._num_classes: int | None = None  # bounds the class ids read (classes.txt)
        if class_file.exists():
            try:
                with _reading(class_file):
                    lines = class_file.read_text().splitlines()
            except BadFile as e:
                raise DataError(f"yolo: {e}; classes.txt must be text, one class name per line.") from e
            class_names = tuple(line.strip() for line in lines if line.strip())
            num = self._num_classes = len(class_names)
        else:
            class_names = ()
            labels_read = [self._scan(i, lambda lab=lab: _read_yolo_labels(root / lab)[0])
                           for i, (_, lab) in enumerate(self._items) if lab]
            tops = [int(c.max()) for c in labels_read if c is not None and c.size]
            num = max(tops) + 1 if tops else 0
        self.info = SourceInfo(name="yolo", split=split, keys=("image", "boxes", "box_classes"),
                               num_box_classes=num, class_names=class_names)

    def _example_files(self, index: int) -> dict[str, Path]:
        image_path, label_path = self._items[index]
        label = {"boxes": self._root / label_path, "box_classes": self._root / label_path}
        return {"image": self._root / image_path} | (label if label_path else {})

    def _load(self, index: int) -> Example:
        image_path, label_path = self._items[index]
        image = read_image(self._root / image_path, 3, self._max_pixels)
        classes, rows = (_read_yolo_labels(self._root / label_path, self._num_classes) if label_path
                         else (np.zeros((0,), np.int32), np.zeros((0, 4))))
        return {"image": image, "boxes": yolo_to_boxes(rows, *image.shape[:2]), "box_classes": classes}


# ----------------------------------------------------------------------------- oxford_pets

_PETS_LAYOUT = ("images/*.jpg, annotations/trimaps/*.png, annotations/xmls/*.xml (optional head "
                "boxes), annotations/trainval.txt and annotations/test.txt (Oxford-IIIT Pet layout)")
PET_SPECIES = ("cat", "dog")


def pet_breed(stem: str) -> str:
    """Returns the breed of an Oxford-IIIT Pet image name (``'american_bulldog_12'`` -> ``'american_bulldog'``)."""
    return stem.rsplit("_", 1)[0]


def trimap_to_mask(trimap: np.ndarray) -> np.ndarray:
    """Maps an Oxford-IIIT Pet trimap to an int32 mask: 1 pet -> 1, 2 background -> 0,
    3 border (and anything else) -> IGNORE_LABEL."""
    trimap = np.asarray(trimap)
    return np.select([trimap == 1, trimap == 2], [1, 0], IGNORE_LABEL).astype(np.int32)


def read_voc_boxes(path: Path, classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Returns ``(boxes (N, 4) float32 [y0, x0, y1, x1] pixels, classes (N,) int32)`` of a
    PASCAL-VOC XML.

    VOC corners are 1-based inclusive pixel indices, so pixels ``xmin..xmax`` cover the
    continuous span ``[xmin - 1, xmax)``. Raises ``BadFile`` for a file that does not parse or
    an object without a class of ``classes`` or without numeric corners.
    """
    with _reading(path):
        root = ET.parse(path).getroot()
    boxes, labels = [], []
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        bb = obj.find("bndbox")
        if name not in classes or bb is None:
            raise BadFile(path, f"has an object {name!r} without a <bndbox> or with a class not "
                                f"in {list(classes)}")
        corners = [bb.findtext(k) for k in ("xmin", "ymin", "xmax", "ymax")]
        try:
            x0, y0, x1, y1 = (float(c) for c in corners)
        except (TypeError, ValueError):
            raise BadFile(path, f"has an object {name!r} whose <bndbox> xmin, ymin, xmax, ymax "
                                f"are {corners}, not four numbers") from None
        boxes.append([y0 - 1, x0 - 1, y1, x1])
        labels.append(classes.index(name))
    return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int32)


def _heads_split(stems: list[str], xmls: Path, held_out: bool) -> list[str]:
    """The images with a head-box XML, every 4th of each breed held out (see OxfordPetsSource)."""
    seen: dict[str, int] = {}
    out = []
    for s in stems:
        if not (xmls / f"{s}.xml").exists():
            continue
        k = seen[pet_breed(s)] = seen.get(pet_breed(s), -1) + 1
        if (k % 4 == 3) == held_out:
            out.append(s)
    return out


class OxfordPetsSource(_FileSource):
    """Oxford-IIIT Pet: ``image`` (RGB), ``mask`` (trimap: 0 background, 1 pet, border ignored),
    ``label`` = breed, ``identity`` = breed, ``boxes`` / ``box_classes`` = head boxes (cat 0, dog 1).

    Breeds are those whose images are in ``images/``, ordered case-insensitively as the
    dataset's CLASS-IDs are (Abyssinian, american_bulldog, ..., Bengal, ...); ``class_names`` are
    the breed names. ``identity`` is the breed too, not the species: two species are too few
    identities for P x K metric-learning batches, and the species is the head box's class.
    Images without an XML (all of ``test``) have zero boxes. Splits: ``train`` = trainval.txt,
    ``test`` = test.txt, ``all`` = every image in ``images/`` (including the two the lists omit);
    for head detection, ``heads_train`` / ``heads_eval``: the trainval images that have head
    boxes (the only ones that do), every 4th of each breed in list order (positions 3, 7, ...)
    in ``heads_eval``, the other three quarters in ``heads_train``.
    """

    kind = "oxford_pets"

    def __init__(self, root: Path, split: str, *, max_pixels: int = MAX_PIXELS,
                 bad_examples: str = "error"):
        self._options(split, max_pixels, bad_examples)
        images = _require(root / "images", "folder", "oxford_pets", _PETS_LAYOUT)
        ann = _require(root / "annotations", "folder", "oxford_pets", _PETS_LAYOUT)
        trimaps = _require(ann / "trimaps", "folder", "oxford_pets", _PETS_LAYOUT)
        xmls = ann / "xmls"
        files = {f.stem: f.name for f in images.iterdir() if _is_image(f)}
        if not files:
            raise DataError(f"oxford_pets: no images in {str(images)!r}; expected {_PETS_LAYOUT}.")
        if split == "all":
            stems = sorted(files, key=_natural_key)
        elif split in ("train", "trainval", "test", "heads_train", "heads_eval"):
            listing = _require(ann / ("test.txt" if split == "test" else "trainval.txt"),
                               "split list", "oxford_pets", _PETS_LAYOUT)
            try:
                with _reading(listing):
                    lines = listing.read_text().splitlines()
            except BadFile as e:
                raise DataError(f"oxford_pets: split list {e}; expected {_PETS_LAYOUT}.") from e
            stems = [ln.split()[0] for ln in lines if ln.strip() and not ln.startswith("#")]
            missing = [s for s in stems if s not in files]
            if missing:
                raise DataError(f"oxford_pets: {len(missing)} images of {str(listing)!r} are not in "
                                f"{str(images)!r}, e.g. {missing[:3]}.")
            if split.startswith("heads_"):
                stems = _heads_split(stems, xmls, split == "heads_eval")
        else:
            raise _unknown_split("oxford_pets", split, ("all", "train", "test", "heads_train",
                                                        "heads_eval"), root)
        no_trimap = [s for s in stems if not (trimaps / f"{s}.png").exists()]
        if no_trimap:
            raise DataError(f"oxford_pets: {len(no_trimap)} images have no trimap in "
                            f"{str(trimaps)!r}, e.g. {no_trimap[0]}.png; expected {_PETS_LAYOUT}.")
        breeds = tuple(sorted({pet_breed(s) for s in files}, key=str.lower))
        self._root = root
        self._items = [(s, files[s], breeds.index(pet_breed(s)), (xmls / f"{s}.xml").exists())
                       for s in stems]
        self._n = len(self._items)
        self.info = SourceInfo(
            name="oxford_pets", split=split,
            keys=("image", "mask", "label", "identity", "boxes", "box_classes"),
            num_classes=len(breeds), class_names=breeds, num_box_classes=len(PET_SPECIES),
            box_class_names=tuple(PET_SPECIES), mask_class_names=("background", "pet"),
            num_mask_classes=2, num_identities=len(breeds))

    def identities(self) -> np.ndarray:
        """(N,) int32 breed of every example, without reading an image (pk sampler)."""
        return np.asarray([breed for _, _, breed, _ in self._items], np.int32)

    def _example_files(self, index: int) -> dict[str, Path]:
        stem, name, _, has_xml = self._items[index]
        ann = self._root / "annotations"
        xml = {"boxes": ann / "xmls" / f"{stem}.xml", "box_classes": ann / "xmls" / f"{stem}.xml"}
        return ({"image": self._root / "images" / name, "mask": ann / "trimaps" / f"{stem}.png"}
                | (xml if has_xml else {}))

    def _load(self, index: int) -> Example:
        files = self._example_files(index)
        _, _, breed, _ = self._items[index]
        image = read_image(files["image"], 3, self._max_pixels)
        trimap = _read_raw_image(files["mask"], self._max_pixels)
        if trimap.ndim == 3:
            trimap = trimap[..., 0]
        if "boxes" in files:
            boxes, classes = read_voc_boxes(files["boxes"], PET_SPECIES)
            h, w = image.shape[:2]
            boxes = np.clip(boxes, 0, np.asarray([h, w, h, w], np.float32))
        else:
            boxes, classes = np.zeros((0, 4), np.float32), np.zeros((0,), np.int32)
        return {"image": image, "mask": trimap_to_mask(trimap), "label": np.asarray(breed, np.int32),
                "identity": np.asarray(breed, np.int32), "boxes": boxes, "box_classes": classes}


# ----------------------------------------------------------------------------- dispatch

def from_config(config: Any, split: str) -> "_FileSource":
    """Returns the local source named by ``config.name`` for base split ``split`` (no slice).

    Raises ``DataError`` for a missing ``data.path``, a missing file or folder, or an unknown
    split, and ``BadExample`` for a bad file read while building (under 'error').
    """
    name = str(config.name)
    options = dict(max_pixels=int(_get(config, "max_pixels", MAX_PIXELS)),
                   bad_examples=str(_get(config, "bad_examples", "error")))
    if name == "npz":
        return NpzSource(_require_path(config, name, _NPZ_LAYOUT, folder=False), split, **options)
    if name == "image_folder":
        return ImageFolderSource(_require_path(config, name, _FOLDER_LAYOUT), split,
                                 holdout=float(_get(config, "holdout", 0.2)),
                                 split_by=str(_get(config, "split_by", "image")),
                                 channels=int(_get(config, "channels", 0)), **options)
    if name == "middlebury":
        return MiddleburySource(_require_path(config, name, _MIDDLEBURY_LAYOUT), split, **options)
    if name == "yolo":
        return YoloSource(_require_path(config, name, _YOLO_LAYOUT), split, **options)
    if name == "oxford_pets":
        return OxfordPetsSource(_require_path(config, name, _PETS_LAYOUT), split, **options)
    raise DataError(f"local.from_config: data.name={name!r} is not a local file source "
                    "(npz, image_folder, middlebury, yolo, oxford_pets).")
