"""Sources: random-access collections of examples, and the one place that builds them by name.

A source is anything with ``info``, ``__len__`` and ``__getitem__(i) -> Example`` (see
``example.py`` for the format). ``build_source(data_config, split)`` picks the source from
``data_config.name``:

* ``procedural``: the built-in scene generator (zero download, every target at once);
* ``npz``, ``image_folder``, ``middlebury``, ``yolo``, ``oxford_pets``, ``coco_json``,
  ``voc_xml``, ``mask_folder``: local files under ``data_config.path``;
* any other name: a TensorFlow-Datasets dataset (``mnist``, ``cifar10``, ...; ``tfds:NAME`` also
  works), read with ``tfds.data_source`` from ``data_config.data_dir``.

Every split string may carry a slice, as in TFDS: ``train[:80%]``, ``train[1000:]``.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import numpy as np

from jaxvision.data.config import check_data_config
# DataError lives in example.py (ExampleError is one); this module is where callers import it.
from jaxvision.data.example import DataError, Example

LOCAL_SOURCES = ("procedural", "npz", "image_folder", "middlebury", "yolo", "oxford_pets",
                 "coco_json", "voc_xml", "mask_folder", "kitti2015")
# Local sources that read files (procedural generates its examples).
FILE_SOURCES = ("npz", "image_folder", "middlebury", "yolo", "oxford_pets", "coco_json", "voc_xml",
                "mask_folder", "kitti2015")
SKIP_HINT = "fix or remove the file, or set data.bad_examples='skip' to skip bad examples"


class BadExample(DataError):
    """Example ``index`` of a source cannot be read or breaks the conventions (a corrupt, empty,
    truncated or oversized file, an unreadable annotation, an out-of-range label).

    ``where`` names the source and index (``image_folder[train][3]``), ``path`` the file at
    fault and ``reason`` what is wrong with it. The loader skips such examples under
    ``data.bad_examples='skip'``; any other error stops the run.
    """

    def __init__(self, where: str, index: int, path: str, reason: str):
        self.where, self.index, self.path, self.reason = where, int(index), str(path), reason
        super().__init__(f"{self.what}; {SKIP_HINT}.")

    @property
    def what(self) -> str:
        """The message without the advice: ``"<where>: '<path>': <reason>"``."""
        return f"{self.where}: {self.path!r}: {self.reason}"

    def __reduce__(self) -> tuple:
        # Grain pickles exceptions raised in worker processes; rebuild from the fields.
        return type(self), (self.where, self.index, self.path, self.reason)


@dataclasses.dataclass(frozen=True)
class SourceInfo:
    """What a source holds. Counts are None where the source has no such target."""

    name: str
    split: str
    keys: tuple[str, ...]                    # keys every example of this source holds
    num_classes: int | None = None           # image-level ``label``
    class_names: tuple[str, ...] = ()
    num_box_classes: int | None = None       # ``box_classes``
    box_class_names: tuple[str, ...] = ()    # names of the ``box_classes``; () = class_names
    num_mask_classes: int | None = None      # ``mask`` (IGNORE_LABEL not counted)
    mask_class_names: tuple[str, ...] = ()   # names of the ``mask`` classes; () = unnamed
    num_identities: int | None = None        # ``identity``
    max_disparity: float | None = None       # largest valid disparity, pixels


@runtime_checkable
class Source(Protocol):
    info: SourceInfo

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Example: ...


_SPLIT_RE = re.compile(r"^(?P<base>[\w\-+]+)(\[(?P<start>-?\d*%?):(?P<stop>-?\d*%?)\])?$")


def parse_split(split: str) -> tuple[str, str | None, str | None]:
    """Parses ``"train[10%:90%]"`` into ``("train", "10%", "90%")``; bounds are None if absent."""
    m = _SPLIT_RE.match(split.replace(" ", ""))
    if not m:
        raise DataError(f"split {split!r} is not of the form NAME or NAME[start:stop] "
                        "(e.g. 'train', 'train[:80%]', 'test[100:]').")
    return m["base"], (m["start"] or None), (m["stop"] or None)


def _bound(b: str | None, n: int, default: int) -> int:
    if b is None:
        return default
    if b.endswith("%"):
        return int(round(n * int(b[:-1]) / 100))
    v = int(b)
    return v + n if v < 0 else min(v, n)


class SliceSource:
    """A contiguous slice ``[start, stop)`` of another source."""

    def __init__(self, source: Source, start: int, stop: int, split: str):
        self._source, self._start, self._stop = source, start, stop
        self.info = dataclasses.replace(source.info, split=split)

    def __len__(self) -> int:
        return self._stop - self._start

    def __getitem__(self, index: int) -> Example:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {self.info.name}[{self.info.split}] "
                             f"of length {len(self)}")
        return self._source[self._start + index]

    def __getattr__(self, name: str) -> Any:
        # ``identities()`` / ``labels()`` of the wrapped source, cut to the slice (fast paths).
        if name in ("identities", "labels") and callable(getattr(self._source, name, None)):
            return lambda: np.asarray(getattr(self._source, name)())[self._start:self._stop]
        raise AttributeError(name)


class KeySubset:
    """Another source with only ``keys`` kept (``data.keys``): a task reads only what it needs,
    and transforms such as the stereo flip see only those targets."""

    def __init__(self, source: Source, keys: Sequence[str]):
        missing = [k for k in keys if k not in source.info.keys]
        if missing:
            raise DataError(f"data.keys asks for {missing}, which {source.info.name} does not have; "
                            f"it has: {', '.join(source.info.keys)}.")
        self._source, self._keys = source, tuple(keys)
        self.info = dataclasses.replace(source.info, keys=self._keys)

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> Example:
        example = self._source[index]
        return {k: example[k] for k in self._keys}

    def __getattr__(self, name: str) -> Any:
        if name in ("identities", "labels") and callable(getattr(self._source, name, None)):
            return getattr(self._source, name)
        raise AttributeError(name)


def source_labels(source: Source, key: str = "identity") -> np.ndarray:
    """The (N,) int ``key`` (``identity`` or ``label``) of every example: the source's
    ``identities()`` / ``labels()`` fast path when it has one, else a scan of the examples. An
    ``identity`` asked of a source without one is its ``label`` (a class is an identity)."""
    if key == "identity" and "identity" not in source.info.keys and "label" in source.info.keys:
        key = "label"
    fast = getattr(source, "identities" if key == "identity" else "labels", None)
    if callable(fast):
        return np.asarray(fast())
    if key not in source.info.keys:
        raise DataError(f"{source.info.name}: no '{key}' per example (it has: "
                        f"{', '.join(source.info.keys)}).")
    return np.asarray([int(source[i][key]) for i in range(len(source))])


class ClassSubset:
    """The examples of another source whose ``label`` is one of ``classes`` (``data.train_classes``
    / ``data.eval_classes``: train on some classes, evaluate on unseen ones). Labels keep their
    ids; ``info`` keeps the source's class names and counts."""

    def __init__(self, source: Source, classes: Sequence[int], what: str):
        labels = source_labels(source, "label")
        wanted = np.asarray(sorted({int(c) for c in classes}))
        missing = np.setdiff1d(wanted, labels)
        if len(missing):
            raise DataError(f"{what}={tuple(int(c) for c in classes)}: class(es) "
                            f"{missing.tolist()} have no example in {source.info.name}"
                            f"[{source.info.split}] (labels there: {np.unique(labels).tolist()}).")
        self._source, self._index = source, np.flatnonzero(np.isin(labels, wanted))
        self._labels = labels[self._index]
        self.info = source.info

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, index: int) -> Example:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {self.info.name}[{self.info.split}] "
                             f"with {len(self)} examples of the selected classes")
        return self._source[int(self._index[index])]

    def labels(self) -> np.ndarray:
        return self._labels.copy()

    def __getattr__(self, name: str) -> Any:
        if name == "identities" and callable(getattr(self._source, "identities", None)):
            return lambda: np.asarray(self._source.identities())[self._index]
        raise AttributeError(name)


def apply_slice(source: Source, split: str) -> Source:
    """Returns ``source`` restricted to the slice in ``split`` (the whole source if none)."""
    _, start, stop = parse_split(split)
    if start is None and stop is None:
        return source
    n = len(source)
    a, b = _bound(start, n, 0), _bound(stop, n, n)
    return SliceSource(source, a, max(a, b), split)


def build_source(config: Any, split: str) -> Source:
    """Builds the source named by ``config.name`` for ``split`` and checks it is not empty.

    ``config`` is the experiment's ``data`` ConfigDict (see ``jaxvision.data.config``); its
    values are range-checked first (``check_data_config``). A file source then reads its first
    example, unless ``data.bad_examples='skip'``. Raises ``DataError`` for a bad setting, an
    unknown name, a missing file, an empty split, or a bad first example (``BadExample``).
    """
    check_data_config(config)
    name = str(config.name)
    if name.startswith("tfds:"):
        source = _tfds(config, name[len("tfds:"):], split)
    elif name == "procedural":
        from jaxvision.data import procedural
        source = apply_slice(procedural.from_config(config, parse_split(split)[0]), split)
    elif name in ("coco_json", "voc_xml"):
        from jaxvision.data import boxfiles
        source = apply_slice(boxfiles.from_config(config, parse_split(split)[0]), split)
    elif name == "mask_folder":
        from jaxvision.data import maskfiles
        source = apply_slice(maskfiles.from_config(config, parse_split(split)[0]), split)
    elif name == "kitti2015":
        from jaxvision.data import kitti
        source = apply_slice(kitti.from_config(config, parse_split(split)[0]), split)
    elif name in LOCAL_SOURCES:
        from jaxvision.data import local
        source = apply_slice(local.from_config(config, parse_split(split)[0]), split)
    else:
        source = _tfds(config, name, split)
    source = _select_classes(config, split, source)
    keys = tuple(config.get("keys", ()) or ())
    if keys:
        source = KeySubset(source, keys if "image" in keys else ("image",) + keys)
    if len(source) == 0:
        raise DataError(f"split {split!r} of data '{name}' is empty; choose another split "
                        "(data.train_split / data.eval_split) or a wider slice.")
    if name in FILE_SOURCES and config.get("bad_examples", "error") == "error":
        source[0]  # a bad file (or a wrong data.path) then shows before anything is compiled
    return source


def _select_classes(config: Any, split: str, source: Source) -> Source:
    """``data.train_classes`` applies to ``data.train_split``, ``data.eval_classes`` to
    ``data.eval_split`` (the split strings as written); () keeps every class."""
    train, evals = (tuple(config.get(k, ()) or ()) for k in ("train_classes", "eval_classes"))
    if not train and not evals:
        return source
    if train and evals and str(config.train_split) == str(config.eval_split) and \
            set(train) != set(evals):
        raise DataError(f"data.train_classes and data.eval_classes differ but data.train_split == "
                        f"data.eval_split == {str(config.train_split)!r}, so it is unclear which "
                        "applies; use two splits (e.g. 'train' and 'test').")
    if train and split == str(config.train_split):
        return ClassSubset(source, train, "data.train_classes")
    if evals and split == str(config.eval_split):
        return ClassSubset(source, evals, "data.eval_classes")
    return source


def _tfds(config: Any, name: str, split: str) -> Source:
    from jaxvision.data import tfds_source
    if not tfds_source.is_registered(name):
        close = difflib.get_close_matches(name, list(LOCAL_SOURCES) + tfds_source.registered_names(), n=5)
        raise DataError(f"unknown dataset name {name!r} (data.name). Local sources: "
                        f"{', '.join(LOCAL_SOURCES)}; any TFDS dataset name also works."
                        + (f" Did you mean: {', '.join(close)}?" if close else ""))
    return tfds_source.from_config(config, name, split)


def next_good(source: Source, index: int, bad: dict[int, str],
              check: Callable[[int, Example], Example] | None = None) -> tuple[int, Example]:
    """Returns ``(i, example i)`` for the first ``i`` from ``index`` on (wrapping around) whose
    example reads without ``BadExample``: the stand-in for a bad example under
    ``data.bad_examples='skip'``, the same wherever it is asked for.

    ``check(i, example)``, if given, is applied to the example returned. ``bad`` (index ->
    message) records the bad examples met, so none is read twice. Raises ``DataError`` when
    every example is bad.
    """
    n = len(source)
    for k in range(n):
        i = (index + k) % n
        if i in bad:
            continue
        try:
            example = source[i]
            return i, check(i, example) if check else example
        except BadExample as e:
            bad[i] = e.what
    name = f"{source.info.name}[{source.info.split}]"
    raise DataError(f"{name}: all {n} examples are bad, so none can stand in for a skipped one "
                    f"(data.bad_examples='skip'), e.g. {next(iter(bad.values()))}; fix the files or "
                    "check data.path.")


class SkipBad:
    """``source`` with every bad example replaced by its ``next_good`` stand-in, for reads
    outside the loader under ``data.bad_examples='skip'`` (e.g. the statistics of ``normalize``)."""

    def __init__(self, source: Source):
        self._source, self.info, self._bad = source, source.info, {}

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> Example:
        return next_good(self._source, index, self._bad)[1]


def take(source: Source, indices: Sequence[int]) -> list[Example]:
    """Returns the examples at ``indices`` (a convenience for tests and plots)."""
    return [source[int(i)] for i in np.asarray(indices).tolist()]


class ArraySource:
    """A source over in-memory arrays: ``arrays[key][i]`` is example ``i``'s value of ``key``.

    Variable-length targets (``boxes``, ``box_classes``) may be given as lists of arrays.
    """

    def __init__(self, arrays: dict[str, Any], *, name: str = "arrays", split: str = "train",
                 num_classes: int | None = None, num_identities: int | None = None,
                 class_names: Sequence[str] = ()):
        lengths = {k: len(v) for k, v in arrays.items()}
        if "image" not in arrays or len(set(lengths.values())) != 1:
            raise DataError(f"ArraySource needs an 'image' array and equal lengths, got {lengths}.")
        self._arrays = arrays
        self.info = SourceInfo(name=name, split=split, keys=tuple(arrays), num_classes=num_classes,
                               class_names=tuple(class_names), num_identities=num_identities)

    def __len__(self) -> int:
        return len(self._arrays["image"])

    def __getitem__(self, index: int) -> Example:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {self.info.name} of length {len(self)}")
        return {k: np.asarray(v[index]) for k, v in self._arrays.items()}

    def identities(self) -> np.ndarray:
        return np.asarray(self._arrays["identity"])
