"""The one decoder: awkward files come out upright, 8-bit and identical by every path."""

from __future__ import annotations

import io

import numpy as np
import pytest
from tests.helpers.awkward_images import AWKWARD_FILES, SHAPE
from PIL import Image

from vip2scan.model.data.loading import load_sample
from vip2scan.model.images import (DecodeError, decode_image, decode_upright, load_image, load_mask,
                                   open_upright)

SIZE = 24


@pytest.mark.parametrize("name", sorted(AWKWARD_FILES))
def test_dataset_reader_sees_the_pixels_decode_gives(tmp_path, name):
    data = AWKWARD_FILES[name]()
    path = tmp_path / name
    path.write_bytes(data)
    pixels, width, height = decode_image(data, SIZE)
    image, mask, label = load_sample({"image_uri": str(path), "label": 0}, SIZE)
    np.testing.assert_array_equal(image, pixels)
    np.testing.assert_array_equal(load_image(f"file://{path}", SIZE), pixels)
    assert pixels.dtype == np.uint8 and pixels.shape == (SIZE, SIZE, 3)
    assert not mask.any() and label == 0
    rotated = name.startswith("exif")
    assert (width, height) == ((SHAPE[0], SHAPE[1]) if rotated else (SHAPE[1], SHAPE[0]))


def test_exif_rotation_is_applied():
    upright = np.asarray(open_upright(AWKWARD_FILES["exif_rotated.jpg"]()))
    stored = np.asarray(Image.open(io.BytesIO(AWKWARD_FILES["exif_rotated.jpg"]())).convert("RGB"))
    assert upright.shape == (SHAPE[1], SHAPE[0], 3)
    np.testing.assert_array_equal(upright, np.rot90(stored, k=-1))


def test_sixteen_bit_is_not_clipped_white():
    grey = np.asarray(open_upright(AWKWARD_FILES["sixteen_bit.png"]()))[..., 0]
    assert 20 < grey.mean() < 235 and grey.std() > 5  # PIL's own 'L' conversion would saturate


def test_masks_follow_the_reference_rule(tmp_path):
    mask = np.zeros((20, 30), np.uint8)
    mask[5:10, 5:20] = 255
    mask[12:14, 2:4] = 1  # any non-zero pixel is a defect
    Image.fromarray(mask).save(tmp_path / "m.png")
    got = load_mask(str(tmp_path / "m.png"), 20)
    assert got.dtype == bool and got.shape == (20, 20)
    assert got[7, 10] and got[13, 2] and not got[0, 0]
    assert not load_mask(None, 8).any()


def test_empty_bytes_are_a_reason_not_a_crash():
    with pytest.raises(DecodeError, match="empty"):
        decode_image(b"", SIZE)


@pytest.mark.parametrize("name", sorted(AWKWARD_FILES))
def test_large_photos_take_the_fast_path_within_resampling_noise(name):
    """A file >= 2x the model size: reduced JPEG decode / box-then-bicubic resize, full-size
    width and height, pixels within a few levels of the exact full-size path."""
    scale, size = 10, 32  # 300 x 440 pixels -> 32: JPEGs decode at 1/8 DCT scale
    data = AWKWARD_FILES[name](scale)
    pixels, width, height = decode_image(data, size)
    upright = open_upright(data)  # full size, the exact path
    exact = np.asarray(upright.resize((size, size), Image.BICUBIC))
    rotated = name.startswith("exif")
    full = (SHAPE[0] * scale, SHAPE[1] * scale) if rotated else (SHAPE[1] * scale, SHAPE[0] * scale)
    assert (width, height) == upright.size == full
    delta = np.abs(pixels.astype(int) - exact.astype(int))
    assert delta.mean() < 2.0 and delta.max() <= 40, (delta.mean(), delta.max())
    decoded = decode_upright(data, at_least=size)[0]
    if name.endswith(".jpg"):  # decoded at 1/8 scale, never below the model size
        assert decoded.size == (-(-full[0] // 8), -(-full[1] // 8)) and min(decoded.size) >= size
    else:
        assert decoded.size == full


@pytest.mark.parametrize("side", [14_000, 20_000])  # past PIL's warning, past its error
def test_a_pixel_bomb_is_refused_citing_the_limit_in_force(side):
    from tests.helpers.hostile_files import png_claiming

    from vip2scan.model.images import DEFAULT_MAX_IMAGE_PIXELS

    with pytest.raises(DecodeError) as refused:
        decode_upright(png_claiming(side, side))
    message = str(refused.value)
    assert f"{side * side} pixels exceeds the limit of {DEFAULT_MAX_IMAGE_PIXELS}" in message
    assert str(2 * DEFAULT_MAX_IMAGE_PIXELS) not in message
