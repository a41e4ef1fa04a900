"""Speed of exact AUPRO: vectorised vs per-threshold loops (not a test; run as a script).

    .venv/bin/python -m tests.model.metrics.bench_aupro [n_maps] [size]   (from the repository root)

Baselines: ``aupro_loop`` (regions found once, then a loop over 200 thresholds and
every region) and the reference tools' structure (regions re-labelled for every
threshold and image, as AnomalyCLIP / AdaCLIP's cal_pro_score does with skimage).
"""

from __future__ import annotations

import sys
import time

import numpy as np
from scipy import ndimage

from tests.helpers.defect_maps import disc_masks_and_maps

from vip2scan.model.metrics.exact import aupro, aupro_loop, pro_curve_area, pro_thresholds


def reference_structured_loop(masks, maps):
    """Per threshold: per image: label the mask, sum detected pixels of each region."""
    masks = masks.astype(bool)
    fprs, pros = [], []
    normal = ~masks
    for t in pro_thresholds(maps.min(), maps.max()):
        detected = maps > t
        pro = []
        for d, mask in zip(detected, masks):
            labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
            for sl, r in zip(ndimage.find_objects(labels), range(1, count + 1)):
                region = labels[sl] == r
                pro.append(d[sl][region].sum() / region.sum())
        pros.append(np.mean(pro))
        fprs.append(np.logical_and(normal, detected).sum() / normal.sum())
    return pro_curve_area(np.array(fprs), np.array(pros))


def synthetic_maps(n, size, seed=0):
    """1-3 disc defects in 2 images out of 3 on smooth noise -> (masks, float32 maps)."""
    masks, maps = disc_masks_and_maps(n, size, seed, min_radius=3, radius_div=6, noise_blur=4,
                                      signal=0.05, signal_blur=3)
    return masks, maps.astype(np.float32)


def timed(fn, *args, repeat=1):
    """-> (value, best CPU seconds): CPU time, because the machine may be shared."""
    best = np.inf
    for _ in range(repeat):
        start = time.process_time()
        value = fn(*args)
        best = min(best, time.process_time() - start)
    return value, best


if __name__ == "__main__":
    n, size = (int(a) for a in (sys.argv[1:] + ["100", "256"])[:2])
    masks, maps = synthetic_maps(n, size)
    fast, t_fast = timed(aupro, masks, maps, repeat=5)
    loop, t_loop = timed(aupro_loop, masks, maps)
    ref, t_ref = timed(reference_structured_loop, masks, maps)
    print(f"{n} maps of {size}x{size}: aupro={fast:.9f}")
    print(f"vectorised {t_fast:.3f} s CPU time, best of 5")
    print(f"aupro_loop {t_loop:.3f} s -> x{t_loop / t_fast:.1f}  |diff| {abs(loop - fast):.1e}")
    print(f"reference-structured loop {t_ref:.3f} s -> x{t_ref / t_fast:.1f}  "
          f"|diff| {abs(ref - fast):.1e}")
