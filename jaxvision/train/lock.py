"""One trainer per workdir: an exclusive lock on ``workdir/.jaxvision.lock``.

The lock is an ``fcntl.flock`` on that file, which the kernel releases when the holder exits,
however it exits; the file holds the holder's host, PID and start time for the message a second
trainer gets. Content left in an unlocked file means the holder died without releasing it (a
stale lock): the next trainer takes it over with a warning. In a multi-process job the lock
belongs to the job: process 0 takes it and tells the others whether it could. The lock is
advisory and local to the filesystem's locking: two hosts on a filesystem without ``flock``
support (some NFS setups) are not protected from each other.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket
import warnings
from pathlib import Path

import jax
import numpy as np

LOCK_FILE = ".jaxvision.lock"


class WorkdirBusyError(RuntimeError):
    """Another trainer holds the workdir; the message names it and what to do."""


def _describe(text: str) -> str:
    try:
        info = json.loads(text)
        return f"host {info['host']}, pid {info['pid']}, started {info['started']}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown"


class WorkdirLock:
    """Context manager: holds ``workdir``'s lock for the duration (see the module docstring).

    Creates ``workdir`` if needed. Raises ``WorkdirBusyError`` when another trainer holds it."""

    def __init__(self, workdir: str | Path):
        self.workdir = Path(workdir)
        self.path = self.workdir / LOCK_FILE
        self._fd: int | None = None

    def _acquire(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(os.pread(fd, 4096, 0).decode(errors="replace"))
            os.close(fd)
            raise WorkdirBusyError(
                f"{self.workdir} is in use by another trainer ({holder}). Wait for it to finish, "
                f"stop it (SIGTERM or Ctrl-C saves a checkpoint; then train again here to "
                f"resume), or use another --workdir.") from None
        previous = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        if previous:
            warnings.warn(f"{self.path}: took over a stale lock ({_describe(previous)}): that "
                          "trainer ended without releasing it.", stacklevel=3)
        info = {"host": socket.gethostname(), "pid": os.getpid(),
                "started": datetime.datetime.now().isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        os.fsync(fd)
        self._fd = fd

    def __enter__(self) -> "WorkdirLock":
        error = None
        if jax.process_index() == 0:
            try:
                self._acquire()
            except (WorkdirBusyError, OSError) as e:
                error = e
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            ok = int(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
            if not ok and error is None:
                raise WorkdirBusyError(f"process 0 could not take the lock of {self.workdir}; "
                                       "see its message.")
        if error is not None:
            raise error
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            # An empty file marks a clean release (content left behind means a stale lock).
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
