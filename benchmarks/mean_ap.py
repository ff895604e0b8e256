"""Time of COCO mAP (``jaxvision.mean_ap.coco_metrics``) against pycocotools' COCOeval.

    python benchmarks/mean_ap.py [--images 5000] [--dets 100] [--classes 20] [--reference 500]

Random ground truth (1-10 objects per image) and ``--dets`` detections per image (jittered
objects and random boxes). pycocotools runs on the first ``--reference`` images only (it takes
minutes on 5,000 x 100), where both results are also compared.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time

import numpy as np

from jaxvision import mean_ap


def make(images: int, dets: int, classes: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    n_gt = rng.integers(1, 11, images)
    gimg = np.repeat(np.arange(images), n_gt)
    hw = rng.uniform(4, 150, (len(gimg), 2))
    yx = rng.uniform(0, 480, (len(gimg), 2))
    gboxes = np.concatenate([yx, yx + hw], 1)
    gcls = rng.integers(0, classes, len(gimg))
    dimg = np.repeat(np.arange(images), dets)
    src = np.array([rng.choice(np.flatnonzero(gimg == i)) for i in range(images)]).repeat(dets)
    jitter = rng.normal(0, 0.2, (len(dimg), 4)) * np.tile(hw[src], 2)
    rand = rng.random(len(dimg)) < 0.5
    dboxes = np.where(rand[:, None], np.concatenate([yx[src] * 0.7, yx[src] * 0.7 + hw[src]], 1),
                      gboxes[src] + jitter)
    dboxes[:, 2:] = np.maximum(dboxes[:, 2:], dboxes[:, :2] + 1)
    dcls = np.where(rng.random(len(dimg)) < 0.8, gcls[src], rng.integers(0, classes, len(dimg)))
    gt = {"image": gimg, "class": gcls, "boxes": gboxes}
    dt = {"image": dimg, "class": dcls, "boxes": dboxes, "score": rng.random(len(dimg))}
    return gt, dt


def subset(rows: dict, n: int) -> dict:
    keep = rows["image"] < n
    return {k: v[keep] for k, v in rows.items()}


def pycoco(gt, dt, classes):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    xywh = lambda b: [float(b[1]), float(b[0]), float(b[3] - b[1]), float(b[2] - b[0])]  # noqa: E731
    coco = COCO()
    coco.dataset = {
        "images": [{"id": int(i)} for i in np.unique(gt["image"])],
        "annotations": [{"id": i + 1, "image_id": int(gt["image"][i]), "iscrowd": 0,
                         "category_id": int(gt["class"][i]) + 1, "bbox": xywh(gt["boxes"][i]),
                         "area": float(np.prod(gt["boxes"][i, 2:] - gt["boxes"][i, :2]))}
                        for i in range(len(gt["image"]))],
        "categories": [{"id": k + 1} for k in range(classes)]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
        det = coco.loadRes([{"image_id": int(dt["image"][i]), "category_id": int(dt["class"][i]) + 1,
                             "bbox": xywh(dt["boxes"][i]), "score": float(dt["score"][i])}
                            for i in range(len(dt["image"]))])
        ev = COCOeval(coco, det, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=5000)
    p.add_argument("--dets", type=int, default=100)
    p.add_argument("--classes", type=int, default=20)
    p.add_argument("--reference", type=int, default=500)
    a = p.parse_args()
    gt, dt = make(a.images, a.dets, a.classes)
    rows = []
    for n in sorted({a.reference, a.images}):
        g, d = subset(gt, n), subset(dt, n)
        t = time.perf_counter()
        ours = mean_ap.coco_metrics(g, d, a.classes)
        rows.append((f"jaxvision {n} x {a.dets}", time.perf_counter() - t, ours["AP"]))
        if n == a.reference:
            t = time.perf_counter()
            stats = pycoco(g, d, a.classes)
            rows.append((f"pycocotools {n} x {a.dets}", time.perf_counter() - t, stats[0]))
            assert abs(stats[0] - ours["AP"]) < 1e-6, (stats[0], ours["AP"])
    print(f"| {'evaluator':<28} | {'time (s)':>9} | {'AP':>7} |\n|---|---:|---:|")
    for name, sec, ap in rows:
        print(f"| {name:<28} | {sec:9.2f} | {ap:7.4f} |")


if __name__ == "__main__":
    main()
