"""The ``data`` block of every experiment config, with its defaults and range checks."""

from __future__ import annotations

import numbers
from typing import Any, Callable

import ml_collections

from jaxvision.data.example import DataError

# Largest image (width x height) a file source decodes; PIL's own bomb limit is ~89 megapixels.
MAX_PIXELS = 50_000_000
BAD_EXAMPLES = ("error", "skip")
SAMPLERS = ("random", "pk")


def procedural_config() -> ml_collections.ConfigDict:
    """Settings of the built-in procedural scenes (``data.name = 'procedural'``)."""
    return ml_collections.ConfigDict(dict(
        image_size=64,        # square images, pixels
        num_train=20000,      # examples in split 'train'
        num_eval=2000,        # examples in split 'test' (also answers to 'eval' / 'validation')
        min_objects=1,
        max_objects=4,
        max_disparity=12.0,   # pixels, nearest object
        noise=8.0,            # std of texture noise fixed to each surface (0-255 scale; both views agree)
        seed=0,               # scene seed; split 'test' uses a disjoint index range
    ))


def data_config(name: str = "procedural") -> ml_collections.ConfigDict:
    """Returns the default ``data`` ConfigDict; experiments override what they need.

    Keys: ``name`` (source, see ``jaxvision.data.source``), ``keys`` (targets to keep), ``data_dir`` / ``manual_dir`` (TFDS),
    ``path`` (local sources), ``train_split`` / ``eval_split``, ``train_pp`` / ``eval_pp``
    (transform pipelines, see ``jaxvision.data.transforms``), ``max_boxes`` (boxes are padded to
    this count), ``num_workers`` (0 = load in the main process), ``prefetch`` (batches kept ready),
    ``sampler`` (``random`` or ``pk`` with ``pk_identities`` x ``pk_images`` per batch),
    ``holdout`` / ``split_by`` (``image_folder``: the last ``holdout`` fraction of each class's
    images (``'image'``) or of the classes (``'identity'``, unseen identities) is split ``test``),
    ``channels`` (``image_folder``: 1 gray, 3 RGB, 0 = as the first image),
    ``bad_examples`` (file sources: ``'error'`` stops at an unreadable or invalid example with
    its file named; ``'skip'`` replaces it by the next good example and warns once per file, see
    ``Loader.skipped``), ``max_pixels`` (images whose header says more pixels are refused
    before decoding), ``train_classes`` / ``eval_classes`` (the labels kept in
    ``train_split`` / ``eval_split``; () = all: metric learning trains on some classes and
    retrieves among unseen ones). ``check_data_config`` checks the ranges.
    """
    return ml_collections.ConfigDict(dict(
        name=name,
        keys=(),              # example keys to keep ('image' always); () = all the source has
        data_dir=ml_collections.FieldReference(None, field_type=str),
        manual_dir=ml_collections.FieldReference(None, field_type=str),
        path=ml_collections.FieldReference(None, field_type=str),
        train_split="train",
        eval_split="test",
        train_pp="",
        eval_pp="",
        max_boxes=16,
        num_workers=0,
        prefetch=2,
        sampler="random",
        pk_identities=8,
        pk_images=4,
        holdout=0.2,
        split_by="image",
        channels=0,
        bad_examples="error",
        max_pixels=MAX_PIXELS,
        train_classes=(),     # labels kept in data.train_split; () = all
        eval_classes=(),      # labels kept in data.eval_split; () = all (e.g. unseen classes)
        class_names=(),       # voc_xml: the object class names in class-id order; () = the 20 VOC classes
        ignore_value=255,     # mask_folder: mask value read as IGNORE_LABEL (VOC's 255); -1 or None = none
        procedural=procedural_config(),
    ))


# Integer keys: (smallest value, what the key means).
_INT_RANGES = {
    "num_workers": (0, "worker processes; 0 = load in the main process"),
    "prefetch": (1, "batches kept ready"),
    "max_boxes": (1, "boxes per example after padding"),
    "pk_identities": (1, "identities per batch of the 'pk' sampler"),
    "max_pixels": (1, "the largest image, width x height, that is decoded"),
}
_CHOICES = {
    "bad_examples": (BAD_EXAMPLES, "what a bad example does: stop the run or be skipped"),
    "sampler": (SAMPLERS, "how train batches are drawn"),
    "channels": ((0, 1, 3), "image_folder: 0 = as the first image, 1 = gray, 3 = RGB"),
}


def check_ranges(get: Callable[[str], Any], int_ranges: dict, choices: dict, *, prefix: str = "",
                 default: Callable[[str], Any] = lambda key: None,
                 error: type[Exception] = DataError) -> None:
    """Checks integer keys against ``int_ranges`` (key: (smallest value, meaning)) and keys with
    fixed options against ``choices`` (key: (options, meaning)); ``get(key)`` gives a value (None
    when absent: skipped). Raises ``error`` naming the key as typed on the command line
    (``prefix`` + key) and a value that works (``default(key)`` when it is in range)."""
    for key, (low, meaning) in int_ranges.items():
        value = get(key)
        if value is None:
            continue
        fallback = default(key)
        example = fallback if isinstance(fallback, int) and fallback >= low else max(low, 1)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise error(f"{prefix}{key}={value!r} must be an integer ({meaning}); e.g. "
                        f"--config.{prefix}{key}={example}.")
        if value < low:
            raise error(f"{prefix}{key}={value} must be >= {low} ({meaning}); e.g. "
                        f"--config.{prefix}{key}={example}.")
    for key, (options, meaning) in choices.items():
        value = get(key)
        if value is not None and (isinstance(value, bool) or value not in options):
            raise error(f"{prefix}{key}={value!r} must be one of {', '.join(map(repr, options))} "
                        f"({meaning}).")


def check_data_config(data: Any) -> None:
    """Checks the ranges of the ``data`` keys the pipeline reads; keys the config lacks are
    skipped (their defaults apply). Raises ``DataError`` naming the key as it is typed on the
    command line (``data.num_workers``) and a value that works."""
    def get(key: str) -> Any:
        return data.get(key, None) if hasattr(data, "get") else getattr(data, key, None)

    check_ranges(get, _INT_RANGES, _CHOICES, prefix="data.", default=lambda k: data_config()[k])
    if get("sampler") == "pk" and get("pk_images") is not None:
        value = get("pk_images")
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 2:
            raise DataError(f"data.pk_images={value!r} must be an integer >= 2 with "
                            "data.sampler='pk' (images per identity: a positive pair needs two); "
                            "e.g. --config.data.pk_images=4.")
    for key in ("train_classes", "eval_classes"):
        value = get(key)
        if value is not None and (isinstance(value, (str, bytes)) or not all(
                isinstance(c, numbers.Integral) and not isinstance(c, bool) and c >= 0
                for c in (value if isinstance(value, (tuple, list)) else [value]))):
            raise DataError(f"data.{key}={value!r} must be a tuple of class ids >= 0 (() = all); "
                            f"e.g. --config.data.{key}='(0, 1, 2, 3, 4)'.")
    holdout = get("holdout")
    if holdout is not None and (isinstance(holdout, bool) or not isinstance(holdout, numbers.Real)
                                or not 0 < holdout < 1):
        raise DataError(f"data.holdout={holdout!r} must be in (0, 1) (image_folder: the fraction "
                        "held out as split 'test'); e.g. --config.data.holdout=0.2.")
