"""Helpers for the pipeline tests: image files of every awkward kind, lakes, a read counter."""

from __future__ import annotations

import io
import os
import struct
import zlib
from typing import Any

import numpy as np
from PIL import Image

# Files that must become error rows, with a word their reason must contain.
BROKEN = {
    "broken/empty.png": "empty",
    "broken/random_bytes.jpg": "not a recognised image",
    "broken/random_bytes.TIF": "not a recognised image",
    "broken/truncated.png": "decode",
    "broken/truncated.jpg": "decode",
    "broken/header_bomb.png": "too large",
    "broken/over_limit.png": "too large",
}
# Valid but awkward files that must be scored: (width, height) as displayed.
AWKWARD = {
    "awkward/gray16.png": (40, 30),
    "awkward/palette_transparent.png": (36, 36),
    "awkward/cmyk.jpg": (32, 48),
    "awkward/gray.png": (33, 35),
    "awkward/rgba.png": (40, 40),
    "awkward/la.png": (32, 32),
    "awkward/onebit.png": (32, 40),
    "awkward/animated.webp": (32, 32),
    "awkward/pages.tiff": (30, 34),
    "awkward/exif_rotated.jpg": (24, 48),  # stored 48x24, EXIF orientation 6 -> upright 24x48
    "awkward/plain.bmp": (32, 32),
    "awkward/plain.webp": (32, 32),
    "awkward/UPPER.PNG": (32, 32),
}
NOT_IMAGES = ("notes/readme.txt", "notes/data.json")
MAX_IMAGE_PIXELS = 200 * 200  # tests' bomb limit; over_limit.png is 256 x 256


def _encode(image: Image.Image, fmt: str, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _pattern(w: int, h: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def png_header_claiming(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height but which has no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    iend = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    return b"\x89PNG\r\n\x1a\n" + chunk + iend


def broken_files() -> dict[str, bytes]:
    rng = np.random.default_rng(1)
    good_png = _encode(Image.fromarray(_pattern(48, 48, 2)), "PNG")
    good_jpg = _encode(Image.fromarray(_pattern(48, 48, 3)), "JPEG", quality=90)
    return {
        "broken/empty.png": b"",
        "broken/random_bytes.jpg": rng.integers(0, 256, 2000, dtype=np.uint8).tobytes(),
        "broken/random_bytes.TIF": rng.integers(0, 256, 500, dtype=np.uint8).tobytes(),
        "broken/truncated.png": good_png[: len(good_png) // 2],
        "broken/truncated.jpg": good_jpg[: len(good_jpg) // 2],
        "broken/header_bomb.png": png_header_claiming(100_000, 100_000),
        "broken/over_limit.png": _encode(Image.new("RGB", (256, 256), (9, 9, 9)), "PNG"),
    }


def awkward_files() -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    gray16 = (np.arange(40 * 30, dtype=np.uint32).reshape(30, 40) * 50 % 65536).astype(np.uint16)
    files["awkward/gray16.png"] = _encode(Image.fromarray(gray16), "PNG")
    pal = Image.fromarray(_pattern(36, 36, 4)).convert("P", palette=Image.ADAPTIVE, colors=16)
    files["awkward/palette_transparent.png"] = _encode(pal, "PNG", transparency=0)
    files["awkward/cmyk.jpg"] = _encode(Image.new("CMYK", (32, 48), (10, 200, 30, 5)), "JPEG")
    files["awkward/gray.png"] = _encode(Image.fromarray(_pattern(33, 35, 5)[..., 0]), "PNG")
    rgba = np.concatenate([_pattern(40, 40, 6), np.full((40, 40, 1), 128, np.uint8)], axis=2)
    files["awkward/rgba.png"] = _encode(Image.fromarray(rgba, "RGBA"), "PNG")
    files["awkward/la.png"] = _encode(Image.new("LA", (32, 32), (100, 200)), "PNG")
    files["awkward/onebit.png"] = _encode(Image.new("1", (32, 40), 1), "PNG")
    frames = [Image.fromarray(_pattern(32, 32, s)) for s in (7, 8, 9)]
    files["awkward/animated.webp"] = _encode(frames[0], "WEBP", save_all=True,
                                             append_images=frames[1:], duration=50)
    pages = [Image.fromarray(_pattern(30, 34, s)) for s in (10, 11)]
    files["awkward/pages.tiff"] = _encode(pages[0], "TIFF", save_all=True, append_images=pages[1:])
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    files["awkward/exif_rotated.jpg"] = _encode(Image.fromarray(_pattern(48, 24, 12)), "JPEG",
                                                exif=exif.tobytes())
    files["awkward/plain.bmp"] = _encode(Image.fromarray(_pattern(32, 32, 13)), "BMP")
    files["awkward/plain.webp"] = _encode(Image.fromarray(_pattern(32, 32, 14)), "WEBP")
    files["awkward/UPPER.PNG"] = _encode(Image.fromarray(_pattern(32, 32, 15)), "PNG")
    return files


def small_png(seed: int, size: int = 32) -> bytes:
    return _encode(Image.fromarray(_pattern(size, size, seed)), "PNG")


def put_files(fs: Any, root: str, files: dict[str, bytes]) -> None:
    """Write {relative path: bytes} under root (local path or bucket/prefix on fs)."""
    for rel, data in files.items():
        path = f"{root.rstrip('/')}/{rel}"
        if fs is None:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as fh:
                fh.write(data)
        else:
            fs.pipe_file(path, data)


class ReadLog:
    """Filesystem wrapper (ScanOptions.fs_wrapper) that logs every path whose bytes are read.

    Works across Ray worker processes: each read appends a line to ``log_path``.
    """

    def __init__(self, log_path: str):
        self.log_path = log_path

    def __call__(self, fs: Any) -> Any:
        return _LoggingFS(fs, self.log_path)

    def paths(self) -> list[str]:
        if not os.path.exists(self.log_path):
            return []
        with open(self.log_path) as fh:
            return [line.rstrip("\n") for line in fh if line.strip()]

    def clear(self) -> None:
        if os.path.exists(self.log_path):
            os.remove(self.log_path)


class _LoggingFS:
    def __init__(self, fs: Any, log_path: str):
        self._fs = fs
        self._log_path = log_path

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fs, name)

    def _note(self, paths: list[str]) -> None:
        with open(self._log_path, "a") as fh:
            fh.write("".join(f"{p}\n" for p in paths))

    def cat_file(self, path: str, *args: Any, **kwargs: Any) -> Any:
        self._note([path])
        return self._fs.cat_file(path, *args, **kwargs)

    def cat(self, path: Any, *args: Any, **kwargs: Any) -> Any:
        self._note(list(path) if isinstance(path, (list, tuple)) else [path])
        return self._fs.cat(path, *args, **kwargs)

    def open(self, path: str, mode: str = "rb", *args: Any, **kwargs: Any) -> Any:
        if "r" in mode:
            self._note([path])
        return self._fs.open(path, mode, *args, **kwargs)
