"""Reading objects' bytes, in the reader process (stages/reader.py) that also decodes them.

Reads go concurrently through the object's filesystem (fsspec), each retried where its client
does not retry itself; a read still failing with a transient error after every retry stops the
run (:class:`StoreUnavailable`: the store's trouble, not the object's) and any other failure
becomes the object's error row (:func:`read_failure_text`).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from ..errors import CREDENTIALS_REJECTED, ERROR_MAX_CHARS, one_line
from ..storage.location import get_filesystem, split_protocol
from ..storage.retries import (StoreUnavailable, credential_error_code, has_client_retries,
                               is_transient, with_retries)


def error_text(what: BaseException | str) -> str:
    """An object's ``error`` column: one redacted line of bounded length."""
    return one_line(what, limit=ERROR_MAX_CHARS)


class ReadTimedOut(TimeoutError):
    """A read that did not finish within the time limit (it is abandoned, not waited for)."""


def fetch_within_limit(uris: list[str], settings: Any) -> list[bytes | BaseException]:
    """:func:`fetch_many` with the read time limit: each object is read on its own thread and
    all share one deadline, so a hung object costs the limit once (not once in its group,
    then again alone) and the others' bytes are kept."""
    limit = settings.limit_spec.read_timeout_s
    if not limit or limit <= 0:
        return fetch_many(uris, settings)
    for protocol in {split_protocol(uri)[0] for uri in uris}:
        # Built (and its client library imported: seconds for s3fs on a busy node) before the
        # clock starts: the limit is for the object's read, not this process's start-up.
        get_filesystem(protocol, settings.storage_options, settings.wrapper)
    deadline = time.monotonic() + limit
    boxes: list[list] = [[] for _ in uris]
    threads = []
    for uri, box in zip(uris, boxes):
        thread = threading.Thread(target=_read_into_box, args=(uri, settings, box), name="read",
                                  daemon=True)
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    results: list[bytes | BaseException] = []
    for box in boxes:
        if not box:
            results.append(ReadTimedOut(f"read timed out after {limit:g} s"))
            continue
        ok, value = box[0]
        if not ok and isinstance(value, StoreUnavailable):
            raise value
        results.append(value)
    return results


def _read_into_box(uri: str, settings: Any, box: list) -> None:
    try:
        box.append((True, fetch_many([uri], settings)[0]))
    except BaseException as exc:  # noqa: BLE001 - handed to the caller
        box.append((False, exc))


def fetch_many(uris: list[str], settings: Any) -> list[bytes | BaseException]:
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


def read_failure_text(blob: bytes | BaseException, max_object_bytes: int | None) -> str | None:
    """The error row's text for a read that failed or brought too many bytes, else None."""
    if isinstance(blob, ReadTimedOut):
        return error_text(str(blob))
    if isinstance(blob, BaseException):
        credentials = credential_error_code(blob)
        reason = f"{CREDENTIALS_REJECTED} ({credentials})" if credentials else \
            "object not found" if isinstance(blob, FileNotFoundError) else \
            "access denied" if isinstance(blob, PermissionError) else "read failed"
        return error_text(f"{reason}: {error_text(blob)}")
    if max_object_bytes and len(blob) > max_object_bytes:  # the listing did not know the size
        return error_text(f"object too large: {len(blob)} bytes exceeds the limit of "
                          f"{max_object_bytes} bytes")
    return None
