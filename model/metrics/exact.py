"""The paper's metrics (spec, "Metrics"), numpy + scipy only.

Image level: AUROC, AP, F1-max. Pixel level: AUROC, AUPRO, F1-max, computed per
category and then averaged over categories (metrics_table.py).

Conventions: functions take the truth first, like scikit-learn (``labels, scores`` or
``masks, maps``); masks may be bool, {0,1}/{0,255} integers or floats (binarised at
0.5). Undefined metrics (one class only, no defect region) are NaN, not errors.

Two pixel modes:
  * exact (:func:`pixel_auroc`, :func:`pixel_f1_max`, :func:`aupro`): all maps in
    memory; AUPRO equals the spec's per-threshold loop (:func:`aupro_loop`) to 1e-6.
  * streaming (:class:`~vip2scan.model.metrics_streaming.StreamingPixelMetrics`): memory
    independent of the number of images; fixed bins on [0, 1], see its docstring for the
    deviation.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

N_THRESHOLDS = 200  # spec: PRO at 200 equally spaced thresholds
MAX_FPR = 0.3  # spec: keep thresholds whose FPR is below this
IMAGE_KEYS = ("image_auroc", "image_ap", "image_f1_max")
PIXEL_KEYS = ("pixel_auroc", "pixel_aupro", "pixel_f1_max")

# 8-connectivity inside each image, none across the stack axis.
_STRUCTURE_2D = np.ones((3, 3), bool)
_STRUCTURE_STACK = np.zeros((3, 3, 3), bool)
_STRUCTURE_STACK[1] = True


def binarise(masks) -> np.ndarray:
    masks = np.asarray(masks)
    if masks.dtype == bool:
        return masks
    return masks >= 0.5 if np.issubdtype(masks.dtype, np.floating) else masks != 0


def stack_masks_maps(masks, maps) -> tuple[np.ndarray, np.ndarray]:
    """-> (masks bool [N,H,W], maps [N,H,W]) from [H,W] or [N,H,W] inputs."""
    maps = np.asarray(maps)
    masks = binarise(masks)
    if maps.ndim == 2:
        maps, masks = maps[None], masks[None]
    if maps.shape != masks.shape or maps.ndim != 3:
        raise ValueError(f"maps {maps.shape} and masks {masks.shape} must both be [N,H,W]")
    return masks, maps


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2))


# ---------------------------------------------------------------- ranking metrics
def _ranked_counts(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative (tp, fp) float64 [T] at each distinct score, highest score first."""
    labels = binarise(labels).ravel()
    scores = np.asarray(scores).ravel()
    order = np.argsort(scores, kind="stable")[::-1]
    scores, labels = scores[order], labels[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
    tp = np.cumsum(labels, dtype=np.float64)[last_of_tie]
    return tp, last_of_tie + 1.0 - tp


def _auroc_from_counts(tp, fp) -> float:
    if tp.size == 0 or tp[-1] == 0 or fp[-1] == 0:
        return math.nan
    return _trapezoid(np.r_[0.0, tp / tp[-1]], np.r_[0.0, fp / fp[-1]])


def _ap_from_counts(tp, fp) -> float:
    if tp.size == 0 or tp[-1] == 0:
        return math.nan
    recall = tp / tp[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * tp / (tp + fp)))


def _f1_max_from_counts(tp, fp) -> float:
    if tp.size == 0 or tp[-1] == 0:
        return math.nan
    # F1 = 2PR / (P + R) = 2 tp / (2 tp + fp + fn) with fn = total positives - tp
    return float(np.max(2 * tp / (tp + fp + tp[-1])))


def image_auroc(labels, scores) -> float:
    """ROC AUC of scores [N] against labels [N] (= sklearn roc_auc_score)."""
    return _auroc_from_counts(*_ranked_counts(labels, scores))


def image_ap(labels, scores) -> float:
    """Average precision (= sklearn average_precision_score)."""
    return _ap_from_counts(*_ranked_counts(labels, scores))


def f1_max(labels, scores) -> float:
    """Best F1 over the precision-recall curve (every distinct score as a threshold)."""
    return _f1_max_from_counts(*_ranked_counts(labels, scores))


def best_threshold(labels, scores) -> float:
    """The score threshold (predict anomalous when score >= it) reaching F1-max."""
    labels, scores = binarise(labels).ravel(), np.asarray(scores).ravel()
    tp, fp = _ranked_counts(labels, scores)
    distinct = np.unique(scores)[::-1]  # the order of _ranked_counts' tie groups
    return float(distinct[np.argmax(2 * tp / (tp + fp + tp[-1]))])


def pixel_auroc(masks, maps) -> float:
    """ROC AUC over all pixels of maps [N,H,W] against masks [N,H,W]."""
    masks, maps = stack_masks_maps(masks, maps)
    return image_auroc(masks, maps)


def pixel_f1_max(masks, maps) -> float:
    """F1-max over all pixels."""
    masks, maps = stack_masks_maps(masks, maps)
    return f1_max(masks, maps)


# ---------------------------------------------------------------- AUPRO
def _sklearn_auc(x: np.ndarray, y: np.ndarray) -> float:
    """Trapezoid area as sklearn.metrics.auc: points in the given order, sign fixed."""
    dx = np.diff(x)
    if np.all(dx <= 0):
        return -_trapezoid(y, x)
    if np.all(dx >= 0):
        return _trapezoid(y, x)
    raise ValueError("x is neither increasing nor decreasing")


def pro_curve_area(fpr: np.ndarray, pro: np.ndarray, max_fpr: float = MAX_FPR) -> float:
    """Spec's last step: keep FPR < max_fpr, min-max rescale those FPRs, area in given order."""
    keep = fpr < max_fpr
    x, y = fpr[keep], pro[keep]
    if x.size < 2 or x.max() == x.min() or not np.all(np.isfinite(y)):
        return math.nan
    return _sklearn_auc((x - x.min()) / (x.max() - x.min()), y)


def pro_thresholds(lo: float, hi: float, n: int = N_THRESHOLDS) -> np.ndarray:
    """lo + j (hi - lo) / n for j = 0..n-1: the reference's np.arange(lo, hi, step), float64."""
    return float(lo) + np.arange(n, dtype=np.float64) * ((float(hi) - float(lo)) / n)


def label_regions(masks: np.ndarray) -> tuple[np.ndarray, int, np.ndarray]:
    """8-connected regions per image of masks bool [N,H,W] -> (labels, count, areas[count+1])."""
    labels, count = ndimage.label(masks, structure=_STRUCTURE_STACK)
    return labels, count, np.bincount(labels.ravel(), minlength=count + 1)


def _count_below(thresholds: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Number of thresholds strictly below each score: int64, shape of scores.

    Equals np.searchsorted(thresholds, scores) for the equally spaced thresholds of
    :func:`pro_thresholds` with scores >= thresholds[0], ~2x faster: the index comes
    from arithmetic, and only scores within 1e-4 of a threshold (in units of the
    spacing) are placed by an exact search. In float32 the arithmetic's relative error
    is < 2e-7, i.e. < 4e-5 spacings over 200 thresholds, so the band is safe.
    """
    dtype = np.float32 if scores.dtype == np.float32 else np.float64
    position = (scores - dtype(thresholds[0])) * dtype(1.0 / (thresholds[1] - thresholds[0]))
    floor = np.floor(position)
    near = np.flatnonzero(np.abs(position - floor - 0.5) > 0.5 - 1e-4)
    count = np.clip(floor, -1, len(thresholds) - 1).astype(np.int64) + 1
    count.flat[near] = np.searchsorted(thresholds, scores.flat[near])
    return count


def aupro(masks, maps, n_thresholds: int = N_THRESHOLDS, max_fpr: float = MAX_FPR,
          chunk_pixels: int = 1 << 23) -> float:
    """AUPRO of one category, exactly the spec's definition, vectorised.

    masks, maps: [N,H,W] (or [H,W]). A pixel is detected at threshold t when its score
    > t. Instead of looping over thresholds, each pixel's score is turned once into the
    number of thresholds below it (:func:`_count_below`); per-threshold false positives and
    per-region detected fractions are then suffix sums of bincounts over that number
    (regions weighted by 1 / area). Work is chunked over images to bound memory.
    """
    masks, maps = stack_masks_maps(masks, maps)
    lo, hi = float(maps.min()), float(maps.max())
    if not hi > lo:
        return math.nan
    thresholds = pro_thresholds(lo, hi, n_thresholds)
    n_normal = np.zeros(n_thresholds + 1)
    region_weight = np.zeros(n_thresholds + 1)
    n_regions = 0
    step = max(1, chunk_pixels // maps[0].size)
    for start in range(0, len(maps), step):
        m, s = masks[start:start + step], maps[start:start + step]
        key = _count_below(thresholds, s)
        # one bincount over all pixels: key <= n for normal pixels, > n for defect pixels
        np.add(key, n_thresholds + 1, out=key, where=m)
        counts = np.bincount(key.ravel(), minlength=2 * (n_thresholds + 1))
        n_normal += counts[:n_thresholds + 1]
        with_defect = np.flatnonzero(m.any(axis=(1, 2)))  # label only where needed
        if with_defect.size:
            labels, count, areas = label_regions(m[with_defect])
            n_regions += count
            inside = labels > 0
            region_weight += np.bincount(key[with_defect][inside] - (n_thresholds + 1),
                                         weights=1.0 / areas[labels[inside]],
                                         minlength=n_thresholds + 1)
    if n_regions == 0 or n_normal.sum() == 0:
        return math.nan
    # detected at threshold j <=> above > j: suffix sums from j + 1
    fp = np.cumsum(n_normal[::-1])[::-1][1:]
    detected = np.cumsum(region_weight[::-1])[::-1][1:]
    return pro_curve_area(fp / n_normal.sum(), detected / n_regions, max_fpr)


def aupro_loop(masks, maps, n_thresholds: int = N_THRESHOLDS, max_fpr: float = MAX_FPR
               ) -> float:
    """The spec's AUPRO as a loop over thresholds and regions, like the reference code
    (which also re-labels the regions at every threshold; here they are found once).
    Slow; kept as the yardstick for :func:`aupro` (tests, benchmark)."""
    masks, maps = stack_masks_maps(masks, maps)
    regions = []  # (image index, flat pixel indices) per 8-connected region
    for i, mask in enumerate(masks):
        labels, count = ndimage.label(mask, structure=_STRUCTURE_2D)
        flat = labels.ravel()
        order = np.argsort(flat, kind="stable")
        bounds = np.searchsorted(flat[order], np.arange(1, count + 2))
        regions += [(i, order[bounds[r]:bounds[r + 1]]) for r in range(count)]
    lo, hi = float(maps.min()), float(maps.max())
    if not hi > lo or not regions:
        return math.nan
    normal = ~masks
    fprs, pros = [], []
    for t in pro_thresholds(lo, hi, n_thresholds):
        detected = maps > t
        pros.append(np.mean([detected[i].ravel()[px].mean() for i, px in regions]))
        fprs.append(np.logical_and(normal, detected).sum() / normal.sum())
    return pro_curve_area(np.array(fprs), np.array(pros), max_fpr)


class ImageMetrics:
    """Image AUROC / AP / F1-max, accumulated batch by batch (exact: keeps one float64
    score and one bool label per image, 9 bytes an image)."""

    def __init__(self):
        self.scores: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []

    def update(self, scores, labels) -> None:
        self.scores.append(np.asarray(scores, np.float64).ravel())
        self.labels.append(binarise(labels).ravel())

    def merge(self, other: "ImageMetrics") -> "ImageMetrics":
        self.scores += other.scores
        self.labels += other.labels
        return self

    def result(self) -> dict:
        if not self.scores:
            return dict.fromkeys(IMAGE_KEYS, math.nan)
        tp, fp = _ranked_counts(np.concatenate(self.labels), np.concatenate(self.scores))
        return {"image_auroc": _auroc_from_counts(tp, fp), "image_ap": _ap_from_counts(tp, fp),
                "image_f1_max": _f1_max_from_counts(tp, fp)}


def pixel_metrics(masks, maps, n_thresholds: int = N_THRESHOLDS) -> dict:
    """Exact pixel AUROC, AUPRO and F1-max of one category (one sort for AUROC + F1)."""
    masks, maps = stack_masks_maps(masks, maps)
    tp, fp = _ranked_counts(masks, maps)
    return {"pixel_auroc": _auroc_from_counts(tp, fp),
            "pixel_aupro": aupro(masks, maps, n_thresholds),
            "pixel_f1_max": _f1_max_from_counts(tp, fp)}
