"""The ``invariance`` tool: the image transformations against numpy, and a run end to end."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from jaxvision.__main__ import main
from jaxvision.config import get_config
from jaxvision.experiment import load_experiment
from jaxvision.tools.invariance import transform_image
from jaxvision.train import loop


def test_transforms_against_numpy():
    rng = np.random.default_rng(0)
    img = rng.integers(1, 255, (9, 7, 3), dtype=np.uint8)
    down = transform_image(img, "translate", 2)
    np.testing.assert_array_equal(down[2:], img[:-2])
    assert (down[:2] == 0).all()
    np.testing.assert_array_equal(transform_image(img, "translate", -3)[:-3], img[3:])
    assert (transform_image(img, "translate", 20) == 0).all()
    np.testing.assert_array_equal(transform_image(img, "rotate", 0), img)
    np.testing.assert_array_equal(transform_image(img, "scale", 1.0), img)
    # 180 degrees about the centre of an odd-sized image is the double flip.
    sq = rng.integers(1, 255, (9, 9, 1), dtype=np.uint8)
    np.testing.assert_array_equal(transform_image(sq, "rotate", 180), sq[::-1, ::-1])
    # Zooming out by 1/3 leaves a black frame around a 3 x 3 centre.
    small = transform_image(np.full((9, 9, 1), 200, np.uint8), "scale", 1 / 3)
    assert (small[3:6, 3:6] == 200).all() and small.sum() == 9 * 200
    with pytest.raises(ValueError, match="transform must be one of"):
        transform_image(img, "shear", 1)


def test_invariance_end_to_end(tmp_path, shrink, capsys):
    config = shrink(get_config("experiments/classification.py:default"), size=24, steps=2)
    config.data.keys = ("image", "label")
    workdir = tmp_path / "run"
    loop.train(config, workdir, experiment=load_experiment("experiments/classification.py"), progress=False)
    assert main(["invariance", "--workdir", str(workdir), "--transform", "translate",
                 "--range=-4,4,3", "--num", "8"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["amounts"] == [-4.0, 0.0, 4.0] and result["images"] == 8
    layers = list(result["distance"])
    assert "logits" in layers and len(layers) > 2
    for vals in result["distance"].values():
        assert vals[1] == 0.0 and vals[0] > 0 and vals[2] > 0
    assert all(0 <= p <= 1 for p in result["p_true"])
    rows = list(csv.DictReader(open(workdir / "invariance_translate.csv")))
    assert len(rows) == 3 * (len(layers) + 1)
    # The CSV keeps the model's layer order: taps, logits, then the probability.
    assert [r["layer"] for r in rows[:len(layers) + 1]][-2:] == ["logits", "p_true"]
    assert (workdir / "invariance_translate.png").stat().st_size > 1000
    assert main(["invariance", "--workdir", str(workdir), "--transform", "scale", "--range", "x"]) == 2
