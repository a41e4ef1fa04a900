"""Decode: object bytes -> uint8 RGB at the model size, or a one-line error.

Runs in Ray CPU tasks (:class:`ReadDecode`), one batch of manifest rows at a time: fetch the
bytes (concurrently on object stores), decode with a decompression-bomb guard, apply EXIF
orientation, take the first frame, convert any mode to 8-bit RGB and resize straight to the
model size. A file that fails becomes a row with ``status='error'`` and an ``error`` reason;
its pixel slot is left zero and the inference actor never looks at it.
"""

from __future__ import annotations

import io
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageFile, ImageOps

from .storage import credential_error_code, get_filesystem, redact, split_protocol, with_retries
from vip2scan.model.preprocess import resize_to_model  # light: no torch import

DEFAULT_MAX_IMAGE_PIXELS = 178_956_970  # PIL's own default bomb limit (about 13k x 13k)
# Objects larger than this are error rows, never read: no image within the pixel limit needs
# more (178 Mpx x 4 bytes uncompressed is 716 MB), and reading one is a whole RAM's worth.
DEFAULT_MAX_OBJECT_BYTES = 1 << 30
# Error text of a row whose read was refused for the credentials, not for the object: the
# scan's driver stops the run on such a row rather than record it (see scan.py).
CREDENTIALS_REJECTED = "credentials rejected"
# Bytes a decode task holds at once: a batch's objects are fetched in groups up to this size
# (always at least one object), so a batch of large images does not sit in memory together.
DEFAULT_MAX_BATCH_READ_BYTES = 256 << 20
ERROR_MAX_CHARS = 300

# A truncated file must be an error, not a silently grey-padded image.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class DecodeError(ValueError):
    """A file that is not a usable image; the message becomes the row's ``error``."""


def one_line(exc: BaseException | str, limit: int = ERROR_MAX_CHARS) -> str:
    """A single redacted line for the ``error`` column."""
    text = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    text = " ".join(redact(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
    if mode == "P":
        # Palette with transparency converts via RGBA (PIL warns otherwise); alpha is dropped.
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        return image.convert("RGB")
    if mode in ("RGBA", "RGBa", "LA", "La", "PA", "RGBX", "CMYK", "YCbCr", "L", "1", "LAB", "HSV"):
        return image.convert("RGB")
    return image.convert("RGB")


def decode_image(data: bytes, size: int, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
                 ) -> tuple[np.ndarray, int, int]:
    """Bytes -> (uint8 [size, size, 3], width, height); raises DecodeError with a reason.

    ``width``/``height`` are the image's dimensions as displayed (after EXIF orientation), so
    a map resized back to them overlays the upright image.
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
                # An opened file is at its first frame (GIF/TIFF/WebP animations and stacks).
                # Never ask for n_frames: it walks every page, and a hostile TIFF may have
                # thousands.
                image.load()
                # In place: the default returns a full copy even when nothing rotates.
                ImageOps.exif_transpose(image, in_place=True)
                rgb = to_rgb(image)
                pixels = resize_to_model(rgb, size)
                return pixels, rgb.width, rgb.height
    except DecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise DecodeError(f"image too large (decompression-bomb guard): {exc}") from exc
    except Image.DecompressionBombWarning as exc:
        raise DecodeError(f"image too large (decompression-bomb guard): {exc}") from exc
    except Image.UnidentifiedImageError as exc:
        raise DecodeError("not a recognised image format") from exc
    except MemoryError as exc:
        raise DecodeError("out of memory while decoding") from exc
    except Exception as exc:  # noqa: BLE001 - any decoder failure becomes an error row
        raise DecodeError(f"cannot decode: {one_line(exc)}") from exc


# --------------------------------------------------------------------------- Ray stage

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
    """Ray Data map_batches callable: manifest rows -> rows + uint8 pixels (or an error)."""

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
                error[i] = one_line(f"object too large: {sizes[i]} bytes exceeds the limit of "
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
            error[i] = one_line(f"{reason}: {one_line(blob)}")
            return
        read_bytes[i] = len(blob)
        limit = self.settings.max_object_bytes
        if limit and len(blob) > limit:  # the listing did not know the size (or was wrong)
            status[i] = "error"
            error[i] = one_line(f"object too large: {len(blob)} bytes exceeds the limit of "
                                f"{limit} bytes")
            return
        try:
            pixels[i], width[i], height[i] = decode_image(
                blob, self.settings.image_size, self.settings.max_image_pixels)
        except DecodeError as exc:
            status[i] = "error"
            error[i] = one_line(str(exc))


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
