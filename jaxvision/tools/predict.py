"""``python -m jaxvision predict``: a trained model on a user's image files.

Writes ``OUT/predictions.jsonl`` (one line per input, in input order: ``file``, the
experiment's ``describe`` record and ``picture``, or ``error`` for a file that could not be
read) and one picture per image drawn by the experiment's ``draw`` hook (classification: the
top-5 classes). Arrays a ``describe`` record returns under ``arrays`` (stereo: the disparity
and depth maps) are saved as ``<stem>.<name>.npy`` and the record lists their file names. With a gallery (``--gallery``, embedding models) each query's record and picture
are its nearest gallery images instead. Folders are walked recursively for image files (by suffix, sorted); files named
directly are always tried. A file that cannot be decoded (empty, truncated, not an image) or has
more pixels than the run's ``data.max_pixels`` (read from the header, before decoding) is named
on stderr and skipped; ``predict`` then exits non-zero with the count.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from jaxvision.data.local import IMAGE_SUFFIXES, BadFile, read_image
from jaxvision.inference import Predictor

PREDICTIONS = "predictions.jsonl"


@dataclasses.dataclass
class PredictResult:
    """What ``predict_files`` did: inputs seen, predicted, and the failures ``(file, reason)``
    (gallery files included)."""

    inputs: int
    predicted: int
    failed: list[tuple[str, str]]
    out: str
    gallery: int = 0      # gallery files (with --gallery), readable or not

    def to_json(self) -> dict:
        return {"inputs": self.inputs, "predicted": self.predicted, "failed": len(self.failed),
                "out": self.out, **({"gallery": self.gallery} if self.gallery else {})}


def _natural(path: Path) -> list:
    import re
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", str(path))]


def list_inputs(paths: Sequence[str | Path]) -> list[Path]:
    """Files named in ``paths`` as they are; folders walked for image files (by suffix), sorted
    naturally. Paths that do not exist are kept, to be reported as failures."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = [f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
                     and not any(part.startswith(".") for part in f.relative_to(p).parts)]
            out.extend(sorted(found, key=_natural))
        else:
            out.append(p)
    return out


def _read(path: Path, channels: int, max_pixels: int) -> np.ndarray:
    if not path.exists():
        raise BadFile(path, "does not exist")
    if path.is_dir():
        raise BadFile(path, "is a folder with no image files")
    return read_image(path, channels, max_pixels)


def _picture_name(path: Path, taken: set[str]) -> str:
    name, k = f"{path.stem}.png", 1
    while name in taken:
        name, k = f"{path.stem}_{k}.png", k + 1
    taken.add(name)
    return name


def _default_record(outputs: dict) -> dict:
    return {k: np.round(np.asarray(v, np.float64), 6).tolist() for k, v in outputs.items()}


class _Gallery:
    """Embeddings of a gallery folder, to answer each query with its nearest gallery images."""

    def __init__(self, predictor: Predictor, paths: Sequence[str | Path], k: int):
        self.files, self.k = [], int(k)
        self.failed: list[tuple[str, str]] = []
        embeddings = []
        channels = predictor.model_info.channels
        max_pixels = int(predictor.config.data.get("max_pixels", 50_000_000))
        files = list_inputs(paths)
        for start in range(0, len(files), predictor.batch_size):
            prepared = []
            for f in files[start:start + predictor.batch_size]:
                try:
                    prepared.append(predictor.prepare({"image": _read(f, channels, max_pixels)}))
                    self.files.append(f)
                except BadFile as e:
                    self.failed.append((str(f), f"{e.path!r}: {e.reason}"))
            for out in predictor(prepared) if prepared else []:
                if "embedding" not in out:
                    raise ValueError(f"--gallery answers queries with their nearest gallery images "
                                     f"by the model's 'embedding' output, and this model's "
                                     f"predict returns {sorted(out)}.")
                embeddings.append(np.asarray(out["embedding"], np.float64).reshape(-1))
        if not embeddings:
            raise FileNotFoundError(f"--gallery {', '.join(map(str, paths))}: no readable image.")
        self.embeddings = np.stack(embeddings)

    def nearest(self, embedding: np.ndarray) -> list[tuple[Path, float]]:
        d = np.linalg.norm(self.embeddings - np.asarray(embedding, np.float64).reshape(1, -1), axis=1)
        order = np.lexsort((np.arange(len(d)), d))[:self.k]
        return [(self.files[i], float(d[i])) for i in order]


def predict_files(predictor: Predictor, inputs: Sequence[str | Path], out_dir: str | Path, *,
                  rights: Sequence[str | Path] | None = None, progress: bool = False,
                  pictures: bool = True, gallery: Sequence[str | Path] | None = None,
                  neighbours: int = 8) -> PredictResult:
    """Runs ``predictor`` on the image files of ``inputs`` (files or folders); writes
    ``out_dir/predictions.jsonl`` and the pictures. ``rights``: the right views of stereo pairs,
    one per input (files, or folders listed the same way). ``gallery``: files or folders whose
    images answer each query with its ``neighbours`` nearest by the ``embedding`` output
    (euclidean): the record's ``neighbours`` (file, distance) and a picture of them."""
    files = list_inputs(inputs)
    keys = predictor.model_info.keys
    stereo = "image_right" in keys
    right_files = list_inputs(rights) if rights else []
    if rights and not stereo:
        raise ValueError("--right gives the right views of stereo pairs, but this model takes one "
                         "image per input; drop --right.")
    if stereo and len(right_files) != len(files):
        raise ValueError(f"this stereo model takes left/right pairs: give as many --right images "
                         f"({len(right_files)}) as inputs ({len(files)}), in the same order.")
    if not files:
        raise FileNotFoundError(f"no image files in {', '.join(map(str, inputs))} (looked for "
                                f"{', '.join(sorted(IMAGE_SUFFIXES))}).")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config, exp, info = predictor.config, predictor.exp, predictor.info
    channels = predictor.model_info.channels
    max_pixels = int(config.data.get("max_pixels", 50_000_000))

    def load(i: int) -> tuple[dict | None, dict | None, str]:
        try:
            raw = {"image": _read(files[i], channels, max_pixels)}
            if stereo:
                raw["image_right"] = _read(right_files[i], channels, max_pixels)
            return raw, predictor.prepare(raw), ""
        except BadFile as e:
            return None, None, f"{e.path!r}: {e.reason}"

    failed: list[tuple[str, str]] = []
    near = _Gallery(predictor, gallery, neighbours) if gallery else None
    if near is not None:
        failed.extend(near.failed)
        for _, error in near.failed:
            print(f"error: {error} (gallery)", file=sys.stderr, flush=True)
    taken: set[str] = set()
    predicted = 0
    bar = _progress(len(files), progress)
    tmp = out_dir / (PREDICTIONS + ".tmp")
    with open(tmp, "w") as f, ThreadPoolExecutor(max_workers=4) as pool:
        for start in range(0, len(files), predictor.batch_size):
            index = range(start, min(start + predictor.batch_size, len(files)))
            loaded = list(pool.map(load, index))
            good = [i for i, (_, ex, _) in zip(index, loaded) if ex is not None]
            outputs = iter(predictor([loaded[i - start][1] for i in good]) if good else [])
            for i, (raw, _, error) in zip(index, loaded):
                line: dict[str, Any] = {"file": str(files[i])}
                if stereo:
                    line["right"] = str(right_files[i])
                if raw is None:
                    failed.append((str(files[i]), error))
                    bar.write(f"error: {error}")
                    line["error"] = error
                else:
                    out = next(outputs)
                    # Where outputs are in input pixels (boxes), describe / draw map them back.
                    out["image_size"] = np.asarray(np.shape(raw["image"])[:2])
                    out["input_size"] = np.asarray(predictor.model_info.input_shape[:2])
                    describe = exp.describe(config, out, info) if exp.describe else _default_record(out)
                    arrays = describe.pop("arrays", None) or {}
                    line.update(describe)
                    if arrays:  # dense outputs (a disparity or depth map) as .npy files
                        stem = Path(_picture_name(files[i], taken)).stem
                        line["arrays"] = {}
                        for key, value in arrays.items():
                            np.save(out_dir / f"{stem}.{key}.npy", np.asarray(value))
                            line["arrays"][key] = f"{stem}.{key}.npy"
                    picture = None
                    if near is not None:
                        found = near.nearest(out["embedding"])
                        line["neighbours"] = [{"file": str(p), "distance": round(d, 6)}
                                              for p, d in found]
                        if pictures:
                            from jaxvision import viz
                            picture = viz.image_strip(
                                [raw["image"]] + [_read(p, channels, max_pixels) for p, _ in found],
                                ["query"] + [f"{d:.3f}" for _, d in found])
                    elif pictures and exp.draw is not None:
                        picture = exp.draw(config, raw, out, info)
                    if picture is not None:
                        from PIL import Image
                        name = f"{stem}.png" if arrays else _picture_name(files[i], taken)
                        Image.fromarray(np.asarray(picture, np.uint8)).save(out_dir / name,
                                                                            compress_level=1)
                        line["picture"] = name
                    predicted += 1
                f.write(json.dumps(line) + "\n")
            bar.update(len(index))
    bar.close()
    os.replace(tmp, out_dir / PREDICTIONS)
    return PredictResult(len(files), predicted, failed, str(out_dir),
                         gallery=len(near.files) + len(near.failed) if near else 0)


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def write(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        pass


def _progress(total: int, enabled: bool) -> Any:
    if not enabled or total < 2:
        return _NoBar()
    from tqdm import tqdm
    bar = tqdm(total=total, unit="img", file=sys.stderr, dynamic_ncols=True)
    bar.write = lambda text: tqdm.write(text, file=sys.stderr)  # above the bar, not through it
    return bar


def iter_lines(out_dir: str | Path) -> Iterator[dict]:
    """The records of ``out_dir/predictions.jsonl``."""
    with open(Path(out_dir) / PREDICTIONS) as f:
        for line in f:
            if line.strip():
                yield json.loads(line)
