"""Synthetic ground truth for metric tests and the AUPRO benchmark: disc defects + smooth maps."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def disc_masks_and_maps(n: int, size: int, seed: int, *, min_radius: int, radius_div: int,
                        noise_blur: float, signal: float, signal_blur: float):
    """Masks with 1-3 discs in 2 images out of 3 (the third is normal); maps are smooth noise
    plus a blurred bump of ``signal`` over each defect, scaled to [0, 1]. -> (masks, maps)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.ogrid[:size, :size]
    masks = np.zeros((n, size, size), bool)
    for i in range(n):
        for _ in range(rng.integers(1, 4) if i % 3 else 0):
            cy, cx = rng.integers(0, size, 2)
            masks[i] |= (yy - cy) ** 2 + (xx - cx) ** 2 < rng.integers(min_radius, size // radius_div) ** 2
    maps = ndimage.gaussian_filter(rng.random((n, size, size)), (0, noise_blur, noise_blur))
    maps += signal * ndimage.gaussian_filter(masks.astype(float), (0, signal_blur, signal_blur))
    return masks, (maps - maps.min()) / (maps.max() - maps.min())
