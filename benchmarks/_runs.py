"""What the run-table benchmarks (``detection.py``, ``segmentation.py``) read from a finished
run's ``metrics.jsonl``, and the markdown table they print."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence


def run_row(workdir: Path, config: Any, keys: Sequence[str]) -> dict:
    """One row: ``steps``, ``train_min`` (wall time of the whole run, evaluations and
    checkpoints included), ``img_s`` (images/s between the first and last train records), the
    last evaluation's ``keys`` and ``eval_s`` (its eval record's time minus the train record's
    of the same step: the first evaluation of a run includes compiling the evaluators)."""
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r.get("split") == "train"]
    last = [r for r in rows if keys[0] in r][-1]
    ips = (train[-1]["step"] - train[0]["step"]) * int(config.train.batch_size) / max(
        train[-1]["time"] - train[0]["time"], 1e-9)
    before = [r for r in train if r["step"] == last["step"]]
    return {"run": workdir.name, "model": str(config.model.name), "steps": train[-1]["step"],
            "train_min": train[-1]["time"] / 60, "img_s": ips, **{k: last[k] for k in keys},
            "eval_s": last["time"] - before[0]["time"] if before else float("nan")}


def curve(workdir: Path, key: str) -> list[tuple[int, float, float]]:
    """``(step, minutes, value)`` of every evaluation of ``key``."""
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["time"] / 60, r[key]) for r in rows if key in r]


def markdown(rows: Sequence[dict], cols: Sequence[str]) -> str:
    """A markdown table of ``rows`` (floats with 3 decimals; missing cells empty)."""
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[c]:.3f}" if isinstance(r.get(c), float) else str(r.get(c, ""))
                                        for c in cols) + " |")
    return "\n".join(lines)
