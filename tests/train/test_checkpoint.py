"""Tests for jaxvision.train.checkpoint: exact round trips, retention, fallback, crash safety."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxvision.train.checkpoint import (
    CheckpointError,
    CheckpointFallbackWarning,
    Checkpointer,
    Restored,
    TargetMismatchError,
)

REPO = Path(__file__).resolve().parents[2]


@flax.struct.dataclass
class _State:
    step: int
    params: dict
    batch_stats: dict
    opt_state: optax.OptState
    rng: jax.Array
    numpy_leaf: np.ndarray


class _Net(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = True):
        x = nn.Dense(3)(x)
        return nn.BatchNorm(use_running_average=not train)(x)


@jax.jit
def _trained_variables(key: jax.Array):
    """Returns (params, batch_stats, opt_state, rng) after one adam step; jitted to compile once."""
    net = _Net()
    k_x, k_init, k_rng = jax.random.split(key, 3)
    x = jax.random.normal(k_x, (5, 4))
    variables = net.init(k_init, x)
    tx = optax.inject_hyperparams(optax.adam)(learning_rate=1e-2)
    opt_state = tx.init(variables["params"])

    def loss(p):
        y, updates = net.apply({"params": p, "batch_stats": variables["batch_stats"]}, x, mutable=["batch_stats"])
        return jnp.mean(y**2), updates

    (_, updates), grads = jax.value_and_grad(loss, has_aux=True)(variables["params"])
    step_updates, opt_state = tx.update(grads, opt_state, variables["params"])
    params = optax.apply_updates(variables["params"], step_updates)
    return params, updates["batch_stats"], opt_state, k_rng


def _make_state(seed: int = 0) -> _State:
    """A small but real train state: params, batch_stats, adam+inject_hyperparams, key, step."""
    params, batch_stats, opt_state, rng = _trained_variables(jax.random.key(seed))
    return _State(
        step=7 + seed,
        params=params,
        batch_stats=batch_stats,
        opt_state=opt_state,
        rng=rng,
        numpy_leaf=np.arange(6, dtype=np.int16).reshape(2, 3) + seed,
    )


def _tiny(value: float) -> dict:
    return {"w": jnp.full((3,), value, jnp.float32), "k": jax.random.key(int(value))}


def _assert_bit_identical(restored, expected) -> None:
    assert jax.tree.structure(restored) == jax.tree.structure(expected)
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(expected)):
        if isinstance(want, (int, float)):
            assert got == want and type(got) is type(want)
            continue
        if jax.dtypes.issubdtype(want.dtype, jax.dtypes.prng_key):
            assert got.dtype == want.dtype
            got, want = jax.random.key_data(got), jax.random.key_data(want)
        assert type(got) is type(want)
        assert got.shape == want.shape and got.dtype == want.dtype
        assert np.asarray(got).tobytes() == np.asarray(want).tobytes()


def _corrupt_arrays(step_dir: Path) -> None:
    for path in glob.glob(str(step_dir / "state" / "**" / "d" / "*"), recursive=True):
        with open(path, "r+b") as f:
            f.truncate(7)


def _corrupt_meta(step_dir: Path) -> None:
    (step_dir / "meta" / "metadata").write_text('{"config": ')


def _delete_state(step_dir: Path) -> None:
    shutil.rmtree(step_dir / "state")


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("async_save", [True, False])
def test_round_trip_bit_identical(tmp_path, async_save):
    state = _make_state()
    data_state = {"next_index": 123, "epoch": 2, "worker_states": [{"pos": 4}, {"pos": 5}]}
    meta = {"config": {"model": "net", "lr": 0.01, "size": (32, 32)}, "config_hash": "abc123"}
    with Checkpointer(tmp_path, async_save=async_save) as ckpt:
        assert ckpt.save(100, state, data_state=data_state, meta=meta, metrics={"loss": 0.5})
        ckpt.wait()
    with Checkpointer(tmp_path) as ckpt:
        # Concrete target (another state): only structure/shape/dtype/sharding are used.
        restored = ckpt.restore(_make_state(seed=1))
        assert isinstance(restored, Restored) and restored.step == 100
        _assert_bit_identical(restored.state, state)
        assert restored.data_state == data_state
        assert restored.meta == {"config": {"model": "net", "lr": 0.01, "size": [32, 32]}, "config_hash": "abc123"}
        assert restored.metrics == {"loss": 0.5}
        # Abstract target from jax.eval_shape: same values, the python int comes back as an array.
        abstract = jax.eval_shape(lambda: state)
        again = ckpt.restore(abstract, step=100).state
        assert int(again.step) == state.step
        _assert_bit_identical(again.params, state.params)
        _assert_bit_identical(again.opt_state, state.opt_state)
        assert jnp.array_equal(jax.random.key_data(again.rng), jax.random.key_data(state.rng))
        # The restored key is a usable typed key that draws the same numbers.
        assert jnp.array_equal(jax.random.uniform(again.rng, (3,)), jax.random.uniform(state.rng, (3,)))


def test_json_items_absent_come_back_none_and_numpy_scalars_are_converted(tmp_path):
    with Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(1, _tiny(1.0))
        ckpt.save(2, _tiny(2.0), metrics={"acc": np.float32(0.25), "n": jnp.int32(3)})
        first = ckpt.restore(_tiny(0.0), step=1)
        assert (first.data_state, first.meta, first.metrics) == (None, None, None)
        assert ckpt.restore(_tiny(0.0)).metrics == {"acc": 0.25, "n": 3}
        assert ckpt.restore_meta(1) is None


def test_restore_into_sharded_target(tmp_path):
    if jax.device_count() < 4:
        pytest.skip("needs 4 devices (tests/conftest.py simulates them on CPU)")
    devices = np.array(jax.devices()[:4])
    mesh4 = jax.sharding.Mesh(devices, ("data",))
    spec = jax.sharding.PartitionSpec("data")
    x = jax.device_put(jnp.arange(16.0).reshape(8, 2), jax.sharding.NamedSharding(mesh4, spec))
    with Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(1, {"x": x})
        mesh2 = jax.sharding.Mesh(devices[:2], ("data",))
        for sharding in (
            jax.sharding.NamedSharding(mesh2, spec),
            jax.sharding.NamedSharding(mesh4, jax.sharding.PartitionSpec()),
        ):
            target = {"x": jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)}
            got = ckpt.restore(target).state["x"]
            assert got.sharding == sharding
            np.testing.assert_array_equal(np.asarray(got), np.arange(16.0).reshape(8, 2))



def test_saving_replicated_arrays_on_cpu_compiles_nothing(tmp_path):
    """Orbax's replica-parallel save would cut each replicated array into one eager slice per
    CPU device (a compilation per shape); jaxvision saves them whole on CPU."""
    if jax.device_count() < 4:
        pytest.skip("needs 4 devices (tests/conftest.py simulates them on CPU)")
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:4]), ("data",))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    # Rows divisible by the 4 devices (orbax slices only those), in shapes no other test saves.
    state = {f"w{n}": jax.device_put(np.arange(n * 9.0, dtype=np.float32).reshape(n, 9), replicated)
             for n in (44, 52, 76)}
    compiles = []
    listener = lambda event, *_, **__: compiles.append(event)  # noqa: E731
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        with Checkpointer(tmp_path, async_save=False) as ckpt:
            ckpt.save(1, state)
            restored = ckpt.restore(jax.tree.map(np.zeros_like, state)).state
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert [e for e in compiles if e.startswith("/jax/core/compile/")] == []
    for k in state:
        np.testing.assert_array_equal(restored[k], np.asarray(state[k]))

# ----------------------------------------------------------------------------- retention


def _reference_kept(metrics: list[float | None], max_to_keep: int, mode: str) -> list[int]:
    """Steps 1..len(metrics): the last max_to_keep plus the best (latest on ties), by a plain loop."""
    steps = list(range(1, len(metrics) + 1))
    kept = set(steps[-max_to_keep:])
    scored = [(m if mode == "max" else -m, s) for s, m in zip(steps, metrics) if m is not None]
    if scored:
        kept.add(max(scored)[1])
    return sorted(kept)


def test_keep_last_n_plus_older_best(tmp_path):
    accs = [0.9, 0.1, 0.3, 0.2, 0.4]
    with Checkpointer(tmp_path, max_to_keep=2, best_metric="acc", async_save=False) as ckpt:
        for step, acc in enumerate(accs, start=1):
            ckpt.save(step, _tiny(step), metrics={"acc": acc})
        assert ckpt.all_steps() == [1, 4, 5]
        assert ckpt.best_step() == 1 and ckpt.latest_step() == 5
    # A new process knows which one is best (from disk) and keeps protecting it.
    with Checkpointer(tmp_path, max_to_keep=2, best_metric="acc", async_save=False) as ckpt:
        assert ckpt.best_step() == 1
        ckpt.save(6, _tiny(6), metrics={"acc": 0.5})
        assert ckpt.all_steps() == [1, 5, 6]
        ckpt.save(7, _tiny(7), metrics={"acc": 0.95})  # a new best: the old best may go
        assert ckpt.all_steps() == [6, 7] and ckpt.best_step() == 7
        best = ckpt.restore(_tiny(0.0), step="best")
        assert best.step == 7 and best.metrics == {"acc": 0.95}
        assert float(best.state["w"][0]) == 7.0


def test_min_mode_and_no_best_metric(tmp_path):
    with Checkpointer(tmp_path / "min", max_to_keep=1, best_metric="loss", best_mode="min", async_save=False) as ckpt:
        for step, loss in enumerate([0.5, 0.1, 0.7, float("nan")], start=1):
            ckpt.save(step, _tiny(step), metrics={"loss": loss})
        assert ckpt.all_steps() == [2, 4] and ckpt.best_step() == 2  # NaN never counts as best
    with Checkpointer(tmp_path / "plain", max_to_keep=2, async_save=False) as ckpt:
        for step in range(1, 5):
            ckpt.save(step, _tiny(step), metrics={"loss": 1.0 / step})
        assert ckpt.all_steps() == [3, 4] and ckpt.best_step() is None
        with pytest.raises(ValueError, match="best_metric"):
            ckpt.restore(_tiny(0.0), step="best")


def test_best_ties_prefer_the_latest_step(tmp_path):
    with Checkpointer(tmp_path, max_to_keep=1, best_metric="acc", async_save=False) as ckpt:
        for step, acc in enumerate([0.9, 0.9, 0.1, 0.2], start=1):
            ckpt.save(step, _tiny(step), metrics={"acc": acc})
        assert ckpt.all_steps() == [2, 4] and ckpt.best_step() == 2


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    metrics=st.lists(st.one_of(st.none(), st.integers(-3, 3).map(float)), min_size=1, max_size=6),
    max_to_keep=st.integers(1, 3),
    mode=st.sampled_from(["max", "min"]),
)
def test_retention_matches_reference(tmp_path_factory, metrics, max_to_keep, mode):
    directory = tmp_path_factory.mktemp("retention")
    with Checkpointer(directory, max_to_keep=max_to_keep, best_metric="m", best_mode=mode, async_save=False) as ckpt:
        for step, m in enumerate(metrics, start=1):
            ckpt.save(step, {"w": np.full((2,), step, np.float32)}, metrics=None if m is None else {"m": m})
        assert ckpt.all_steps() == _reference_kept(metrics, max_to_keep, mode)
        scored = [(m if mode == "max" else -m, s) for s, m in enumerate(metrics, start=1) if m is not None]
        assert ckpt.best_step() == (max(scored)[1] if scored else None)


# ----------------------------------------------------------------------------- step selection


def test_restore_by_step_and_errors(tmp_path):
    with Checkpointer(tmp_path, max_to_keep=3, async_save=False) as ckpt:
        for step in (10, 20, 30):
            ckpt.save(step, _tiny(step), meta={"at": step})
        assert ckpt.restore(_tiny(0.0), step=20).state["w"][0] == 20.0
        assert ckpt.restore(_tiny(0.0), step="latest").step == 30
        assert ckpt.restore_meta() == {"at": 30} and ckpt.restore_meta(10) == {"at": 10}
        assert not ckpt.save(25, _tiny(25))  # older than the latest: nothing written
        assert ckpt.all_steps() == [10, 20, 30]
        with pytest.raises(CheckpointError, match=r"step 15 .*\[10, 20, 30\]"):
            ckpt.restore(_tiny(0.0), step=15)
        with pytest.raises(ValueError, match="'newest'"):
            ckpt.restore(_tiny(0.0), step="newest")


def test_empty_directory(tmp_path):
    with Checkpointer(tmp_path / "run", best_metric="acc") as ckpt:
        assert ckpt.latest_step() is None and ckpt.best_step() is None and ckpt.all_steps() == []
        assert ckpt.restore_meta() is None
        with pytest.raises(CheckpointError, match="no checkpoint in .*run"):
            ckpt.restore(_tiny(0.0))
        with pytest.raises(CheckpointError, match="has metric 'acc'"):
            ckpt.restore(_tiny(0.0), step="best")


# ----------------------------------------------------------------------------- bad input


def test_wrong_target_names_the_mismatch_without_fallback(tmp_path):
    state = {"params": {"kernel": jnp.ones((4, 3)), "bias": jnp.zeros((3,))}, "step": jnp.int32(1)}
    with Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(1, state)
        ckpt.save(2, state)
        sds = jax.eval_shape(lambda: state)
        cases = {
            r"not in the target: params/bias": {"params": {"kernel": sds["params"]["kernel"]}, "step": sds["step"]},
            r"not in the checkpoint: params/scale": {**sds, "params": {**sds["params"], "scale": sds["params"]["bias"]}},
            r"params/kernel: checkpoint shape \(4, 3\), target shape \(3, 3\)": {
                **sds, "params": {**sds["params"], "kernel": jax.ShapeDtypeStruct((3, 3), jnp.float32)}
            },
            r"params/bias: checkpoint dtype float32, target dtype bfloat16": {
                **sds, "params": {**sds["params"], "bias": jax.ShapeDtypeStruct((3,), jnp.bfloat16)}
            },
        }
        with warnings.catch_warnings():
            warnings.simplefilter("error", CheckpointFallbackWarning)  # a user error must not fall back
            for pattern, target in cases.items():
                with pytest.raises(TargetMismatchError, match=pattern) as info:
                    ckpt.restore(target)
                assert "step 2" in str(info.value)


def test_save_rejects_bad_input(tmp_path):
    with Checkpointer(tmp_path, best_metric="acc", async_save=False) as ckpt:
        with pytest.raises(ValueError, match=r"best_metric 'acc' not in metrics \(keys: \['loss'\]\)"):
            ckpt.save(1, _tiny(1), metrics={"loss": 0.1})
        with pytest.raises(TypeError, match=r"meta\['cfg'\]\['fn'\] is a builtin_function_or_method, which JSON cannot store"):
            ckpt.save(1, _tiny(1), meta={"cfg": {"fn": len}})
        with pytest.raises(TypeError, match=r"data_state\['buf'\] is an array of shape \(3,\)"):
            ckpt.save(1, _tiny(1), data_state={"buf": np.zeros(3)})
        with pytest.raises(ValueError, match="step must be a non-negative int"):
            ckpt.save(-1, _tiny(1))
        assert ckpt.all_steps() == []
    for kwargs, pattern in (({"max_to_keep": 0}, "max_to_keep"), ({"best_mode": "best"}, "best_mode")):
        with pytest.raises(ValueError, match=pattern):
            Checkpointer(tmp_path, **kwargs)


# ----------------------------------------------------------------------------- damage and crashes


def test_quiet_closed_loop_drops_only_those_tracebacks(capsys):
    import sys
    from jaxvision.train.checkpoint import _QuietClosedLoop
    noise = ("Traceback (most recent call last):\n  File \"/usr/lib/python3.11/asyncio/"
             "base_events.py\", line 806, in call_soon_threadsafe\n    self._check_closed()\n"
             "RuntimeError: Event loop is closed\n")
    with _QuietClosedLoop():
        sys.stderr.write("before\n" + noise * 3)
        # Threads interleave their fragments mid-line.
        sys.stderr.write("RuntimeError")
        sys.stderr.write("ValueError: kept\n")
        sys.stderr.write(": Event loop is closed\nafter\n")
    assert capsys.readouterr().err == "before\nValueError: kept\nafter\n"
    with _QuietClosedLoop():
        sys.stderr.write("nothing to drop\n")
    assert capsys.readouterr().err == "nothing to drop\n"


def test_orphaned_read_errors_of_a_damaged_step_are_not_logged(tmp_path, caplog):
    # asyncio logs a failed future nobody awaited when it is garbage-collected, possibly long
    # after the restore: those of a step already reported unusable are dropped, others kept.
    import asyncio
    import gc
    from jaxvision.train.checkpoint import _ORPHANED_READS
    damaged = tmp_path / "checkpoints" / "8"
    _ORPHANED_READS.mute(damaged)
    loop = asyncio.new_event_loop()
    for where in (damaged / "state", tmp_path / "checkpoints" / "80" / "state"):
        future = loop.create_future()
        future.set_exception(ValueError(f"DATA_LOSS: Error reading in {where}/"))
        del future
        gc.collect()
    loop.close()
    logged = [r.getMessage() for r in caplog.records if "never retrieved" in r.getMessage()]
    assert len(logged) == 1 and "checkpoints/80/state" in logged[0]


@pytest.mark.parametrize("corrupt", [_corrupt_arrays, _corrupt_meta, _delete_state])
def test_corrupt_latest_falls_back_with_warning(tmp_path, corrupt):
    with Checkpointer(tmp_path, max_to_keep=3, async_save=False) as ckpt:
        for step in (1, 2, 3):
            ckpt.save(step, _tiny(step), meta={"at": step})
    corrupt(tmp_path / "3")
    with Checkpointer(tmp_path, max_to_keep=3, async_save=False) as ckpt:
        assert ckpt.latest_step() == 3
        with pytest.warns(CheckpointFallbackWarning, match=r"step 3 .*unusable .*falling back to step 2"):
            restored = ckpt.restore(_tiny(0.0))
        assert restored.step == 2 and float(restored.state["w"][0]) == 2.0 and restored.meta == {"at": 2}
        # Resuming from step 2 rewrites step 3; the damaged one is kept aside, not deleted.
        with pytest.warns(CheckpointFallbackWarning, match="moved unusable checkpoint step 3"):
            assert ckpt.save(3, _tiny(33.0), meta={"at": 33})
        assert ckpt.restore(_tiny(0.0)).state["w"][0] == 33.0
        assert len(list((tmp_path / "_unusable").glob("3-*"))) == 1


def test_all_corrupt_raises_listing_what_was_tried(tmp_path):
    with Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(1, _tiny(1), meta={"at": 1})
        ckpt.save(2, _tiny(2), meta={"at": 2})
    _corrupt_arrays(tmp_path / "2")
    _corrupt_meta(tmp_path / "1")
    with Checkpointer(tmp_path) as ckpt:
        with pytest.warns(CheckpointFallbackWarning):
            with pytest.raises(CheckpointError, match=r"no usable checkpoint(.|\n)*step 2: (.|\n)*step 1: JSONDecodeError"):
                ckpt.restore(_tiny(0.0))
        with pytest.raises(CheckpointError, match="step 2 .* is unusable"):
            ckpt.restore(_tiny(0.0), step=2)  # an explicit step never falls back
        assert ckpt.restore_meta() == {"at": 2}  # meta alone is still readable


def test_best_checkpoint_damaged_falls_back_to_next_best(tmp_path):
    with Checkpointer(tmp_path, max_to_keep=3, best_metric="acc", async_save=False) as ckpt:
        for step, acc in ((1, 0.2), (2, 0.9), (3, 0.5)):
            ckpt.save(step, _tiny(step), metrics={"acc": acc})
    _delete_state(tmp_path / "2")
    with Checkpointer(tmp_path, max_to_keep=3, best_metric="acc") as ckpt:
        with pytest.warns(CheckpointFallbackWarning, match="step 2 .*falling back to step 3"):
            assert ckpt.restore(_tiny(0.0), step="best").step == 3


def test_damaged_metrics_only_disqualify_from_best(tmp_path):
    with Checkpointer(tmp_path, max_to_keep=3, best_metric="acc", async_save=False) as ckpt:
        for step, acc in ((1, 0.2), (2, 0.9), (3, 0.5)):
            ckpt.save(step, _tiny(step), metrics={"acc": acc})
    (tmp_path / "2" / "train_metrics" / "metadata").write_text('{"acc": 0.')
    with pytest.warns(CheckpointFallbackWarning, match="step 2 .*metrics are unreadable"):
        ckpt = Checkpointer(tmp_path, max_to_keep=3, best_metric="acc", async_save=False)
    with ckpt:
        assert ckpt.best_step() == 3
        with pytest.warns(CheckpointFallbackWarning, match="restoring it with metrics=None"):
            restored = ckpt.restore(_tiny(0.0), step=2)  # the arrays are fine: still usable
        assert restored.step == 2 and restored.metrics is None and float(restored.state["w"][0]) == 2.0


@pytest.mark.parametrize("tmp_name", ["3.orbax-checkpoint-tmp", "3.orbax-checkpoint-tmp-1712345678"])
def test_partial_temp_dir_is_never_a_checkpoint(tmp_path, tmp_name):
    with Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(1, _tiny(1))
        ckpt.save(2, _tiny(2))
    # What a crash mid-save leaves: a temp dir with some item dirs finished, others not.
    partial = tmp_path / tmp_name
    shutil.copytree(tmp_path / "2", partial)
    (partial / "commit_success.txt").unlink()
    shutil.rmtree(partial / "state" / "ocdbt.process_0")
    with Checkpointer(tmp_path, async_save=False) as ckpt:
        assert ckpt.all_steps() == [1, 2] and ckpt.latest_step() == 2
        with warnings.catch_warnings():
            warnings.simplefilter("error", CheckpointFallbackWarning)
            assert ckpt.restore(_tiny(0.0)).step == 2
        assert ckpt.save(3, _tiny(3))  # the unfinished step can be written for real
        assert ckpt.restore(_tiny(0.0)).state["w"][0] == 3.0


_CRASH_SCRIPT = textwrap.dedent(
    """
    import os, sys
    import jax.numpy as jnp
    from orbax.checkpoint._src.path import atomicity
    from jaxvision.train.checkpoint import Checkpointer

    ckpt = Checkpointer(sys.argv[1], async_save=True)
    ckpt.save(1, {"w": jnp.full((64,), 1.0)}, meta={"at": 1})
    ckpt.wait()

    async def _die(self):  # the process dies after writing step 2, before the commit rename
        os._exit(17)

    atomicity.AtomicRenameTemporaryPath.finalize = _die
    ckpt.save(2, {"w": jnp.full((64,), 2.0)}, meta={"at": 2})
    ckpt.wait()
    os._exit(0)
    """
)


def test_crash_mid_save_keeps_previous_checkpoint(tmp_path):
    directory = tmp_path / "run"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, "-c", _CRASH_SCRIPT, str(directory)],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 17, proc.stderr[-2000:]
    leftovers = list(directory.glob("2.orbax-checkpoint-tmp*"))
    assert leftovers and any(leftovers[0].rglob("*")), "the crash should leave a partial temp dir"
    target = {"w": jax.ShapeDtypeStruct((64,), jnp.float32)}
    with Checkpointer(directory, async_save=True) as ckpt:
        assert ckpt.all_steps() == [1]
        restored = ckpt.restore(target)
        assert restored.step == 1 and restored.meta == {"at": 1}
        np.testing.assert_array_equal(np.asarray(restored.state["w"]), np.ones(64, np.float32))
        assert ckpt.save(2, {"w": jnp.full((64,), 5.0)})
        ckpt.wait()
    with Checkpointer(directory) as ckpt:
        assert ckpt.all_steps() == [1, 2]
        assert float(ckpt.restore(target).state["w"][0]) == 5.0
