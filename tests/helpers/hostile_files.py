"""Hostile inputs for the scan, and a sampler of the scan's peak memory.

Every generator is cheap in time and disk: the 200 MB BMP is a sparse file (its pixel rows
are zeros the filesystem never stores), the pixel bombs are headers without pixel data.
"""

from __future__ import annotations

import io
import struct
import threading
import zlib
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

BIG_BMP_SIDE = 8192  # 8192 x 8192 x 3 bytes = 192 MiB of pixels, 201 MB on the wire
TIFF_PAGES = 300


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def small_png(seed: int, side: int = 24) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    return encode(Image.fromarray(pixels), "PNG")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height, with no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IEND", b"")


def jpeg_claiming(width: int, height: int) -> bytes:
    """A baseline JPEG whose SOF0 claims width x height (at most 65535 each: 16-bit fields)."""
    real = encode(Image.new("RGB", (16, 16), (90, 90, 90)), "JPEG")
    sof = real.index(b"\xff\xc0")
    # SOF0: marker, length (2), precision (1), height (2), width (2), ...
    return real[: sof + 5] + struct.pack(">HH", height, width) + real[sof + 9:]


def png_text_bomb(decompressed_bytes: int = 64 << 20) -> bytes:
    """A valid 8x8 PNG carrying a zTXt chunk that inflates to ``decompressed_bytes``."""
    base = encode(Image.new("RGB", (8, 8), (1, 2, 3)), "PNG")
    text = b"comment\x00\x00" + zlib.compress(b"\x00" * decompressed_bytes, 9)
    iend = base.rindex(b"IEND") - 4
    return base[:iend] + _png_chunk(b"zTXt", text) + base[iend:]


def many_page_tiff(pages: int = TIFF_PAGES) -> bytes:
    frames = [Image.new("RGB", (8, 8), (i % 256, 0, 0)) for i in range(pages)]
    return encode(frames[0], "TIFF", save_all=True, append_images=frames[1:])


def write_sparse_bmp(path: str, side: int = BIG_BMP_SIDE) -> int:
    """A 24-bit BMP of side x side black pixels, written sparsely; returns its size in bytes."""
    row = side * 3 + (-side * 3) % 4
    pixels = row * side
    header = (b"BM" + struct.pack("<IHHI", 54 + pixels, 0, 0, 54)
              + struct.pack("<IiiHHIIiiII", 40, side, side, 1, 24, 0, pixels, 2835, 2835, 0, 0))
    with open(path, "wb") as fh:
        fh.write(header)
        fh.seek(54 + pixels - 1)
        fh.write(b"\x00")
    return 54 + pixels


def hostile_files() -> dict[str, tuple[bytes, str]]:
    """{relative key: (bytes, expected)}; expected is 'ok' or a word the error must contain."""
    rng = np.random.default_rng(7)
    return {
        "bombs/png_100k_x_100k.png": (png_claiming(100_000, 100_000), "too large"),
        "bombs/jpeg_65535_x_65535.jpg": (jpeg_claiming(65_535, 65_535), "too large"),
        "bombs/png_ztxt_64mb.png": (png_text_bomb(), "decode"),
        "pages/tiff_300_pages.tiff": (many_page_tiff(), "ok"),
        "junk/random_bytes.png": (rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(),
                                  "not a recognised image"),
        "junk/random_bytes.JPEG": (rng.integers(0, 256, 999, dtype=np.uint8).tobytes(),
                                   "not a recognised image"),
        "junk/zero_bytes.png": (b"", "empty"),
        "tiny/one_by_one.png": (encode(Image.new("RGB", (1, 1), (255, 0, 0)), "PNG"), "ok"),
        "names/with space/a b c.png": (small_png(1), "ok"),
        "names/unicodé/日本 ü 😀.png": (small_png(2), "ok"),
        "names/..dots../..x..png": (small_png(3), "ok"),
        "names/%2e%2e/percent.png": (small_png(4), "ok"),
    }


# ------------------------------------------------------------------------------ memory

@dataclass
class MemoryPeak:
    """Peak summed RSS of this process and all its descendants (the local Ray's raylet and
    workers), and the peak RSS of any one descendant."""

    interval_s: float = 0.05
    baseline_bytes: int = 0
    peak_total_bytes: int = 0
    peak_process_bytes: int = 0
    peak_process_name: str = ""
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @staticmethod
    def _sample() -> tuple[int, int, str]:
        import psutil

        me = psutil.Process()
        total, biggest, name = 0, 0, ""
        for proc in [me, *me.children(recursive=True)]:
            try:
                rss = proc.memory_info().rss
                label = " ".join(proc.cmdline()[:2])[:80]
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            total += rss
            # The driver is this test process: its size says more about the tests that ran
            # before than about the scan, so only its growth counts (via the total).
            if proc.pid != me.pid and rss > biggest:
                biggest, name = rss, label
        return total, biggest, name

    def __enter__(self) -> "MemoryPeak":
        self.baseline_bytes = self._sample()[0]

        def loop() -> None:
            while not self._stop.wait(self.interval_s):
                total, biggest, name = self._sample()
                self.peak_total_bytes = max(self.peak_total_bytes, total)
                if biggest > self.peak_process_bytes:
                    self.peak_process_bytes, self.peak_process_name = biggest, name

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    @property
    def growth_bytes(self) -> int:
        return max(0, self.peak_total_bytes - self.baseline_bytes)
