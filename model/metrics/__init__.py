"""Anomaly-detection metrics, checked against scikit-learn in the tests.

``exact``: image AUROC / AP / F1-max and pixel AUROC / AUPRO / F1-max on arrays in memory;
``streaming``: the pixel metrics from fixed-bin histograms (bounded memory);
``table``: per-category accumulation and the mean row of the paper's tables;
``peaks``: whether a map's maximum lands on the defect.
"""

from .exact import (IMAGE_KEYS, MAX_FPR, N_THRESHOLDS, PIXEL_KEYS, ImageMetrics, aupro, best_threshold,
                    f1_max, image_ap, image_auroc, pixel_auroc, pixel_f1_max, pixel_metrics)

__all__ = ["IMAGE_KEYS", "MAX_FPR", "N_THRESHOLDS", "PIXEL_KEYS", "ImageMetrics", "aupro", "best_threshold",
           "f1_max", "image_ap", "image_auroc", "pixel_auroc", "pixel_f1_max", "pixel_metrics"]
