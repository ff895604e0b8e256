"""Mean average precision on the host (numpy): COCO's ``COCOeval`` and PASCAL VOC's AP.

Both take flat arrays: every ground-truth object and every detection of the evaluated images
is one row, named by its ``image`` (any int id) and ``class`` (0..C-1). Boxes are
``[y0, x0, y1, x1]`` in absolute pixels (``jaxvision/data/example.py``).

``coco_metrics`` reproduces pycocotools' ``COCOeval`` (``evaluate`` + ``accumulate`` +
``summarize``) number for number (tested to 1e-6 on random sets): IoU thresholds
0.50:0.05:0.95, 101 recall points read from the precision envelope with
``searchsorted(side='left')``, detections sorted by score with a stable sort, ``max_dets``
per image **and class**, area ranges on the ground truth's ``area`` (box area when not given)
and on a detection's own area, crowd regions matched last, never a false positive and
matched by ``intersection / detection area``, classes without ground truth left out of the
means, and ``-1`` for a mean over nothing (as pycocotools prints). Unlike pycocotools it is
vectorized over the (image, class) groups, the IoU thresholds and the area ranges, so 5,000
images x 100 detections take seconds, not minutes (``benchmarks/mean_ap.py``). With
``masks`` (instance segmentation) the IoU is that of the binary masks and areas are mask
areas, as COCO's ``segm`` evaluation.

``voc_ap`` is the PASCAL VOC devkit's rule: a detection matches the ground truth it overlaps
most in its image if that IoU is **> 0.5**; a match to a ``difficult`` object counts neither
way; a second detection of a matched object is a false positive; AP is the area under the
precision envelope (VOC2010+) or the 11-point mean (VOC2007). Differences from the devkit:
coordinates are continuous (no ``+ 1`` pixel on widths and heights) and ties in score keep
their input order (a stable sort; the devkit's quicksort order is unspecified).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

# The exact expressions of pycocotools' Params, so that thresholds match bit for bit.
IOU_THRESHOLDS = np.linspace(.5, 0.95, int(np.round((0.95 - .5) / .05)) + 1, endpoint=True)
RECALL_POINTS = np.linspace(.0, 1.00, int(np.round((1.00 - .0) / .01)) + 1, endpoint=True)
AREA_RANGES = (("all", 0.0, 1e5 ** 2), ("small", 0.0, 32.0 ** 2), ("medium", 32.0 ** 2, 96.0 ** 2),
               ("large", 96.0 ** 2, 1e5 ** 2))
MAX_DETS = (1, 10, 100)
COCO_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")

_CHUNK_ELEMENTS = 1 << 22  # padded (group, detection, ground truth) cells matched at once


def _column(rows: Mapping[str, Any], key: str, n: int, dtype: Any, default: Any) -> np.ndarray:
    if rows.get(key) is None:
        return np.full(n, default, dtype)
    out = np.asarray(rows[key], dtype).reshape(-1)
    if out.shape[0] != n:
        raise ValueError(f"'{key}' has {out.shape[0]} rows but 'boxes' has {n}; give one per box.")
    return out


def _boxes(rows: Mapping[str, Any], what: str) -> np.ndarray:
    boxes = np.asarray(rows["boxes"], np.float64).reshape(-1, 4) if len(rows["boxes"]) else \
        np.zeros((0, 4))
    if not np.isfinite(boxes).all():
        raise ValueError(f"{what} boxes must be finite [y0, x0, y1, x1] pixels.")
    return boxes


def _box_area(boxes: np.ndarray) -> np.ndarray:
    return np.maximum(boxes[:, 2] - boxes[:, 0], 0) * np.maximum(boxes[:, 3] - boxes[:, 1], 0)


def _group_ious(dt_boxes, gt_boxes, gt_crowd, dt_masks=None, gt_masks=None) -> np.ndarray:
    """IoU of padded groups: dt (g, D, 4), gt (g, G, 4) -> (g, D, G); a crowd ground truth
    gives ``intersection / detection area`` (pycocotools' ``iscrowd`` rule)."""
    if dt_masks is not None:
        d = dt_masks.reshape(dt_masks.shape[:2] + (-1,)).astype(np.float64)
        g = gt_masks.reshape(gt_masks.shape[:2] + (-1,)).astype(np.float64)
        inter = d @ g.transpose(0, 2, 1)
        da, ga = d.sum(-1), g.sum(-1)
    else:
        lo = np.maximum(dt_boxes[:, :, None, :2], gt_boxes[:, None, :, :2])
        hi = np.minimum(dt_boxes[:, :, None, 2:], gt_boxes[:, None, :, 2:])
        wh = np.maximum(hi - lo, 0)
        inter = wh[..., 0] * wh[..., 1]
        da = np.prod(np.maximum(dt_boxes[..., 2:] - dt_boxes[..., :2], 0), -1)
        ga = np.prod(np.maximum(gt_boxes[..., 2:] - gt_boxes[..., :2], 0), -1)
    union = np.where(gt_crowd[:, None, :], da[:, :, None], da[:, :, None] + ga[:, None, :] - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def _match_chunk(ious, gt_exists, gt_crowd, gt_ignore, dt_count, dt_out, thresholds):
    """COCO's greedy matching for a chunk of padded groups, every threshold and area range.

    ``ious`` (g, D, G); ``gt_ignore`` (g, A, G) (crowd or area outside the range); ``dt_out``
    (g, A, D) (detection area outside the range); ``dt_count`` (g,) detections per group,
    **ascending** (so the groups still matching at step d are a suffix); detections in score
    order. Returns ``matched`` and ``ignored``, (g, A, T, D) bool each."""
    g, d_max, g_max = ious.shape
    a = gt_ignore.shape[1]
    t = len(thresholds)
    thr = np.minimum(thresholds, 1 - 1e-10)[None, None, :, None]
    taken = np.zeros((g, a, t, g_max), bool)
    matched = np.zeros((g, a, t, d_max), bool)
    ignored = np.zeros((g, a, t, d_max), bool)
    ign_all = np.broadcast_to(gt_ignore[:, :, None, :], (g, a, t, g_max))
    reusable = (gt_crowd & gt_exists)[:, None, None, :]
    areas = np.arange(a)[None, :, None]
    ts = np.arange(t)[None, None, :]
    for d in range(d_max):
        s = int(np.searchsorted(dt_count, d, side="right"))
        if s == g:
            break
        iou = ious[s:, d, :][:, None, None, :]
        ign = ign_all[s:]
        cand = (iou >= thr) & gt_exists[s:, None, None, :] & (~taken[s:] | reusable[s:])
        plain = cand & ~ign
        # Ground truths are visited non-ignored first; within a set the last of the best wins.
        pool = np.where(plain.any(-1, keepdims=True), plain, cand & ign)
        score = np.where(pool, iou, -1.0)
        best = g_max - 1 - np.argmax(score[..., ::-1], axis=-1)
        found = pool.any(-1)
        matched[s:, :, :, d] = found
        ignored[s:, :, :, d] = np.where(
            found, np.take_along_axis(ign, best[..., None], -1)[..., 0], dt_out[s:, :, d][:, :, None])
        taken[np.arange(s, g)[:, None, None], areas, ts, best] |= found
    return matched, ignored


def coco_metrics(gt: Mapping[str, Any], dt: Mapping[str, Any], num_classes: int, *,
                 max_dets: Sequence[int] = MAX_DETS,
                 area_ranges: Sequence[tuple[str, float, float]] = AREA_RANGES) -> dict:
    """COCO box (or mask) AP/AR of detections ``dt`` against ground truth ``gt``.

    Args:
      gt: ``image`` (G,) int, ``class`` (G,) int in [0, num_classes), ``boxes`` (G, 4); optional
        ``crowd`` (G,) bool, ``area`` (G,) float (default: the box area, or the mask area with
        masks), ``masks`` (G, H, W) bool (mask evaluation; then ``dt`` needs masks too, and
        every image the same (H, W)).
      dt: ``image`` (D,), ``class`` (D,), ``boxes`` (D, 4), ``score`` (D,); ``masks`` (D, H, W).
      num_classes: C; classes without ground truth are left out of every mean.
      max_dets: detections kept per image and class (sorted by score) for AR@k; the last one
        also bounds AP.
      area_ranges: (name, low, high) inclusive on both ends; the first is the one AP uses.

    Returns:
      ``AP`` (mean over IoU 0.50:0.95), ``AP50``, ``AP75``, ``APs``, ``APm``, ``APl``,
      ``AR1``, ``AR10``, ``AR100`` (for the default ``max_dets``), ``ARs``, ``ARm``, ``ARl``
      (floats; -1 where nothing is averaged), ``AP_per_class`` (C,) (-1 without ground truth),
      ``precision`` (T, 101, C, A, M) and ``recall`` (T, C, A, M) as pycocotools' ``eval``
      holds them, and ``pr_curve50`` (C, 101): precision at IoU 0.5 over the recall points.
    """
    c = int(num_classes)
    masks = gt.get("masks") is not None or dt.get("masks") is not None
    if masks and (gt.get("masks") is None or dt.get("masks") is None):
        raise ValueError("mask evaluation needs 'masks' in both the ground truth and detections.")
    gboxes, dboxes = _boxes(gt, "ground-truth"), _boxes(dt, "detection")
    ng, nd = len(gboxes), len(dboxes)
    gimg = _column(gt, "image", ng, np.int64, 0)
    gcls = _column(gt, "class", ng, np.int64, 0)
    gcrowd = _column(gt, "crowd", ng, bool, False)
    dimg = _column(dt, "image", nd, np.int64, 0)
    dcls = _column(dt, "class", nd, np.int64, 0)
    dscore = _column(dt, "score", nd, np.float64, 0.0)
    for name, cls in (("ground-truth", gcls), ("detection", dcls)):
        if cls.size and (cls.min() < 0 or cls.max() >= c):
            raise ValueError(f"{name} classes must lie in [0, {c}); got [{cls.min()}, {cls.max()}].")
    gmask = np.asarray(gt["masks"], bool) if masks else None
    dmask = np.asarray(dt["masks"], bool) if masks else None
    garea = _column(gt, "area", ng, np.float64, 0.0) if gt.get("area") is not None else (
        gmask.reshape(ng, -1).sum(-1).astype(np.float64) if masks else _box_area(gboxes))
    darea = dmask.reshape(nd, -1).sum(-1).astype(np.float64) if masks else _box_area(dboxes)
    top = int(max(max_dets))
    lows = np.array([r[1] for r in area_ranges])
    highs = np.array([r[2] for r in area_ranges])
    thresholds = IOU_THRESHOLDS
    t_n, a_n, m_n = len(thresholds), len(area_ranges), len(max_dets)

    # Detections: group by (image, class), score order within (stable), at most `top` each.
    dkey = dimg * c + dcls
    order = np.lexsort((np.arange(nd), -dscore, dkey))
    dkey, order = dkey[order], order
    starts = np.r_[0, np.flatnonzero(np.diff(dkey)) + 1] if nd else np.zeros(0, np.int64)
    rank = np.arange(nd) - np.repeat(starts, np.diff(np.r_[starts, nd])) if nd else np.zeros(0, int)
    keep = rank < top
    order, dkey, rank = order[keep], dkey[keep], rank[keep]
    gkey = gimg * c + gcls
    gorder = np.argsort(gkey, kind="stable")
    gkey = gkey[gorder]
    keys = np.union1d(dkey, gkey)
    d_lo, d_hi = np.searchsorted(dkey, keys, "left"), np.searchsorted(dkey, keys, "right")
    g_lo, g_hi = np.searchsorted(gkey, keys, "left"), np.searchsorted(gkey, keys, "right")
    d_cnt, g_cnt = d_hi - d_lo, g_hi - g_lo

    # Per kept detection (in `order`): matched / ignored for every area range and threshold.
    det_matched = np.zeros((len(order), a_n, t_n), bool)
    det_ignored = np.zeros((len(order), a_n, t_n), bool)
    gt_ignored = (gcrowd[:, None] | (garea[:, None] < lows) | (garea[:, None] > highs))  # (G, A)
    # Groups of similar sizes share a chunk, so padding stays small.
    by_size = np.lexsort((g_cnt, d_cnt))
    pos = 0
    while pos < len(by_size):
        end, gm = pos + 1, max(int(g_cnt[by_size[pos]]), 1)
        while end < len(by_size):
            dm = max(int(d_cnt[by_size[end]]), 1)
            gm = max(gm, int(g_cnt[by_size[end]]))
            if (end - pos + 1) * dm * gm > _CHUNK_ELEMENTS:
                break
            end += 1
        grp = by_size[pos:end]
        pos = end
        g_max = max(int(g_cnt[grp].max()), 1)
        d_max = max(int(d_cnt[grp].max()), 1)
        di = d_lo[grp][:, None] + np.arange(d_max)[None, :]
        d_exists = np.arange(d_max)[None, :] < d_cnt[grp][:, None]
        gi = g_lo[grp][:, None] + np.arange(g_max)[None, :]
        g_exists = np.arange(g_max)[None, :] < g_cnt[grp][:, None]
        drow = order[np.where(d_exists, di, 0)] if len(order) else np.zeros_like(di)
        grow = gorder[np.where(g_exists, gi, 0)] if ng else np.zeros_like(gi)
        crowd = gcrowd[grow] & g_exists if ng else np.zeros_like(g_exists)
        if ng and len(order):
            ious = _group_ious(dboxes[drow], gboxes[grow], crowd,
                               dmask[drow] if masks else None, gmask[grow] if masks else None)
        else:
            ious = np.zeros((len(grp), d_max, g_max))
        ious = np.where(d_exists[:, :, None] & g_exists[:, None, :], ious, 0.0)
        g_ign = (gt_ignored[grow] if ng else np.zeros(grow.shape + (a_n,), bool)).transpose(0, 2, 1)
        dar = darea[drow] if nd else np.zeros(drow.shape)
        d_out = ((dar[..., None] < lows) | (dar[..., None] > highs)).transpose(0, 2, 1)
        matched, ignored = _match_chunk(ious, g_exists, crowd, g_ign, d_cnt[grp], d_out, thresholds)
        flat = di[d_exists]
        det_matched[flat] = matched.transpose(0, 3, 1, 2)[d_exists]
        det_ignored[flat] = ignored.transpose(0, 3, 1, 2)[d_exists]

    # Accumulate per class: detections of every image, score order (stable over image, rank).
    dclass, dscores = dcls[order], dscore[order]
    images = dimg[order]
    acc = np.lexsort((rank, images, dclass))
    class_lo = np.searchsorted(dclass[acc], np.arange(c), "left")
    class_hi = np.searchsorted(dclass[acc], np.arange(c), "right")
    positives = np.zeros((c, a_n), np.int64)
    np.add.at(positives, gcls, (~gt_ignored).astype(np.int64)) if ng else None
    precision = -np.ones((t_n, len(RECALL_POINTS), c, a_n, m_n))
    recall = -np.ones((t_n, c, a_n, m_n))
    for k in range(c):
        rows = acc[class_lo[k]:class_hi[k]]
        for a in range(a_n):
            npig = positives[k, a]
            if npig == 0:
                continue
            for m, md in enumerate(max_dets):
                sel = rows[rank[rows] < md]
                sel = sel[np.argsort(-dscores[sel], kind="mergesort")]
                tm, ti = det_matched[sel, a].T, det_ignored[sel, a].T  # (T, n)
                tp = np.cumsum(tm & ~ti, axis=1, dtype=np.float64)
                fp = np.cumsum(~tm & ~ti, axis=1, dtype=np.float64)
                n = len(sel)
                recall[:, k, a, m] = tp[:, -1] / npig if n else 0.0
                rc = tp / npig
                pr = tp / (fp + tp + np.spacing(1))
                pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]
                q = np.zeros((t_n, len(RECALL_POINTS)))
                for ti_ in range(t_n):
                    inds = np.searchsorted(rc[ti_], RECALL_POINTS, side="left")
                    ok = inds < n
                    q[ti_, ok] = pr[ti_, inds[ok]]
                precision[:, :, k, a, m] = q

    def mean(x: np.ndarray) -> float:
        x = x[x > -1]
        return float(x.mean()) if x.size else -1.0

    m_last = m_n - 1
    t50 = int(np.flatnonzero(thresholds == 0.5)[0])
    t75 = int(np.flatnonzero(thresholds == 0.75)[0])
    out: dict[str, Any] = {
        "AP": mean(precision[:, :, :, 0, m_last]),
        "AP50": mean(precision[t50, :, :, 0, m_last]),
        "AP75": mean(precision[t75, :, :, 0, m_last]),
    }
    suffix = {"small": "s", "medium": "m", "large": "l"}
    for a, (name, _, _) in enumerate(area_ranges):
        if name in suffix:
            out[f"AP{suffix[name]}"] = mean(precision[:, :, :, a, m_last])
    for m, md in enumerate(max_dets):
        out[f"AR{md}"] = mean(recall[:, :, 0, m])
    for a, (name, _, _) in enumerate(area_ranges):
        if name in suffix:
            out[f"AR{suffix[name]}"] = mean(recall[:, :, a, m_last])
    out["AP_per_class"] = np.array([mean(precision[:, :, k, 0, m_last]) for k in range(c)])
    out["pr_curve50"] = precision[t50, :, :, 0, m_last].T.copy()
    out["precision"], out["recall"] = precision, recall
    return out


def voc_ap(gt: Mapping[str, Any], dt: Mapping[str, Any], num_classes: int, *,
           iou_threshold: float = 0.5, eleven_point: bool = False) -> dict:
    """PASCAL VOC AP per class (see the module docstring for the rule).

    Args:
      gt: ``image`` (G,), ``class`` (G,), ``boxes`` (G, 4), optional ``difficult`` (G,) bool.
      dt: ``image`` (D,), ``class`` (D,), ``boxes`` (D, 4), ``score`` (D,).
      num_classes: C.
      iou_threshold: a match needs IoU strictly above it.
      eleven_point: VOC2007's mean of the best precision at recall >= 0, 0.1, ..., 1;
        otherwise (VOC2010+) the area under the precision envelope.

    Returns:
      ``mAP`` (mean over the classes with a non-difficult object; nan if none) and
      ``AP_per_class`` (C,) (nan without a non-difficult object).
    """
    c = int(num_classes)
    gboxes, dboxes = _boxes(gt, "ground-truth"), _boxes(dt, "detection")
    ng, nd = len(gboxes), len(dboxes)
    gimg, gcls = _column(gt, "image", ng, np.int64, 0), _column(gt, "class", ng, np.int64, 0)
    diff = _column(gt, "difficult", ng, bool, False)
    dimg, dcls = _column(dt, "image", nd, np.int64, 0), _column(dt, "class", nd, np.int64, 0)
    dscore = _column(dt, "score", nd, np.float64, 0.0)
    aps = np.full(c, np.nan)
    for k in range(c):
        gsel = np.flatnonzero(gcls == k)
        npos = int((~diff[gsel]).sum())
        if npos == 0:
            continue
        dsel = np.flatnonzero(dcls == k)
        dsel = dsel[np.argsort(-dscore[dsel], kind="stable")]
        best, overlap = _best_overlap(dimg[dsel], dboxes[dsel], gimg[gsel], gboxes[gsel])
        hit = overlap > iou_threshold
        hit_diff = hit & diff[gsel[np.maximum(best, 0)]]          # neither TP nor FP
        # The devkit walks detections in score order and marks a ground truth used at its first
        # match; a detection's best ground truth does not depend on that state, so the first
        # detection (in score order) per ground truth is the TP and later ones are FPs.
        tp = np.zeros(len(dsel))
        cand = np.flatnonzero(hit & ~hit_diff)
        _, first = np.unique(best[cand], return_index=True)
        tp[cand[first]] = 1
        fp = (~hit_diff).astype(np.float64) - tp
        tp, fp = np.cumsum(tp), np.cumsum(fp)
        rec = tp / npos
        prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        aps[k] = _voc_integrate(rec, prec, eleven_point)
    present = ~np.isnan(aps)
    return {"mAP": float(aps[present].mean()) if present.any() else float("nan"),
            "AP_per_class": aps}


def _best_overlap(dimg: np.ndarray, dboxes: np.ndarray, gimg: np.ndarray, gboxes: np.ndarray,
                  chunk: int = 1 << 16) -> tuple[np.ndarray, np.ndarray]:
    """Per detection, the position (in ``gboxes``) of the ground truth of its image that it
    overlaps most (the first on ties, as ``argmax``) and that IoU; (-1, -1.0) when its image
    has none. Ground truths are padded per image, and detections go in chunks of ``chunk``."""
    best, overlap = np.full(len(dimg), -1), np.full(len(dimg), -1.0)
    if len(dimg) == 0 or len(gimg) == 0:
        return best, overlap
    order = np.argsort(gimg, kind="stable")
    imgs, start, count = np.unique(gimg[order], return_index=True, return_counts=True)
    slot = np.full((len(imgs), int(count.max())), -1)
    rank = np.arange(len(order)) - np.repeat(start, count)
    slot[np.repeat(np.arange(len(imgs)), count), rank] = order       # (images, max gt) positions
    row = np.searchsorted(imgs, dimg)
    has = (row < len(imgs)) & (imgs[np.minimum(row, len(imgs) - 1)] == dimg)
    for lo in range(0, len(dimg), chunk):
        sel = np.flatnonzero(has[lo:lo + chunk]) + lo
        pos = slot[row[sel]]                                         # (d, max gt)
        ious = _group_ious(dboxes[sel][:, None], gboxes[np.maximum(pos, 0)],
                           np.zeros(pos.shape, bool))[:, 0]
        ious = np.where(pos >= 0, ious, -np.inf)
        j = np.argmax(ious, 1)
        best[sel], overlap[sel] = pos[np.arange(len(sel)), j], ious[np.arange(len(sel)), j]
    return best, overlap


def _voc_integrate(rec: np.ndarray, prec: np.ndarray, eleven_point: bool) -> float:
    if eleven_point:
        return float(np.mean([prec[rec >= t].max() if (rec >= t).any() else 0.0
                              for t in np.arange(0.0, 1.1, 0.1)]))
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))
