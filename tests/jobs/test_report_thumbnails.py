"""Report thumbnails go through the scan's decoder: they show the pixels that were scored."""

from __future__ import annotations

import io

import numpy as np
from tests.helpers.awkward_images import AWKWARD_FILES
from PIL import Image

from vip2scan.jobs.imaging import thumbnail_and_overlay
from vip2scan.model.images import open_upright


def _png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_thumbnails_of_awkward_files_match_the_decoded_image():
    for name, make in sorted(AWKWARD_FILES.items()):
        data = make()
        upright = np.asarray(open_upright(data))
        thumb, overlay = thumbnail_and_overlay(data, np.zeros(upright.shape[:2], np.float32))
        thumb = _png(thumb)
        # images smaller than the thumbnail side keep their size: the same pixels, upright
        np.testing.assert_array_equal(thumb, upright, err_msg=name)
        assert _png(overlay).shape == upright.shape


def test_sixteen_bit_thumbnail_is_the_eight_bit_picture_not_blank():
    grey8 = np.tile(np.arange(0, 250, 5, dtype=np.uint8), (20, 1))
    buf = io.BytesIO()
    Image.fromarray(grey8.astype(np.uint16) * 257).save(buf, format="PNG")
    thumb = _png(thumbnail_and_overlay(buf.getvalue(), np.zeros(grey8.shape, np.float32))[0])
    np.testing.assert_array_equal(thumb[..., 0], grey8)
