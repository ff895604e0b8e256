"""COCO mAP against pycocotools on random sets, VOC AP against hand-worked examples."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

from jaxvision import mean_ap

pycocotools = pytest.importorskip("pycocotools")
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402
from pycocotools import mask as mask_utils  # noqa: E402


def _random_set(rng: np.random.Generator, num_classes: int = 3, images: int = 6, size: float = 160.0):
    """Ground truth and detections: jittered copies of objects (varied IoUs), random boxes,
    tied scores, crowd regions, areas that differ from the box area, sizes over all ranges."""
    gt = {k: [] for k in ("image", "class", "boxes", "crowd", "area")}
    dt = {k: [] for k in ("image", "class", "boxes", "score")}
    for img in rng.choice(1000, images, replace=False):
        for _ in range(rng.integers(0, 7)):
            h, w = rng.uniform(2, 130, 2)
            y, x = rng.uniform(0, size - h), rng.uniform(0, size - w)
            box = np.array([y, x, y + h, x + w])
            k = int(rng.integers(num_classes))
            gt["image"].append(img), gt["class"].append(k), gt["boxes"].append(box)
            gt["crowd"].append(bool(rng.random() < 0.12))
            gt["area"].append(h * w * (rng.uniform(0.5, 1.0) if rng.random() < 0.5 else 1.0))
            for _ in range(rng.integers(0, 3)):
                jit = box + rng.normal(0, 0.15, 4) * np.array([h, w, h, w])
                jit[2:] = np.maximum(jit[2:], jit[:2] + 0.5)
                dt["image"].append(img), dt["boxes"].append(jit)
                dt["class"].append(k if rng.random() < 0.85 else int(rng.integers(num_classes)))
                dt["score"].append(float(np.round(rng.random(), 1)))  # ties on purpose
        for _ in range(rng.integers(0, 6)):
            h, w = rng.uniform(2, 100, 2)
            y, x = rng.uniform(0, size - h), rng.uniform(0, size - w)
            dt["image"].append(img), dt["boxes"].append(np.array([y, x, y + h, x + w]))
            dt["class"].append(int(rng.integers(num_classes)))
            dt["score"].append(float(rng.random()))
    gt = {k: np.asarray(v) for k, v in gt.items()}
    dt = {k: np.asarray(v) for k, v in dt.items()}
    gt["boxes"] = gt["boxes"].reshape(-1, 4)
    dt["boxes"] = dt["boxes"].reshape(-1, 4)
    return gt, dt


def _xywh(b: np.ndarray) -> list[float]:
    return [float(b[1]), float(b[0]), float(b[3] - b[1]), float(b[2] - b[0])]


def _pycoco(gt, dt, num_classes, images, *, masks=None, max_dets=None):
    """pycocotools' COCOeval on the same set; returns the evaluated object."""
    anns = []
    for i in range(len(gt["boxes"])):
        ann = {"id": i + 1, "image_id": int(gt["image"][i]), "category_id": int(gt["class"][i]) + 1,
               "bbox": _xywh(gt["boxes"][i]), "area": float(gt["area"][i]),
               "iscrowd": int(gt["crowd"][i])}
        if masks is not None:
            ann["segmentation"] = mask_utils.encode(np.asfortranarray(masks[0][i].astype(np.uint8)))
        anns.append(ann)
    coco = COCO()
    coco.dataset = {"images": [{"id": int(i), "height": 200, "width": 200} for i in images],
                    "annotations": anns,
                    "categories": [{"id": k + 1, "name": str(k)} for k in range(num_classes)]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
        res = []
        for i in range(len(dt["boxes"])):
            r = {"image_id": int(dt["image"][i]), "category_id": int(dt["class"][i]) + 1,
                 "score": float(dt["score"][i])}
            if masks is not None:
                r["segmentation"] = mask_utils.encode(np.asfortranarray(masks[1][i].astype(np.uint8)))
            else:
                r["bbox"] = _xywh(dt["boxes"][i])
            res.append(r)
        det = coco.loadRes(res)
        ev = COCOeval(coco, det, "segm" if masks is not None else "bbox")
        if max_dets is not None:
            ev.params.maxDets = list(max_dets)
        ev.evaluate()
        ev.accumulate()
        if max_dets is None:
            ev.summarize()
    return ev


STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


@pytest.mark.parametrize("seed", range(12))
def test_coco_boxes_equal_pycocotools(seed):
    rng = np.random.default_rng(seed)
    gt, dt = _random_set(rng, images=int(rng.integers(1, 9)))
    if len(dt["boxes"]) == 0:
        pytest.skip("pycocotools cannot load an empty result list")
    images = np.union1d(gt["image"], dt["image"])
    ref = _pycoco(gt, dt, 3, images)
    ours = mean_ap.coco_metrics(gt, dt, 3)
    np.testing.assert_allclose([ours[k] for k in STATS], ref.stats, atol=1e-6)
    np.testing.assert_allclose(ours["precision"], ref.eval["precision"], atol=1e-6)
    np.testing.assert_allclose(ours["recall"], ref.eval["recall"], atol=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_coco_max_dets_truncate_per_image_and_class(seed):
    rng = np.random.default_rng(100 + seed)
    gt, dt = _random_set(rng, images=4)
    images = np.union1d(gt["image"], dt["image"])
    ref = _pycoco(gt, dt, 3, images, max_dets=(1, 2, 3))
    ours = mean_ap.coco_metrics(gt, dt, 3, max_dets=(1, 2, 3))
    np.testing.assert_allclose(ours["precision"], ref.eval["precision"], atol=1e-6)
    np.testing.assert_allclose(ours["recall"], ref.eval["recall"], atol=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_coco_masks_equal_pycocotools(seed):
    rng = np.random.default_rng(200 + seed)
    n_gt, n_dt, hw = 8, 14, (20, 24)
    gt_masks = rng.random((n_gt,) + hw) < 0.05
    for m in gt_masks:  # a solid blob so that detections can overlap it well
        y, x = rng.integers(0, 12, 2)
        m[y:y + rng.integers(2, 9), x:x + rng.integers(2, 9)] = True
    src = rng.integers(0, n_gt, n_dt)
    dt_masks = gt_masks[src] ^ (rng.random((n_dt,) + hw) < 0.04)
    gt = {"image": rng.integers(0, 3, n_gt), "class": rng.integers(0, 2, n_gt),
          "crowd": rng.random(n_gt) < 0.1, "masks": gt_masks}
    gt["boxes"] = np.zeros((n_gt, 4))
    gt["area"] = gt_masks.reshape(n_gt, -1).sum(-1).astype(float)
    dt = {"image": gt["image"][src], "class": np.where(rng.random(n_dt) < 0.8, gt["class"][src], 1),
          "score": rng.random(n_dt), "masks": dt_masks, "boxes": np.zeros((n_dt, 4))}
    ref = _pycoco(gt, dt, 2, np.arange(3), masks=(gt_masks, dt_masks))
    ours = mean_ap.coco_metrics(gt, dt, 2)
    np.testing.assert_allclose([ours[k] for k in STATS], ref.stats, atol=1e-6)


def test_coco_hand_cases():
    gt = {"image": [0, 0], "class": [0, 1], "boxes": [[0, 0, 10, 10], [20, 20, 40, 40]]}
    perfect = {"image": [0, 0], "class": [0, 1], "boxes": gt["boxes"], "score": [0.9, 0.8]}
    out = mean_ap.coco_metrics(gt, perfect, 3)
    assert out["AP"] == pytest.approx(1.0) and out["AR100"] == pytest.approx(1.0)
    assert out["AP_per_class"][2] == -1  # no ground truth: out of the mean
    assert out["APm"] == -1 and out["APl"] == -1  # no medium or large object
    empty = {"image": [], "class": [], "boxes": np.zeros((0, 4)), "score": []}
    assert mean_ap.coco_metrics(gt, empty, 3)["AP"] == 0.0
    none = {"image": [], "class": [], "boxes": np.zeros((0, 4))}
    assert mean_ap.coco_metrics(none, perfect, 3)["AP"] == -1.0
    # IoU exactly 0.5 matches at the 0.5 threshold only (COCO: IoU >= threshold).
    half = {"image": [0], "class": [0], "boxes": [[0, 0, 10, 5]], "score": [1.0]}
    out = mean_ap.coco_metrics({"image": [0], "class": [0], "boxes": [[0, 0, 10, 10]]}, half, 1)
    assert out["AP50"] == pytest.approx(1.0) and out["AP75"] == 0.0
    assert out["AP"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="classes must lie in"):
        mean_ap.coco_metrics(gt, {**perfect, "class": [0, 5]}, 3)


def test_voc_ap_hand_worked():
    # One class, 3 objects (one difficult) in two images; 4 detections by score:
    # d1 hits obj A (tp), d2 hits A again (fp), d3 hits the difficult object (ignored),
    # d4 hits obj B (tp). Non-difficult objects: 2.
    gt = {"image": [0, 0, 1], "class": [0, 0, 0], "difficult": [False, True, False],
          "boxes": [[0, 0, 10, 10], [50, 50, 60, 60], [0, 0, 20, 20]]}
    dt = {"image": [0, 0, 0, 1], "class": [0, 0, 0, 0], "score": [0.9, 0.8, 0.7, 0.6],
          "boxes": [[0, 0, 10, 10], [0, 0, 10, 9], [50, 50, 60, 60], [0, 0, 20, 19]]}
    # tp = [1, 0, -, 1], fp = [0, 1, -, 0] -> recall (0.5, 0.5, 1.0), precision (1, 0.5, 2/3).
    out = mean_ap.voc_ap(gt, dt, 1)
    assert out["AP_per_class"][0] == pytest.approx(0.5 * 1 + 0.5 * (2 / 3))
    eleven = mean_ap.voc_ap(gt, dt, 1, eleven_point=True)["mAP"]
    assert eleven == pytest.approx((6 * 1 + 5 * (2 / 3)) / 11)
    # VOC needs IoU > 0.5: exactly 0.5 is a miss.
    miss = mean_ap.voc_ap({"image": [0], "class": [0], "boxes": [[0, 0, 10, 10]]},
                          {"image": [0], "class": [0], "score": [1.0], "boxes": [[0, 0, 10, 5]]}, 2)
    assert miss["AP_per_class"][0] == 0.0 and np.isnan(miss["AP_per_class"][1])
    assert miss["mAP"] == 0.0


def _voc_devkit_loop(gt, dt, k, thr):
    """The devkit's VOCevaldet for one class as a plain loop: detections by score, each against
    the ground truths of its image (best IoU, first on ties), a used ground truth makes an FP,
    a difficult one neither. Returns the tp and fp flags in score order."""
    gsel = [i for i in range(len(gt["class"])) if gt["class"][i] == k]
    dsel = sorted((i for i in range(len(dt["class"])) if dt["class"][i] == k),
                  key=lambda i: -dt["score"][i])
    used, tp, fp = set(), [], []
    for j in dsel:
        best, ov = None, -1.0
        for g in gsel:
            if gt["image"][g] != dt["image"][j]:
                continue
            a, b = dt["boxes"][j], gt["boxes"][g]
            ih = max(min(a[2], b[2]) - max(a[0], b[0]), 0)
            iw = max(min(a[3], b[3]) - max(a[1], b[1]), 0)
            union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - ih * iw
            iou = ih * iw / union if union > 0 else 0.0
            if iou > ov:
                best, ov = g, iou
        if best is not None and ov > thr:
            if gt["difficult"][best]:
                continue
            tp.append(best not in used)
            fp.append(best in used)
            used.add(best)
        else:
            tp.append(False)
            fp.append(True)
    return np.array(tp, float), np.array(fp, float), sum(not gt["difficult"][g] for g in gsel)


@pytest.mark.parametrize("seed", range(4))
def test_voc_ap_matches_the_devkit_loop_on_random_scenes(seed):
    rng = np.random.default_rng(seed)
    c, images = 3, 12
    gt = {"image": [], "class": [], "boxes": [], "difficult": []}
    dt = {"image": [], "class": [], "boxes": [], "score": []}
    for i in range(images):
        for _ in range(rng.integers(0, 5)):
            y, x = rng.uniform(0, 40, 2)
            box = [y, x, y + rng.uniform(4, 20), x + rng.uniform(4, 20)]
            gt["image"].append(i), gt["class"].append(int(rng.integers(c)))
            gt["boxes"].append(box), gt["difficult"].append(bool(rng.random() < 0.2))
            for _ in range(rng.integers(0, 4)):                  # duplicates near the object
                dt["image"].append(i), dt["class"].append(gt["class"][-1])
                dt["boxes"].append(list(np.array(box) + rng.normal(0, 2, 4)))
                dt["score"].append(float(rng.random()))
        for _ in range(rng.integers(0, 3)):                      # background detections
            y, x = rng.uniform(0, 40, 2)
            dt["image"].append(i), dt["class"].append(int(rng.integers(c)))
            dt["boxes"].append([y, x, y + 8, x + 8]), dt["score"].append(float(rng.random()))
    out = mean_ap.voc_ap(gt, dt, c, iou_threshold=0.5)
    for k in range(c):
        tp, fp, npos = _voc_devkit_loop(gt, dt, k, 0.5)
        if npos == 0:
            assert np.isnan(out["AP_per_class"][k])
            continue
        rec = np.cumsum(tp) / npos
        prec = np.cumsum(tp) / np.maximum(np.cumsum(tp) + np.cumsum(fp), 1e-300)
        mrec, mpre = [0.0, *rec, 1.0], [0.0, *prec, 0.0]
        for i in range(len(mpre) - 2, -1, -1):
            mpre[i] = max(mpre[i], mpre[i + 1])
        want = sum((mrec[i + 1] - mrec[i]) * mpre[i + 1] for i in range(len(mrec) - 1)
                   if mrec[i + 1] != mrec[i])
        assert out["AP_per_class"][k] == pytest.approx(want, abs=1e-12), k


def test_coco_evaluator_gathers_padded_batches_for_boxes_and_masks():
    from jaxvision.evaluators import CocoDetection, VocDetection
    rng = np.random.default_rng(7)
    n, k, m, hw = 5, 4, 3, (12, 12)
    inst = np.zeros((n,) + hw, np.int32)
    boxes = np.zeros((n, m, 4), np.float32)
    gv = np.zeros((n, m), bool)
    for i in range(n):
        for j in range(rng.integers(0, m + 1)):
            y, x = rng.integers(0, 8, 2)
            inst[i, y:y + 4, x:x + 3] = j + 1
            gv[i, j] = True
        for j in range(m):
            ys, xs = np.nonzero(inst[i] == j + 1)
            gv[i, j] = ys.size > 0
            if ys.size:
                boxes[i, j] = [ys.min(), xs.min(), ys.max() + 1, xs.max() + 1]
    det_masks = rng.random((n, k) + hw) * 0.6 + (inst[:, None] == rng.integers(1, m + 1, (n, k))[..., None, None]) * 0.5
    det_boxes = boxes[:, rng.integers(0, m, k)] + rng.normal(0, 0.5, (n, k, 4)).astype(np.float32)
    outputs = {"det_boxes": det_boxes, "det_scores": rng.random((n, k)), "det_classes": rng.integers(0, 2, (n, k)),
               "det_valid": rng.random((n, k)) < 0.8, "boxes": boxes, "box_classes": rng.integers(0, 2, (n, m)),
               "box_valid": gv, "index": np.arange(n) + 10, "instance_mask": inst,
               "det_masks": det_masks > 0.5}
    for iou_type in ("bbox", "segm"):
        ev = CocoDetection("coco", split="test", batch_size=2, every=0, iou_type=iou_type)
        ev.classes = 2
        ev.reset()
        for lo in range(0, n, 2):  # in batches, as the core hands them over
            ev.update({key: v[lo:lo + 2] for key, v in outputs.items()
                       if iou_type == "segm" or key not in ("det_masks", "instance_mask")})
        got = ev.compute()
        dv, g = outputs["det_valid"], gv
        img = np.broadcast_to(outputs["index"][:, None], dv.shape)
        dt = {"image": img[dv], "class": outputs["det_classes"][dv], "boxes": det_boxes[dv],
              "score": outputs["det_scores"][dv]}
        gt = {"image": np.broadcast_to(outputs["index"][:, None], g.shape)[g],
              "class": outputs["box_classes"][g], "boxes": boxes[g]}
        if iou_type == "segm":
            dt["masks"] = (det_masks > 0.5)[dv]
            gt["masks"] = (inst[:, None] == np.arange(1, m + 1)[None, :, None, None])[g]
        want = mean_ap.coco_metrics(gt, dt, 2)
        for key in ("AP", "AP50", "AR10", "AP_per_class"):
            np.testing.assert_allclose(got[key], want[key], err_msg=f"{iou_type} {key}")
    voc = VocDetection("voc", split="test", batch_size=2, every=0)
    voc.classes = 2
    voc.reset()
    voc.update({key: v for key, v in outputs.items() if key not in ("det_masks", "instance_mask")})
    assert voc.compute()["voc_mAP"] == pytest.approx(mean_ap.voc_ap(gt, dt, 2)["mAP"], nan_ok=True)
