"""A local lake scanned on three nights (the clock of the scan shifted back a day per night).

Night 1: ~200 tiny textured images over four product lines, a 16-bit PNG, an EXIF-rotated
JPEG and two unreadable files (error rows). Night 2: new, rewritten and deleted images and one
more broken file. Night 3: the same again. Scanned with the real CLI on the local engine.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib
import io
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from tests.helpers.cli_runner import invoke
from tests.helpers.awkward_images import exif_rotated_jpeg, sixteen_bit_png
from PIL import Image

LINES = ("line0", "line1", "line2", "line3")
FIRST_NIGHT = 200
SIXTEEN_BIT = "awkward/sixteen_bit.png"
EXIF_ROTATED = "awkward/exif_rotated.jpg"


@dataclass
class NightLake:
    lake: Path
    out: Path
    nights: list[str]  # the scan dates, oldest first
    summaries: list[str]  # each night's scan output


def tiny_png(seed: int, defect: bool = False) -> bytes:
    """A 32-64 px texture; a defect is a bright square somewhere in it."""
    rng = np.random.default_rng(seed)
    height, width = (int(v) for v in rng.integers(32, 65, 2))
    base = rng.integers(60, 120) + rng.normal(0, 12, (height, width, 3))
    if defect:
        y, x = int(rng.integers(0, height - 10)), int(rng.integers(0, width - 10))
        base[y:y + 10, x:x + 10] = 250
    buffer = io.BytesIO()
    Image.fromarray(base.clip(0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@contextlib.contextmanager
def days_ago(days: int) -> Iterator[None]:
    """Make the scan's clock (its plan date, run id and row times) read ``days`` earlier."""
    # By module path: the package re-exports a function named ``scan``.
    scan = importlib.import_module("vip2scan.pipeline.run.scan")
    attempt = importlib.import_module("vip2scan.pipeline.run.attempt")
    shift = dt.timedelta(days=days)

    class Shifted(dt.datetime):
        @classmethod
        def now(cls, tz=None):  # type: ignore[override]
            return dt.datetime.now(tz) - shift

    clock = types.SimpleNamespace(**{name: getattr(dt, name) for name in dir(dt) if not name.startswith("__")})
    clock.datetime = Shifted
    saved = scan.dt, attempt.dt
    scan.dt = attempt.dt = clock
    try:
        yield
    finally:
        scan.dt, attempt.dt = saved


def build_night_lake(root: Path, checkpoint: str) -> NightLake:
    lake, out = root / "lake", root / "out"

    def put(rel: str, data: bytes) -> None:
        path = lake / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def name(i: int) -> str:
        return f"{LINES[i % len(LINES)]}/img_{i:04d}.png"

    def scan_night(days: int) -> str:
        with days_ago(days):
            ran = invoke("scan", str(lake), "--out", str(out), "--checkpoint", checkpoint,
                         "--engine", "local", "--batch-size", "16", "--no-progress")
        assert ran.exit_code == 0, ran.stderr[-3000:]
        return ran.stdout

    for i in range(FIRST_NIGHT):
        put(name(i), tiny_png(i, defect=i % 9 == 0))
    put(SIXTEEN_BIT, sixteen_bit_png())
    put(EXIF_ROTATED, exif_rotated_jpeg())
    put("broken/empty.png", b"")
    put("broken/text.jpg", b"not an image\n")
    summaries = [scan_night(2)]
    for i in range(FIRST_NIGHT, FIRST_NIGHT + 30):  # night 2: new, rewritten, deleted, broken
        put(name(i), tiny_png(i, defect=i % 7 == 0))
    for i in range(0, 40, 4):
        put(name(i), tiny_png(10_000 + i, defect=True))
    for i in range(1, 20, 4):
        (lake / name(i)).unlink()
    put("broken/truncated.png", tiny_png(5)[:60])
    summaries.append(scan_night(1))
    for i in range(FIRST_NIGHT + 30, FIRST_NIGHT + 50):  # night 3
        put(name(i), tiny_png(i))
    for i in range(2, 42, 4):
        put(name(i), tiny_png(20_000 + i, defect=i % 8 == 2))
    for i in range(3, 23, 4):
        (lake / name(i)).unlink()
    summaries.append(scan_night(0))
    today = dt.datetime.now(dt.timezone.utc).date()
    nights = [(today - dt.timedelta(days=d)).isoformat() for d in (2, 1, 0)]
    return NightLake(lake, out, nights, summaries)
