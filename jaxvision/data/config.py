"""The ``data`` block of every experiment config, with its defaults."""

from __future__ import annotations

import ml_collections


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
    ``channels`` (``image_folder``: 1 gray, 3 RGB, 0 = as the first image).
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
        procedural=procedural_config(),
    ))
