"""The one image decoder: bytes -> upright 8-bit RGB -> uint8 at the model size.

Every number the project reports is measured on pixels from here: the scan's decode stage,
the dataset readers of train / eval / calibrate, and the report's thumbnails. A rotated phone
photo or a 16-bit PNG therefore scores the same in eval as in a scan, and looks in the report
like what was scored.

Rules, in order: a decompression-bomb guard before any pixel is decoded; the first frame only
(animations, multi-page TIFFs); EXIF orientation applied; any mode converted to 8-bit RGB
(16-bit and float greyscale scaled, palette and CMYK converted, alpha dropped); a straight
bicubic resize to ``size x size`` (no crop: the map covers the whole image).

Large photos take a shortcut that changes pixels only within resampling noise: a JPEG at least
``DRAFT_MIN_FACTOR`` times the model size in both dimensions is decoded at a reduced DCT scale
(1/2, 1/4 or 1/8, never below ``size``), and every resize by more than ``REDUCING_GAP`` first
reduces by an integer factor (box filter) before the bicubic step. On 5-megapixel JPEGs this
cuts decode + resize to 518 px several-fold; the effect on scores is measured by
``vip2scan bench`` and documented in docs/guide/scanning.md and docs/design/scale.md (Decoding large photos).

No torch at import time: CPU decode workers import this module and should not pay for it.
"""

from __future__ import annotations

import io
import re
import warnings
from typing import TYPE_CHECKING

import fsspec
import numpy as np
from PIL import Image, ImageFile, ImageOps

from .errors import ModelError

if TYPE_CHECKING:
    import torch

DEFAULT_MAX_IMAGE_PIXELS = 178_956_970  # PIL's own default bomb limit (about 13k x 13k)
# JPEG DCT-domain downscaling only when the image is at least this many times the model size
# in both dimensions: below that the reduced decode would land under the model size.
DRAFT_MIN_FACTOR = 2
# PIL's reducing_gap: an integer box reduction first, while the image stays >= 3x the target,
# then bicubic (PIL documents 3.0 as "indistinguishable from fair resampling").
REDUCING_GAP = 3.0

# A truncated file must be an error, not a silently grey-padded image.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class DecodeError(ModelError, ValueError):
    """A file that is not a usable image; the message says why in one line."""


def _sixteen_bit_to_uint8(image: Image.Image) -> Image.Image:
    """16/32-bit integer and float greyscale -> 8-bit 'L' (16-bit scaled by /257)."""
    arr = np.asarray(image)
    if image.mode == "F":
        arr = arr.astype(np.float32)
        top = float(np.nanmax(arr)) if arr.size else 0.0
        scaled = arr * 255.0 if top <= 1.0 else arr
        out = np.clip(np.nan_to_num(scaled), 0, 255).astype(np.uint8)
    else:
        # 'I;16*' and 'I' (PIL opens 16-bit PNG as 'I' or 'I;16'): the 16-bit range maps onto
        # 8 bits by /257 (65535 -> 255); values above 16 bits are clipped.
        out = np.clip(arr.astype(np.int64) // 257, 0, 255).astype(np.uint8)
    return Image.fromarray(out, mode="L")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB (alpha dropped, palette/CMYK/grey/1-bit converted)."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I") or mode == "F":
        return _sixteen_bit_to_uint8(image).convert("RGB")
    if mode == "P" and "transparency" in image.info:
        # A palette with transparency converts via RGBA (PIL warns otherwise); alpha is dropped.
        image = image.convert("RGBA")
    return image.convert("RGB")


def resize_to_model(image: Image.Image, size: int) -> np.ndarray:
    """Straight bicubic resize to size x size (no crop, no aspect preservation): uint8 [size, size, 3]."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.BICUBIC, reducing_gap=REDUCING_GAP)
    return np.asarray(image, dtype=np.uint8).copy()


# EXIF orientations that swap width and height (transpose, rotate 90/270, transverse).
_SWAPS_SIDES = {5, 6, 7, 8}


def _orientation(image: Image.Image) -> int | None:
    """The EXIF orientation tag, None when absent or unreadable (exif_transpose then decides)."""
    try:
        return image.getexif().get(0x0112)
    except Exception:  # noqa: BLE001 - a broken EXIF block is not a broken image
        return None


def open_upright(data: bytes, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Bytes -> upright 8-bit RGB at full size; raises :class:`DecodeError` with a reason."""
    return decode_upright(data, max_image_pixels)[0]


def decode_upright(data: bytes, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                   at_least: int | None = None) -> tuple[Image.Image, int, int]:
    """Bytes -> (upright 8-bit RGB, width, height as displayed at full size).

    With ``at_least``, a large JPEG may be decoded at a reduced DCT scale, each side still
    >= ``at_least`` pixels (see the module's docstring); width and height stay the full ones.
    """
    if not data:
        raise DecodeError("empty object (0 bytes)")
    try:
        with warnings.catch_warnings():
            # PIL only warns between 1x and 2x its limit; we refuse at our limit instead.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if width <= 0 or height <= 0:
                    raise DecodeError(f"invalid dimensions {width}x{height}")
                if width * height > max_image_pixels:
                    raise DecodeError(
                        f"image too large: {width}x{height} = {width * height} pixels exceeds the "
                        f"limit of {max_image_pixels} (decompression-bomb guard)")
                drafted = bool(at_least) and image.format == "JPEG" and \
                    min(width, height) >= DRAFT_MIN_FACTOR * at_least
                if drafted:
                    # A JPEG's EXIF block is parsed at open (unlike a PNG's text chunks, which
                    # getexif() would load, bombs included): the full size as displayed.
                    if _orientation(image) in _SWAPS_SIDES:
                        width, height = height, width
                    image.draft(image.mode, (at_least, at_least))
                # An opened file is at its first frame. Never ask for n_frames: it walks every
                # page, and a hostile TIFF may have thousands.
                image.load()
                # In place: the default returns a full copy even when nothing rotates.
                ImageOps.exif_transpose(image, in_place=True)
                rgb = to_rgb(image)
                rgb.load()
                return (rgb, width, height) if drafted else (rgb, rgb.width, rgb.height)
    except DecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DecodeError(bomb_message(str(exc), max_image_pixels)) from exc
    except Image.UnidentifiedImageError as exc:
        raise DecodeError("not a recognised image format") from exc
    except MemoryError as exc:
        raise DecodeError("out of memory while decoding") from exc
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a reason, not a crash
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise DecodeError(f"cannot decode: {detail}") from exc


def bomb_message(pil_message: str, max_image_pixels: int) -> str:
    """PIL's refusal (at open, before our own check can run) in our terms: it cites its own
    limit (178956970, or twice that), which is not the ``--max-image-pixels`` in force."""
    found = re.search(r"\((\d+) pixels\) exceeds limit of (\d+)", pil_message)
    if found is None:
        return f"image too large (decompression-bomb guard, limit {max_image_pixels} pixels)"
    pixels, library_limit = int(found.group(1)), int(found.group(2))
    if pixels > max_image_pixels:
        return (f"image too large: {pixels} pixels exceeds the limit of {max_image_pixels} "
                "(decompression-bomb guard)")
    return (f"image too large: {pixels} pixels exceeds the image library's own limit of "
            f"{library_limit} (decompression-bomb guard), above --max-image-pixels {max_image_pixels}")


def decode_image(data: bytes, size: int, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
                 ) -> tuple[np.ndarray, int, int]:
    """Bytes -> (uint8 [size, size, 3], width, height); raises :class:`DecodeError`.

    ``width``/``height`` are the image's dimensions as displayed (after EXIF orientation), so
    a map resized back to them overlays the upright image.
    """
    rgb, width, height = decode_upright(data, max_image_pixels, at_least=size)
    return resize_to_model(rgb, size), width, height


def read_uri(uri: str, storage_options: dict | None = None) -> bytes:
    with fsspec.open(uri, "rb", **(storage_options or {})) as f:
        return f.read()


def load_image(uri: str, size: int | None = None, storage_options: dict | None = None,
               max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """An image file as the model sees it: uint8 [size, size, 3] (``size`` None: upright RGB
    at its own size, [H, W, 3])."""
    data = read_uri(uri, storage_options)
    if size is None:
        return np.asarray(open_upright(data, max_image_pixels), dtype=np.uint8).copy()
    return decode_image(data, size, max_image_pixels)[0]


def load_mask(uri: str | None, size: int, storage_options: dict | None = None) -> np.ndarray:
    """Ground truth -> bool [size, size] as the reference code reads it: any non-zero pixel is a
    defect, bilinear resize, binarised at 0.5. ``None`` (a defect-free image) -> all False.

    The mask follows the same EXIF orientation as its image, so both stay aligned.
    """
    if not uri:
        return np.zeros((size, size), bool)
    with Image.open(io.BytesIO(read_uri(uri, storage_options))) as mask:
        mask.load()
        ImageOps.exif_transpose(mask, in_place=True)
        # 16-bit and float masks are compared as stored: converting them to 'L' would clip.
        wide = mask.mode.startswith("I") or mask.mode == "F"
        grey = np.asarray(mask if wide else mask.convert("L"))
    binary = Image.fromarray((grey > 0).astype(np.uint8) * 255)
    if binary.size != (size, size):
        binary = binary.resize((size, size), Image.BILINEAR)
    return np.asarray(binary, dtype=np.float32) / 255.0 > 0.5


def to_batch(images: list[np.ndarray] | np.ndarray) -> "torch.Tensor":
    """HWC uint8 images (list or [N, H, W, 3]) -> uint8 tensor [N, 3, H, W]."""
    import torch

    arr = np.stack(images) if isinstance(images, list) else np.asarray(images)
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).contiguous()
