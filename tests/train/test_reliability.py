"""Reliability of the core: one trainer per workdir, Ctrl-C, resume semantics, config ranges,
and the CLI's exit-code contract (0 done or stopped cleanly, 1 the run failed, 2 bad input)."""

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxvision import optim
from jaxvision.__main__ import main
from jaxvision.config import ConfigError, check_config, get_config
from jaxvision.train import loop
from jaxvision.train.checkpoint import Checkpointer
from jaxvision.train.lock import LOCK_FILE, WorkdirBusyError, WorkdirLock

TINY = "tests/train/tiny_experiment.py"
ROOT = Path(__file__).resolve().parents[2]


def tiny(*overrides):
    return get_config(f"{TINY}:tiny", overrides)


def _cli(*args, **kw):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", "jaxvision", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, **kw)


def _params(workdir, config):
    run = loop.build(config, loop.resolve_experiment(config), abstract=True)
    with Checkpointer(Path(workdir) / "checkpoints", async_save=False) as c:
        return c.restore(run.state)


# ----------------------------------------------------------------------------- the lock


def test_lock_refuses_a_second_holder_and_takes_over_a_stale_one(tmp_path):
    with WorkdirLock(tmp_path):
        info = json.loads((tmp_path / LOCK_FILE).read_text())
        assert info["pid"] == os.getpid()
        with pytest.raises(WorkdirBusyError, match=f"pid {os.getpid()}.*another --workdir"):
            loop.train(tiny(), tmp_path, progress=False)
    assert (tmp_path / LOCK_FILE).read_text() == ""          # released cleanly
    # A holder that died leaves its record in an unlocked file: taken over with a warning.
    (tmp_path / LOCK_FILE).write_text(json.dumps({"host": "h", "pid": 1, "started": "then"}))
    with pytest.warns(UserWarning, match="stale lock .*pid 1"):
        with WorkdirLock(tmp_path):
            pass


def test_concurrent_trainer_is_refused_and_ctrl_c_saves_and_resumes_exactly(
        tmp_path, endless_trainer, capsys):
    work = tmp_path / "run"
    first = endless_trainer(work)
    capsys.readouterr()
    assert main(["train", "--config", f"{TINY}:tiny", "--workdir", str(work), "--no-progress",
                 "--config.optim.lr=0.1"]) == 2
    err = capsys.readouterr().err
    assert "in use by another trainer (host " in err and f"pid {first.pid}" in err, err
    first.send_signal(signal.SIGINT)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert "Ctrl-C" in err and "Traceback" not in err
    assert json.loads(out.strip().splitlines()[-1])["preempted"] is True
    stopped = Checkpointer(work / "checkpoints", async_save=False).latest_step()
    assert stopped is not None and stopped > 0
    # Resuming gives the parameters of a run that never stopped (train.steps may change freely).
    total = stopped + 3
    overrides = (f"train.steps={total}", "train.checkpoint_every=0", "train.eval_every=0")
    loop.train(tiny(*overrides), work, progress=False)
    loop.train(tiny(*overrides), tmp_path / "straight", progress=False)
    a, b = _params(work, tiny(*overrides)), _params(tmp_path / "straight", tiny(*overrides))
    assert a.step == b.step == total
    for x, y in zip(jax.tree.leaves(a.state.params), jax.tree.leaves(b.state.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ----------------------------------------------------------------------------- resume semantics


def test_fewer_steps_than_done_is_an_error_and_equal_steps_has_nothing_to_do(tmp_path):
    first = loop.train(tiny("train.steps=4"), tmp_path, progress=False)
    before = (tmp_path / "metrics.jsonl").read_text()
    with pytest.raises(ConfigError, match="already at step 4, past train.steps=2"):
        loop.train(tiny("train.steps=2"), tmp_path, progress=False)
    again = loop.train(tiny("train.steps=4"), tmp_path, progress=False)
    assert again["accuracy"] == first["accuracy"] and again["loss"] == first["loss"]
    assert (tmp_path / "metrics.jsonl").read_text() == before   # the logs are untouched


def test_logs_after_the_restored_step_are_dropped_on_resume(tmp_path):
    loop.train(tiny("train.steps=8", "train.checkpoint_every=4", "train.eval_every=4"),
               tmp_path, progress=False)
    # As if the run had died after logging step 8 but before its checkpoint 8 was usable.
    import shutil
    shutil.rmtree(tmp_path / "checkpoints" / "8")
    loop.train(tiny("train.steps=8", "train.checkpoint_every=4", "train.eval_every=4"),
               tmp_path, progress=False)
    records = loop.read_metrics(tmp_path)
    for split in ("train", "eval"):
        steps = [r["step"] for r in records if r["split"] == split]
        assert steps == sorted(set(steps)), (split, steps)   # every step once, in order
    assert [r["step"] for r in records if r["split"] == "eval"] == [4, 8]


# ----------------------------------------------------------------------------- config ranges


@pytest.mark.parametrize("override, key", [
    ("train.log_every=0", "train.log_every=0 must be >= 1"),
    ("train.keep_checkpoints=0", "train.keep_checkpoints=0 must be >= 1"),
    ("train.steps=-5", "train.steps=-5 must be >= 1"),
    ("train.eval_every=-1", "train.eval_every=-1 must be >= 0"),
    ("parallel.strategy='vmap'", "parallel.strategy='vmap' must be one of"),
    ("train.best_mode='up'", "train.best_mode='up' must be one of"),
])
def test_config_ranges_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace("(", r"\(").replace(")", r"\)")):
        check_config(tiny(override))


def test_warmup_longer_than_a_short_trial_run_is_scaled_down(monkeypatch):
    monkeypatch.setattr(optim, "_WARNED_WARMUP", set())   # warned once per process
    config = get_config("experiments/classification.py:default", ["train.steps=30"])
    with pytest.warns(UserWarning, match="warmup_steps=50 .* warming up for 3 steps"):
        schedule = optim.make_schedule(config.optim, 30)
    assert float(schedule(0)) < float(schedule(3)) == pytest.approx(config.optim.lr, rel=1e-6)


def test_eval_batch_error_names_the_eval_key():
    with pytest.raises(Exception, match="train.eval_batch_size=30 does not divide over 4"):
        loop.build(tiny("train.eval_batch_size=30"), loop.resolve_experiment(tiny()),
                   abstract=True)


# ----------------------------------------------------------------------------- exit codes


def test_exit_code_contract_and_one_line_errors(tmp_path):
    bad = tmp_path / "bad_experiment.py"
    bad.write_text("CONFIGS = {\n  'x': lambda: None,\n  oops here\n}\n")
    cases = [
        (["train", "--config", f"{TINY}:tiny", "--workdir", str(tmp_path / "a"),
          "--config.train.steps"], "needs a value"),
        (["eval", "--workdir", str(tmp_path / "missing")], "config.json not found"),
        (["eval", "--config", f"{TINY}:tiny", "--workdir", str(tmp_path / "missing")],
         "no checkpoints in"),
        (["train", "--config", f"{bad}:x", "--workdir", str(tmp_path / "b")],
         f"{bad}:3: syntax error"),
    ]
    for argv, message in cases:
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            assert main(argv) == 2, (argv, err.getvalue())
        assert message in err.getvalue() and "Traceback" not in err.getvalue(), err.getvalue()
    assert not (tmp_path / "missing").exists()     # reading creates nothing
    # A workdir that is a file; a damaged config.json names its file.
    (tmp_path / "file").write_text("x")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["train", "--config", f"{TINY}:tiny", "--workdir",
                     str(tmp_path / "file")]) == 2
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "config.json").write_text("{not json")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["eval", "--workdir", str(tmp_path / "w")]) == 2
    assert f"{tmp_path / 'w' / 'config.json'} is not valid JSON" in err.getvalue()
    # A finished run: a checkpoint that is not there is bad input; a non-finite loss a failure.
    loop.train(tiny("train.steps=2"), tmp_path / "done", progress=False)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["eval", "--workdir", str(tmp_path / "done"), "--checkpoint", "999"]) == 2
    assert "999" in err.getvalue()
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["train", "--config", f"{TINY}:tiny", "--workdir", str(tmp_path / "nan"),
                     "--config.optim.name=sgd", "--config.optim.lr=1e30", "--config.train.steps=4",
                     "--config.train.log_every=1", "--no-progress"]) == 1
    assert "not finite" in err.getvalue()


def test_eval_reports_bad_examples_skipped_under_skip(tmp_path):
    from PIL import Image
    r = np.random.default_rng(0)
    for cls in ("a", "b"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(r.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(
                tmp_path / "data" / cls / f"{i}.png")
    # The last image of class a falls in the held-out 'test' split; it is truncated.
    bad = tmp_path / "data" / "a" / "9.png"
    bad.write_bytes(bad.read_bytes()[:40])
    overrides = ("data.name='image_folder'", f"data.path='{tmp_path / 'data'}'",
                 "train.batch_size=8", "train.eval_batch_size=4", "train.steps=2",
                 "train.eval_every=0", "train.checkpoint_every=0", "train.log_every=1")
    from jaxvision.data.source import DataError
    with pytest.raises(DataError, match="9.png"):
        loop.train(tiny(*overrides), tmp_path / "strict", progress=False)
    with pytest.warns(UserWarning, match="9.png"):
        results = loop.train(tiny(*overrides, "data.bad_examples='skip'"), tmp_path / "skip",
                             progress=False)
    assert results["skipped_examples"] == 1
    assert results["confusion_matrix"].sum() == 3      # the 3 good test images, each once


def test_a_damaged_checkpoint_falls_back_with_one_warning_not_a_flood(tmp_path):
    loop.train(tiny("train.steps=8", "train.checkpoint_every=4", "train.eval_every=0"),
               tmp_path, progress=False)
    for manifest in (tmp_path / "checkpoints" / "8").rglob("manifest.ocdbt"):
        manifest.write_bytes(b"")
    r = _cli("eval", "--workdir", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["step"] == 4
    assert "falling back to step 4" in r.stderr
    assert "Event loop is closed" not in r.stderr and len(r.stderr.splitlines()) < 10, r.stderr
