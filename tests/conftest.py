"""Shared test setup: CPU only, several simulated devices, and a persistent compilation cache."""

import os

# Must run before jax initializes its backends (pytest imports conftest first).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
    flags += " --xla_force_host_platform_device_count=4"
# Tests run small shapes, so compiling dominates their time: XLA:CPU without its LLVM
# optimizations compiles about twice as fast (the suite's time halves). Child processes that
# the tests start inherit it. Set XLA_FLAGS to a value with the option to choose otherwise.
if "xla_backend_optimization_level" not in flags:
    flags += " --xla_backend_optimization_level=0"
# XLA:CPU's MLIR fusion emitters compile 2-3x slower than its classic ones at these sizes (a Mask
# R-CNN train step: 6.4 s -> 1.9 s; the detection tests: 111 s -> 63 s).
if "xla_cpu_use_fusion_emitters" not in flags:
    flags += " --xla_cpu_use_fusion_emitters=false"
os.environ["XLA_FLAGS"] = flags.strip()
# Lowering attaches each operation's Python traceback to the program as its location. Tests
# never read them, and without them four of the heaviest test files ran 3-7% faster.
os.environ.setdefault("JAX_TRACEBACK_IN_LOCATIONS_LIMIT", "0")
os.environ.setdefault("JAX_INCLUDE_FULL_TRACEBACKS_IN_LOCATIONS", "0")
# The persistent compilation cache, through jax's environment variables so that the processes
# the tests start (the command line, multi-process runs) share it. Every program is cached, not
# only slow ones: many tests build the same small programs again (a new jit of the same model),
# and a cache hit costs a file read where compiling costs 0.1-0.5 s (train/test_loop.py and
# train/test_reliability.py from a cold cache: 93 s with a 0.5 s threshold, 70 s without one).
_cache = os.environ.get("JAXVISION_COMPILATION_CACHE")
if _cache:
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _cache)
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

from pathlib import Path  # noqa: E402

import jax  # noqa: E402

if _cache:  # in case a plugin imported jax before this file set its environment
    jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs",
                      float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
import pytest  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """The real datasets beside the repo (../shared/data); skips the test when they are absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


def _shrink(config, *, size: int = 32, num: int = 8, steps: int = 6):
    """An experiment config cut down for a test run in place (and returned): ``num`` procedural
    ``size``-px train and eval scenes without augmentation (the same images every step, so the
    loss must fall), batches of ``num``, ``steps`` steps logged each, one eval at the end, no
    warm-up, synchronous checkpoints, no end-of-run figures (``train.plots``; a test that checks
    one turns them on) and without the ``eval`` loss evaluator (each evaluator costs a
    compilation)."""
    p = config.data.procedural
    p.image_size, p.num_train, p.num_eval = size, num, num
    config.data.input_shape = (size, size, 3)
    config.data.train_pp = ""
    config.train.batch_size = config.train.eval_batch_size = num
    config.train.steps, config.train.log_every = steps, 1
    config.train.eval_every = config.train.checkpoint_every = 0
    config.train.async_checkpoint = False
    config.train.plots = False
    config.optim.warmup_steps = 0
    if "eval" in config.evals:
        del config.evals["eval"]
    return config


@pytest.fixture(scope="session")
def shrink():
    """``shrink(config, size=32, num=8, steps=6)``: a task config cut down for a test run."""
    return _shrink
