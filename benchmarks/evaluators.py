"""Evaluation time per evaluator kind on one trained checkpoint, side by side in one process.

    python benchmarks/evaluators.py [--config experiments/classification.py:default]
                                    [--steps 60] [--repeats 7] [--workdir /tmp/jv_eval_bench]

Trains ``--steps`` steps once (skipped when the workdir has a checkpoint), then times a full
pass over the eval split for: the default ``metrics`` evaluator (device sums), a ``confusion``
evaluator (per-example argmax gathered to the host) and a ``retrieval`` evaluator over the
logits (every logit row gathered, Recall@K on the host). Prints a markdown table: median and
min seconds per pass, examples/s, and the first pass (compile included).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np

from jaxvision.config import get_config
from jaxvision.evaluators import eval_config
from jaxvision.train import loop


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="experiments/classification.py:default")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--workdir", default="/tmp/jv_eval_bench")
    args = p.parse_args()
    base = [f"train.steps={args.steps}", "train.eval_every=0", "train.checkpoint_every=0",
            "optim.warmup_steps=0"]
    config = get_config(args.config, base)
    if not (Path(args.workdir) / "checkpoints").is_dir():
        loop.train(config, args.workdir, progress=False)
    config.evals = ml_collections.ConfigDict(dict(
        a_metrics=eval_config("metrics"),
        b_confusion=eval_config("confusion"),
        c_retrieval=eval_config("retrieval", embedding="logits", label="label")))
    config.train.best_metric = ""
    run = loop.build(config, loop.resolve_experiment(config), abstract=True)
    (restored,) = loop.restore_checkpoints(run, args.workdir, ["latest"])
    state = run.strategy.put_state(restored.state)
    n = len(run.eval_loader.source) if hasattr(run.eval_loader, "source") else None
    rows = []
    for i, ev in enumerate(run.evaluators):
        t0 = time.perf_counter()
        loop.evaluate(run, state, [i])
        first = time.perf_counter() - t0
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            loop.evaluate(run, state, [i])
            times.append(time.perf_counter() - t0)
        rows.append((ev.name, ev.kind, first, float(np.median(times)), min(times)))
    print(f"config {args.config}, eval split {config.data.eval_split} ({n} examples), "
          f"eval batch {config.train.eval_batch_size}, {jax.device_count()} {jax.default_backend()} "
          f"device(s), {args.repeats} repeats")
    print("| evaluator | kind | first pass s (compile) | median s | min s | examples/s (median) |")
    print("|---|---|---:|---:|---:|---:|")
    for name, kind, first, med, low in rows:
        rate = f"{n / med:,.0f}" if n else "-"
        print(f"| {name} | {kind} | {first:.3f} | {med:.3f} | {low:.3f} | {rate} |")


if __name__ == "__main__":
    main()
