"""The lease on OUT, with fencing: two scans of the same OUT never both write it.

The lease is a small JSON object (``_lock``: token, generation, run_id, holder, expiry). Every
change to it is a compare-and-swap on the version read just before, so of several scans racing
for a free, expired or dead holder's lease exactly one wins:

- S3: create with If-None-Match, replace and delete with If-Match on the ETag read;
- a local OUT: read, compare and write under an exclusive ``flock`` of ``_lock.guard`` (the
  kernel drops it when its holder dies, so a killed scan never blocks the next one).

Each holder carries a fencing token (``<generation>-<random>``; the generation counts
takeovers). :meth:`Lease.fence` renews the lease only if it still holds our token and raises
:class:`LeaseLost` otherwise; the pipeline calls it before every durable step (each staging
part, each score file, the run record), so a scan whose lease was taken over stops before it
writes again. A renewed lease cannot be taken over for ``ttl_s`` seconds, which bounds how
long the write that follows may take. A heartbeat thread renews it in between.

A lease whose expiry has passed is taken over; so is one whose holder runs on this host and
provably no longer exists (holder.py), at once, without waiting for the expiry.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import logging
import os
import secrets
import threading
import time
from typing import Any

from ..errors import PipelineError
from ..output.paths import LOCK, LOCK_GUARD
from ..storage.location import Location, staged_local_file
from ..storage.redaction import redact
from .holder import describe_holder, holder_gone, this_process

log = logging.getLogger(__name__)

HEARTBEAT_MAX_S = 10.0  # renew at least this often: a lost lease is noticed within seconds
GUARD_WAIT_S = 30.0  # a local lease's flock held longer than this: its holder is frozen


class OutputLocked(PipelineError, RuntimeError):
    """Another scan holds OUT's lease."""


class LeaseLost(PipelineError, RuntimeError):
    """Our lease was taken over (our heartbeats stopped for longer than the expiry)."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _parse_time(value: Any) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(str(value))
    except (TypeError, ValueError):
        return None


def _parse(data: bytes) -> dict[str, Any]:
    try:
        content = json.loads(data)
    except ValueError:
        return {}
    return content if isinstance(content, dict) else {}


# --------------------------------------------------------------------------- compare-and-swap

class _GuardedFile:
    """A local lease file whose every change happens under an exclusive flock of a guard
    file; the version of the content is its hash."""

    def __init__(self, out: Location):
        self.path = out.fs_path(LOCK)
        self.guard = out.fs_path(LOCK_GUARD)

    def _locked(self) -> int:
        """The guard's descriptor, flocked. The critical section takes microseconds, so a
        guard held for GUARD_WAIT_S is a holder frozen inside it (SIGSTOP, a hung disk):
        fail in one line rather than hang behind it."""
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.guard, os.O_CREAT | os.O_RDWR, 0o644)
        deadline = time.monotonic() + GUARD_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise OutputLocked(redact(
                        f"{self.guard} has been locked for {GUARD_WAIT_S:.0f} s by a process "
                        "that does not let go (stopped or hung?); find it with "
                        f"'fuser {self.guard}'")) from None
                time.sleep(0.005)

    def _read(self) -> tuple[bytes | None, str | None]:
        try:
            with open(self.path, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            return None, None
        return data, hashlib.sha1(data).hexdigest()

    def read(self) -> tuple[bytes | None, str | None]:
        return self._read()  # a rename is atomic: readers need no lock

    def swap(self, version: str | None, data: bytes | None) -> bool:
        """Replace (or create when ``version`` is None, or delete when ``data`` is None) the
        lease if its version is still ``version``."""
        # Written and synced before the flock: keep the guarded part short.
        staged = contextlib.nullcontext() if data is None else staged_local_file(self.path, data)
        with staged as tmp:
            fd = self._locked()
            try:
                if self._read()[1] != version:
                    return False
                if tmp is None:
                    os.remove(self.path)
                else:
                    os.replace(tmp, self.path)
                return True
            finally:
                os.close(fd)  # drops the flock


class _ObjectStoreFile:
    """A lease object on S3: conditional requests on the ETag (If-None-Match / If-Match)."""

    def __init__(self, out: Location):
        self.out = out

    def read(self) -> tuple[bytes | None, str | None]:
        try:
            return self.out.read_versioned(LOCK)
        except FileNotFoundError:
            return None, None

    def swap(self, version: str | None, data: bytes | None) -> bool:
        if version is None:
            return data is not None and self.out.create_exclusive(data, LOCK)
        if data is None:
            return self.out.remove_if_unchanged(version, LOCK)
        return self.out.replace_if_unchanged(data, version, LOCK)


def _lease_file(out: Location) -> _GuardedFile | _ObjectStoreFile:
    return _GuardedFile(out) if out.is_local else _ObjectStoreFile(out)


def read_lease_versioned(out: Location) -> tuple[dict[str, Any] | None, str | None]:
    """(content as in :func:`read_lease`, the version a compare-and-swap needs)."""
    data, version = _lease_file(out).read()
    return (None, None) if data is None else (_parse(data), version)


def read_lease(out: Location) -> dict[str, Any] | None:
    """The current lease content, None if there is none, {} if it is unreadable."""
    return read_lease_versioned(out)[0]


def lease_expired(content: dict[str, Any], now: dt.datetime | None = None) -> bool:
    expires = _parse_time(content.get("expires_at"))
    return expires is None or (now or _now()) >= expires


def _generation(content: dict[str, Any] | None) -> int:
    try:
        return int((content or {}).get("generation") or 0)
    except (TypeError, ValueError):
        return 0


# --------------------------------------------------------------------------- the lease

class Lease:
    """Exclusive, expiring, fenced lease on an OUT location, renewed by a heartbeat thread."""

    def __init__(self, out: Location, ttl_s: float = 300.0, heartbeat_s: float | None = None):
        if ttl_s <= 0:
            raise ValueError("lock ttl must be positive")
        self.out = out
        self.ttl_s = float(ttl_s)
        self.heartbeat_s = float(heartbeat_s) if heartbeat_s else \
            max(0.5, min(self.ttl_s / 10, HEARTBEAT_MAX_S))
        self.token = secrets.token_hex(8)
        self.generation = 0
        self.run_id: str | None = None
        self.acquired_at: dt.datetime | None = None
        self._file = _lease_file(out)
        self._holder = this_process()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lost: str | None = None
        self._write_lock = threading.Lock()

    @property
    def fencing_token(self) -> str:
        return f"{self.generation}-{self.token}"

    def _content(self) -> bytes:
        now = _now()
        return json.dumps({
            "token": self.token, "generation": self.generation,
            "fencing_token": self.fencing_token, "run_id": self.run_id, **self._holder,
            "acquired_at": (self.acquired_at or now).isoformat(),
            "heartbeat_at": now.isoformat(),
            "expires_at": (now + dt.timedelta(seconds=self.ttl_s)).isoformat(),
            "ttl_s": self.ttl_s,
        }, indent=1).encode()

    def _ours(self, content: dict[str, Any] | None) -> bool:
        return bool(content) and content.get("token") == self.token  # type: ignore[union-attr]

    def _describe(self, content: dict[str, Any]) -> str:
        return redact(
            f"{self.out.display()} is locked by {describe_holder(content)} (heartbeat "
            f"{content.get('heartbeat_at', '?')}, expires {content.get('expires_at', '?')}): "
            "another scan of this output is running; wait for it (--wait) or let a dead "
            "one's lease expire")

    # ------------------------------------------------------------------ acquire / release
    def acquire(self, wait: bool | float = False, poll_s: float = 1.0) -> "Lease":
        """Take the lease. ``wait``: False = refuse at once, True = forever, seconds = bounded."""
        deadline = None if wait is True else time.monotonic() + (0 if wait is False else float(wait))
        while True:
            content, version = read_lease_versioned(self.out)
            reason = self._takeover_reason(content)
            if content is None or reason is not None:
                if reason:
                    log.warning("taking over the lease on %s from %s: %s", self.out.display(),
                                describe_holder(content or {}), reason)
                self.generation = _generation(content) + 1
                self.acquired_at = _now()
                self._file.swap(version, self._content())
                # Read back whatever the swap answered: a lost answer to our own successful
                # write (then retried into a conflict) still leaves our token there.
                if self._ours(read_lease(self.out)):
                    self._start_heartbeat()
                    return self
                continue  # someone else swapped first: judge their lease afresh
            if deadline is not None and time.monotonic() >= deadline:
                raise OutputLocked(self._describe(content))
            time.sleep(poll_s)

    @staticmethod
    def _takeover_reason(content: dict[str, Any] | None) -> str | None:
        """Why a present lease may be taken over now, None while its holder may be alive."""
        if content is None:
            return None
        if content == {}:
            return "the lease is unreadable"
        if lease_expired(content):
            return f"its lease expired at {content.get('expires_at')}"
        if holder_gone(content):
            return "its process on this host is gone"
        return None

    def set_run_id(self, run_id: str) -> None:
        """Name the run in the lease (others' refusals show it); fences like :meth:`fence`."""
        self.run_id = run_id
        self.fence(f"starting run {run_id}")

    def fence(self, step: str) -> None:
        """Renew the lease if it still holds our token, else raise LeaseLost before ``step``."""
        self._beat()
        if self._lost:
            raise LeaseLost(f"{self._lost}; stopped before {step}")

    def _beat(self) -> None:
        with self._write_lock:
            if self._lost:
                return
            content, version = read_lease_versioned(self.out)
            if self._ours(content) and self._file.swap(version, self._content()):
                return
            content = read_lease(self.out)
            if self._ours(content):
                return  # our own write changed the version under a retry: it is still ours
            holder = describe_holder(content) if content else "another scan, which has since released it"
            self._lost = (f"lost the lease on {self.out.display()} (fencing token "
                          f"{self.fencing_token}) to {holder}")

    def _start_heartbeat(self) -> None:
        self._stop.clear()

        def loop() -> None:
            while not self._stop.wait(self.heartbeat_s):
                try:
                    self._beat()
                except Exception as exc:  # noqa: BLE001 - keep beating through blips
                    log.warning("lease heartbeat failed: %s", redact(str(exc)))

        self._thread = threading.Thread(target=loop, name="vip2scan-lease", daemon=True)
        self._thread.start()

    def check(self) -> None:
        """Raise LeaseLost if the heartbeat found our lease taken over (no request)."""
        if self._lost:
            raise LeaseLost(self._lost)

    def release(self) -> None:
        """Remove the lease if it is still ours (never someone else's). Never raises: it runs
        in ``finally`` blocks, where it must not hide the error that got us there."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        try:
            with self._write_lock:
                for _ in range(3):
                    content, version = read_lease_versioned(self.out)
                    if not self._ours(content) or self._file.swap(version, None):
                        return
        except Exception as exc:  # noqa: BLE001
            log.warning("could not release the lease on %s (it expires in at most %.0f s): %s",
                        self.out.display(), self.ttl_s, redact(str(exc)))

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
