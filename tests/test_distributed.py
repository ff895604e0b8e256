"""Multi-process runs over loopback: two CPU processes (gloo collectives) against one.

Real subprocesses on 127.0.0.1 train the tiny experiment; their parameters, eval metrics and
checkpoints are compared with a single process on the same global batch. Also: a SIGTERM stops
every process at the same step (tasks started as launch/srun.sh would be under SLURM), a killed
process ends the job in bounded time, a coordinator that cannot be reached fails fast, and the
local launcher stops the others when one fails.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import jax
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jaxvision import distributed
from jaxvision.config import get_config
from jaxvision.experiment import load_experiment
from jaxvision.train import loop
from jaxvision.train.checkpoint import Checkpointer

ROOT = Path(__file__).resolve().parents[1]
TINY = "tests/train/tiny_experiment.py"
RETRIEVAL = "tests/train/retrieval_experiment.py:retrieval"
LAUNCHER = ROOT / "launch" / "multiprocess_local.sh"
NUM_EVAL = 100  # examples in the tiny config's eval split (not a multiple of its eval batch, 32)


def _gloo_available() -> bool:
    try:
        from jax._src.lib import _jax
    except ImportError:
        return False
    return hasattr(_jax, "make_gloo_tcp_collectives")


def _bash_has_wait_p() -> bool:
    out = subprocess.run(["bash", "-c", "echo ${BASH_VERSINFO[0]} ${BASH_VERSINFO[1]}"],
                         capture_output=True, text=True).stdout.split()
    return len(out) == 2 and (int(out[0]), int(out[1])) >= (5, 1)


needs_gloo = pytest.mark.skipif(
    not _gloo_available(),
    reason="this jaxlib has no gloo CPU collectives (jax._src.lib._jax.make_gloo_tcp_collectives), "
           "so several CPU processes cannot run one computation")
needs_bash51 = pytest.mark.skipif(not _bash_has_wait_p(),
                                  reason="launch/multiprocess_local.sh needs bash >= 5.1")


# ----------------------------------------------------------------------------- helpers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny(*overrides):
    return get_config(f"{TINY}:tiny", overrides)


def _state(workdir: Path, step: int | None = None):
    run = loop.build(tiny(), load_experiment(TINY))
    ckpt = Checkpointer(Path(workdir) / "checkpoints", async_save=False)
    return ckpt.restore(run.state, step=step).state


def _close(a, b, rtol=2e-4, atol=2e-5):
    """Equal up to float32 reduction order (gradient and batch-norm sums split differently)."""
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> str:
    """One persistent compilation cache for every subprocess: later launches skip compiling."""
    return os.environ.get("JAXVISION_COMPILATION_CACHE") or str(tmp_path_factory.mktemp("jax_cache"))


def _env(cache_dir: str, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("JAXVISION_") or k == "JAXVISION_COMPILATION_CACHE"}
    # The test process simulates 4 devices; each subprocess sets its own count.
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                                if "xla_force_host_platform_device_count" not in f)
    env.update(JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=cache_dir,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAXVISION_PYTHON=sys.executable,
               JAXVISION_INIT_TIMEOUT="120", JAXVISION_HEARTBEAT_TIMEOUT="30",
               JAXVISION_SHUTDOWN_TIMEOUT="60", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def _launch(env: dict, *args: str, num: int = 2, devices: int = 1, timeout: float = 300):
    return subprocess.run(["bash", str(LAUNCHER), "--num_processes", str(num),
                           "--devices_per_process", str(devices), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _json_of(stdout: str, process: int = 0, which: int = -1) -> dict:
    """JSON line ``which`` (default the last) that a process printed (lines carry the
    launcher's '[pI] ' prefix)."""
    tag = f"[p{process}] {{"
    lines = [line[len(tag) - 1:] for line in stdout.splitlines() if line.startswith(tag)]
    assert lines, f"no JSON line from process {process} in:\n{stdout[-2000:]}"
    return json.loads(lines[which])


def _train_cmd(workdir: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "jaxvision", "train", "--config", f"{TINY}:tiny", "--workdir",
            str(workdir), "--no-progress", *overrides]


def _explicit(i: int, port: int) -> dict:
    return {"JAXVISION_COORDINATOR": f"127.0.0.1:{port}", "JAXVISION_NUM_PROCESSES": "2",
            "JAXVISION_PROCESS_ID": str(i)}


def _fake_slurm(i: int, port: int) -> dict:
    """What srun gives task i of a 2-task step on one node (JAX's SLURM detection reads these)."""
    return {"SLURM_JOB_ID": "4242", "SLURM_STEP_NODELIST": "127.0.0.1", "SLURM_NTASKS": "2",
            "SLURM_STEP_NUM_TASKS": "2", "SLURM_NNODES": "1", "SLURM_STEP_NUM_NODES": "1",
            "SLURM_PROCID": str(i), "SLURM_LOCALID": str(i), "JAX_COORDINATOR_PORT": str(port)}


def _spawn_pair(tmp_path: Path, cmd: list[str], env: dict, how=_explicit) -> list[subprocess.Popen]:
    """Two processes of one job, started directly (no launcher); output in tmp_path/pI.txt."""
    port = _free_port()
    procs = []
    for i in range(2):
        out = open(tmp_path / f"p{i}.txt", "w")
        procs.append(subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                      text=True, env={**env, **how(i, port)}))
        out.close()
    return procs


def _wait_for(predicate, timeout: float, procs) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if any(p.poll() is not None for p in procs):
            raise AssertionError("a process ended early")
        time.sleep(0.2)
    raise AssertionError(f"condition not met within {timeout} s")


def _stop(procs) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


# ----------------------------------------------------------------------------- reference


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One process, 4 devices, 12 steps; ``at6`` is a copy of its workdir cut back to step 6."""
    workdir = tmp_path_factory.mktemp("ref")
    results12 = loop.train(tiny(), workdir, experiment=load_experiment(TINY), progress=False)
    at6 = tmp_path_factory.mktemp("ref6") / "run"
    shutil.copytree(workdir, at6)
    steps = Checkpointer(at6 / "checkpoints", async_save=False).all_steps()
    assert 6 in steps, steps  # written with the step-6 evaluation
    for step in steps:
        if step > 6:  # as if the run had stopped after step 6
            shutil.rmtree(at6 / "checkpoints" / str(step))
    records = loop.read_metrics(at6)
    (at6 / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records if r["step"] <= 6))
    eval6 = [r for r in records if r["split"] == "eval" and r["step"] == 6]
    assert len(eval6) == 1
    return SimpleNamespace(workdir=workdir, at6=at6, eval6=eval6[0], results12=results12,
                           state6=_state(at6, 6), state12=_state(workdir, 12))


# ----------------------------------------------------------------------------- equivalence


@needs_gloo
@needs_bash51
def test_two_processes_train_like_one_and_their_checkpoint_restores_in_one(
        tmp_path, reference, cache_dir):
    workdir = tmp_path / "two"
    r = _launch(_env(cache_dir), "--config", f"{TINY}:tiny", "--workdir", str(workdir),
                "--no-progress", "--config.train.steps=6", "--config.train.plots=True")
    assert r.returncode == 0, r.stderr[-4000:]
    assert "[p1] {" in r.stdout and "[launch] all 2 processes finished" in r.stderr
    # Only process 0 announces the run and writes logs, plots and reports.
    assert r.stderr.count("distributed: 2 processes, 2 devices") == 1
    assert "[p0] [jaxvision] distributed: 2 processes" in r.stderr
    records = loop.read_metrics(workdir)
    assert [x["step"] for x in records if x["split"] == "train"] == [2, 4, 6]
    assert [x["step"] for x in records if x["split"] == "eval"] == [6]
    assert (workdir / "curves.png").stat().st_size > 0

    # Same parameters and eval metrics as one process on the same global batch; _state restores
    # the checkpoint the two processes wrote in this single process (4 devices).
    _close(_state(workdir, 6).params, reference.state6.params)
    _close(_state(workdir, 6).model_state, reference.state6.model_state)
    got = _json_of(r.stdout)
    assert got["loss"] == pytest.approx(reference.eval6["loss"], rel=1e-4)
    assert got["accuracy"] == pytest.approx(reference.eval6["accuracy"], abs=1.01 / NUM_EVAL)
    # Eval over two processes counted every example exactly once (padding masked).
    support = [row["support"] for row in json.loads((workdir / "per_class.json").read_text())]
    assert sum(support) == NUM_EVAL



@needs_gloo
@needs_bash51
def test_one_process_checkpoint_resumes_in_two_processes(tmp_path, reference, cache_dir):
    workdir = tmp_path / "resumed"
    shutil.copytree(reference.at6, workdir)
    # Two local devices per process this time: the mesh has 4 devices over 2 processes.
    r = _launch(_env(cache_dir), "--config", f"{TINY}:tiny", "--workdir", str(workdir),
                "--no-progress", devices=2)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "[p0] resumed from step 6" in r.stderr
    _close(_state(workdir, 12).params, reference.state12.params)
    _close(_state(workdir, 12).model_state, reference.state12.model_state)
    got = _json_of(r.stdout)
    assert got["loss"] == pytest.approx(reference.results12["loss"], rel=1e-4)
    assert got["accuracy"] == pytest.approx(reference.results12["accuracy"], abs=1.01 / NUM_EVAL)
    assert _json_of(r.stdout, process=1) == got  # every process computed the same global metrics
    # One writer: process 0 appended steps 8..12 after the single process's 2..6, once each.
    records = loop.read_metrics(workdir)
    assert [x["step"] for x in records if x["split"] == "train"] == [2, 4, 6, 8, 10, 12]


@needs_gloo
@needs_bash51
def test_two_processes_share_one_prediction_path_evaluators_ensembles_probes(
        tmp_path, reference, cache_dir):
    """Per-example outputs are gathered from both processes: the retrieval evaluator (from the
    workdir alone) and an ensemble give what one process gives. (``probe`` reads the same
    ``loop.predict`` path; its one-process result is tested in tests/tools/test_probe.py.)"""
    from jaxvision.tools import ensemble
    ret = tmp_path / "retrieval"
    loop.train(get_config(RETRIEVAL), ret, progress=False)
    members = [str(reference.workdir), str(reference.at6)]
    # Both commands in one launch: each process imports jax and joins the job once (the second
    # command's distributed.initialize returns at once), saving a second launch's start-up.
    commands = [["eval", "--workdir", str(ret)],
                ["ensemble", "--workdir", members[0], "--workdir", members[1]]]
    script = ("import sys\nfrom jaxvision.__main__ import main\n"
              f"sys.exit(main({commands[0]!r}) or main({commands[1]!r}))")
    r = _launch(_env(cache_dir), "--", sys.executable, "-c", script)
    assert r.returncode == 0, r.stderr[-4000:]

    want = loop.evaluate_checkpoint(get_config(RETRIEVAL), ret)
    got = _json_of(r.stdout, which=0)
    assert _json_of(r.stdout, process=1, which=0) == got
    for k in ("recall_at_1", "recall_at_2", "recall_at_4", "recall_at_8", "map_at_r",
              "retrieval_queries", "macro_f1"):
        assert got[k] == pytest.approx(want[k], abs=1e-9), k

    want = ensemble.ensemble_from_specs(None, members)
    got = _json_of(r.stdout)
    assert got["num_examples"] == want["num_examples"] == NUM_EVAL
    assert got["accuracy"] == pytest.approx(want["accuracy"], abs=1.01 / NUM_EVAL)
    assert got["nll"] == pytest.approx(want["nll"], rel=1e-4)



def test_pmap_refuses_several_processes(monkeypatch):
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    with pytest.raises(loop.TrainingError, match="strategy='pmap' runs in one process only"):
        loop.build(tiny("parallel.strategy='pmap'"), load_experiment(TINY))


# ----------------------------------------------------------------------------- failures


@needs_gloo
def test_sigterm_to_one_process_stops_all_at_the_same_step_with_a_checkpoint(tmp_path, cache_dir):
    # Started the way launch/slurm.sbatch starts tasks (srun -> launch/srun.sh), with the
    # variables srun would set: JAX's SLURM detection finds the coordinator and process ids.
    workdir = tmp_path / "run"
    cmd = ["bash", str(ROOT / "launch" / "srun.sh"), "--config", f"{TINY}:tiny", "--workdir",
           str(workdir), "--config.train.steps=100000", "--config.train.eval_every=0",
           "--config.train.checkpoint_every=0"]
    procs = _spawn_pair(tmp_path, cmd, _env(cache_dir), how=_fake_slurm)
    try:
        metrics = workdir / "metrics.jsonl"
        _wait_for(lambda: metrics.exists() and metrics.stat().st_size > 0, 180, procs)
        procs[1].send_signal(signal.SIGTERM)  # only one process is told
        codes = [p.wait(timeout=60) for p in procs]
    finally:
        _stop(procs)
    logs = [(tmp_path / f"p{i}.txt").read_text() for i in range(2)]
    assert codes == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    outs = [json.loads([x for x in log.splitlines() if x.startswith("{")][-1]) for log in logs]
    assert outs[0] == outs[1] and outs[0]["preempted"] is True
    assert "distributed: 2 processes" in logs[0] and "127.0.0.1" in logs[0]  # found via SLURM
    assert Checkpointer(workdir / "checkpoints", async_save=False).latest_step() == outs[0]["step"]


@needs_gloo
def test_a_killed_process_ends_the_other_within_a_bounded_time(tmp_path, cache_dir):
    workdir = tmp_path / "run"
    env = _env(cache_dir, JAXVISION_HEARTBEAT_TIMEOUT="4")
    procs = _spawn_pair(tmp_path, _train_cmd(workdir, "--config.train.steps=100000",
                                             "--config.train.eval_every=0",
                                             "--config.train.checkpoint_every=0"), env)
    try:
        # Once the job runs (both processes connected), process 1 dies without a word.
        _wait_for(lambda: "[jaxvision] distributed: 2 processes" in (tmp_path / "p0.txt").read_text(),
                  180, procs)
        procs[1].kill()
        start = time.time()
        code = procs[0].wait(timeout=60)
        took = time.time() - start
    finally:
        _stop(procs)
    log = (tmp_path / "p0.txt").read_text()
    assert code != 0, log[-3000:]
    assert took < 60
    assert "another task died" in log or "heartbeat" in log, log[-3000:]


@needs_gloo
def test_unreachable_coordinator_fails_fast_with_a_clear_message(tmp_path, cache_dir):
    port = _free_port()  # nobody serves it
    env = _env(cache_dir, JAXVISION_COORDINATOR=f"127.0.0.1:{port}", JAXVISION_NUM_PROCESSES="2",
               JAXVISION_PROCESS_ID="1", JAXVISION_INIT_TIMEOUT="2")
    start = time.time()
    r = subprocess.run(_train_cmd(tmp_path / "run"), cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=60)
    assert time.time() - start < 60
    assert r.returncode == 1, r.stderr[-2000:]
    # It names the address it could not reach and what to check, without a traceback.
    assert f"cannot reach the coordinator at 127.0.0.1:{port} within JAXVISION_INIT_TIMEOUT=2 s" in r.stderr
    assert "process 0 is running" in r.stderr and "Traceback" not in r.stderr


# ----------------------------------------------------------------------------- launcher


_CHILD = """
import os, signal, sys, time
i = int(os.environ["JAXVISION_PROCESS_ID"])
print(f"hello from {i} of {os.environ['JAXVISION_NUM_PROCESSES']} pid {os.getpid()}", flush=True)
if sys.argv[1] == "fail":
    if i == 1:
        time.sleep(0.5)
        sys.exit(3)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a stubborn process: needs the SIGKILL
else:
    signal.signal(signal.SIGTERM, lambda *a: (print(f"stopping {i}", flush=True), sys.exit(0)))
time.sleep(60)
"""


@needs_bash51
def test_launcher_stops_the_others_when_one_fails(cache_dir):
    start = time.time()
    r = _launch(_env(cache_dir, JAXVISION_KILL_GRACE="1"), "--", sys.executable, "-c", _CHILD,
                "fail", timeout=60)
    assert time.time() - start < 30
    assert r.returncode == 3, r.stderr
    assert "[p0] hello from 0 of 2" in r.stdout and "[p1] hello from 1 of 2" in r.stdout
    assert "process 1" in r.stderr and "failed with status 3" in r.stderr
    assert "SIGKILL" in r.stderr
    pid0 = int(r.stdout.split("[p0] hello from 0 of 2 pid ")[1].split()[0])
    with pytest.raises(ProcessLookupError):
        os.kill(pid0, 0)


@needs_bash51
def test_launcher_forwards_sigterm_and_rejects_bad_flags(tmp_path, cache_dir):
    out = tmp_path / "out.txt"
    with open(out, "w") as f:
        proc = subprocess.Popen(["bash", str(LAUNCHER), "--num_processes", "2", "--",
                                 sys.executable, "-c", _CHILD, "serve"], cwd=ROOT, text=True,
                                env=_env(cache_dir), stdout=f, stderr=subprocess.STDOUT)
    try:
        _wait_for(lambda: out.read_text().count("hello from") == 2, 30, [proc])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        _stop([proc])
    text = out.read_text()
    assert "[p0] stopping 0" in text and "[p1] stopping 1" in text

    r = _launch(_env(cache_dir), "--config", f"{TINY}:tiny", num=0)
    assert r.returncode == 2 and "--num_processes N is required" in r.stderr


# ----------------------------------------------------------------------------- settings


def test_settings_from_env():
    s = distributed.settings_from_env
    assert s({}).mode == "off"
    explicit = s({"JAXVISION_COORDINATOR": "10.0.0.1:1234", "JAXVISION_NUM_PROCESSES": "4",
                  "JAXVISION_PROCESS_ID": "3", "JAXVISION_LOCAL_DEVICE_IDS": "0,1",
                  "JAXVISION_HEARTBEAT_TIMEOUT": "7"})
    assert (explicit.mode, explicit.coordinator, explicit.num_processes, explicit.process_id,
            explicit.local_device_ids, explicit.heartbeat_timeout) == (
        "explicit", "10.0.0.1:1234", 4, 3, (0, 1), 7)
    one = {"JAXVISION_COORDINATOR": "h:1", "JAXVISION_NUM_PROCESSES": "1", "JAXVISION_PROCESS_ID": "0"}
    assert s(one).mode == "off"
    assert s({**one, "JAXVISION_NUM_PROCESSES": "2", "JAXVISION_DISTRIBUTED": "off"}).mode == "off"
    slurm = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n[1-2]", "SLURM_NTASKS": "2",
             "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}
    assert (s(slurm).mode, s(slurm).detection) == ("cluster", None)
    assert s({**slurm, "SLURM_NTASKS": "1"}).mode == "off"  # one task: a plain run
    assert (s({"JAXVISION_DISTRIBUTED": "gcetpu"}).mode,
            s({"JAXVISION_DISTRIBUTED": "gcetpu"}).detection) == ("cluster", "gcetpu")
    assert s({"JAXVISION_DISTRIBUTED": "cluster", "JAXVISION_LOCAL_DEVICE_IDS": "0,1,2"}
             ).local_device_ids == (0, 1, 2)


@pytest.mark.parametrize("env,match", [
    ({"JAXVISION_COORDINATOR": "h:1"}, "JAXVISION_NUM_PROCESSES, JAXVISION_PROCESS_ID not"),
    ({"JAXVISION_COORDINATOR": "nohost", "JAXVISION_NUM_PROCESSES": "2",
      "JAXVISION_PROCESS_ID": "0"}, "must be HOST:PORT"),
    ({"JAXVISION_COORDINATOR": "h:1", "JAXVISION_NUM_PROCESSES": "2",
      "JAXVISION_PROCESS_ID": "2"}, "JAXVISION_PROCESS_ID=2 must be < JAXVISION_NUM_PROCESSES=2"),
    ({"JAXVISION_COORDINATOR": "h:1", "JAXVISION_NUM_PROCESSES": "two",
      "JAXVISION_PROCESS_ID": "0"}, "JAXVISION_NUM_PROCESSES='two' is not an integer"),
    ({"JAXVISION_INIT_TIMEOUT": "0"}, "JAXVISION_INIT_TIMEOUT=0 must be >= 1"),
    ({"JAXVISION_DISTRIBUTED": "yes"}, "expected 'auto', 'off', 'cluster'"),
    ({"JAXVISION_CPU_COLLECTIVES": "nccl"}, "JAXVISION_CPU_COLLECTIVES='nccl'"),
    ({"JAXVISION_DISTRIBUTED": "cluster", "JAXVISION_LOCAL_DEVICE_IDS": "0;1"}, "comma-separated"),
])
def test_bad_settings_name_the_variable(env, match):
    with pytest.raises(distributed.DistributedError, match=match):
        distributed.settings_from_env(env)


@settings(max_examples=30, deadline=None)
@given(num=st.integers(2, 4096), data=st.data(), port=st.integers(1, 65535),
       host=st.sampled_from(["127.0.0.1", "node-7.cluster", "[::1]"]))
def test_explicit_settings_round_trip(num, data, port, host):
    pid = data.draw(st.integers(0, num - 1))
    got = distributed.settings_from_env({"JAXVISION_COORDINATOR": f"{host}:{port}",
                                         "JAXVISION_NUM_PROCESSES": str(num),
                                         "JAXVISION_PROCESS_ID": str(pid)})
    assert (got.mode, got.coordinator, got.num_processes, got.process_id) == (
        "explicit", f"{host}:{port}", num, pid)


def test_initialize_is_a_no_op_alone_and_refuses_after_the_backend_started():
    assert distributed.initialize({}).mode == "off"
    jax.devices()  # the backend is running from here on
    with pytest.raises(distributed.DistributedError, match="before any jax.devices"):
        distributed.initialize({"JAXVISION_COORDINATOR": "127.0.0.1:1",
                                "JAXVISION_NUM_PROCESSES": "2", "JAXVISION_PROCESS_ID": "1"})
