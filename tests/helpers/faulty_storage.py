"""Fault injection around the real s3fs: a filesystem wrapper (ScanOptions.fs_wrapper) and a
Zarr store wrapper that fail reads and writes the way S3 does, shared across Ray workers.

The injected exceptions are the ones s3fs itself raises for those S3 answers (built with
``s3fs.errors.translate_boto_error`` from a botocore ClientError), so the pipeline's error
classification is tested against real exception types, not made-up ones.

State (counters, which paths already failed) lives in files under ``state_dir`` with a file
lock, because reads happen in many processes (driver, decode tasks, map writers).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
from dataclasses import dataclass, field
from typing import Any

# (S3 error code, HTTP status) of the transient answers we cycle through; plus a reset.
TRANSIENT_ANSWERS = (("SlowDown", 503), ("InternalError", 500), ("RequestTimeout", 400),
                     ("ServiceUnavailable", 503), ("connection-reset", 0))


def s3_error(code: str, status: int, operation: str = "GetObject") -> Exception:
    """The exception s3fs raises for an S3 error answer (or a reset connection)."""
    if code == "connection-reset":
        return ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
    from botocore.exceptions import ClientError
    from s3fs.errors import translate_boto_error

    error = ClientError({"Error": {"Code": code, "Message": f"injected {code}"},
                         "ResponseMetadata": {"HTTPStatusCode": status}}, operation)
    return translate_boto_error(error)


@dataclass(frozen=True)
class FaultPlan:
    """What to break. Paths are matched as substrings of the filesystem path.

    - ``read_every``: every N-th read (cat/cat_file/open for reading, counted across all
      processes) fails once with a transient error; a path fails at most once;
    - ``vanish``: the object is deleted just before its first read (it vanished after listing);
    - ``deny``: reads of these objects always fail with 403 AccessDenied;
    - ``fail_write_once``: the first write matching each pattern fails with a transient error
      (pipe/pipe_file/put_file/open for writing; and Zarr chunk writes for patterns that match
      a Zarr key such as ``maps/c/``);
    - ``expire``: after ``expire_after`` reads of paths matching these patterns, every further
      read of them fails with ExpiredToken (the run's credentials expired mid-run).
    """

    state_dir: str
    read_every: int = 0
    vanish: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    fail_write_once: tuple[str, ...] = field(default_factory=tuple)
    expire: tuple[str, ...] = ()
    expire_after: int = 0

    def __call__(self, fs: Any) -> Any:
        return FaultyFS(fs, self)

    def wrap_zarr_store(self, store: Any) -> Any:
        return faulty_zarr_store(store, self)

    # ------------------------------------------------------------------ shared state
    def _locked(self, name: str):
        os.makedirs(self.state_dir, exist_ok=True)
        handle = open(os.path.join(self.state_dir, name), "a+")
        fcntl.flock(handle, fcntl.LOCK_EX)
        return handle

    def _count(self, name: str) -> int:
        """Add one to the counter ``name`` shared by all processes; the new value."""
        with self._locked(name) as fh:
            fh.seek(0)
            count = int(fh.read() or 0) + 1
            fh.seek(0)
            fh.truncate()
            fh.write(str(count))
        return count

    def _marker(self, kind: str, key: str) -> str:
        digest = hashlib.sha1(key.encode()).hexdigest()[:16]
        return os.path.join(self.state_dir, f"{kind}-{digest}")

    def _first_time(self, kind: str, key: str, note: str = "") -> bool:
        """True exactly once per (kind, key) across all processes."""
        os.makedirs(self.state_dir, exist_ok=True)
        try:
            fd = os.open(self._marker(kind, key), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as fh:
            fh.write(note or key)
        return True

    def _log(self, line: str) -> None:
        with self._locked("events.log") as fh:
            fh.write(line.replace("\n", " ") + "\n")

    def events(self) -> list[str]:
        path = os.path.join(self.state_dir, "events.log")
        if not os.path.exists(path):
            return []
        with open(path) as fh:
            return [line.rstrip("\n") for line in fh]

    # ------------------------------------------------------------------ decisions
    def read_fault(self, path: str) -> Exception | None:
        """The exception this read of ``path`` must raise, if any (and count the read)."""
        if any(p in path for p in self.deny):
            self._log(f"deny {path}")
            return s3_error("AccessDenied", 403)
        if any(p in path for p in self.expire) and \
                self._count("expiring-reads.count") > self.expire_after:
            self._log(f"expired {path}")
            return s3_error("ExpiredToken", 400)
        if not self.read_every:
            return None
        count = self._count("reads.count")
        if count % self.read_every or not self._first_time("read", path):
            return None
        # By the faults fired so far, not by the read count: concurrent reads (a reader process
        # reads a group's objects on threads) put a retry anywhere in the count.
        fired = self._count("read-faults.count")
        code, status = TRANSIENT_ANSWERS[(fired - 1) % len(TRANSIENT_ANSWERS)]
        self._log(f"read-fault {code} {path}")
        return s3_error(code, status)

    def before_read(self, fs: Any, path: str) -> None:
        """Delete a 'vanishing' object just before its first read."""
        if any(p in path for p in self.vanish) and self._first_time("vanish", path):
            fs.rm_file(path)
            fs.invalidate_cache()
            self._log(f"vanished {path}")

    def write_fault(self, path: str) -> Exception | None:
        for pattern in self.fail_write_once:
            if pattern in path and self._first_time("write", pattern, path):
                self._log(f"write-fault {pattern} {path}")
                return s3_error("SlowDown", 503, "PutObject")
        return None


class FaultyFS:
    """An fsspec filesystem proxy that injects a FaultPlan's faults; the rest passes through."""

    def __init__(self, fs: Any, plan: FaultPlan):
        self._fs = fs
        self._plan = plan

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_fs", "_plan"):
            raise AttributeError(name)  # keeps pickling/copying away from the proxy target
        return getattr(self._fs, name)

    def __reduce__(self):
        return (FaultyFS, (self._fs, self._plan))

    # reads
    def _read(self, path: str) -> None:
        self._plan.before_read(self._fs, path)
        fault = self._plan.read_fault(path)
        if fault is not None:
            raise fault

    def cat_file(self, path: str, *args: Any, **kwargs: Any) -> Any:
        self._read(path)
        return self._fs.cat_file(path, *args, **kwargs)

    def cat(self, path: Any, *args: Any, on_error: str = "raise", **kwargs: Any) -> Any:
        if not isinstance(path, (list, tuple)):
            self._read(path)
            return self._fs.cat(path, *args, on_error=on_error, **kwargs)
        failed: dict[str, Exception] = {}
        for p in path:
            try:
                self._read(p)
            except Exception as exc:  # noqa: BLE001 - handed back per path like s3fs does
                if on_error != "return":
                    raise
                failed[p] = exc
        rest = [p for p in path if p not in failed]
        got = self._fs.cat(rest, *args, on_error=on_error, **kwargs) if rest else {}
        got = got if isinstance(got, dict) else {rest[0]: got}
        return {p: failed[p] if p in failed else got.get(p) for p in path}

    def open(self, path: str, mode: str = "rb", *args: Any, **kwargs: Any) -> Any:
        if "r" in mode:
            self._read(path)
        else:
            self._write(path)
        return self._fs.open(path, mode, *args, **kwargs)

    # writes
    def _write(self, path: str) -> None:
        fault = self._plan.write_fault(path)
        if fault is not None:
            raise fault

    def pipe_file(self, path: str, *args: Any, **kwargs: Any) -> Any:
        self._write(path)
        return self._fs.pipe_file(path, *args, **kwargs)

    def pipe(self, path: Any, *args: Any, **kwargs: Any) -> Any:
        for p in (path if isinstance(path, dict) else [path]):
            self._write(p)
        return self._fs.pipe(path, *args, **kwargs)

    def put_file(self, lpath: str, rpath: str, *args: Any, **kwargs: Any) -> Any:
        self._write(rpath)
        return self._fs.put_file(lpath, rpath, *args, **kwargs)


def faulty_zarr_store(store: Any, plan: FaultPlan) -> Any:
    """A Zarr WrapperStore whose chunk writes fail like the filesystem's (first match, once)."""
    from zarr.storage import WrapperStore

    class FaultyZarrStore(WrapperStore):
        def _with_store(self, inner: Any) -> Any:
            return faulty_zarr_store(inner, plan)

        async def set(self, key: str, value: Any) -> None:
            fault = plan.write_fault(f"{self._store}/{key}")
            if fault is not None:
                raise fault
            await self._store.set(key, value)

    return FaultyZarrStore(store)
