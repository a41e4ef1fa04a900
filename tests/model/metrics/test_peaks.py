"""Where a map peaks: inside the mask, near it (half a patch), or elsewhere."""

from __future__ import annotations

import numpy as np
import pytest

from vip2scan.model.metrics.peaks import half_patch_reach, peak_on_defect


def test_a_peak_on_a_thin_scratch_counts_within_half_a_patch() -> None:
    mask = np.zeros((224, 224), bool)
    mask[:, 100] = True  # a 1-pixel vertical scratch
    amap = np.zeros((224, 224), np.float32)
    amap[50, 106] = 1.0  # the patch's centre, 6 px to the right
    assert not peak_on_defect(mask, amap)
    reach = half_patch_reach(8, 112, 224, 224)  # half of an 8-px patch at 112 px = 8 px at 224
    assert reach == (8, 8)
    assert peak_on_defect(mask, amap, reach)
    amap[50, 106], amap[50, 200] = 0.0, 1.0  # far away: a miss
    assert not peak_on_defect(mask, amap, reach)


def test_reach_follows_each_side_of_a_non_square_image() -> None:
    assert half_patch_reach(8, 112, 480, 640) == (18, 23)


def test_shapes_must_agree() -> None:
    with pytest.raises(ValueError, match="differ"):
        peak_on_defect(np.zeros((4, 4), bool), np.zeros((4, 5)))
