"""Soak run: a long `train` whose host memory and checkpoint folder must stay flat.

    python benchmarks/soak.py [--steps 5000] [--eval_every 500] [--checkpoint_every 250]
                              [--workdir /tmp/jv_soak] [--config experiments/classification.py:default]

Starts ``python -m jaxvision train`` in a subprocess (a fresh workdir) and samples, whenever the
run's ``metrics.jsonl`` reaches another multiple of ``--eval_every`` steps: the trainer's
resident memory (VmRSS from /proc, so Linux only), the size and count of the checkpoint folders,
and the wall time. Prints a markdown table and the final JSON line of the run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _size_mb(path: Path) -> tuple[float, int]:
    if not path.is_dir():
        return 0.0, 0
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return size / 2**20, len([d for d in path.iterdir() if d.name.isdigit()])


def _last_step(metrics: Path) -> int:
    if not metrics.exists():
        return 0
    step = 0
    for line in metrics.read_text().splitlines():
        try:
            step = max(step, int(json.loads(line)["step"]))
        except (ValueError, KeyError):
            pass
    return step


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="experiments/classification.py:default")
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--eval_every", type=int, default=500)
    p.add_argument("--checkpoint_every", type=int, default=250)
    p.add_argument("--workdir", default="/tmp/jv_soak")
    args = p.parse_args()
    workdir = Path(args.workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    cmd = [sys.executable, "-m", "jaxvision", "train", "--config", args.config, "--workdir",
           str(workdir), "--no-progress", f"--config.train.steps={args.steps}",
           f"--config.train.eval_every={args.eval_every}",
           f"--config.train.checkpoint_every={args.checkpoint_every}",
           f"--config.train.log_every={min(50, args.eval_every)}"]
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    rows, next_mark = [], args.eval_every
    while proc.poll() is None:
        step = _last_step(workdir / "metrics.jsonl")
        if step >= next_mark:
            size, count = _size_mb(workdir / "checkpoints")
            rows.append((step, _rss_mb(proc.pid), size, count, time.time() - t0))
            next_mark += args.eval_every
        time.sleep(1.0)
    out = proc.stdout.read().strip().splitlines()
    print(f"command: {' '.join(cmd)}")
    print("| step | trainer RSS MB | checkpoints MB | checkpoint folders | wall s |")
    print("|---:|---:|---:|---:|---:|")
    for step, rss, size, count, wall in rows:
        print(f"| {step} | {rss:.0f} | {size:.1f} | {count} | {wall:.0f} |")
    print(f"exit {proc.returncode}; last line: {out[-1] if out else ''}")


if __name__ == "__main__":
    main()
