"""Decode: every awkward image becomes 8-bit RGB at the model size; broken ones give reasons."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tests.helpers.lake_files import AWKWARD, BROKEN, MAX_IMAGE_PIXELS, awkward_files, broken_files
from vip2scan.model.images import DecodeError, decode_image
from vip2scan.pipeline.specs import LimitSpec
from vip2scan.pipeline.stages.decode import DecodeSettings, read_and_decode

SIZE = 24
DECODE = DecodeSettings(image_size=SIZE, limit_spec=LimitSpec(max_image_pixels=MAX_IMAGE_PIXELS))


@pytest.mark.parametrize("name", sorted(AWKWARD))
def test_awkward_images_decode_to_rgb_at_model_size(name):
    data = awkward_files()[name]
    pixels, width, height = decode_image(data, SIZE, MAX_IMAGE_PIXELS)
    assert pixels.shape == (SIZE, SIZE, 3) and pixels.dtype == np.uint8
    assert (width, height) == AWKWARD[name]


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_images_raise_with_reason(name):
    with pytest.raises(DecodeError) as info:
        decode_image(broken_files()[name], SIZE, MAX_IMAGE_PIXELS)
    assert BROKEN[name] in str(info.value).lower()
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("shape", [(40, 30), (24, 24), (7, 300)])
def test_decode_resizes_like_the_model_preprocessing(shape):
    from vip2scan.model.images import resize_to_model

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (*shape, 3), np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    pixels, _, _ = decode_image(buffer.getvalue(), SIZE, MAX_IMAGE_PIXELS)
    np.testing.assert_array_equal(pixels, resize_to_model(image, SIZE))


def test_decode_workers_do_not_import_torch():
    # Importing torch costs a decode worker seconds and hundreds of MB.
    import subprocess
    import sys

    code = "import sys, vip2scan.pipeline.stages.decode; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_sixteen_bit_is_scaled_by_257():
    values = np.array([[0, 257 * 100, 65535, 257 * 7]], dtype=np.uint16)
    buf = io.BytesIO()
    Image.fromarray(values).save(buf, format="PNG")
    pixels, width, height = decode_image(buf.getvalue(), 4, MAX_IMAGE_PIXELS)
    # a straight resize from 4x1 to 4x4 keeps each column's value (constant down the column)
    assert (width, height) == (4, 1)
    assert pixels[0, :, 0].tolist() == [0, 100, 255, 7]
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6
    left_white = np.zeros((20, 40, 3), np.uint8)
    left_white[:, :20] = 255  # stored: left half white
    buf = io.BytesIO()
    Image.fromarray(left_white).save(buf, format="JPEG", exif=exif.tobytes(), quality=100)
    pixels, width, height = decode_image(buf.getvalue(), 40, MAX_IMAGE_PIXELS)
    assert (width, height) == (20, 40)
    # rotated 90 degrees clockwise for display: the white half is now on top
    assert pixels[:15].mean() > 200 and pixels[-15:].mean() < 50


def test_first_frame_of_multiframe_file():
    frames = [Image.new("RGB", (8, 8), c) for c in ((250, 0, 0), (0, 250, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, format="TIFF", save_all=True, append_images=frames[1:])
    pixels, _, _ = decode_image(buf.getvalue(), 8, MAX_IMAGE_PIXELS)
    assert pixels[..., 0].mean() > 200 and pixels[..., 1].mean() < 50


def test_batch_task_turns_unreadable_objects_into_error_rows(tmp_path):
    good = tmp_path / "good.png"
    Image.new("RGB", (16, 16), (1, 2, 3)).save(good)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    uris = [f"file://{good}", f"file://{bad}", f"file://{tmp_path}/missing.png"]
    batch = {"image_uri": np.array(uris, dtype=object), "map_index": np.arange(3)}
    out = read_and_decode(batch, DECODE)
    assert out["pixels"].shape == (3, SIZE, SIZE, 3)
    assert out["status"].tolist() == ["ok", "error", "error"]
    assert "not a recognised image" in out["error"][1]
    assert "not found" in out["error"][2]
    assert out["width"][0] == 16 and out["map_index"].tolist() == [0, 1, 2]
    assert (out["pixels"][1:] == 0).all()


def test_scan_stage_and_dataset_reader_give_identical_pixels(tmp_path):
    """The one decoder: what a scan scores is what train, eval and calibration see."""
    from tests.helpers.awkward_images import AWKWARD_FILES

    from vip2scan.model.data.loading import load_sample

    uris = []
    for name, make in sorted(AWKWARD_FILES.items()):
        (tmp_path / name).write_bytes(make())
        uris.append(f"file://{tmp_path / name}")
    batch = {"image_uri": np.array(uris, dtype=object), "map_index": np.arange(len(uris))}
    out = read_and_decode(batch, DECODE)
    assert out["status"].tolist() == ["ok"] * len(uris)
    for i, uri in enumerate(uris):
        image, _, _ = load_sample({"image_uri": uri, "label": 0}, SIZE)
        np.testing.assert_array_equal(out["pixels"][i], image, err_msg=uri)
