"""`predict` on image files, `export` round trips, and what a run records for both."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from jaxvision import inference
from jaxvision.__main__ import main
from jaxvision.config import get_config
from jaxvision.data import transforms as T
from jaxvision.experiment import load_experiment
from jaxvision.train import loop
from jaxvision.train.transfer import read_variables

CLS = "experiments/classification.py"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 4-step classification run on 16x16 procedural scenes (a small CNN)."""
    config = get_config(f"{CLS}:default")
    config.model.widths = (4, 8)
    p = config.data.procedural
    p.image_size, p.num_train, p.num_eval = 16, 64, 8
    config.data.input_shape = (16, 16, 3)
    config.train.batch_size, config.train.eval_batch_size = 8, 8
    config.train.steps, config.train.eval_every, config.train.checkpoint_every = 4, 0, 0
    config.train.async_checkpoint = False
    config.optim.warmup_steps = 0
    workdir = tmp_path_factory.mktemp("run")
    exp = dataclasses.replace(load_experiment(CLS), report=None)
    loop.train(config, workdir, experiment=exp, progress=False)
    return workdir


def _reference_probabilities(workdir: Path, image: np.ndarray) -> np.ndarray:
    """Softmax of the model's logits on ``image`` (H, W, 3 uint8) resized to 16x16, computed
    here from the checkpoint's variables and the zoo model (not through the predict path)."""
    from jaxvision.models import build_model
    variables, _ = read_variables(workdir)
    model = build_model("small_cnn", widths=(4, 8), dropout=0.0, norm="batch", num_classes=6)
    x = T.resize({"image": image}, 16, 16)["image"].astype(np.float32)[None] / 255.0
    return np.asarray(jax.nn.softmax(model.apply(variables, x, train=False)))[0]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A folder with a colour JPEG, a gray PNG, a gray PGM, and three bad files."""
    d = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(d / "a_colour.jpg",
                                                                            quality=95)
    Image.fromarray(rng.integers(0, 256, (20, 30), dtype=np.uint8)).save(d / "b_gray.png")
    Image.fromarray(rng.integers(0, 256, (9, 11), dtype=np.uint8)).save(d / "c_gray.pgm")
    (d / "d_corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"not a jpeg" * 20)
    (d / "e_empty.png").write_bytes(b"")
    Image.new("1", (20000, 20000)).save(d / "f_huge.png")   # ~50 KB on disk, 400 megapixels
    (d / "notes.txt").write_text("not an image suffix: ignored in folders")
    return d


def test_run_records_what_predict_needs(run):
    mi = inference.ModelInfo.from_json(json.loads((run / inference.MODEL_INFO).read_text()))
    assert mi.input_shape == (16, 16, 3) and mi.source_shape == (16, 16, 3)
    assert mi.info.num_classes == 6 and len(mi.info.class_names) == 6
    assert mi.keys == ("image",)
    assert inference.ModelInfo.from_json(mi.to_json()) == mi


def test_predict_folder_names_bad_files_and_exits_non_zero(run, inputs, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["predict", "--workdir", str(run), str(inputs), "--out", str(out),
               "--batch-size", "2", "--no-progress"])
    cap = capsys.readouterr()
    assert rc == 2
    assert "Traceback" not in cap.err
    for bad in ("d_corrupt.jpg", "e_empty.png", "f_huge.png"):
        assert bad in cap.err
    assert "3 of 6 inputs could not be read" in cap.err
    assert json.loads(cap.out.strip().splitlines()[-1]) == {
        "inputs": 6, "predicted": 3, "failed": 3, "out": str(out)}
    lines = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert [Path(x["file"]).name for x in lines] == [
        "a_colour.jpg", "b_gray.png", "c_gray.pgm", "d_corrupt.jpg", "e_empty.png", "f_huge.png"]
    assert "empty" in lines[4]["error"] and "pixels" in lines[5]["error"]
    for line in lines[:3]:
        top = line["top5"]
        assert len(top) == 5 and "error" not in line
        assert [t["probability"] for t in top] == sorted((t["probability"] for t in top), reverse=True)
        picture = np.asarray(Image.open(out / line["picture"]))
        assert picture.ndim == 3 and picture.shape[2] == 3 and picture.shape[0] > 100
    # The right numbers: the model on each image, read as RGB and resized to 16x16 here.
    for line in lines[:3]:
        image = np.asarray(Image.open(line["file"]).convert("RGB"))
        ref = _reference_probabilities(run, image)
        for t in line["top5"]:
            assert t["probability"] == pytest.approx(ref[t["index"]], abs=2e-6)
        assert lines[0]["top5"][0]["class"] in inference.read_model_info(run, None).info.class_names


def test_predict_batches_and_single_files_agree(run, inputs, tmp_path, capsys):
    """Batch size 1 with one file named directly gives what the folder run gave in batches."""
    folder, single = tmp_path / "folder", tmp_path / "single"
    main(["predict", "--workdir", str(run), str(inputs), "--out", str(folder),
          "--no-progress", "--no-pictures"])
    assert main(["predict", "--workdir", str(run), str(inputs / "b_gray.png"), "--out",
                 str(single), "--batch-size", "1", "--no-progress"]) == 0
    capsys.readouterr()
    (one,) = [json.loads(x) for x in (single / "predictions.jsonl").read_text().splitlines()]
    many = [json.loads(x) for x in (folder / "predictions.jsonl").read_text().splitlines()]
    assert not list(folder.glob("*.png"))
    ref = next(x for x in many if x["file"] == one["file"])
    assert [t["index"] for t in one["top5"]] == [t["index"] for t in ref["top5"]]
    np.testing.assert_allclose([t["probability"] for t in one["top5"]],
                               [t["probability"] for t in ref["top5"]], atol=2e-6)


def test_predict_refuses_bad_requests_by_name(run, inputs, tmp_path, capsys):
    assert main(["predict", "--workdir", str(run), str(inputs / "a_colour.jpg"), "--right",
                 str(inputs / "b_gray.png"), "--out", str(tmp_path / "o")]) == 2
    assert "--right" in capsys.readouterr().err
    assert main(["predict", "--workdir", str(tmp_path / "nowhere"), str(inputs), "--out",
                 str(tmp_path / "o")]) == 2
    assert "config.json" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["predict", "--workdir", str(run), str(empty), "--out", str(tmp_path / "o")]) == 2
    assert "no image files" in capsys.readouterr().err
    assert main(["predict", "--workdir", str(run), str(inputs / "missing.png"), "--out",
                 str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_model_info_falls_back_to_the_data_for_older_runs(run, tmp_path):
    import shutil
    old = tmp_path / "old"
    shutil.copytree(run, old)
    (old / inference.MODEL_INFO).unlink()
    predictor = inference.load_predictor(old)
    assert predictor.model_info == inference.read_model_info(run, None)


def test_prepare_resizes_as_the_eval_pipeline_says():
    assert inference.starts_with_resize("resize_short(256)|center_crop(224)")
    assert not inference.starts_with_resize("center_crop(24)|resize(32)")
    assert not inference.starts_with_resize("")


# --------------------------------------------------------------------------------- export


def test_export_round_trip_without_flax(run, tmp_path, capsys):
    path = tmp_path / "model.jvx"
    assert main(["export", "--workdir", str(run), "--out", str(path)]) == 0
    meta = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert meta["inputs"] == [{"name": "image", "shape": ["b", 16, 16, 3], "dtype": "uint8"}]
    assert set(meta["outputs"]) == {"logits", "probabilities"}
    predictor = inference.load_predictor(run)
    x = np.random.default_rng(1).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    want = np.stack([o["logits"] for o in predictor([{"image": im} for im in x])])
    np.save(tmp_path / "x.npy", x)
    # A fresh interpreter where importing flax fails: the file needs only jax and numpy.
    script = (
        "import sys, json, numpy as np; sys.modules['flax'] = None\n"
        "from jaxvision import export\n"
        f"m = export.load({str(path)!r}); x = np.load({str(tmp_path / 'x.npy')!r})\n"
        "a, b = m(x[:2])['logits'], m(x)['logits']\n"
        "np.save(sys.argv[1], np.concatenate([a, b])); print(json.dumps(m.class_names))\n")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    res = subprocess.run([sys.executable, "-c", script, str(tmp_path / "y.npy")],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout.strip().splitlines()[-1]) == list(predictor.info.class_names)
    got = np.load(tmp_path / "y.npy")
    np.testing.assert_allclose(got[:2], want[:2], rtol=1e-5, atol=1e-5)   # batch of 2
    np.testing.assert_allclose(got[2:], want, rtol=1e-5, atol=1e-5)       # batch of 5


def test_export_load_refuses_other_files(tmp_path):
    from jaxvision import export
    bad = tmp_path / "bad.jvx"
    bad.write_bytes(b"PK not a zip")
    with pytest.raises(ValueError, match="not a model exported"):
        export.load(bad)
