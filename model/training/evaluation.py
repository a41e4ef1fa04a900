"""Evaluation of a detector on labelled records: the inference pass and the metric
accumulation, separated so that the pass can also run on Ray Data (jobs/eval.py).

Memory: records are scored grouped by category and, in exact mode, a category's maps
are reduced to its metrics as soon as the next category starts, so memory holds one
category's maps at a time. Streaming mode keeps fixed-size histograms instead
(:class:`vip2scan.model.metrics.streaming.StreamingPixelMetrics`) and is chosen automatically
when one category's maps would exceed :data:`EXACT_MAX_PIXELS`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..data.loading import has_pixel_truth, load_sample, prefetched, record_get
from ..images import to_batch
from ..metrics import best_threshold
from ..metrics.table import CategoryMetrics, metrics_table

# Exact pixel metrics sort every pixel of a category (about 25 bytes a pixel at the peak):
# 2**26 pixels is about 1.6 GB, i.e. ~250 images of 518 x 518 or ~1300 of 224 x 224 per
# category, which keeps MVTec AD and VisA (at most ~200 test images a category) exact.
EXACT_MAX_PIXELS = 1 << 26
CALIBRATION_BINS = 1 << 16  # pixel threshold resolution 1.5e-5 on [0, 1]


def sort_by_category(records: Iterable[Any]) -> list[Any]:
    """Group records by category (stable within one), so categories can be finalised in turn."""
    return sorted(records, key=lambda r: str(record_get(r, "category", "")))


def choose_mode(records: Sequence[Any], image_size: int, streaming: bool | None = None) -> str:
    """'streaming' when asked, or when the largest category's maps exceed EXACT_MAX_PIXELS."""
    if streaming is not None:
        return "streaming" if streaming else "exact"
    per_category = Counter(str(record_get(r, "category", "")) for r in records)
    largest = max(per_category.values(), default=0)
    return "streaming" if largest * image_size * image_size > EXACT_MAX_PIXELS else "exact"


# ------------------------------------------------------------------ inference pass
def load_eval_batch(records: Sequence[Any], size: int, storage_options: dict | None = None,
                    threads: int = 4) -> dict[str, np.ndarray]:
    """Decoded inputs of a batch: image uint8 [N,S,S,3], mask bool [N,S,S], label, category,
    has_mask (False for anomalous images without a mask file)."""
    samples = list(prefetched(lambda r: load_sample(r, size, storage_options), records,
                              threads=threads, window=len(records) or 1))
    return {"image": np.stack([s[0] for s in samples]),
            "mask": np.stack([s[1] for s in samples]),
            "label": np.array([s[2] for s in samples], np.int64),
            "category": np.array([str(record_get(r, "category", "")) for r in records], object),
            "has_mask": np.array([has_pixel_truth(r) for r in records], bool),
            "image_uri": np.array([str(record_get(r, "image_uri")) for r in records], object)}


def score_batch(detector, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Adds image_score [N] and anomaly_map [N,S,S] (float32) to a loaded batch."""
    detector.eval()
    score, amap = detector(to_batch(batch["image"]))
    out = {k: v for k, v in batch.items() if k != "image"}
    out["image_score"] = score.float().cpu().numpy()
    out["anomaly_map"] = amap.float().cpu().numpy()
    return out


def score_records(detector, records: Sequence[Any], batch_size: int = 8,
                  storage_options: dict | None = None, threads: int = 4) -> Iterator[dict[str, np.ndarray]]:
    """The local inference pass, in the order given (use :func:`sort_by_category` first)."""
    chunks = [records[i:i + batch_size] for i in range(0, len(records), batch_size)]
    # load the next batch while the detector runs on this one
    loaded = prefetched(lambda c: load_eval_batch(c, detector.image_size, storage_options, threads),
                        chunks, threads=1, window=2)
    for batch in loaded:
        yield score_batch(detector, batch)


# ------------------------------------------------------------------ accumulation
class PooledPixelHistogram:
    """Normal / defect pixel counts over all categories in fixed bins, for the pixel
    threshold at F1-max (what --calibrate writes; scan uses one threshold for all)."""

    def __init__(self, n_bins: int = CALIBRATION_BINS):
        self.n_bins = n_bins
        self.normal = np.zeros(n_bins)
        self.defect = np.zeros(n_bins)

    def update(self, maps: np.ndarray, masks: np.ndarray) -> None:
        bins = np.minimum((np.clip(maps, 0.0, 1.0) * self.n_bins).astype(np.int64), self.n_bins - 1)
        self.normal += np.bincount(bins[~masks], minlength=self.n_bins)
        self.defect += np.bincount(bins[masks], minlength=self.n_bins)

    def threshold_at_f1_max(self) -> float | None:
        """Lower edge k / n_bins of the best bin: pixels with score >= it are anomalous."""
        n_pos = self.defect.sum()
        if n_pos == 0:
            return None
        tp = np.cumsum(self.defect[::-1])[::-1]  # pixels in bins >= k
        fp = np.cumsum(self.normal[::-1])[::-1]
        k = int(np.argmax(2 * tp / (tp + fp + n_pos)))
        return k / self.n_bins


@dataclass
class EvalResult:
    rows: list[dict]  # per category (sorted) then the mean row, metrics in [0, 1]
    mode: str
    n_images: int
    image_threshold: float | None = None
    pixel_threshold: float | None = None
    notes: list[str] = field(default_factory=list)


class EvalAccumulator:
    """Feeds scored batches into per-category metrics; finalises a category's exact pixel
    metrics when the next category starts (batches must arrive grouped by category)."""

    def __init__(self, mode: str = "exact", calibrate: bool = False):
        if mode not in ("exact", "streaming"):
            raise ValueError(f"mode must be exact or streaming, not {mode!r}")
        self.mode, self.calibrate = mode, calibrate
        self.finished: dict[str, dict] = {}
        self.current: tuple[str, CategoryMetrics] | None = None
        self.n_images = 0
        self.scores: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        self.pooled = PooledPixelHistogram() if calibrate else None

    def _metrics_for(self, category: str) -> CategoryMetrics:
        if self.current and self.current[0] == category:
            return self.current[1]
        self._finish_current()
        if category in self.finished:
            raise ValueError(f"category {category!r} came back after it was finalised: "
                             "batches must be grouped by category")
        self.current = (category, CategoryMetrics(streaming=self.mode == "streaming"))
        return self.current[1]

    def _finish_current(self) -> None:
        if self.current:
            name, acc = self.current
            self.finished[name] = acc.results()[name]
            self.current = None

    def update(self, batch: dict[str, np.ndarray]) -> None:
        categories = np.asarray(batch["category"], object)
        labels = np.asarray(batch["label"]).astype(bool)
        has_mask = np.asarray(batch["has_mask"], bool)
        maps, masks = np.asarray(batch["anomaly_map"], np.float32), np.asarray(batch["mask"], bool)
        self.n_images += len(labels)
        for cat in dict.fromkeys(categories.tolist()):
            sel = categories == cat
            self._metrics_for(cat).update(categories[sel], batch["image_score"][sel], labels[sel],
                                          maps[sel], masks[sel], has_mask[sel])
        if self.calibrate:
            self.scores.append(np.asarray(batch["image_score"], np.float32))
            self.labels.append(labels)
            use = has_mask | ~labels
            self.pooled.update(maps[use], masks[use])

    def result(self) -> EvalResult:
        self._finish_current()
        rows = metrics_table(self.finished)
        notes = []
        without = rows[-1].get("n_anomalous_without_mask", 0) if rows else 0
        if without:
            notes.append(f"{without} anomalous image(s) have no mask: counted for image metrics only")
        no_pixel = [r["category"] for r in rows[:-1] if not math.isfinite(r.get("pixel_auroc", math.nan))]
        if no_pixel:
            notes.append(f"no pixel metrics for {', '.join(no_pixel)} (needs both defect and normal pixels)")
        if self.mode == "streaming":
            notes.append("streaming metrics: pixel values from fixed-bin histograms (deviation from exact < 0.005)")
        out = EvalResult(rows=rows, mode=self.mode, n_images=self.n_images, notes=notes)
        if self.calibrate and self.scores:
            labels, scores = np.concatenate(self.labels), np.concatenate(self.scores)
            out.image_threshold = best_threshold(labels, scores) if labels.any() else None
            out.pixel_threshold = self.pooled.threshold_at_f1_max()
        return out


def evaluate_batches(batches: Iterable[dict[str, np.ndarray]], mode: str = "exact",
                     calibrate: bool = False) -> EvalResult:
    acc = EvalAccumulator(mode, calibrate)
    for batch in batches:
        acc.update(batch)
    return acc.result()


def evaluate_records(detector, records: Sequence[Any], batch_size: int = 8, streaming: bool | None = None,
                     calibrate: bool = False, storage_options: dict | None = None,
                     threads: int = 4) -> EvalResult:
    """Score ``records`` locally and compute the metric table (used by eval and --val)."""
    records = sort_by_category(records)
    mode = choose_mode(records, detector.image_size, streaming)
    with torch.inference_mode():
        return evaluate_batches(score_records(detector, records, batch_size, storage_options, threads),
                                mode, calibrate)
