"""The lease on OUT: two scans of the same OUT never overlap.

The lease is a small JSON object (token, run_id, host, pid, heartbeat, expiry), created only
if absent (O_EXCL locally, If-None-Match on S3) and refreshed by a heartbeat thread. A lease
whose expiry has passed (its holder died) is taken over. Losing the lease (someone took it
over because our heartbeats stopped) is detected by the heartbeat and surfaces as
:class:`LeaseLost` at the next :meth:`Lease.check`. On S3 a heartbeat replaces the lease
only if it is still the version the heartbeat read (If-Match), so a takeover that lands
between the read and the write is never overwritten; a local OUT (one machine) has no
conditional replace, and that window remains there.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import secrets
import socket
import threading
import time
from typing import Any

from .layout import LOCK
from .redaction import redact
from .storage import Location

log = logging.getLogger(__name__)


class OutputLocked(RuntimeError):
    """Another scan holds OUT's lease."""


class LeaseLost(RuntimeError):
    """Our lease was taken over (our heartbeats stopped for longer than the expiry)."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _parse_time(value: Any) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(str(value))
    except (TypeError, ValueError):
        return None


def read_lease(out: Location) -> dict[str, Any] | None:
    """The current lease content, None if there is none, {} if it is unreadable."""
    return read_lease_versioned(out)[0]


def read_lease_versioned(out: Location) -> tuple[dict[str, Any] | None, str | None]:
    """(content as in :func:`read_lease`, the version tag a conditional replace needs)."""
    try:
        data, version = out.read_versioned(LOCK)
    except FileNotFoundError:
        return None, None
    try:
        content = json.loads(data)
        return (content if isinstance(content, dict) else {}), version
    except ValueError:
        return {}, version


def lease_expired(content: dict[str, Any], now: dt.datetime | None = None) -> bool:
    expires = _parse_time(content.get("expires_at"))
    return expires is None or (now or _now()) >= expires


class Lease:
    """Exclusive, expiring lease on an OUT location, kept alive by a heartbeat thread."""

    def __init__(self, out: Location, ttl_s: float = 300.0, heartbeat_s: float | None = None):
        if ttl_s <= 0:
            raise ValueError("lock ttl must be positive")
        self.out = out
        self.ttl_s = float(ttl_s)
        self.heartbeat_s = float(heartbeat_s) if heartbeat_s else max(0.5, self.ttl_s / 5)
        self.token = secrets.token_hex(8)
        self.run_id: str | None = None
        self.acquired_at: dt.datetime | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lost: str | None = None
        self._write_lock = threading.Lock()

    # ------------------------------------------------------------------ content
    def _content(self) -> bytes:
        now = _now()
        return json.dumps({
            "token": self.token,
            "run_id": self.run_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "acquired_at": (self.acquired_at or now).isoformat(),
            "heartbeat_at": now.isoformat(),
            "expires_at": (now + dt.timedelta(seconds=self.ttl_s)).isoformat(),
            "ttl_s": self.ttl_s,
        }, indent=1).encode()

    def _describe(self, content: dict[str, Any]) -> str:
        return redact(
            f"{self.out.display()} is locked by run {content.get('run_id') or '(starting)'} on host "
            f"{content.get('host', '?')} pid {content.get('pid', '?')} (heartbeat "
            f"{content.get('heartbeat_at', '?')}, expires {content.get('expires_at', '?')}): another "
            "scan of this output is running; wait for it (--wait) or let a dead one's lease expire")

    # ------------------------------------------------------------------ acquire / release
    def acquire(self, wait: bool | float = False, poll_s: float = 1.0) -> "Lease":
        """Take the lease. ``wait``: False = refuse at once, True = forever, seconds = bounded."""
        deadline = None if wait is True else time.monotonic() + (0 if wait is False else float(wait))
        while True:
            self.acquired_at = _now()
            if self.out.create_exclusive(self._content(), LOCK):
                # Read back: on stores without a real conditional create, a racing writer may
                # have replaced our object; whoever reads their own token back holds the lease.
                content = read_lease(self.out)
                if content and content.get("token") == self.token:
                    self._start_heartbeat()
                    return self
            else:
                content = read_lease(self.out)
                if content and content.get("token") == self.token:
                    # Our own create: it succeeded on the server but its answer was lost, and
                    # the retry then found the object (ours) already there.
                    self._start_heartbeat()
                    return self
                if content is not None and (content == {} or lease_expired(content)):
                    log.warning("taking over an expired lease on %s (run %s on %s)",
                                self.out.display(), (content or {}).get("run_id"),
                                (content or {}).get("host"))
                    self.out.remove(LOCK)
                    continue
            if content is None:
                continue  # released between our attempt and the read: try again now
            if deadline is not None and time.monotonic() >= deadline:
                raise OutputLocked(self._describe(content))
            time.sleep(poll_s)

    def set_run_id(self, run_id: str) -> None:
        self.run_id = run_id
        self._beat()

    def _beat(self) -> None:
        with self._write_lock:
            if self._lost:
                return
            content, version = read_lease_versioned(self.out)
            if content and content.get("token") == self.token and \
                    self.out.replace_if_unchanged(self._content(), version, LOCK):
                return
            # Not ours, or replaced between our read and our write (on S3 the write is
            # conditional on the version we read, so a takeover there is never overwritten).
            content = read_lease(self.out)
            if content and content.get("token") == self.token:
                return  # only our own earlier write changed the version: beat again next time
            self._lost = (f"lease on {self.out.display()} was taken over by "
                          f"{(content or {}).get('host', 'another process')}")

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
        """Raise LeaseLost if the heartbeat found our lease taken over."""
        if self._lost:
            raise LeaseLost(self._lost)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        with self._write_lock:
            content = read_lease(self.out)
            if content and content.get("token") == self.token:
                self.out.remove(LOCK)

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
