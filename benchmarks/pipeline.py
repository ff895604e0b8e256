"""Input-pipeline throughput: images/s through source -> transforms -> batches (-> device).

Measures the whole host pipeline that ``jaxvision.data.pipeline.make_loader`` builds (source
reads, per-example transforms, collation with box padding, grain batching and, with workers,
grain's ``mp_prefetch`` processes) for each task's pipeline on the procedural scenes, and on the
real local data sets under ``../shared/data`` when they exist. ``--device`` adds
``jaxvision.data.device.put_batch`` onto ``make_mesh()`` (blocking until the arrays are ready).

    python benchmarks/pipeline.py --batches 20 --batch_size 64 --workers 0 2

Per row: loader build time, first-batch latency (``iter`` -> first batch, so worker start-up
is in it), then ``--repeats`` timed runs of ``--batches`` batches each (a run also stops after
``--max_seconds``, so slow sources such as 640-px JPEGs stay cheap); images/s and ms/batch are
the medians over the runs. The first batch is the warm-up and is never timed with the runs.
The script prints a markdown block (command, date, hardware, load, table) for NOTES.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
TASKS = ("classification", "detection", "segmentation", "stereo", "metric", "eval", "real")

# Keys each task's experiment reads from the procedural scenes (which carry all of them at once).
TASK_KEYS = {
    "classification": ("image", "label"),
    "detection": ("image", "boxes", "box_classes"),
    "segmentation": ("image", "mask", "instance_mask"),
    "stereo": ("image", "image_right", "disparity", "disparity_right"),
    "metric": ("image", "identity"),
}


class KeySubset:
    """A source that keeps only ``keys`` of another source's examples.

    The procedural scenes hold every target; a stereo pipeline with ``flip_lr`` refuses
    left-only targets (boxes, mask), and classification should not pay to collate masks.
    """

    def __init__(self, source: Any, keys: Sequence[str]):
        missing = [k for k in keys if k not in source.info.keys]
        if missing:
            raise ValueError(f"KeySubset: source {source.info.name} has no keys {missing} "
                             f"(it has {list(source.info.keys)}).")
        self.source, self.keys = source, tuple(keys)
        self.info = dataclasses.replace(source.info, keys=self.keys)
        if callable(getattr(source, "identities", None)):
            self.identities = source.identities  # keeps the pk sampler's fast path, if any

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        example = self.source[index]
        return {k: example[k] for k in self.keys}


@dataclasses.dataclass
class Case:
    """One benchmark row: how to build the loader, and what its batches must look like."""

    task: str
    source_label: str
    data: Any                       # the data ConfigDict handed to make_loader
    split: str
    mode: str = "train"
    keys: tuple[str, ...] | None = None   # KeySubset of the source (None: all keys)
    batch_size: int = 64
    check: Callable[[dict, "Case"], None] | None = None

    def transforms(self, has_boxes: bool) -> str:
        """The table's transforms cell: the pipeline string, the sampler and box padding."""
        pp = self.data.train_pp if self.mode == "train" else self.data.eval_pp
        extra = []
        if self.data.sampler == "pk" and self.mode == "train":
            extra.append(f"pk {self.data.pk_identities}x{self.data.pk_images}")
        if has_boxes:
            extra.append(f"max_boxes {self.data.max_boxes}")
        return "`" + (pp or "(none)") + "`" + ("; " + ", ".join(extra) if extra else "")


# ----------------------------------------------------------------------------- batch checks

def _check_image(batch: dict, case: Case, size: int | None = None) -> None:
    image = batch["image"]
    if image.shape[0] != case.batch_size or image.dtype != np.uint8:
        raise AssertionError(f"{case.task}: image batch {image.shape} {image.dtype}, expected "
                             f"leading axis {case.batch_size}, uint8")
    if size is not None and image.shape[1:3] != (size, size):
        raise AssertionError(f"{case.task}: image batch {image.shape}, expected {size}x{size}")


def _check_boxes(batch: dict, case: Case) -> None:
    b = int(case.data.max_boxes)
    if batch["boxes"].shape[1:] != (b, 4) or batch["box_valid"].shape[1:] != (b,):
        raise AssertionError(f"{case.task}: boxes {batch['boxes'].shape}, expected (B, {b}, 4)")
    if np.any(batch["boxes"][~batch["box_valid"]] != 0):
        raise AssertionError(f"{case.task}: padding rows of boxes are not zero")


def _check_pk(batch: dict, case: Case) -> None:
    p, k = int(case.data.pk_identities), int(case.data.pk_images)
    ids, counts = np.unique(batch["identity"], return_counts=True)
    if len(ids) != p or np.any(counts != k):
        raise AssertionError(f"{case.task}: pk batch has identities {dict(zip(ids, counts))}, "
                             f"expected {p} identities x {k} images")


# ----------------------------------------------------------------------------- cases

def _procedural(args: argparse.Namespace, **overrides: Any):
    from jaxvision.data.config import data_config
    data = data_config("procedural")
    data.procedural.image_size = args.image_size
    data.procedural.num_train = args.num_train
    for key, value in overrides.items():
        setattr(data, key, value)
    return data


def procedural_cases(args: argparse.Namespace) -> list[Case]:
    s, b = args.image_size, args.batch_size
    aug = f"random_crop({s}, pad=4)|flip_lr|color_jitter(0.4, 0.4, 0.4)|cutout(8)"
    src = f"procedural {s}px"
    check_s = lambda batch, case: _check_image(batch, case, s)  # noqa: E731
    cases = {
        "classification": [
            Case("classification", src, _procedural(args, train_pp="flip_lr"), "train",
                 keys=TASK_KEYS["classification"], batch_size=b, check=check_s),
            Case("classification", src, _procedural(args, train_pp=aug), "train",
                 keys=TASK_KEYS["classification"], batch_size=b, check=check_s),
            # Reference: what collation costs when every procedural key rides along (as it does
            # without a key filter). No flip_lr: it refuses stereo examples with left-only keys.
            Case("classification", src + ", all 10 keys", _procedural(args, train_pp=""),
                 "train", keys=None, batch_size=b, check=check_s),
        ],
        "detection": [
            Case("detection", src, _procedural(args, train_pp=f"random_crop({s}, pad={s // 8})|flip_lr"),
                 "train", keys=TASK_KEYS["detection"], batch_size=b,
                 check=lambda batch, case: (check_s(batch, case), _check_boxes(batch, case))),
        ],
        "segmentation": [
            Case("segmentation", src, _procedural(args, train_pp="flip_lr"), "train",
                 keys=TASK_KEYS["segmentation"], batch_size=b, check=check_s),
        ],
        "stereo": [
            Case("stereo", src, _procedural(args, train_pp="flip_lr"), "train",
                 keys=TASK_KEYS["stereo"], batch_size=b, check=check_s),
        ],
        "metric": [
            Case("metric", src, _procedural(args, train_pp="flip_lr", sampler="pk",
                                            pk_identities=b // 4, pk_images=4),
                 "train", keys=TASK_KEYS["metric"], batch_size=b,
                 check=lambda batch, case: (check_s(batch, case), _check_pk(batch, case))),
        ],
    }
    out = [c for t in args.tasks if t in cases for c in cases[t]]
    if "eval" in args.tasks:
        # One pass whose last batch is half padding; sized to cover the warm-up and every run.
        n = (1 + args.repeats * args.batches) * b - b // 2
        data = _procedural(args, eval_pp="")
        data.procedural.num_eval = max(n, data.procedural.num_eval)
        out.append(Case("eval (padded last batch)", f"{src}, test[:{n}]", data,
                        f"test[:{n}]", mode="eval",
                        keys=TASK_KEYS["classification"], batch_size=b, check=check_s))
    return out


def tfds_data_dir() -> str | None:
    """The prepared TFDS dir: ``$JAXVISION_TFDS_DATA_DIR``, else ``/tmp/tfds_prep2`` if it holds mnist."""
    env = os.environ.get("JAXVISION_TFDS_DATA_DIR")
    if env:
        return env
    return "/tmp/tfds_prep2" if Path("/tmp/tfds_prep2/mnist").is_dir() else None


def real_cases(args: argparse.Namespace) -> list[Case]:
    """Rows on the local data sets under ``../shared/data`` (and a prepared TFDS mnist)."""
    from jaxvision.data.config import data_config
    if "real" not in args.tasks:
        return []
    cases = []
    if not SHARED.is_dir():
        print(f"# {SHARED} not found: skipping the real-data rows", file=sys.stderr)
    else:
        def cfg(name: str, path: Path, **kw: Any):
            data = data_config(name)
            data.path = str(path)
            for key, value in kw.items():
                setattr(data, key, value)
            return data

        b = args.batch_size
        cifar = SHARED / "cifar10" / "cifar10.npz"
        if cifar.exists():
            aug = "random_crop(32, pad=4)|flip_lr|color_jitter(0.4, 0.4, 0.4)|cutout(8)"
            for pp in ("flip_lr", aug):
                cases.append(Case("classification", "cifar10 npz (train 4000, 32px)",
                                  cfg("npz", cifar, train_pp=pp), "train", batch_size=b,
                                  check=lambda batch, case: _check_image(batch, case, 32)))
        orl = SHARED / "orl_faces" / "att_faces"
        if orl.is_dir():
            cases.append(Case("classification", "ORL faces image_folder (train 320, 92x112 pgm)",
                              cfg("image_folder", orl, train_pp="resize(64)"), "train",
                              batch_size=b, check=lambda batch, case: _check_image(batch, case, 64)))
            cases.append(Case("metric", "ORL faces image_folder (train 320, 92x112 pgm)",
                              cfg("image_folder", orl, train_pp="resize(64)", sampler="pk",
                                  pk_identities=b // 4, pk_images=4), "train", batch_size=b,
                              check=lambda batch, case: (_check_image(batch, case, 64),
                                                         _check_pk(batch, case))))
        coco = SHARED / "coco128"
        if coco.is_dir():
            cases.append(Case("detection", "coco128 yolo (128 jpeg, <=640px)",
                              cfg("yolo", coco, train_pp="resize(256)", max_boxes=64), "train",
                              batch_size=min(b, 32),
                              check=lambda batch, case: (_check_image(batch, case, 256),
                                                         _check_boxes(batch, case))))
        pets = SHARED / "oxford_pets"
        if pets.is_dir():
            cases.append(Case("segmentation", "oxford_pets (trainval 300 jpeg + trimap)",
                              cfg("oxford_pets", pets, train_pp="resize(128)"), "train",
                              batch_size=min(b, 32),
                              check=lambda batch, case: (_check_image(batch, case, 128),
                                                         _check_boxes(batch, case))))
    tfds_dir = tfds_data_dir()
    if tfds_dir:
        data = data_config("mnist")
        data.data_dir = tfds_dir
        cases.append(Case("classification", "TFDS mnist array_record (28px)", data, "train",
                          batch_size=args.batch_size,
                          check=lambda batch, case: _check_image(batch, case, 28)))
    else:
        print("# no prepared TFDS dir (JAXVISION_TFDS_DATA_DIR): skipping TFDS mnist",
              file=sys.stderr)
    return cases


# ----------------------------------------------------------------------------- measuring

@dataclasses.dataclass
class Row:
    task: str
    source: str
    transforms: str
    workers: str
    batch_size: int
    images_per_s: float
    ms_per_batch: float
    first_batch_s: float
    build_s: float
    batches: int            # timed batches over all runs


def measure(case: Case, workers: int, args: argparse.Namespace, mesh: Any = None) -> Row:
    """Builds the case's loader with ``workers`` and times it (see the module docstring)."""
    from jaxvision.data.pipeline import make_loader
    from jaxvision.data.source import build_source

    data = case.data.copy_and_resolve_references()
    data.num_workers = workers
    t0 = time.perf_counter()
    source = build_source(data, case.split)
    if case.keys is not None:
        source = KeySubset(source, case.keys)
    loader = make_loader(data, case.split, mode=case.mode, global_batch=case.batch_size,
                         seed=0, source=source, process_index=0, process_count=1)
    build_s = time.perf_counter() - t0

    def put(batch: dict) -> dict:
        if mesh is None:
            return batch
        import jax
        from jaxvision.data.device import put_batch
        return jax.block_until_ready(put_batch(batch, mesh))

    t0 = time.perf_counter()
    it = loader.iterator()
    try:
        first = next(it)
        put(first)
        first_s = time.perf_counter() - t0
        if case.check is not None:
            case.check(first, case)
        rates, per_batch, total, last = [], [], 0, first
        for _ in range(args.repeats):
            n, t0 = 0, time.perf_counter()
            while n < args.batches:
                try:
                    last = next(it)
                except StopIteration:
                    break
                put(last)
                n += 1
                if case.mode == "train" and time.perf_counter() - t0 > args.max_seconds and n >= 2:
                    break
            dt = time.perf_counter() - t0
            if n:
                rates.append(n * case.batch_size / dt)
                per_batch.append(1000 * dt / n)
                total += n
        if case.mode == "eval":
            for last in it:  # an exhausted pass must end on the padded batch
                pass
            valid = int(np.sum(last["valid"]))
            if valid != case.batch_size - case.batch_size // 2:
                raise AssertionError(f"eval: last batch has {valid} valid examples, expected "
                                     f"{case.batch_size - case.batch_size // 2}")
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()
    return Row(case.task, case.source_label, case.transforms("boxes" in source.info.keys), str(workers), case.batch_size,
               statistics.median(rates), statistics.median(per_batch), first_s, build_s, total)


def raw_generation(args: argparse.Namespace) -> Row:
    """``source[i]`` alone on the procedural scenes (every key), main process, no transforms."""
    from jaxvision.data.procedural import ProceduralScenes
    source = ProceduralScenes(image_size=args.image_size, num_examples=args.num_train)
    t0 = time.perf_counter()
    source[0]  # warm-up: builds the noise bank
    first_s = time.perf_counter() - t0
    n = args.batches * args.batch_size // 2
    rates, i = [], 1
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            source[i]
            i += 1
        rates.append(n / (time.perf_counter() - t0))
    rate = statistics.median(rates)
    return Row("raw source[i] (reference)", f"procedural {args.image_size}px, all 10 keys",
               "(none; no loader, ms per batch-size examples)", "main", args.batch_size, rate,
               1000 * args.batch_size / rate, first_s, 0.0, n * args.repeats)


# ----------------------------------------------------------------------------- reporting

def hardware() -> str:
    """One paragraph: CPU model and count, memory, Python / numpy / grain / jax versions."""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        model = next((ln.split(":", 1)[1].strip() for ln in lscpu.splitlines()
                      if ln.startswith("Model name")), platform.processor())
    except (OSError, subprocess.SubprocessError):
        model = platform.processor()
    mem = "?"
    try:
        for ln in Path("/proc/meminfo").read_text().splitlines():
            if ln.startswith("MemTotal"):
                mem = f"{int(ln.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    import grain  # noqa: F401  (version only)
    from importlib.metadata import version
    return (f"{os.cpu_count()} CPU ({model}), {mem} RAM, {platform.system()} {platform.release()}; "
            f"Python {platform.python_version()}, numpy {np.__version__}, grain {version('grain')}, "
            f"jax {version('jax')}, pillow {version('pillow')}")


def table(rows: Sequence[Row]) -> str:
    head = ("| task | source | transforms | workers | batch | images/s | ms/batch | "
            "first batch (s) | build (s) |\n|---|---|---|---|---|---:|---:|---:|---:|")
    lines = [head]
    cell = lambda text: text.replace("|", "\\|")  # noqa: E731  (pipeline strings hold '|')
    for r in rows:
        lines.append(f"| {r.task} | {r.source} | {cell(r.transforms)} | {r.workers} | {r.batch_size} | "
                     f"{r.images_per_s:,.0f} | {r.ms_per_batch:.1f} | {r.first_batch_s:.2f} | "
                     f"{r.build_s:.2f} |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", type=int, default=20, help="timed batches per run (default 20)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs; the median is reported")
    p.add_argument("--max_seconds", type=float, default=1.5,
                   help="a train-mode run also stops after this long (>= 2 batches)")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2],
                   help="grain mp_prefetch worker processes (0 = main process)")
    p.add_argument("--image_size", type=int, default=64, help="procedural image side, pixels")
    p.add_argument("--num_train", type=int, default=20000,
                   help="procedural train examples (the default config's 20000)")
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    p.add_argument("--device", action="store_true",
                   help="also put each batch on the make_mesh() devices (put_batch)")
    args = p.parse_args(argv)
    if args.batch_size % 4:
        p.error(f"--batch_size={args.batch_size} must be a multiple of 4 (pk sampler: "
                "batch_size/4 identities x 4 images)")
    if args.batches < 1 or args.repeats < 1:
        p.error("--batches and --repeats must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    started = datetime.datetime.now().astimezone()
    load_before = os.getloadavg()
    mesh = None
    if args.device:
        from jaxvision.data.device import make_mesh
        mesh = make_mesh()
    cases = procedural_cases(args) + real_cases(args)
    rows = [raw_generation(args)]
    print(f"# raw procedural source[i]: {rows[0].images_per_s:,.0f} examples/s", file=sys.stderr)
    t_all = time.perf_counter()
    for case in cases:
        for workers in args.workers:
            row = measure(case, workers, args, mesh)
            rows.append(row)
            print(f"# {row.task:<14} {row.source[:34]:<34} w={workers} {row.images_per_s:8,.0f} img/s "
                  f"first={row.first_batch_s:.2f}s build={row.build_s:.2f}s", file=sys.stderr)
    elapsed = time.perf_counter() - t_all
    load_after = os.getloadavg()
    command = "python " + " ".join(shlex.quote(a) for a in
                                   [os.path.relpath(__file__, REPO)] + list(sys.argv[1:]))
    print(f"Command: `{command}`  ")
    print(f"Date: {started:%Y-%m-%d %H:%M %Z}  ")
    print(f"Hardware: {hardware()}  ")
    print("Load average (1/5/15 min): before " + "/".join(f"{x:.2f}" for x in load_before)
          + ", after " + "/".join(f"{x:.2f}" for x in load_after) + "  ")
    print(f"Settings: {args.repeats} runs of <= {args.batches} batches (train runs capped at "
          f"{args.max_seconds:g} s) after 1 warm-up batch; device transfer: "
          f"{'put_batch on ' + str(dict(mesh.shape)) if mesh is not None else 'none (host batches)'}; "
          f"measuring took {elapsed:.0f} s\n")
    print(table(rows))


if __name__ == "__main__":
    main()
