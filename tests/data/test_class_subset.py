"""``data.train_classes`` / ``data.eval_classes``: train on some classes, evaluate on others."""

import numpy as np
import pytest

from jaxvision.data.config import data_config
from jaxvision.data.loader import source_identities
from jaxvision.data.source import ArraySource, ClassSubset, DataError, build_source, source_labels


def _config(**kw):
    cfg = data_config()
    cfg.procedural.num_train, cfg.procedural.num_eval, cfg.procedural.image_size = 60, 40, 16
    for k, v in kw.items():
        cfg[k] = v
    return cfg


def test_splits_keep_only_their_classes_in_order():
    full_train, full_eval = build_source(_config(), "train"), build_source(_config(), "test")
    cfg = _config(train_classes=(0, 1, 2), eval_classes=(3, 4, 5))
    train, test = build_source(cfg, "train"), build_source(cfg, "test")
    want_train = [i for i in range(60) if full_train[i]["label"] in (0, 1, 2)]
    want_eval = [i for i in range(40) if full_eval[i]["label"] in (3, 4, 5)]
    assert len(train) == len(want_train) and len(test) == len(want_eval)
    for j, i in enumerate(want_train):
        np.testing.assert_array_equal(train[j]["image"], full_train[i]["image"])
    assert source_labels(test, "label").tolist() == [full_eval[i]["label"] for i in want_eval]
    # The identities fast path is cut to the kept examples.
    assert source_identities(train).tolist() == [full_train[i]["identity"] for i in want_train]
    # A slice applies before the class filter: the first half, then its classes 0-2.
    half = build_source(cfg, "train[:50%]")
    assert len(half) == len(build_source(_config(), "train[:50%]"))  # not data.train_split


def test_identity_falls_back_to_label():
    src = ArraySource({"image": np.zeros((6, 2, 2, 1), np.uint8),
                       "label": np.array([0, 1, 1, 2, 0, 1], np.int32)})
    assert source_identities(src).tolist() == [0, 1, 1, 2, 0, 1]
    sub = ClassSubset(src, (1,), "data.train_classes")
    assert len(sub) == 3 and sub.labels().tolist() == [1, 1, 1]
    assert [int(sub[i]["label"]) for i in range(3)] == [1, 1, 1]


@pytest.mark.parametrize("kw, match", [
    (dict(train_classes=(0, 9)), r"class\(es\) \[9\] have no example"),
    (dict(train_classes=("a",)), "must be a tuple of class ids"),
    (dict(eval_classes=(-1,)), "must be a tuple of class ids"),
    (dict(train_classes=(0,), eval_classes=(1,), eval_split="train"), "unclear which applies"),
])
def test_bad_class_selections_are_named(kw, match):
    with pytest.raises(DataError, match=match):
        build_source(_config(**kw), "train")
