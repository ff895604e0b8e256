"""Loop options: early stopping, EMA evaluation, mixed precision, corrupt-checkpoint fallback."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision.config import get_config
from jaxvision.experiment import load_experiment
from jaxvision.train import loop
from jaxvision.train.checkpoint import Checkpointer

TINY = "tests/train/tiny_experiment.py"


@pytest.fixture(scope="module")
def exp():
    return load_experiment(TINY)


def tiny(*overrides):
    return get_config(f"{TINY}:tiny", overrides)


def restore(workdir, config, exp, step=None):
    ckpt = Checkpointer(Path(workdir) / "checkpoints", async_save=False,
                        best_metric=str(config.train.best_metric), best_mode=str(config.train.best_mode))
    return ckpt.restore(loop.build(config, exp).state, step=step)


def test_early_stopping_stops_and_restores_the_best(tmp_path, exp):
    config = tiny("train.best_metric='loss'", "train.best_mode='min'", "train.eval_every=2",
                  "train.early_stopping_patience=1", "train.checkpoint_every=0")
    loop.train(config, tmp_path, experiment=exp, progress=False)
    evals = [r for r in loop.read_metrics(tmp_path) if r["split"] == "eval"]
    # Replay the rule on the recorded metrics: stop at the first evaluation that does not improve.
    best, best_step, stop = float("inf"), None, None
    for r in evals:
        if r["loss"] < best:
            best, best_step = r["loss"], r["step"]
        else:
            stop = r["step"]
            break
    assert stop is not None and stop < 12, "this deterministic run must stop early"
    assert evals[-1]["step"] == stop           # the final evaluation repeats the stop step
    assert evals[-1]["loss"] == pytest.approx(best)   # ... with the best parameters restored
    assert restore(tmp_path, config, exp, step="best").step == best_step


def test_ema_parameters_are_tracked_and_used_for_eval(tmp_path, exp):
    config = tiny("optim.ema_decay=0.5", "train.steps=4", "train.eval_every=0")
    results = loop.train(config, tmp_path, experiment=exp, progress=False)
    state = restore(tmp_path, config, exp).state
    assert state.ema_params is not None
    diffs = [float(np.abs(np.asarray(a) - np.asarray(b)).max())
             for a, b in zip(jax.tree.leaves(state.ema_params), jax.tree.leaves(state.params))]
    assert max(diffs) > 0                                   # EMA lags the parameters
    assert state.eval_variables()["params"] is state.ema_params
    run = loop.build(config, exp)
    again = loop.evaluate(run, run.strategy.put_state(state))
    assert again["accuracy"] == results["accuracy"]


def test_mixed_precision_keeps_float32_params_and_optimizer_state():
    config = get_config("experiments/classification.py:default",
                        ["train.mixed_precision=True", "data.procedural.image_size=16",
                         "data.procedural.num_train=64", "data.procedural.num_eval=16",
                         "train.batch_size=8", "train.eval_batch_size=8", "model.widths=(8, 16)"])
    exp = load_experiment("experiments/classification.py")
    run = loop.build(config, exp)
    assert run.model.dtype == jnp.bfloat16
    from jaxvision.train.step import make_train_step
    step = run.strategy.compile_train(make_train_step(exp, run.model, run.optimizer, config))
    state = run.strategy.put_state(run.state)
    batch = run.strategy.put_batch(next(iter(run.train_loader)))
    state, metrics = step(state, batch, None)
    for leaf in jax.tree.leaves((state.params, state.opt_state)):
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            assert leaf.dtype == jnp.float32
    assert np.isfinite(float(metrics["loss"][0]))


def test_corrupt_latest_checkpoint_falls_back_on_resume(tmp_path, exp):
    loop.train(tiny("train.steps=8"), tmp_path, experiment=exp, progress=False)
    ckpt_dir = tmp_path / "checkpoints"
    steps = Checkpointer(ckpt_dir, async_save=False).all_steps()
    assert steps[-1] == 8 and len(steps) >= 2
    # Damage every array file of the newest checkpoint (a crash or a bad disk).
    for f in (ckpt_dir / "8").rglob("*"):
        if f.is_file() and f.suffix not in (".json",) and f.stat().st_size > 0:
            f.write_bytes(b"garbage")
    with pytest.warns(Warning, match="8"):
        loop.train(tiny("train.steps=8"), tmp_path, experiment=exp, progress=False)
    # It resumed from the previous step and trained to 8 again: a usable step 8 exists once more.
    assert restore(tmp_path, tiny("train.steps=8"), exp).step == 8


def test_data_show_draws_every_target(tmp_path):
    from PIL import Image
    from jaxvision.data.show import show
    config = get_config("experiments/classification.py:default",
                        ["data.keys=()", "data.procedural.image_size=32"])
    out = show(config, str(tmp_path / "grid.png"), num=2, transformed=False)
    image = np.asarray(Image.open(out))
    assert image.ndim == 3 and image.std() > 0
    assert image.shape[1] > 4 * image.shape[0] / 2      # six panels per row: image ... disparity
