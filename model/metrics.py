"""The paper's metrics (spec, "Metrics"), exact and streaming, numpy + scipy only.

Image level: AUROC, AP, F1-max. Pixel level: AUROC, AUPRO, F1-max, computed per
category and then averaged over categories (:func:`metrics_table`).

Conventions: functions take the truth first, like scikit-learn (``labels, scores`` or
``masks, maps``); masks may be bool, {0,1}/{0,255} integers or floats (binarised at
0.5). Undefined metrics (one class only, no defect region) are NaN, not errors.

Two pixel modes:
  * exact (:func:`pixel_auroc`, :func:`pixel_f1_max`, :func:`aupro`): all maps in
    memory; AUPRO equals the spec's per-threshold loop (:func:`aupro_loop`) to 1e-6.
  * streaming (:class:`StreamingPixelMetrics`): memory independent of the number of
    images; fixed bins on [0, 1], see its docstring for the deviation.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Iterable, Mapping

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


def _binarise(masks) -> np.ndarray:
    masks = np.asarray(masks)
    if masks.dtype == bool:
        return masks
    return masks >= 0.5 if np.issubdtype(masks.dtype, np.floating) else masks != 0


def _stack(masks, maps) -> tuple[np.ndarray, np.ndarray]:
    """-> (masks bool [N,H,W], maps [N,H,W]) from [H,W] or [N,H,W] inputs."""
    maps = np.asarray(maps)
    masks = _binarise(masks)
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
    labels = _binarise(labels).ravel()
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
    labels, scores = _binarise(labels).ravel(), np.asarray(scores).ravel()
    tp, fp = _ranked_counts(labels, scores)
    distinct = np.unique(scores)[::-1]  # the order of _ranked_counts' tie groups
    return float(distinct[np.argmax(2 * tp / (tp + fp + tp[-1]))])


def pixel_auroc(masks, maps) -> float:
    """ROC AUC over all pixels of maps [N,H,W] against masks [N,H,W]."""
    masks, maps = _stack(masks, maps)
    return image_auroc(masks, maps)


def pixel_f1_max(masks, maps) -> float:
    """F1-max over all pixels."""
    masks, maps = _stack(masks, maps)
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


def _label_regions(masks: np.ndarray) -> tuple[np.ndarray, int, np.ndarray]:
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
    masks, maps = _stack(masks, maps)
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
            labels, count, areas = _label_regions(m[with_defect])
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
    masks, maps = _stack(masks, maps)
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


# ---------------------------------------------------------------- streaming
def _suffix(counts: np.ndarray) -> np.ndarray:
    """s[k] = counts[k:].sum(), with s[len] = 0 -> [len + 1]."""
    return np.r_[np.cumsum(counts[::-1])[::-1], 0.0]


class StreamingPixelMetrics:
    """Pixel AUROC, AUPRO and F1-max accumulated batch by batch in O(n_bins) memory.

    Scores are clipped to [0, 1] (maps are probabilities) and counted in ``n_bins``
    equal bins: normal-pixel counts, defect-pixel counts, and per bin the sum over
    defect pixels of 1 / (area of the pixel's 8-connected region), plus the number of
    regions and the running min / max score. From these:
      * AUROC counts each bin as one tied score (ordering inside a bin is lost);
      * F1-max takes the bin edges as thresholds;
      * AUPRO uses the spec's thresholds between the running min and max; the counts
        above a threshold are read from the bins, interpolated linearly inside the bin
        the threshold falls in (scores assumed uniform within a bin).
    Deviation from exact: only scores sharing a bin with a threshold (or with each
    other) are treated approximately; with the default 2**16 bins it stays below 0.005
    on the test data (tests/data/test_metrics.py), provided the maps span many bins
    (a range much wider than 1 / n_bins). Regions never cross images, so batches may
    be of any size; ``merge`` combines accumulators from parallel workers.
    """

    def __init__(self, n_bins: int = 1 << 16, n_thresholds: int = N_THRESHOLDS,
                 max_fpr: float = MAX_FPR):
        self.n_bins, self.n_thresholds, self.max_fpr = n_bins, n_thresholds, max_fpr
        self.normal = np.zeros(n_bins)  # normal pixels per bin
        self.defect = np.zeros(n_bins)  # defect pixels per bin
        self.region_weight = np.zeros(n_bins)  # sum of 1 / region area per bin
        self.n_regions = 0
        self.lo, self.hi = math.inf, -math.inf

    def update(self, maps, masks) -> None:
        """Add maps float [N,H,W] (or [H,W]) with their masks [N,H,W]."""
        masks, maps = _stack(masks, maps)
        if maps.size == 0:
            return
        maps = np.clip(maps, 0.0, 1.0)
        self.lo, self.hi = min(self.lo, float(maps.min())), max(self.hi, float(maps.max()))
        bins = np.minimum((maps * self.n_bins).astype(np.int64), self.n_bins - 1)
        labels, count, areas = _label_regions(masks)
        self.n_regions += count
        self.normal += np.bincount(bins[~masks], minlength=self.n_bins)
        in_defect = bins[masks]
        self.defect += np.bincount(in_defect, minlength=self.n_bins)
        self.region_weight += np.bincount(in_defect, weights=1.0 / areas[labels[masks]],
                                          minlength=self.n_bins)

    def merge(self, other: "StreamingPixelMetrics") -> "StreamingPixelMetrics":
        """Add another accumulator's counts (same n_bins) into this one; returns self."""
        if other.n_bins != self.n_bins:
            raise ValueError("cannot merge accumulators with different n_bins")
        self.normal += other.normal
        self.defect += other.defect
        self.region_weight += other.region_weight
        self.n_regions += other.n_regions
        self.lo, self.hi = min(self.lo, other.lo), max(self.hi, other.hi)
        return self

    def _above(self, counts: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Approximate number of scores > t for thresholds t [T], from bin counts."""
        pos = t * self.n_bins
        k = np.clip(np.floor(pos).astype(np.int64), 0, self.n_bins - 1)
        inside = np.clip(k + 1 - pos, 0.0, 1.0)  # part of bin k above t
        return _suffix(counts)[k + 1] + counts[k] * inside

    def aupro(self) -> float:
        n_normal = self.normal.sum()
        if self.n_regions == 0 or n_normal == 0 or not self.hi > self.lo:
            return math.nan
        t = pro_thresholds(self.lo, self.hi, self.n_thresholds)
        fpr = self._above(self.normal, t) / n_normal
        pro = self._above(self.region_weight, t) / self.n_regions
        return pro_curve_area(fpr, pro, self.max_fpr)

    def auroc(self) -> float:
        n_pos, n_neg = self.defect.sum(), self.normal.sum()
        if n_pos == 0 or n_neg == 0:
            return math.nan
        pos_above = _suffix(self.defect)[1:]
        return float(np.sum(self.normal * (pos_above + 0.5 * self.defect)) / (n_pos * n_neg))

    def f1_max(self) -> float:
        n_pos = self.defect.sum()
        if n_pos == 0:
            return math.nan
        tp, fp = _suffix(self.defect)[:-1], _suffix(self.normal)[:-1]
        return float(np.max(2 * tp / (tp + fp + n_pos)))

    def f1_max_threshold(self) -> float:
        """Bin edge t where "score >= t" reaches F1-max (within 1 / n_bins of exact)."""
        tp, fp = _suffix(self.defect)[:-1], _suffix(self.normal)[:-1]
        return float(np.argmax(2 * tp / (tp + fp + self.defect.sum())) / self.n_bins)

    def result(self) -> dict:
        return {"pixel_auroc": self.auroc(), "pixel_aupro": self.aupro(),
                "pixel_f1_max": self.f1_max()}


class ImageMetrics:
    """Image AUROC / AP / F1-max, accumulated batch by batch (exact: keeps one float64
    score and one bool label per image, 9 bytes an image)."""

    def __init__(self):
        self.scores: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []

    def update(self, scores, labels) -> None:
        self.scores.append(np.asarray(scores, np.float64).ravel())
        self.labels.append(_binarise(labels).ravel())

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
    masks, maps = _stack(masks, maps)
    tp, fp = _ranked_counts(masks, maps)
    return {"pixel_auroc": _auroc_from_counts(tp, fp),
            "pixel_aupro": aupro(masks, maps, n_thresholds),
            "pixel_f1_max": _f1_max_from_counts(tp, fp)}


class CategoryMetrics:
    """Image and pixel metrics per category, exact (maps kept in memory) or streaming.

    update(categories [N] str, scores [N], labels [N], maps [N,H,W] | None,
    masks [N,H,W] | None, has_mask [N] bool | None). Anomalous images whose mask is
    unknown (has_mask False) count for image metrics only and are reported as
    ``n_anomalous_without_mask``.
    """

    def __init__(self, streaming: bool = False, n_bins: int = 1 << 16):
        self.streaming, self.n_bins = streaming, n_bins
        self.image: dict[str, ImageMetrics] = defaultdict(ImageMetrics)
        self.pixel: dict[str, StreamingPixelMetrics] = {}
        self.kept: dict[str, list] = defaultdict(list)  # exact mode: (maps, masks) chunks
        self.counts: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(3, np.int64))

    def update(self, categories: Iterable[str], scores, labels, maps=None, masks=None,
               has_mask=None) -> None:
        categories = np.asarray(list(categories), dtype=object)
        scores, labels = np.asarray(scores).ravel(), _binarise(labels).ravel()
        has_mask = (np.ones(len(labels), bool) if has_mask is None
                    else np.asarray(has_mask, bool).ravel())
        for cat in dict.fromkeys(categories):  # first-seen order, each once
            sel = categories == cat
            self.image[cat].update(scores[sel], labels[sel])
            self.counts[cat] += [sel.sum(), labels[sel].sum(), (labels & ~has_mask)[sel].sum()]
            if maps is None:
                continue
            if masks is None:
                raise ValueError("maps need their masks (all zero for normal images)")
            # an anomalous image without a mask would pass its defect off as normal pixels
            use = sel & (has_mask | ~labels)
            m, s = _binarise(np.asarray(masks)[use]), np.asarray(maps)[use]
            if self.streaming:
                self.pixel.setdefault(cat, StreamingPixelMetrics(self.n_bins)).update(s, m)
            else:  # float32 like the detector's maps: half the memory of float64
                self.kept[cat].append((s.astype(np.float32, copy=False), m))

    def results(self) -> dict[str, dict]:
        """{category: {n_images, n_anomalous, n_anomalous_without_mask, image_*, pixel_*}}."""
        out = {}
        for cat in sorted(self.image):
            n = self.counts[cat]
            row = {"n_images": int(n[0]), "n_anomalous": int(n[1]),
                   "n_anomalous_without_mask": int(n[2]), **self.image[cat].result()}
            if cat in self.pixel:
                row.update(self.pixel[cat].result())
            elif self.kept.get(cat):
                maps = np.concatenate([s for s, _ in self.kept[cat]])
                row.update(pixel_metrics(np.concatenate([m for _, m in self.kept[cat]]), maps))
            else:
                row.update(dict.fromkeys(PIXEL_KEYS, math.nan))
            out[cat] = row
        return out

    def table(self) -> list[dict]:
        return metrics_table(self.results())

    def calibrate(self) -> dict:
        """Thresholds at F1-max over all categories pooled: {image_threshold,
        pixel_threshold} (pixel NaN without maps; streaming: a bin edge)."""
        images = ImageMetrics()
        for acc in self.image.values():
            images.merge(acc)
        labels = np.concatenate(images.labels) if images.labels else np.zeros(0, bool)
        out = {"image_threshold": (best_threshold(labels, np.concatenate(images.scores))
                                   if labels.any() else math.nan), "pixel_threshold": math.nan}
        if self.pixel:
            pooled = StreamingPixelMetrics(self.n_bins)
            for acc in self.pixel.values():
                pooled.merge(acc)
            if pooled.defect.sum():
                out["pixel_threshold"] = pooled.f1_max_threshold()
        elif self.kept:
            chunks = [c for cat in self.kept.values() for c in cat]
            masks = np.concatenate([m.ravel() for _, m in chunks])
            if masks.any():
                out["pixel_threshold"] = best_threshold(
                    masks, np.concatenate([s.ravel() for s, _ in chunks]))
        return out


def metrics_table(per_category: Mapping[str, Mapping[str, float]], mean_name: str = "mean"
                  ) -> list[dict]:
    """Rows {"category": c, **metrics} per category (sorted), then a mean row.

    The mean row averages each metric over the categories where it is defined (NaN
    where none is); counts (keys starting with "n_") are summed instead.
    """
    rows = [{"category": c, **per_category[c]} for c in sorted(per_category)]
    keys = list(dict.fromkeys(k for r in rows for k in r if k != "category"))
    mean = {"category": mean_name}
    for k in keys:
        values = [r[k] for r in rows if k in r and r[k] is not None]
        if k.startswith("n_"):
            mean[k] = int(sum(values))
        else:
            finite = [float(v) for v in values if math.isfinite(float(v))]
            mean[k] = float(np.mean(finite)) if finite else math.nan
    return rows + [mean]
