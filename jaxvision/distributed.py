"""Multi-process runs: ``initialize()`` starts JAX's distributed runtime from the environment.

Call it once, before anything touches JAX devices (``python -m jaxvision train/eval/bench`` do).
What it does depends on the environment:

* **Explicit** (``launch/multiprocess_local.sh``, or any launcher of your own)::

      JAXVISION_COORDINATOR=host:port   process 0's address; it serves the coordinator there
      JAXVISION_NUM_PROCESSES=N         how many processes take part
      JAXVISION_PROCESS_ID=i            this process, 0 <= i < N
      JAXVISION_LOCAL_DEVICE_IDS=0,1    optional: the local GPUs this process uses (also
                                        honoured with cluster detection, e.g. one SLURM task per
                                        node using all its GPUs)

* **Cluster detection** by JAX: a SLURM step or an Open MPI job with more than one task is
  recognised automatically; ``JAXVISION_DISTRIBUTED=cluster`` calls
  ``jax.distributed.initialize()`` without arguments wherever JAX can detect the cluster (TPU
  VMs and pod slices, Kubernetes, SLURM, Open MPI), and ``JAXVISION_DISTRIBUTED=<method>`` names
  one of JAX's named detection methods (``slurm``, ``ompi``, ``mpi4py``, ``gcetpu``, ``gketpu``).
* Nothing set: a plain single-process run; nothing happens. ``JAXVISION_DISTRIBUTED=off``
  forces that even inside a cluster job.

Failures end the job instead of hanging it: every process gives up after
``JAXVISION_INIT_TIMEOUT`` seconds (default 300) when the others do not all connect, and once
running, a process that stops sending heartbeats for ``JAXVISION_HEARTBEAT_TIMEOUT`` seconds
(default 100; a killed process is often noticed sooner, when its connections drop) makes the
runtime terminate every other process with a message naming the dead task.
``JAXVISION_SHUTDOWN_TIMEOUT`` (default 300) bounds how long a finished process waits for the
others at exit. On CPU, cross-process collectives use gloo (``JAXVISION_CPU_COLLECTIVES``:
``gloo`` or ``mpi``).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
import time
from typing import Mapping

import jax

ENV_MODE = "JAXVISION_DISTRIBUTED"
ENV_COORDINATOR = "JAXVISION_COORDINATOR"
ENV_NUM_PROCESSES = "JAXVISION_NUM_PROCESSES"
ENV_PROCESS_ID = "JAXVISION_PROCESS_ID"
ENV_LOCAL_DEVICE_IDS = "JAXVISION_LOCAL_DEVICE_IDS"
ENV_INIT_TIMEOUT = "JAXVISION_INIT_TIMEOUT"
ENV_HEARTBEAT_TIMEOUT = "JAXVISION_HEARTBEAT_TIMEOUT"
ENV_SHUTDOWN_TIMEOUT = "JAXVISION_SHUTDOWN_TIMEOUT"
ENV_CPU_COLLECTIVES = "JAXVISION_CPU_COLLECTIVES"

# JAX's names for its cluster detection methods (jax._src.clusters, version 0.10; Kubernetes has
# no name and is reached through 'cluster').
DETECTION_METHODS = ("slurm", "ompi", "mpi4py", "gcetpu", "gketpu")
CPU_COLLECTIVES = ("gloo", "mpi")


class DistributedError(RuntimeError):
    """The distributed runtime cannot start; the message says which variable or peer and what to do."""


@dataclasses.dataclass(frozen=True)
class Settings:
    """How to start the runtime, read from the environment by ``settings_from_env``.

    ``mode`` is 'off' (single process), 'explicit' (coordinator, num_processes and process_id
    given) or 'cluster' (JAX detects them; ``detection`` is None for any method, or one name).
    """

    mode: str
    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    local_device_ids: tuple[int, ...] | None = None
    detection: str | None = None
    init_timeout: int = 300
    heartbeat_timeout: int = 100
    shutdown_timeout: int = 300
    cpu_collectives: str = "gloo"


def _int_var(env: Mapping[str, str], name: str, default: int | None, minimum: int) -> int | None:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise DistributedError(f"{name}={raw!r} is not an integer; set e.g. {name}={max(minimum, 1)}.") from None
    if value < minimum:
        raise DistributedError(f"{name}={value} must be >= {minimum}.")
    return value


def _cluster_job_with_several_tasks(env: Mapping[str, str]) -> bool:
    """True inside a SLURM step, an Open MPI job or a GKE TPU job that runs more than one task."""
    slurm = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
    if all(k in env for k in slurm) and env["SLURM_NTASKS"].isdigit() and int(env["SLURM_NTASKS"]) > 1:
        return True
    ompi = env.get("OMPI_COMM_WORLD_SIZE", "")
    if ompi.isdigit() and int(ompi) > 1 and "OMPI_MCA_orte_hnp_uri" in env:
        return True
    hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
    return len(hosts) > 1


def settings_from_env(env: Mapping[str, str] | None = None) -> Settings:
    """Returns the ``Settings`` the environment asks for (see the module docstring).

    Explicit variables win over cluster detection; ``JAXVISION_DISTRIBUTED=off`` wins over both.
    Raises ``DistributedError`` naming the variable when a value is missing or malformed.
    """
    env = os.environ if env is None else env
    collectives = env.get(ENV_CPU_COLLECTIVES, "gloo").strip() or "gloo"
    if collectives not in CPU_COLLECTIVES:
        raise DistributedError(f"{ENV_CPU_COLLECTIVES}={collectives!r}: expected one of {CPU_COLLECTIVES}.")
    common: dict = dict(
        init_timeout=_int_var(env, ENV_INIT_TIMEOUT, 300, 1),
        heartbeat_timeout=_int_var(env, ENV_HEARTBEAT_TIMEOUT, 100, 1),
        shutdown_timeout=_int_var(env, ENV_SHUTDOWN_TIMEOUT, 300, 1),
        cpu_collectives=collectives,
    )
    mode = env.get(ENV_MODE, "auto").strip().lower() or "auto"
    explicit = [k for k in (ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID) if env.get(k, "").strip()]
    if mode == "off":
        return Settings("off", **common)
    if mode not in ("auto", "cluster") and mode not in DETECTION_METHODS:
        raise DistributedError(f"{ENV_MODE}={mode!r}: expected 'auto', 'off', 'cluster' or one of "
                               f"JAX's detection methods {DETECTION_METHODS}.")
    ids = None
    raw_ids = env.get(ENV_LOCAL_DEVICE_IDS, "").strip()
    if raw_ids:
        try:
            ids = tuple(int(x) for x in raw_ids.split(","))
        except ValueError:
            raise DistributedError(f"{ENV_LOCAL_DEVICE_IDS}={raw_ids!r} must be comma-separated "
                                   "integers, e.g. 0,1.") from None
    if explicit:
        missing = [k for k in (ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID) if k not in explicit]
        if missing:
            raise DistributedError(f"{', '.join(explicit)} set but {', '.join(missing)} not: a "
                                   "multi-process run needs all three, e.g. JAXVISION_COORDINATOR="
                                   "10.0.0.1:12345 JAXVISION_NUM_PROCESSES=2 JAXVISION_PROCESS_ID=0.")
        coordinator = env[ENV_COORDINATOR].strip()
        host, _, port = coordinator.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise DistributedError(f"{ENV_COORDINATOR}={coordinator!r} must be HOST:PORT, e.g. "
                                   "127.0.0.1:12345 (the address of process 0).")
        num = _int_var(env, ENV_NUM_PROCESSES, None, 1)
        pid = _int_var(env, ENV_PROCESS_ID, None, 0)
        assert num is not None and pid is not None
        if pid >= num:
            raise DistributedError(f"{ENV_PROCESS_ID}={pid} must be < {ENV_NUM_PROCESSES}={num} "
                                   "(process ids are 0 .. N-1).")
        if num == 1:
            return Settings("off", **common)
        return Settings("explicit", coordinator, num, pid, ids, **common)
    if mode in DETECTION_METHODS:
        return Settings("cluster", local_device_ids=ids, detection=mode, **common)
    if mode == "cluster" or _cluster_job_with_several_tasks(env):
        return Settings("cluster", local_device_ids=ids, **common)
    return Settings("off", **common)


def _wait_for_coordinator(address: str, timeout: float) -> float:
    """Polls ``address`` until it accepts a TCP connection; returns the seconds that took.

    JAX aborts the whole process (no Python exception) when the coordinator cannot be reached, so
    this check lets a worker fail with a message that says what to look at instead.
    """
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    start = time.monotonic()
    last: OSError | None = None
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=2.0):
                return time.monotonic() - start
        except OSError as e:
            last = e
        if time.monotonic() - start >= timeout:
            raise DistributedError(
                f"cannot reach the coordinator at {address} within {ENV_INIT_TIMEOUT}={timeout:g} s "
                f"({last}). Check that process 0 is running and serves {address} "
                f"({ENV_COORDINATOR} must be process 0's address, reachable from this host, and the "
                "port open), or raise the timeout.")
        time.sleep(0.25)


def _detected_coordinator() -> str:
    """The address cluster detection chose (JAX keeps it only in a private module)."""
    try:
        from jax._src import distributed as jax_distributed
        return f"{jax_distributed.global_state.coordinator_address} (cluster detection)"
    except (ImportError, AttributeError):
        return "found by cluster detection"


def _log(message: str) -> None:
    print(f"[jaxvision] {message}", file=sys.stderr, flush=True)


def initialize(env: Mapping[str, str] | None = None, *, verbose: bool = True) -> Settings:
    """Starts JAX's distributed runtime as the environment says; returns the ``Settings`` used.

    A single-process environment returns ``Settings('off')`` and touches nothing. Otherwise this
    must run before any JAX computation or device query, exactly once per process (a second call
    after a successful one returns at once). Process 0 logs the process and device counts.
    Raises ``DistributedError`` on bad settings, when the coordinator cannot be reached, or when
    the JAX backend was already started.
    """
    settings = settings_from_env(env)
    if settings.mode == "off":
        return settings
    if jax.distributed.is_initialized():
        return settings
    from jax._src import xla_bridge  # no public query for "backend started" in this JAX version
    if xla_bridge.backends_are_initialized():
        raise DistributedError("the JAX backend was started before jaxvision.distributed.initialize(); "
                               "call it first, before any jax.devices() or computation.")
    # Cross-process collectives on CPU (tests, CPU clusters); GPU/TPU backends ignore this.
    jax.config.update("jax_cpu_collectives_implementation", settings.cpu_collectives)
    kwargs = dict(initialization_timeout=settings.init_timeout,
                  heartbeat_timeout_seconds=settings.heartbeat_timeout,
                  shutdown_timeout_seconds=settings.shutdown_timeout)
    if settings.mode == "explicit":
        assert settings.coordinator is not None and settings.process_id is not None
        timeout = float(settings.init_timeout)
        if settings.process_id != 0:
            timeout -= _wait_for_coordinator(settings.coordinator, timeout)
        elif verbose:
            _log(f"process 0 of {settings.num_processes}: serving the coordinator on "
                 f"{settings.coordinator}; waiting up to {settings.init_timeout} s for every process")
        kwargs["initialization_timeout"] = max(1, int(round(timeout)))
        jax.distributed.initialize(
            coordinator_address=settings.coordinator, num_processes=settings.num_processes,
            process_id=settings.process_id,
            local_device_ids=list(settings.local_device_ids) if settings.local_device_ids else None,
            # Everything is given: JAX's cluster detection must not override it (e.g. in SLURM).
            cluster_detection_method="deactivate", **kwargs)
    else:
        try:
            jax.distributed.initialize(
                cluster_detection_method=settings.detection,
                local_device_ids=list(settings.local_device_ids) if settings.local_device_ids else None,
                **kwargs)
        except (ValueError, RuntimeError) as e:
            raise DistributedError(
                f"JAX could not detect the cluster ({e}). Outside SLURM/Open MPI/TPU VMs/"
                f"Kubernetes set {ENV_COORDINATOR}, {ENV_NUM_PROCESSES} and {ENV_PROCESS_ID} "
                f"instead, or {ENV_MODE}=off for a single process.") from e
    if verbose and jax.process_index() == 0:
        _log(f"distributed: {jax.process_count()} processes, {jax.device_count()} devices "
             f"({jax.local_device_count()} local, backend {jax.default_backend()}), "
             f"coordinator {settings.coordinator or _detected_coordinator()}")
    return settings


__all__ = ["DistributedError", "Settings", "initialize", "settings_from_env"]
