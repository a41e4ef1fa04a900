"""Read + decode: manifest rows -> bytes -> uint8 RGB at the model size, or an error row.

Runs in CPU tasks (:class:`ReadDecode`), one batch of work-list rows at a time: fetch the bytes
(concurrently on object stores, in groups of bounded size), then decode each with
:func:`vip2scan.model.images.decode_image`, the decoder training and eval use too, so a scan
scores the very pixels eval measured. A file that fails becomes a row with ``status='error'``
and a one-line, redacted ``error``; its pixel slot is left zero and the model never sees it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from vip2scan.model.images import DEFAULT_MAX_IMAGE_PIXELS, DecodeError, decode_image

from ..errors import CREDENTIALS_REJECTED, ERROR_MAX_CHARS, one_line
from ..retries import credential_error_code, with_retries
from ..storage import get_filesystem, split_protocol

# Objects larger than this are error rows, never read: no image within the pixel limit needs
# more (178 Mpx x 4 bytes uncompressed is 716 MB), and reading one is a whole RAM's worth.
DEFAULT_MAX_OBJECT_BYTES = 1 << 30
# Bytes a decode task holds at once: a batch's objects are fetched in groups up to this size
# (always at least one object), so a batch of large images does not sit in memory together.
DEFAULT_MAX_BATCH_READ_BYTES = 256 << 20


def error_text(what: BaseException | str) -> str:
    """An object's ``error`` column: one redacted line of bounded length."""
    return one_line(what, limit=ERROR_MAX_CHARS)


@dataclass(frozen=True)
class DecodeSettings:
    """What a read+decode task needs (picklable; filesystems are built inside the worker)."""

    image_size: int
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    storage_options: dict | None = field(default=None, repr=False)
    wrapper: Any = field(default=None, repr=False)
    max_object_bytes: int = DEFAULT_MAX_OBJECT_BYTES
    max_batch_read_bytes: int = DEFAULT_MAX_BATCH_READ_BYTES
    faults: Any = field(default=None, repr=False)  # faults.FaultHooks (tests only)


def read_groups(sizes: list[int | None], budget: int) -> list[list[int]]:
    """Indices in order, cut into groups whose known sizes sum to at most ``budget`` bytes
    (a group always takes at least one index; unknown sizes count as zero)."""
    groups: list[list[int]] = []
    current: list[int] = []
    held = 0
    for i, size in enumerate(sizes):
        size = int(size or 0)
        if current and held + size > budget:
            groups.append(current)
            current, held = [], 0
        current.append(i)
        held += size
    if current:
        groups.append(current)
    return groups


def _fetch_many(uris: list[str], settings: DecodeSettings) -> list[bytes | BaseException]:
    """Bytes per URI in order; a failure is returned in its slot instead of raised."""
    results: list[bytes | BaseException] = [b""] * len(uris)
    by_protocol: dict[str, list[int]] = {}
    for i, uri in enumerate(uris):
        by_protocol.setdefault(split_protocol(uri)[0], []).append(i)
    for protocol, indices in by_protocol.items():
        fs = get_filesystem(protocol, settings.storage_options, settings.wrapper)
        paths = [split_protocol(uris[i])[1] for i in indices]
        if getattr(fs, "async_impl", False) and len(paths) > 1:
            # One concurrent round-trip batch; errors come back per path, then the transient
            # ones are retried one by one.
            got = fs.cat(paths, on_error="return")
            got = got if isinstance(got, dict) else {paths[0]: got}
        else:
            got = {}
        for i, path in zip(indices, paths):
            value = got.get(path) if got else None
            if value is None or isinstance(value, BaseException):
                try:
                    value = with_retries(fs.cat_file, path)
                except Exception as exc:  # noqa: BLE001 - becomes an error row
                    value = exc
            results[i] = value
    return results


class ReadDecode:
    """map_batches callable: work-list rows -> rows + uint8 pixels (or an error)."""

    def __init__(self, settings: DecodeSettings):
        self.settings = settings
        Image.MAX_IMAGE_PIXELS = max(settings.max_image_pixels, 1)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        uris = [str(u) for u in batch["image_uri"]]
        n = len(uris)
        size = self.settings.image_size
        pixels = np.zeros((n, size, size, 3), dtype=np.uint8)
        width = np.zeros(n, dtype=np.int32)
        height = np.zeros(n, dtype=np.int32)
        status = np.full(n, "ok", dtype=object)
        # "" rather than None: a column that is all None in one block would become Arrow's
        # null type there and string in the next; scores_table turns "" into null.
        error = np.full(n, "", dtype=object)
        read_bytes = np.zeros(n, dtype=np.int64)

        if self.settings.faults is not None:
            self.settings.faults.on_decode_batch()
        limit = self.settings.max_object_bytes
        sizes = _listed_sizes(batch, n)
        read_s = decode_s = 0.0
        wanted = []
        for i in range(n):
            if sizes[i] is not None and limit and sizes[i] > limit:
                status[i] = "error"
                error[i] = error_text(f"object too large: {sizes[i]} bytes exceeds the limit of "
                                    f"{limit} bytes (not read)")
            else:
                wanted.append(i)
        budget = max(1, self.settings.max_batch_read_bytes)
        for group in read_groups([sizes[i] for i in wanted], budget):
            indices = [wanted[g] for g in group]
            t0 = time.perf_counter()
            blobs = _fetch_many([uris[i] for i in indices], self.settings)
            t1 = time.perf_counter()
            for i, blob in zip(indices, blobs):
                self._decode_one(i, blob, pixels, width, height, status, error, read_bytes)
            blobs = blob = None  # this group's bytes go before the next group's arrive
            read_s += t1 - t0
            decode_s += time.perf_counter() - t1

        out = {name: batch[name] for name in batch}
        out.update(
            pixels=pixels, width=width, height=height, status=status.astype(str),
            error=error, read_bytes=read_bytes,
            # Stage timings travel as per-row shares so the driver can sum them.
            read_s=np.full(n, read_s / max(n, 1)), decode_s=np.full(n, decode_s / max(n, 1)),
        )
        return out

    def _decode_one(self, i: int, blob: bytes | BaseException, pixels: np.ndarray,
                    width: np.ndarray, height: np.ndarray, status: np.ndarray,
                    error: np.ndarray, read_bytes: np.ndarray) -> None:
        if isinstance(blob, BaseException):
            status[i] = "error"
            credentials = credential_error_code(blob)
            reason = f"{CREDENTIALS_REJECTED} ({credentials})" if credentials else \
                "object not found" if isinstance(blob, FileNotFoundError) else \
                "access denied" if isinstance(blob, PermissionError) else "read failed"
            error[i] = error_text(f"{reason}: {error_text(blob)}")
            return
        read_bytes[i] = len(blob)
        limit = self.settings.max_object_bytes
        if limit and len(blob) > limit:  # the listing did not know the size (or was wrong)
            status[i] = "error"
            error[i] = error_text(f"object too large: {len(blob)} bytes exceeds the limit of "
                                f"{limit} bytes")
            return
        try:
            pixels[i], width[i], height[i] = decode_image(
                blob, self.settings.image_size, self.settings.max_image_pixels)
        except DecodeError as exc:
            status[i] = "error"
            error[i] = error_text(str(exc))


def _listed_sizes(batch: dict[str, np.ndarray], n: int) -> list[int | None]:
    """size_bytes per row from the listing (None where unknown)."""
    values = batch.get("size_bytes")
    if values is None:
        return [None] * n
    sizes: list[int | None] = []
    for value in values:
        try:
            number = float(value)
        except (TypeError, ValueError):
            sizes.append(None)
            continue
        sizes.append(None if np.isnan(number) else int(number))
    return sizes


def read_and_decode(batch: dict[str, np.ndarray], settings: DecodeSettings) -> dict[str, np.ndarray]:
    """Stateless form of :class:`ReadDecode` for Ray CPU tasks (``map_batches(fn, fn_kwargs=)``)."""
    return ReadDecode(settings)(batch)
