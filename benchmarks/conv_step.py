"""Train step with the project's convolution (``jaxvision.ops.conv``) vs XLA's kernel gradient.

    python benchmarks/conv_step.py [--rounds 3] [--steps 10]

For each case, ``python -m jaxvision bench`` runs in a fresh process with
``JAXVISION_CONV_GRAD=xla`` (plain ``lax.conv_general_dilated`` gradients, what a plain Flax
model gets; the default) and with ``JAXVISION_CONV_GRAD=auto`` (the per-shape measured rule),
alternating, ``--rounds`` times each, so machine
noise hits both alike. Prints median images/s, the ratio, and median compile seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CASES = {
    "default (small CNN 48x48, b64)": ["--config", "experiments/classification.py:default"],
    "LeNet-5 28x28 b128": ["--config", "experiments/classification.py:lenet_mnist",
                           "--config.data.name=procedural", "--config.data.keys=('image', 'label')",
                           "--config.data.procedural.image_size=28",
                           "--config.data.eval_split=test", "--config.data.train_pp=''",
                           "--config.data.eval_pp=''", "--config.model.pad_to_32=True"],
    "ResNet-20 CIFAR 32x32 b128": ["--config", "experiments/classification.py:resnet18_cifar10",
                                   "--config.data.name=procedural",
                                   "--config.data.keys=('image', 'label')",
                                   "--config.data.procedural.image_size=32",
                                   "--config.data.train_pp=''", "--config.model.name=resnet20"],
    "ResNet-18 CIFAR 32x32 b128": ["--config", "experiments/classification.py:resnet18_cifar10",
                                   "--config.data.name=procedural",
                                   "--config.data.keys=('image', 'label')",
                                   "--config.data.procedural.image_size=32",
                                   "--config.data.train_pp=''"],
}


def _bench(args: list[str], steps: int, xla: bool) -> dict:
    env = {**os.environ, "JAXVISION_CONV_GRAD": "xla" if xla else "auto"}
    out = subprocess.run([sys.executable, "-m", "jaxvision", "bench", "--steps", str(steps), *args],
                         env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--cases", nargs="+", default=list(CASES))
    a = p.parse_args()
    print("| case | XLA kernel grad img/s | measured rule ('auto') img/s | ratio | "
          "compile s (XLA / auto) |")
    print("|---|---:|---:|---:|---:|")
    for case in a.cases:
        runs = {True: [], False: []}
        for _ in range(a.rounds):
            for xla in (True, False):
                runs[xla].append(_bench(CASES[case], a.steps, xla))
        ips = {k: statistics.median(r["images_per_sec"] for r in v) for k, v in runs.items()}
        comp = {k: statistics.median(r["compile_s"] for r in v) for k, v in runs.items()}
        print(f"| {case} | {ips[True]:,.0f} | {ips[False]:,.0f} | {ips[False] / ips[True]:.2f}x | "
              f"{comp[True]:.1f} / {comp[False]:.1f} |", flush=True)


if __name__ == "__main__":
    main()
