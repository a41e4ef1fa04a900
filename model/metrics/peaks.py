"""Where a map peaks: on the defect or not (the "heat lands on the defect" check).

A map's maximum counts as on the defect when it lies inside the mask or within ``reach``
pixels of it. The detector sees an image as a grid of patches, so a 1-pixel scratch crossing
a patch away from the patch's centre is found by that patch, not at its own pixel: the
natural reach is half a patch, in the image's own pixels (:func:`half_patch_reach`).
"""

from __future__ import annotations

import math

import numpy as np


def half_patch_reach(patch_size: int, model_size: int, height: int, width: int) -> tuple[int, int]:
    """Half a patch of the model's input, in pixels of a ``height`` x ``width`` image: (rows, cols)."""
    return (math.ceil(patch_size / 2 * height / model_size), math.ceil(patch_size / 2 * width / model_size))


def peak_on_defect(mask: np.ndarray, anomaly_map: np.ndarray, reach: tuple[int, int] = (0, 0)) -> bool:
    """mask bool [H, W], anomaly_map [H, W]: is the map's maximum within ``reach`` of the defect?"""
    if mask.shape != anomaly_map.shape:
        raise ValueError(f"mask {mask.shape} and map {anomaly_map.shape} differ")
    row, col = np.unravel_index(int(np.argmax(anomaly_map)), anomaly_map.shape)
    dy, dx = reach
    return bool(mask[max(0, row - dy):row + dy + 1, max(0, col - dx):col + dx + 1].any())
