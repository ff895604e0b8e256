"""What a logged step reads back under pmap: the non-finite flag, the learning rate and the
metrics, read the way the loop did before session 13 (``Strategy.unreplicate``, an ``x[0]`` per
leaf of the whole state) and the way it does now (``Strategy.host`` on those values only).

    python benchmarks/host_reads.py [--model resnet18] [--devices 4] [--reads 20]

Builds the run of ``experiments/classification.py:default`` with ``--model`` (32-px inputs,
batch 8), takes one pmap train step on ``--devices`` simulated CPU devices so that the state is
a pmap result, then times each way: the first read (it compiles the slices ``x[0]`` needs, one
per leaf shape) and the median of ``--reads`` more. Prints a table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--devices", type=int, default=4)
    p.add_argument("--reads", type=int, default=20)
    a = p.parse_args()
    # Before jax starts: simulated CPU devices.
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_force_host_platform_device_count={a.devices}").strip()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import jax
    import numpy as np
    from jaxvision import optim
    from jaxvision.config import get_config
    from jaxvision.experiment import load_experiment
    from jaxvision.train import loop
    from jaxvision.train.step import make_train_step

    spec = "experiments/classification.py"
    config = get_config(f"{spec}:default", [
        "parallel.strategy='pmap'", f"model.name='{a.model}'", "model.widths=(16, 32, 64, 128)",
        "optim.warmup_steps=0", "train.batch_size=8", "train.eval_batch_size=8",
        "data.procedural.num_train=16", "data.procedural.num_eval=8",
        "data.input_shape=(32, 32, 3)", "data.procedural.image_size=32", "data.train_pp=''"])
    run = loop.build(config, load_experiment(spec))
    s = run.strategy
    step = s.compile_train(make_train_step(run.exp, run.model, run.optimizer, config,
                                           s.axis_name, run.setup.static))
    state, metrics = step(s.put_state(run.state), s.put_batch(next(iter(run.train_loader))),
                          run.setup_data)
    jax.block_until_ready(state)

    def before():
        bad = int(jax.device_get(s.unreplicate(state).bad_step))
        lr = optim.current_lr(s.unreplicate(state).opt_state)
        return bad, lr, jax.device_get(s.unreplicate(metrics))

    def after():
        bad = int(s.host(state.bad_step))
        lr = s.host(optim.injected_hyperparams(state.opt_state)).get("learning_rate")
        return bad, float(lr), s.host(metrics)

    leaves = len(jax.tree.leaves(state))
    print(f"jax {jax.__version__}, {a.model}, pmap on {a.devices} CPU devices, {leaves} state "
          f"leaves, {os.cpu_count()} CPUs\n")
    print(f"| read | first s | median ms of the next {a.reads} |")
    print("|---|---:|---:|")
    for name, fn in (("unreplicate (before)", before), ("host (now)", after)):
        t0 = time.perf_counter()
        first = fn()
        t_first = time.perf_counter() - t0
        times = []
        for _ in range(a.reads):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        print(f"| {name} | {t_first:.2f} | {1000 * statistics.median(times):.1f} |", flush=True)
        assert first[0] == -1 and np.isfinite(first[1])


if __name__ == "__main__":
    main()
