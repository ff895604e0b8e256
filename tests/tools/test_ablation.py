"""The ablation runner end to end on a tiny sweep (2 variants x 2 seeds), its resumability and
its checks before training."""

import contextlib
import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

from jaxvision.tools import ablation
from jaxvision.__main__ import main
from jaxvision.config import ConfigError, get_config
from jaxvision.experiment import load_experiment

SPEC = str(Path(__file__).resolve().parent / "tiny_ablation_experiment.py")


def mlp_params(d: int, hidden: int, classes: int) -> int:
    """Dense (d -> hidden) + batch-norm scale and bias + head (hidden -> classes)."""
    return d * hidden + hidden + 2 * hidden + hidden * classes + classes


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("ablate")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["ablate", "--config", f"{SPEC}:sweep", "--workdir", str(workdir)])
    assert rc == 0
    return workdir, buf.getvalue()


def test_sweep_writes_table_csv_and_chart(sweep):
    workdir, out = sweep
    summary = last_json(out)
    assert summary["metric"] == "accuracy" and summary["reference"] == "full"
    assert "| full |" in out and "| narrow |" in out          # the table is printed
    for name in ("ablation.csv", "ablation.md", "ablation.png"):
        assert (workdir / name).stat().st_size > 0
    rows = list(csv.DictReader(open(workdir / "ablation.csv")))
    assert [r["variant"] for r in rows] == ["full", "narrow"]
    # 16x16x3 inputs, 6 shape classes; hidden 16 vs 4.
    assert int(rows[0]["params"]) == mlp_params(16 * 16 * 3, 16, 6)
    assert int(rows[1]["params"]) == mlp_params(16 * 16 * 3, 4, 6)
    means = []
    for row, entry in zip(rows, summary["variants"]):
        values = [json.loads((workdir / row["variant"] / f"seed{s}" / "result.json").read_text())
                  ["metrics"]["accuracy"] for s in (0, 1)]
        assert all(0.0 <= v <= 1.0 for v in values)
        np.testing.assert_allclose(float(row["accuracy_mean"]), np.mean(values), atol=1e-6)
        np.testing.assert_allclose(float(row["accuracy_std"]), np.std(values, ddof=1), atol=1e-6)
        np.testing.assert_allclose(entry["values"], values)
        assert float(row["wall_s"]) > 0 and float(row["cpu_s"]) > 0
        means.append(np.mean(values))
    np.testing.assert_allclose(float(rows[1]["delta"]), means[1] - means[0], atol=1e-6)
    assert float(rows[0]["delta"]) == 0.0


def test_sub_runs_differ_only_by_variant_and_seed(sweep):
    workdir, _ = sweep
    configs = {(v, s): json.loads((workdir / v / f"seed{s}" / "config.json").read_text())
               for v in ("full", "narrow") for s in (0, 1)}
    assert all("ablation" not in c for c in configs.values())
    assert configs["full", 0]["seed"] == 0 and configs["full", 1]["seed"] == 1
    assert configs["full", 0]["model"]["hidden"] == [16]
    assert configs["narrow", 1]["model"]["hidden"] == [4]
    a, b = dict(configs["full", 0]), dict(configs["narrow", 0])
    a.pop("model"), b.pop("model")
    assert a == b                                    # same data, schedule and seed


def test_second_invocation_does_not_retrain(sweep, monkeypatch, capsys):
    workdir, first = sweep
    from jaxvision.train import loop

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(loop, "train", no_training)
    before = {p: p.stat().st_mtime_ns for p in workdir.rglob("result.json")}
    assert main(["ablate", "--config", f"{SPEC}:sweep", "--workdir", str(workdir)]) == 0
    again = last_json(capsys.readouterr().out)
    assert {p: p.stat().st_mtime_ns for p in workdir.rglob("result.json")} == before
    assert again["variants"] == last_json(first)["variants"]


def test_a_changed_hash_on_a_finished_run_keeps_its_recorded_cost(sweep):
    workdir, _ = sweep
    run = workdir / "full" / "seed0"
    saved = json.loads((run / "result.json").read_text())
    # As after an upgrade that adds a config key: the hash differs, the run is already done.
    (run / "result.json").write_text(json.dumps({**saved, "config_hash": "old"}))
    variants, _, _ = ablation.parse_variants(ablation.load_config(f"{SPEC}:sweep"))
    config = variants[0].config
    config.seed = 0
    record = ablation.train_or_skip(config, run, load_experiment(SPEC))
    again = json.loads((run / "result.json").read_text())
    assert again == {**saved, "config_hash": again["config_hash"]} and again["config_hash"] != "old"
    assert (record.wall_s, record.cpu_s) == (saved["wall_s"], saved["cpu_s"])


def test_bad_variant_key_fails_before_training(tmp_path, capsys):
    variants = "(('full', {}), ('typo', {'model.hiddn': (4,)}))"
    rc = main(["ablate", "--config", f"{SPEC}:sweep", "--workdir", str(tmp_path / "w"),
               f"--config.ablation.variants={variants}"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "'typo'" in err and "model.hiddn" in err and "model.hidden" in err   # close match named
    assert not (tmp_path / "w").exists()              # nothing trained, not even 'full'


def test_variant_whose_model_does_not_build_fails_before_training(tmp_path):
    config = get_config(f"{SPEC}:sweep", ["ablation.variants=(('full', {}), ('bad', {'model.name': 'nonet'}))"])
    with pytest.raises(ConfigError, match="variant 'bad'.*nonet"):
        ablation.run_ablation(config, tmp_path / "w", experiment=SPEC)
    assert not (tmp_path / "w").exists()


def test_unknown_metric_lists_the_reported_ones(tmp_path):
    config = get_config(f"{SPEC}:sweep", ["ablation.metric=top1"])
    with pytest.raises(ConfigError, match="top1.*accuracy"):
        ablation.run_ablation(config, tmp_path / "w", experiment=SPEC)
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("variants,match", [
    ((), "empty"),
    ((("a", {}), ("a", {})), "twice"),
    ((("a/b", {}),), "sub-directory"),
    ((("a", {"seed": 3}),), "ablation.seeds"),
    ((("a", ["model.hidden", 4]),), "must be a dict"),
    ((("a",),), "pair"),
])
def test_parse_variants_rejects_bad_entries(variants, match):
    config = get_config(f"{SPEC}:mlp")
    config.ablation = ablation.ablation_config()
    config.ablation.variants = variants
    with pytest.raises(ConfigError, match=match):
        ablation.parse_variants(config)


def test_variant_config_applies_overrides_without_touching_the_base():
    config = get_config(f"{SPEC}:sweep")
    out = ablation.variant_config(config, "v", {"optim.name": "sgd", "optim.lr": 1,
                                               "config.data.train_pp": "flip_lr"})
    assert out.optim.name == "sgd" and out.optim.lr == 1.0 and isinstance(out.optim.lr, float)
    assert out.data.train_pp == "flip_lr" and "ablation" not in out
    assert config.optim.name == "momentum" and "ablation" in config
    with pytest.raises(ConfigError, match="variant 'v'.*optim.lr"):
        ablation.variant_config(config, "v", {"optim.lr": "fast"})


def test_load_config_adds_the_block_for_command_line_ablations():
    config = ablation.load_config(f"{SPEC}:mlp", ["train.steps=3", "ablation.seeds=(4, 5)",
                                                 "config.ablation.variants=(('x', {}),)"])
    assert config.train.steps == 3 and config.ablation.seeds == (4, 5)
    variants, seeds, metric = ablation.parse_variants(config)
    assert [v.name for v in variants] == ["x"] and seeds == (4, 5) and metric == "accuracy"


def test_mean_std_matches_numpy():
    v = [0.2, 0.5, 0.9]
    assert ablation.mean_std(v) == pytest.approx((np.mean(v), np.std(v, ddof=1)))
    assert ablation.mean_std([0.3]) == (0.3, 0.0)
