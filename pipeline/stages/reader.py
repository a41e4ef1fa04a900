"""The reader process: objects are read AND decoded in a child process (sandbox.py's), so
whatever kills the process holding an object (the OOM killer on a mislabelled 30 GB object, a
native crash in a storage client or in the decoder) costs that child, never the driver (local
engine) or the decode task (Ray engine).

    ReadDecode (decode.py) --(group: settings, URIs)--> reader child: fetch.py, then decode
                           <--(decoding i | ok i + pixels | error i) ..., done: counters--

What came back before a death is kept; the objects still unanswered were in flight at it
(while reading: the whole rest of the group; while decoding: that one object). Each death is
also written to the run's staging (:class:`DeathLog`), so a restarted driver knows which
objects were in flight at earlier deaths: decode.py reads such an object alone, and one in
flight at :data:`QUARANTINE_DEATHS` deaths becomes the error row naming the cause
(``reader process died: SIGKILL``) without being read again that run.
"""

from __future__ import annotations

import atexit
import json
import os
import pickle
import secrets
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from vip2scan.model.images import DecodeError, decode_image

from ..storage.accounting import COUNTS, take_io
from ..storage.location import Location
from ..storage.retries import RETRIES, StoreUnavailable, take_retries
from .fetch import ReadTimedOut, error_text, fetch_within_limit, read_failure_text
from .sandbox import (HANG_S, MAX_REPLY_TEXT, OP_READ_GROUP, REPLY, REQUEST, Sandbox,
                      SandboxPool, death_reason, read_exact, read_into, wait_readable, write_all)

# An object in flight at this many deaths of the process holding it is not read again.
QUARANTINE_DEATHS = 2
# Beyond the read limit (which the child applies to its own reads), before the parent gives up
# on a child that does not answer at all.
READ_SLACK_S = 30.0
MSG_DECODING, MSG_OK, MSG_ERROR, MSG_DONE = 10, 11, 12, 13
DEATHS_FOLDER = "deaths"
# Reader processes of this process, kept warm between batches and runs (-P: not this folder
# first on the child's sys.path).
READERS = SandboxPool([sys.executable, "-P",
                       os.path.join(os.path.dirname(os.path.abspath(__file__)), "reader_child.py")])
atexit.register(READERS.close_all)


@dataclass(frozen=True)
class DeathLog:
    """Where the deaths of a run's reader processes are written: one small JSON object per
    death (no read-modify-write: any worker may write at any time), below the run's staging
    folder, so they go when the run commits (picklable: the filesystem is built where used)."""

    out_uri: str
    folder: str  # relative to OUT: _staging/<run_id>/deaths
    storage_options: dict | None = field(default=None, repr=False)
    wrapper: Any = field(default=None, repr=False)

    def record(self, uris: list[str], cause: str) -> None:
        out = Location.of(self.out_uri, self.storage_options, self.wrapper)
        name = f"{time.time_ns()}-{os.getpid()}-{secrets.token_hex(4)}.json"
        out.write_bytes(json.dumps({"uris": uris, "cause": cause}).encode(), self.folder, name)


@dataclass
class GroupOutcome:
    """What one group request brought back (indices are positions in the group)."""

    answers: dict[int, tuple[int, int] | str] = field(default_factory=dict)  # (w, h) or error
    read_bytes: dict[int, int] = field(default_factory=dict)
    in_flight: list[int] = field(default_factory=list)  # held by the child when it died
    death: str = ""  # the error row of an object in flight at too many deaths
    redo: list[int] = field(default_factory=list)  # cut off by another object's time-out
    read_s: float = 0.0
    decode_s: float = 0.0


def _dumps(value: Any) -> bytes:
    """Settings for the child: Ray's cloudpickle where Ray shipped us objects by value."""
    if "ray" in sys.modules:
        from ray import cloudpickle

        return cloudpickle.dumps(value)
    return pickle.dumps(value)


def read_group(sandbox: Sandbox, uris: list[str], settings: Any,
               targets: list[np.ndarray]) -> GroupOutcome:
    """Read and decode ``uris`` in ``sandbox``'s child, pixels into ``targets`` (one uint8
    [size, size, 3] array each). Raises StoreUnavailable (the store is down), DecoderFailed
    (the decoder misbehaved, or the child broke the protocol)."""
    from vip2scan.pipeline.errors import DecoderFailed

    limits = settings.limit_spec
    outcome = GroupOutcome()
    payload = _dumps((settings, uris))
    decoding: int | None = None
    proc = sandbox.started()
    unanswered = lambda: [k for k in range(len(uris)) if k not in outcome.answers]
    try:
        write_all(proc.stdin, REQUEST.pack(targets[0].shape[0], limits.max_image_pixels,
                                           OP_READ_GROUP, len(payload)))
        write_all(proc.stdin, payload)
        wait = limits.read_timeout_s + READ_SLACK_S if limits.read_timeout_s else None
        while True:
            if not wait_readable(proc.stdout, wait):
                sandbox.close()
                if decoding is None:
                    for k in unanswered():
                        outcome.answers[k] = f"read timed out after {limits.read_timeout_s:g} s"
                else:
                    outcome.answers[decoding] = f"decode timed out after {limits.decode_timeout_s:g} s"
                    outcome.redo = unanswered()
                return outcome
            kind, index, length = REPLY.unpack(read_exact(proc.stdout, REPLY.size))
            if kind not in (MSG_DECODING, MSG_OK, MSG_ERROR, MSG_DONE) or \
                    length > MAX_REPLY_TEXT or (kind != MSG_DONE and index >= len(uris)):
                raise DecoderFailed(f"reader process protocol error (reply {kind}, {length})")
            meta = json.loads(bytes(read_exact(proc.stdout, length))) if length else {}
            wait = limits.decode_timeout_s or None
            if kind == MSG_DECODING:
                decoding = index
                continue
            decoding = None
            if kind == MSG_DONE:
                return _done(sandbox, outcome, meta)
            outcome.read_bytes[index] = int(meta.get("read_bytes", 0))
            if kind == MSG_OK:
                read_into(proc.stdout, memoryview(targets[index]).cast("B"))
                outcome.answers[index] = (int(meta["width"]), int(meta["height"]))
            else:
                outcome.answers[index] = str(meta["error"])
    except (BrokenPipeError, EOFError, ConnectionResetError):
        proc.wait()
        reason = death_reason(proc.returncode)
        sandbox.close()
        if proc.returncode is not None and proc.returncode >= 0:
            # It exited on its own (a Python error, a broken environment): not an object's
            # doing, and blaming the group would quarantine a night of good objects.
            raise DecoderFailed(f"the reader process exited ({reason})") from None
        if decoding is not None:
            outcome.in_flight, outcome.death = [decoding], f"decoder process died: {reason}"
            outcome.redo = [k for k in unanswered() if k != decoding]
        else:
            outcome.in_flight, outcome.death = unanswered(), f"reader process died: {reason}"
        return outcome
    except BaseException:
        # Interrupted or broken mid-request: the child's later answers cannot be trusted.
        sandbox.close()
        raise


def _done(sandbox: Sandbox, outcome: GroupOutcome, meta: dict) -> GroupOutcome:
    """The child's last message of a group: its counters, and whether the group failed."""
    from vip2scan.pipeline.errors import DecoderFailed

    RETRIES.add(int(meta.get("retries", 0)))
    for name, value in (meta.get("io") or {}).items():
        COUNTS.add(name, int(value))
    outcome.read_s, outcome.decode_s = float(meta.get("read_s", 0)), float(meta.get("decode_s", 0))
    if meta.get("retire"):
        sandbox.close()  # its timed-out reads are still running: stop them with the child
    if meta.get("stop"):
        raise StoreUnavailable(str(meta["stop"]))
    if meta.get("failed"):
        sandbox.close()
        raise DecoderFailed(str(meta["failed"]))
    return outcome


# ------------------------------------------------------------------ the child's side
def _send(replies: Any, kind: int, index: int, meta: dict | None = None,
          pixels: np.ndarray | None = None) -> None:
    data = json.dumps(meta).encode() if meta is not None else b""
    write_all(replies, REPLY.pack(kind, index, len(data)) + data)
    if pixels is not None:
        write_all(replies, np.ascontiguousarray(pixels, dtype=np.uint8))


def serve_group(payload: bytes, size: int, max_pixels: int, replies: Any) -> None:
    """Read a group (fetch.py: concurrent, time-limited), then decode each object and answer
    it; the object's test-only faults (pipeline/faults.py) strike here, in this child."""
    import signal

    from PIL import Image

    done: dict[str, Any] = {"read_s": 0.0, "decode_s": 0.0, "retire": False}
    t0 = time.perf_counter()
    try:
        # Trusted: the parent that started this child wrote it to the child's own stdin pipe
        # (settings hold filesystem wrappers, so not JSON). Nothing from a file or the store.
        settings, uris = pickle.loads(payload)
        blobs = fetch_within_limit(uris, settings)
    except StoreUnavailable as exc:
        blobs, done["stop"] = [], str(exc)
    except Exception as exc:  # noqa: BLE001 - the settings or the filesystem, not an object
        _send(replies, MSG_DONE, 0, {"failed": error_text(f"reader failed: {type(exc).__name__}: {exc}")})
        return
    done["read_s"] = time.perf_counter() - t0
    done["retire"] = any(isinstance(blob, ReadTimedOut) for blob in blobs)
    Image.MAX_IMAGE_PIXELS = max(max_pixels, 1)
    faults = settings.faults
    for i, blob in enumerate(blobs):
        got = 0 if isinstance(blob, BaseException) else len(blob)
        failed = read_failure_text(blob, settings.limit_spec.max_object_bytes)
        if failed is not None:
            _send(replies, MSG_ERROR, i, {"error": failed, "read_bytes": got})
            continue
        _send(replies, MSG_DECODING, i)
        fault = faults.decode_fault(uris[i]) if faults is not None else None
        if fault == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif fault == "hang":
            time.sleep(HANG_S)
        t1 = time.perf_counter()
        try:
            pixels, width, height = decode_image(blob, size, max_pixels)
            if pixels.shape != (size, size, 3) or pixels.dtype != np.uint8:
                raise TypeError(f"the decoder returned {pixels.dtype} {pixels.shape} for size {size}")
        except DecodeError as exc:
            _send(replies, MSG_ERROR, i, {"error": error_text(str(exc)), "read_bytes": got})
            continue
        except Exception as exc:  # noqa: BLE001 - the decoder's bug, not the file's
            done["failed"] = " ".join(f"decoder failed: {type(exc).__name__}: {exc}".split())[:4096]
            break
        finally:
            done["decode_s"] += time.perf_counter() - t1
        _send(replies, MSG_OK, i, {"width": width, "height": height, "read_bytes": got}, pixels)
    blobs = blob = None
    done["retries"] = take_retries()
    done["io"] = asdict(take_io())
    _send(replies, MSG_DONE, 0, done)


__all__ = ["QUARANTINE_DEATHS", "READERS", "DeathLog", "GroupOutcome", "read_group", "serve_group"]
