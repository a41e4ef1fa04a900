"""Read + decode: manifest rows -> bytes -> uint8 RGB at the model size, or an error row.

Runs in CPU tasks (:class:`ReadDecode`), one batch of work-list rows at a time: fetch the bytes
(concurrently on object stores, in groups of bounded size), then decode each with
:func:`vip2scan.model.images.decode_image`, the decoder training and eval use too, so a scan
scores the very pixels eval measured. A file that fails becomes a row with ``status='error'``
and a one-line, redacted ``error``; its pixel slot is left zero and the model never sees it.

Poison isolation: the decoding itself runs in a child process (stages/sandbox.py), so a file
that crashes the decoder becomes the error row ``decoder process died: SIGKILL`` (after one
retry in a fresh child, so an unrelated death is not blamed on it) and the batch goes on.
Each read and each decode has a time limit (``read_timeout_s``, ``decode_timeout_s``): a
hung object becomes ``read timed out after N s`` / ``decode timed out after N s``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vip2scan.model.images import DecodeError

from ..errors import CREDENTIALS_REJECTED, ERROR_MAX_CHARS, one_line
from ..specs import LimitSpec
from ..storage.accounting import report_io
from ..storage.location import get_filesystem, split_protocol
from ..storage.retries import (StoreUnavailable, credential_error_code, has_client_retries,
                       is_transient, take_retries, with_retries)
from .sandbox import FAULT_HANG, FAULT_KILL, FAULT_NONE, POOL, DecoderDied, DecoderTimedOut, Sandbox

def error_text(what: BaseException | str) -> str:
    """An object's ``error`` column: one redacted line of bounded length."""
    return one_line(what, limit=ERROR_MAX_CHARS)


@dataclass(frozen=True)
class DecodeSettings:
    """What a read+decode task needs (picklable; filesystems are built inside the worker)."""

    image_size: int
    limit_spec: LimitSpec = LimitSpec()
    storage_options: dict | None = field(default=None, repr=False)
    wrapper: Any = field(default=None, repr=False)
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


class ReadTimedOut(TimeoutError):
    """A read that did not finish within the time limit (it is abandoned, not waited for)."""


def _within(seconds: float, fn, *args) -> tuple[bool, Any]:
    """(True, fn(*args)) or (False, None) when it did not return within ``seconds``.

    The call runs on a daemon thread that is abandoned on time-out: a read stuck in a socket
    cannot be interrupted, and a daemon thread neither blocks the task nor the exit."""
    box: list = []

    def call() -> None:
        try:
            box.append((True, fn(*args)))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            box.append((False, exc))

    thread = threading.Thread(target=call, name="read", daemon=True)
    thread.start()
    thread.join(seconds)
    if not box:
        return False, None
    ok, value = box[0]
    if not ok:
        raise value
    return True, value


def fetch_within_limit(uris: list[str], settings: DecodeSettings) -> list[bytes | BaseException]:
    """:func:`_fetch_many` with the read time limit: when a group does not finish in time, its
    objects are read again one by one, each within the limit, so only the hung ones fail."""
    limit = settings.limit_spec.read_timeout_s
    if not limit or limit <= 0:
        return _fetch_many(uris, settings)
    done, results = _within(limit, _fetch_many, uris, settings)
    if done:
        return results
    results = []
    for uri in uris:
        done, one = _within(limit, _fetch_many, [uri], settings)
        results.append(one[0] if done else ReadTimedOut(f"read timed out after {limit:g} s"))
    return results


def _fetch_many(uris: list[str], settings: DecodeSettings) -> list[bytes | BaseException]:
    """Bytes per URI in order; a failure is returned in its slot instead of raised."""
    if settings.faults is not None:
        settings.faults.on_read(uris)
    results: list[bytes | BaseException] = [b""] * len(uris)
    by_protocol: dict[str, list[int]] = {}
    for i, uri in enumerate(uris):
        by_protocol.setdefault(split_protocol(uri)[0], []).append(i)
    for protocol, indices in by_protocol.items():
        fs = get_filesystem(protocol, settings.storage_options, settings.wrapper)
        paths = [split_protocol(uris[i])[1] for i in indices]
        # s3fs sends a HEAD before each whole-object GET to consider a chunked parallel read
        # (worth it only above its 50 MB block size): one GET per image instead of two requests.
        single = {"max_concurrency": 1} if protocol in ("s3", "s3a") else {}
        if getattr(fs, "async_impl", False) and len(paths) > 1:
            # One concurrent round-trip batch; errors come back per path, then the transient
            # ones are retried one by one.
            got = fs.cat(paths, on_error="return", **single)
            got = got if isinstance(got, dict) else {paths[0]: got}
        else:
            got = {}
        for i, path in zip(indices, paths):
            value = got.get(path) if got else None
            # An S3 client already retried its failures: reading again would stack retries.
            if value is None or (isinstance(value, BaseException) and not has_client_retries(fs)):
                try:
                    value = with_retries(fs.cat_file, path, **single)
                except Exception as exc:  # noqa: BLE001 - becomes an error row
                    value = exc
            if isinstance(value, StoreUnavailable):
                raise value  # the store is down: the run stops, no object is to blame
            if isinstance(value, BaseException) and is_transient(value):
                # Still failing after every retry: the store's trouble, not the object's. The
                # run stops (staged rows are kept) instead of recording a row that blames it.
                raise StoreUnavailable(one_line(
                    f"reading {uris[i]} still failed after retries", value)
                    + " (rerun to resume)") from value
            results[i] = value
    return results


class ReadDecode:
    """map_batches callable: work-list rows -> rows + uint8 pixels (or an error)."""

    def __init__(self, settings: DecodeSettings):
        self.settings = settings

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
            self.settings.faults.on_decode_uris(uris)
        limit = self.settings.limit_spec.max_object_bytes
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
        budget = max(1, self.settings.limit_spec.max_batch_read_bytes)
        sandbox = POOL.acquire()
        try:
            for group in read_groups([sizes[i] for i in wanted], budget):
                indices = [wanted[g] for g in group]
                t0 = time.perf_counter()
                blobs = fetch_within_limit([uris[i] for i in indices], self.settings)
                t1 = time.perf_counter()
                for i, blob in zip(indices, blobs):
                    if not isinstance(blob, BaseException):
                        read_bytes[i] = len(blob)
                    outcome = self._decode_one(sandbox, uris[i], blob, pixels[i])
                    if isinstance(outcome, str):
                        status[i], error[i] = "error", outcome
                    else:
                        width[i], height[i] = outcome
                blobs = blob = None  # this group's bytes go before the next group's arrive
                read_s += t1 - t0
                decode_s += time.perf_counter() - t1
        finally:
            POOL.release(sandbox)

        out = {name: batch[name] for name in batch}
        out.update(
            pixels=pixels, width=width, height=height, status=status.astype(str),
            error=error, read_bytes=read_bytes,
            # Stage timings travel as per-row shares so the driver can sum them.
            read_s=np.full(n, read_s / max(n, 1)), decode_s=np.full(n, decode_s / max(n, 1)),
            retries=np.full(n, take_retries() / max(n, 1)),  # this process's, for the record
        )
        report_io(out, n)  # this process's storage requests and bytes, for the record
        return out

    def _decode_one(self, sandbox: Sandbox, uri: str, blob: bytes | BaseException,
                    out: np.ndarray) -> tuple[int, int] | str:
        """(width, height) with the pixels in ``out``, or the error row's text."""
        if isinstance(blob, ReadTimedOut):
            return error_text(str(blob))
        if isinstance(blob, BaseException):
            credentials = credential_error_code(blob)
            reason = f"{CREDENTIALS_REJECTED} ({credentials})" if credentials else \
                "object not found" if isinstance(blob, FileNotFoundError) else \
                "access denied" if isinstance(blob, PermissionError) else "read failed"
            return error_text(f"{reason}: {error_text(blob)}")
        limit = self.settings.limit_spec.max_object_bytes
        if limit and len(blob) > limit:  # the listing did not know the size (or was wrong)
            return error_text(f"object too large: {len(blob)} bytes exceeds the limit of "
                              f"{limit} bytes")
        fault = self.settings.faults.decode_fault(uri) if self.settings.faults else None
        action = FAULT_KILL if fault == "kill" else FAULT_HANG if fault == "hang" else FAULT_NONE
        for attempt in range(2):
            try:
                return sandbox.decode(blob, out, self.settings.limit_spec.max_image_pixels,
                                      self.settings.limit_spec.decode_timeout_s, action)
            except DecodeError as exc:
                return error_text(str(exc))
            except DecoderDied as exc:
                out[...] = 0
                # A time-out is final. A death is retried once in a fresh child: one the object
                # did not cause (the OOM killer choosing the child for another's memory) must
                # not blame it.
                if isinstance(exc, DecoderTimedOut) or attempt:
                    return error_text(str(exc))
        raise AssertionError("unreachable")


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
