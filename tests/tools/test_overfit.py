"""The ``overfit`` tool: a working experiment passes; a frozen model, a too-large learning rate
and a model that ignores its input each fail with the diagnosis that names the cause."""

from __future__ import annotations

import json

from jaxvision.__main__ import main
from jaxvision.config import get_config
from jaxvision.tools.overfit import overfit, overfit_config

TINY = "tests/train/tiny_experiment.py:tiny"


def test_overfit_config_fits_the_first_examples_without_regularization():
    config = get_config(TINY, ["optim.weight_decay=0.1", "optim.warmup_steps=50"])
    c = overfit_config(config, num=4, steps=30)
    assert c.data.train_split == c.data.eval_split == "train[:4]"
    assert c.data.train_pp == c.data.eval_pp
    assert c.train.batch_size == c.train.eval_batch_size == 4
    assert c.optim.weight_decay == 0 and c.model.dropout == 0 and c.optim.warmup_steps == 3
    assert config.train.batch_size == 16  # the original is untouched


def test_a_working_experiment_passes_from_the_command_line(tmp_path, capsys):
    code = main(["overfit", "--config", TINY, "--num", "8", "--steps", "40", "--workdir",
                 str(tmp_path / "ok"), "--config.optim.lr=0.1"])
    out = capsys.readouterr().out
    result = json.loads(out.strip().splitlines()[-1])
    assert code == 0 and result["passed"], out
    assert result["value"] == 1.0 and result["loss_end"] < 0.1 * result["loss_start"]


def test_failures_name_their_cause(tmp_path):
    frozen = overfit(get_config(TINY, ["optim.freeze=('.*',)"]), num=8, steps=10,
                     workdir=tmp_path / "frozen")
    assert not frozen.passed and "no parameter changed" in " ".join(frozen.diagnosis)
    config = get_config(TINY, ["optim.lr=0.1"])
    config.model.blind = True
    blind = overfit(config, num=8, steps=30, workdir=tmp_path / "blind")
    assert not blind.passed and "does not depend on the input" in " ".join(blind.diagnosis)
    slow = overfit(get_config(TINY, ["optim.lr=1e-5"]), num=8, steps=10, workdir=tmp_path / "slow")
    assert not slow.passed and "fell only to" in " ".join(slow.diagnosis)
