"""Fixtures shared by the core's tests."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def endless_trainer():
    """``start(workdir) -> Popen``: a ``train`` of the tiny config that would run 100,000 steps,
    returned once it has logged (compiled and trained); stdout and stderr are pipes."""
    procs = []

    def start(workdir: Path) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jaxvision", "train", "--config",
             "tests/train/tiny_experiment.py:tiny", "--workdir", str(workdir), "--no-progress",
             "--config.train.steps=100000", "--config.train.checkpoint_every=0",
             "--config.train.eval_every=0"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "JAX_PLATFORMS": "cpu"})
        procs.append(proc)
        metrics = Path(workdir) / "metrics.jsonl"
        deadline = time.time() + 120
        while time.time() < deadline and not (metrics.exists() and metrics.stat().st_size > 0):
            time.sleep(0.2)
        assert metrics.exists(), proc.communicate()[1]
        return proc

    yield start
    for proc in procs:   # a failed test must not leave a trainer behind
        if proc.poll() is None:
            proc.kill()
            proc.wait()
