"""Image files that decoders get wrong in different ways: EXIF rotation, 16 bits, palette, CMYK.

Each entry is (bytes, the upright RGB uint8 image a correct decoder returns); the tests write
them to disk, read them through every path the project has, and compare pixels.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

SHAPE = (30, 44)  # rows, columns: not square, so a lost rotation changes the size


def _texture(seed: int = 0, scale: int = 1) -> np.ndarray:
    """SHAPE x scale pixels: a larger scale gives the same picture, smoothly enlarged."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:SHAPE[0], 0:SHAPE[1]]
    base = np.stack([x * 5, y * 7, (x + y) * 3], -1) % 256
    small = (base + rng.integers(0, 30, (*SHAPE, 3))).clip(0, 255).astype(np.uint8)
    if scale == 1:
        return small
    size = (SHAPE[1] * scale, SHAPE[0] * scale)
    return np.asarray(Image.fromarray(small).resize(size, Image.BICUBIC))


def _save(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def exif_rotated_jpeg(scale: int = 1) -> bytes:
    """Stored sideways with EXIF orientation 6: displayed rotated 90 degrees clockwise."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return _save(Image.fromarray(_texture(1, scale)), "JPEG", quality=95, exif=exif)


def sixteen_bit_png(scale: int = 1) -> bytes:
    grey = (_texture(2, scale)[..., 0].astype(np.uint16) * 257)
    return _save(Image.fromarray(grey), "PNG")


def palette_png(scale: int = 1) -> bytes:
    return _save(Image.fromarray(_texture(3, scale)).quantize(colors=16), "PNG")


def cmyk_jpeg(scale: int = 1) -> bytes:
    return _save(Image.fromarray(_texture(4, scale)).convert("CMYK"), "JPEG", quality=95)


AWKWARD_FILES = {
    "exif_rotated.jpg": exif_rotated_jpeg,
    "sixteen_bit.png": sixteen_bit_png,
    "palette.png": palette_png,
    "cmyk.jpg": cmyk_jpeg,
}
