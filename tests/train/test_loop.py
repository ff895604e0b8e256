"""The training core end to end on a tiny experiment: resume, strategies, eval, guards."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxvision.config import ConfigError, get_config
from jaxvision.experiment import load_experiment
from jaxvision.train import loop
from jaxvision.train.checkpoint import Checkpointer
from jaxvision.train.parallel import Strategy

TINY = "tests/train/tiny_experiment.py"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def exp():
    return load_experiment(TINY)


def tiny(*overrides):
    return get_config(f"{TINY}:tiny", overrides)


def final_params(workdir, config, exp):
    run = loop.build(config, exp)
    restored = Checkpointer(Path(workdir) / "checkpoints", async_save=False).restore(run.state)
    return restored.state


def assert_trees_equal(a, b, rtol=0.0, atol=0.0):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, exp):
    """One uninterrupted 12-step run, with its figures; several tests compare against it."""
    workdir = tmp_path_factory.mktemp("ref")
    results = loop.train(tiny("train.plots=True"), workdir, experiment=exp, progress=False)
    return workdir, results, final_params(workdir, tiny(), exp)


def test_resume_gives_the_same_parameters_as_never_stopping(tmp_path, exp, reference):
    _, ref_results, ref_state = reference
    out = loop.train(tiny(), tmp_path, experiment=exp, progress=False, stop_at=5)
    assert out == {"preempted": True, "step": 5}
    results = loop.train(tiny(), tmp_path, experiment=exp, progress=False)
    state = final_params(tmp_path, tiny(), exp)
    assert int(state.step) == 12
    assert_trees_equal(state.params, ref_state.params)           # bit-identical on CPU
    assert_trees_equal(state.model_state, ref_state.model_state)
    assert_trees_equal(state.opt_state, ref_state.opt_state)
    assert results["accuracy"] == ref_results["accuracy"]


def test_workdir_outputs(reference):
    workdir, results, _ = reference
    records = [r for r in loop.read_metrics(workdir)]
    assert {r["split"] for r in records} == {"train", "eval"}
    assert all("step" in r for r in records)
    assert [r["step"] for r in records if r["split"] == "train"] == [2, 4, 6, 8, 10, 12]
    assert (workdir / "curves.png").stat().st_size > 0
    assert (workdir / "confusion_matrix.png").stat().st_size > 0
    assert list((workdir / "tensorboard").glob("events.*"))
    assert 0.0 <= results["accuracy"] <= 1.0 and "top5_accuracy" in results


# ("jit", 4) is the reference run itself (the default strategy on all 4 devices). Left out for
# the suite's time: jit on 2 devices (between 1 and 4) and pmap on 1 (one device, as jit's 1).
@pytest.mark.parametrize("strategy,devices", [("jit", 1), ("pmap", 2), ("pmap", 4)])
def test_strategies_and_device_counts_agree(tmp_path, exp, reference, strategy, devices,
                                            monkeypatch):
    assert jax.device_count() >= 4, "conftest sets 4 simulated CPU devices"
    _, _, ref_state = reference
    config = tiny(f"parallel.strategy='{strategy}'", f"parallel.num_devices={devices}")
    # Who asks for the whole state as one copy of device arrays: only checkpoint saves should
    # (logged reads go through Strategy.host, see test_host_reads_compile_nothing).
    callers = []
    unreplicate = Strategy.unreplicate

    def recorded(self, tree):
        callers.append(sys._getframe(1).f_code.co_name)
        return unreplicate(self, tree)
    monkeypatch.setattr(Strategy, "unreplicate", recorded)
    loop.train(config, tmp_path, experiment=exp, progress=False)
    assert set(callers) == {"save"}, callers
    state = final_params(tmp_path, config, exp)
    # Equal up to float32 reduction order (batch norm and the gradient sum over devices).
    assert_trees_equal(state.params, ref_state.params, rtol=2e-4, atol=2e-5)
    assert_trees_equal(state.model_state, ref_state.model_state, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("strategy", ["jit", "pmap"])
def test_host_reads_compile_nothing(strategy):
    """Each logged step reads its metrics, the non-finite flag and the learning rate through
    ``Strategy.host``. Under pmap, ``unreplicate``'s ``x[0]`` would compile a slice for each leaf
    shape and then dispatch one per leaf and read."""
    s = Strategy(strategy)
    n = len(s.local_devices) if strategy == "pmap" else 1
    x = np.arange(n * 7 * 5, dtype=np.float32).reshape(n, 7, 5)   # shapes no other test reads
    fn = (lambda v: {"a": v * 2, "b": (v.sum(), v[:3] - 1)})
    tree = jax.pmap(fn)(x) if strategy == "pmap" else jax.jit(fn)(x[0])
    events = []
    listener = lambda event, *_, **__: events.append(event)  # noqa: E731
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        got = s.host(tree)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert [e for e in events if e.startswith("/jax/core/compile/")] == []
    assert all(isinstance(v, (np.ndarray, np.generic)) for v in jax.tree.leaves(got))
    assert_trees_equal(got, fn(x[0]), rtol=0, atol=0)


def test_eval_is_exact_over_padded_batches(exp, reference):
    workdir, results, state = reference
    config = tiny()
    run = loop.build(config, exp)
    source = run.eval_loader.source
    images = np.stack([source[i]["image"] for i in range(len(source))])
    labels = np.asarray([source[i]["label"] for i in range(len(source))])
    logits = run.model.apply(state.eval_variables(), images.astype(np.float32) / 255.0, train=False)
    accuracy = float(np.mean(np.argmax(np.asarray(logits), -1) == labels))
    assert len(source) % int(config.train.eval_batch_size) != 0   # the last batch is padded
    assert results["accuracy"] == pytest.approx(accuracy, abs=1e-9)
    assert results["confusion_matrix"].sum() == len(source)        # every example once


def test_non_finite_loss_stops_with_the_step_and_keeps_the_checkpoint(tmp_path, exp):
    config = tiny("optim.name='sgd'", "optim.lr=1e30", "train.checkpoint_every=1",
                  "train.log_every=1")
    with pytest.raises(loop.TrainingError, match=r"not finite at step \d+"):
        loop.train(config, tmp_path, experiment=exp, progress=False)
    ckpt = Checkpointer(tmp_path / "checkpoints", async_save=False)
    assert ckpt.latest_step() is not None
    restored = ckpt.restore(loop.build(config, exp).state)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(restored.state.params))


def test_resume_with_a_changed_config_refuses_without_force(tmp_path, exp):
    loop.train(tiny("train.steps=4"), tmp_path, experiment=exp, progress=False)
    with pytest.raises(ConfigError, match=r"optim.lr: 0.05 -> 0.1"):
        loop.train(tiny("train.steps=6", "optim.lr=0.1"), tmp_path, experiment=exp, progress=False)
    loop.train(tiny("train.steps=6", "optim.lr=0.1"), tmp_path, experiment=exp, progress=False,
               force=True)
    # Raising train.steps alone continues a finished run.
    loop.train(tiny("train.steps=8", "optim.lr=0.1"), tmp_path, experiment=exp, progress=False,
               force=True)
    assert Checkpointer(tmp_path / "checkpoints", async_save=False).latest_step() == 8


def test_plots_off_writes_numbers_only_and_may_change_on_resume(tmp_path, exp):
    loop.train(tiny("train.steps=4", "train.plots=False"), tmp_path, experiment=exp, progress=False)
    assert not list(tmp_path.glob("*.png"))
    assert json.loads((tmp_path / "per_class.json").read_text())[0]["support"] > 0
    # It does not change what is trained: a resume may turn it on without --force.
    loop.train(tiny("train.steps=6", "train.plots=True"), tmp_path, experiment=exp, progress=False)
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["confusion_matrix.png", "curves.png"]


def _cli(*args, env_extra=None, **kw):
    env = dict(os.environ)
    env.setdefault("JAX_PLATFORMS", "cpu")
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "jaxvision", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, **kw)


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path, endless_trainer):
    proc = endless_trainer(tmp_path)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "SIGTERM" in err
    step = Checkpointer(tmp_path / "checkpoints", async_save=False).latest_step()
    assert step is not None and step > 0


def test_cli_round_trip(tmp_path, capsys):
    from jaxvision.__main__ import main
    workdir = str(tmp_path / "run")
    r = _cli("train", "--config", f"{TINY}:tiny", "--workdir", workdir, "--no-progress",
             "--config.train.steps=4")
    assert r.returncode == 0, r.stderr
    import json
    trained = json.loads(r.stdout.strip().splitlines()[-1])
    # `python -m jaxvision` is checked once above; the other commands run in this process (a
    # new one costs an import of jax, ~2 s).
    capsys.readouterr()
    assert main(["eval", "--config", f"{TINY}:tiny", "--workdir", workdir,
                 "--config.train.steps=4"]) == 0
    evaluated = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert evaluated["accuracy"] == pytest.approx(trained["accuracy"])
    assert evaluated["step"] == 4
    assert main(["list"]) == 0
    assert "experiments/classification.py:default" in capsys.readouterr().out
    assert main(["bench", "--config", f"{TINY}:tiny", "--steps", "3"]) == 0
    bench = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("images_per_sec", "step_ms", "compile_s", "devices", "backend", "peak_memory_bytes"):
        assert key in bench
    assert main(["summary", "--config", "experiments/classification.py:default"]) == 0
    out = capsys.readouterr().out
    totals = json.loads(out.strip().splitlines()[-1])
    assert totals["params"] > 0 and totals["flops"] > 0 and "head" in out
    assert main(["train", "--config", f"{TINY}:tiny", "--workdir", workdir, "--config.train.stpes=3"]) == 2
    err = capsys.readouterr().err
    assert "train.steps" in err and "Traceback" not in err
