"""Metrics per category and their mean: the table ``vip2scan eval`` prints."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Iterable, Mapping

import numpy as np

from .exact import PIXEL_KEYS, ImageMetrics, binarise, pixel_metrics
from .streaming import StreamingPixelMetrics


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
        scores, labels = np.asarray(scores).ravel(), binarise(labels).ravel()
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
            m, s = binarise(np.asarray(masks)[use]), np.asarray(maps)[use]
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
