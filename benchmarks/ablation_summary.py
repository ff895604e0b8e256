"""The AlexNet ablation across datasets: per-seed scores, paired differences to the full model,
and one chart of those differences with error bars beside the course's numbers.

    python benchmarks/ablation_summary.py LABEL=DIR [LABEL=DIR ...] [--out benchmarks/ablation_alexnet.png]

Each DIR is an ``ablate`` workdir (its finished runs, read as far as the study got). For every variant and seed the paired
difference is ``score(variant, seed) - score(full, seed)`` (same seed, same data order and
initialisation of the shared layers), so seed-to-seed spread common to both cancels; the chart
shows its mean with the sample std (ddof=1) over seeds as the error bar.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

# Zeiler & Fergus (2014), Table 3 as the course presents it: change of top-5 accuracy on
# ImageNet in points when the layers are removed (../shared/course/002_02d57000710266ba.txt).
COURSE = {"no_fc7": -1.1, "no_fc6_fc7": -5.7, "no_conv3_conv4_fc6_fc7": -33.5}


def read(workdir: Path, metric: str = "accuracy") -> dict[str, dict]:
    """variant -> {'params', 'values' (finished seeds, in seed order), 'seeds' (their numbers),
    'wall_s', 'cpu_s' (summed over the finished runs)}, from each ``VARIANT/seed<k>/result.json`` (so a study
    still running is read as far as it got), in ``ablation.csv``'s variant order when there is
    one (it also gives the parameter counts)."""
    order, params = [], {}
    if (workdir / "ablation.csv").is_file():
        with open(workdir / "ablation.csv") as f:
            for r in csv.DictReader(f):
                order.append(r["variant"])
                params[r["variant"]] = int(r["params"])
    order += sorted(p.name for p in workdir.iterdir() if p.is_dir() and p.name not in order)
    rows = {}
    for name in order:
        done = sorted((int(d.name[4:]), json.loads((d / "result.json").read_text()))
                      for d in (workdir / name).glob("seed*") if (d / "result.json").is_file())
        if done:
            rows[name] = {"params": params.get(name, 0), "seeds": [k for k, _ in done],
                          "values": [r["metrics"][metric] for _, r in done],
                          "wall_s": sum(r["wall_s"] for _, r in done),
                          "cpu_s": sum(r["cpu_s"] for _, r in done)}
    if "full" not in rows:
        raise SystemExit(f"{workdir} has no finished 'full' run to pair with.")
    return rows


def paired(rows: dict[str, dict]) -> dict[str, np.ndarray]:
    """variant -> differences to 'full' on the seeds both finished."""
    full = dict(zip(rows["full"]["seeds"], rows["full"]["values"]))
    return {name: np.asarray([v - full[k] for k, v in zip(r["seeds"], r["values"]) if k in full])
            for name, r in rows.items()}


def table(label: str, rows: dict[str, dict]) -> str:
    diffs = paired(rows)
    seeds = sorted({k for r in rows.values() for k in r["seeds"]})
    n = len(seeds)
    head = (f"| {label} | params | " + " | ".join(f"seed {i}" for i in seeds)
            + " | mean ± std | paired Δ per seed | paired Δ mean ± std | wall min/run | CPU min/run |")
    lines = [head, "|---|---:|" + "---:|" * n + "---:|---|---:|---:|---:|"]
    for name, r in rows.items():
        v = np.asarray(r["values"])
        d = diffs[name]
        sd = lambda a: float(np.std(a, ddof=1)) if len(a) > 1 else float("nan")  # noqa: E731
        got = dict(zip(r["seeds"], v))
        cells = [f"{got[k]:.3f}" if k in got else "" for k in seeds]
        delta = "" if name == "full" else ", ".join(f"{x:+.3f}" for x in d)
        dm = "" if name == "full" else f"{d.mean():+.3f} ± {sd(d):.3f}"
        lines.append(f"| {name} | {r['params']:,} | " + " | ".join(cells)
                     + f" | {v.mean():.3f} ± {sd(v):.3f} | {delta} | {dm} | "
                     f"{r['wall_s'] / len(v) / 60:.1f} | {r['cpu_s'] / len(v) / 60:.1f} |")
    return "\n".join(lines)


def chart(sets: list[tuple[str, dict[str, dict]]], out: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    variants = [v for v in sets[0][1] if v != "full"]
    width = 0.8 / (len(sets) + 1)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    x = np.arange(len(variants))
    for i, (label, rows) in enumerate(sets):
        d = paired(rows)
        means = [100 * d[v].mean() if len(d.get(v, ())) else np.nan for v in variants]
        errs = [100 * np.std(d[v], ddof=1) if len(d.get(v, ())) > 1 else 0 for v in variants]
        counts = sorted({len(d.get(v, ())) for v in variants})
        ax.bar(x + i * width, means, width, yerr=errs, capsize=3,
               label=f"{label} ({'-'.join(map(str, counts))} seeds)")
    ax.bar(x + len(sets) * width, [COURSE.get(v, np.nan) for v in variants], width,
           color="0.6", label="course: ImageNet top-5 (Zeiler & Fergus)")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(x + width * len(sets) / 2, variants, rotation=15)
    ax.grid(axis="y", alpha=0.3)
    ax.set_ylabel("Δ accuracy vs full, points (paired per seed)")
    ax.set_title("AlexNet ablation: change when layers are removed (mean ± std over seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    print(f"wrote {out} (the course has no figure for conv3+conv4 alone)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="LABEL=DIR (an ablate workdir)")
    p.add_argument("--out", default="benchmarks/ablation_alexnet.png")
    p.add_argument("--metric", default="accuracy")
    a = p.parse_args()
    sets = []
    for spec in a.runs:
        label, _, d = spec.partition("=")
        if not d:
            raise SystemExit(f"expected LABEL=DIR, got {spec!r}")
        sets.append((label, read(Path(d), a.metric)))
        print(table(label, sets[-1][1]) + "\n")
    chart(sets, a.out)


if __name__ == "__main__":
    main()
