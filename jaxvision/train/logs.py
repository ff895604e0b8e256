"""Where metrics go: ``metrics.jsonl``, TensorBoard event files, the console, and final plots.

Only process 0 writes (``enabled=False`` elsewhere), so a multi-host job writes one set of logs.
Each ``metrics.jsonl`` line is one JSON object with ``step``, ``split`` (``train`` or ``eval``),
``time`` (seconds since the run started) and the scalar metric values.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np


def _scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        if np.ndim(v) == 0 and isinstance(v, (int, float, np.number, np.ndarray)):
            out[k] = float(v)
    return out


class MetricsWriter:
    """Appends metrics to ``workdir/metrics.jsonl`` and TensorBoard; shows a progress bar."""

    def __init__(self, workdir: str | Path, *, total_steps: int, initial_step: int = 0,
                 enabled: bool = True, progress: bool = True):
        self.workdir = Path(workdir)
        self.enabled = enabled
        self._start = time.time()
        self._tb = None
        self._bar = None
        if not enabled:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.workdir / "metrics.jsonl", "a", buffering=1)
        try:
            from tensorboardX import SummaryWriter
            # On resume, events after the restored step (from a run that went further than its
            # last checkpoint) are purged, as metrics.jsonl is truncated.
            self._tb = SummaryWriter(str(self.workdir / "tensorboard"),
                                     purge_step=initial_step + 1 if initial_step else None)
        except ImportError:  # TensorBoard logs are a convenience; jsonl is the record
            self._tb = None
        if progress:
            from tqdm import tqdm
            self._bar = tqdm(total=total_steps, initial=initial_step, unit="step",
                             dynamic_ncols=True, file=sys.stderr, disable=None)

    def write(self, step: int, split: str, metrics: Mapping[str, Any]) -> dict:
        """Writes one record and returns it (with ``step``, ``split`` and ``time``)."""
        record = {"step": int(step), "split": split, "time": round(time.time() - self._start, 3)}
        record.update({k: (v if math.isfinite(v) else str(v)) for k, v in _scalars(metrics).items()})
        if not self.enabled:
            return record
        self._jsonl.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in _scalars(metrics).items():
                self._tb.add_scalar(f"{split}/{k}", v, step)
        if self._bar is not None:
            shown = {k: f"{v:.4g}" for k, v in record.items() if k not in ("step", "split", "time")}
            self._bar.set_postfix({f"{split[:2]}_{k}": v for k, v in list(shown.items())[:4]},
                                  refresh=False)
        return record

    def advance(self, steps: int) -> None:
        if self._bar is not None:
            self._bar.update(steps)

    def message(self, text: str) -> None:
        """A line on the console that does not break the progress bar."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        self._jsonl.close()


def read_metrics(workdir: str | Path) -> list[dict]:
    """All records of ``workdir/metrics.jsonl`` (empty if there is none). A line that is not a
    JSON object (cut short by a crash mid-write) is skipped with a warning."""
    path = Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    records = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict):
            records.append(record)
        else:
            warnings.warn(f"{path}:{number} is not a JSON record; skipped.", stacklevel=2)
    return records


def truncate_metrics(workdir: str | Path, step: int) -> None:
    """Drops the records of ``workdir/metrics.jsonl`` after ``step`` (atomically: a new file
    renamed over the old one)."""
    path = Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return
    records = read_metrics(workdir)
    kept = [r for r in records if int(r.get("step", 0)) <= step]
    if len(kept) == len(records):
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    os.replace(tmp, path)
