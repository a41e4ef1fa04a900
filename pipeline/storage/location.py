"""Storage access: fsspec filesystems built from a URI + storage options, per process.

Everything the pipeline reads or writes goes through a :class:`Location`, a small picklable
value (URI + options + an optional filesystem wrapper). The filesystem itself is built lazily
and cached per process, because s3fs/fsspec async filesystems are not fork-safe: Ray workers
must build their own instead of inheriting the driver's.

Every call a Location makes is retried on transient errors by exactly one layer: the S3
client itself, or retries.py's outer policy where there is none (local files). A local write
refused for good (disk full, read-only, permission denied) raises one line naming the file and
the bytes it needed (:class:`~.errors.OutputWriteError`). A ``wrapper`` (a
picklable callable ``fs -> fs``) is applied to every filesystem a Location builds, for fault
injection or custom retries; it is also settable for a whole process tree with the env var
``VIP2SCAN_FS_WRAPPER="package.module:callable"``. Secrets never appear in messages: every
message goes through redaction.py's :func:`redact`. Parquet readers get a pyarrow filesystem
instead (:meth:`Location.pyarrow_filesystem`, arrow_fs.py): native, with no Python callbacks.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import random
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

import fsspec
import pyarrow.fs as pafs
from fsspec.spec import AbstractFileSystem

from vip2scan.model.files import is_uri

from ..errors import DISK_ERRNOS, OutputWriteError, disk_error_line
from ..output.paths import WRITE_TEMP_SUFFIX
from .arrow_fs import reader_filesystem
from .redaction import (install_log_redaction, redact, register_secrets, register_uri_secrets,
                        secret_option_values)
from .retries import (configure_client, has_client_retries, is_transient, precondition_failed,
                      replaced_while_reading, s3_client_options, with_retries)

FilesystemWrapper = Callable[[AbstractFileSystem], AbstractFileSystem]

WRAPPER_ENV = "VIP2SCAN_FS_WRAPPER"


# --------------------------------------------------------------------------- filesystems

_fs_cache: dict[tuple, AbstractFileSystem] = {}
_fs_cache_lock = threading.Lock()


def env_wrapper() -> FilesystemWrapper | None:
    """The wrapper named by VIP2SCAN_FS_WRAPPER, if any."""
    spec = os.environ.get(WRAPPER_ENV)
    if not spec:
        return None
    module_name, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def _wrapper_key(wrapper: FilesystemWrapper | None) -> Any:
    """A cache key stable across unpickling (each Ray task unpickles a fresh wrapper object)."""
    if wrapper is None:
        return None
    try:
        import hashlib
        import pickle

        return hashlib.sha1(pickle.dumps(wrapper)).hexdigest()
    except Exception:  # noqa: BLE001 - e.g. a class shipped by value by cloudpickle
        pass
    try:
        kind = type(wrapper)
        state = sorted(vars(wrapper).items()) if hasattr(wrapper, "__dict__") else ()
        return (kind.__module__, kind.__qualname__, getattr(wrapper, "__qualname__", ""),
                repr(state))
    except Exception:  # noqa: BLE001
        return id(wrapper)


def split_protocol(uri: str) -> tuple[str, str]:
    """('s3', 'bucket/key') for 's3://bucket/key'; ('file', '/abs/path') for paths and file://."""
    if is_uri(uri):
        protocol, rest = uri.split("://", 1)
        protocol = protocol.lower()
        if protocol in ("file", "local"):
            return "file", os.path.abspath(rest or "/")
        if protocol == "s3a":
            protocol = "s3"
        return protocol, rest
    return "file", os.path.abspath(os.path.expanduser(uri))


def normalise_uri(uri: str) -> str:
    """Canonical URI: 'file:///abs/path' for local paths, 'proto://rest' otherwise, no trailing '/'."""
    protocol, path = split_protocol(uri)
    path = path.rstrip("/") or "/"
    return f"{protocol}://{path}"


def fs_kwargs(protocol: str, options: Mapping[str, Any]) -> dict[str, Any]:
    kwargs = dict(options)
    if protocol == "s3":
        # Accept the AWS standard endpoint variable like boto does, so moto/MinIO work
        # without explicit options; an explicit endpoint_url still wins.
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        client_kwargs = dict(kwargs.get("client_kwargs") or {})
        if "endpoint_url" not in kwargs and "endpoint_url" not in client_kwargs and endpoint:
            kwargs["endpoint_url"] = endpoint
        # The client's own retries are the one retry layer for S3 (retries.py).
        kwargs = s3_client_options(kwargs)
    return kwargs


def get_filesystem(
    protocol: str,
    storage_options: Mapping[str, Any] | None = None,
    wrapper: FilesystemWrapper | None = None,
) -> AbstractFileSystem:
    """The process-local filesystem for ``protocol`` + options (built once per process)."""
    options = dict(storage_options or {})
    register_secrets(secret_option_values(options))
    install_log_redaction()  # before any storage client can log a request
    # The pid is part of the key: a forked child must never reuse its parent's async fs.
    key = (os.getpid(), protocol, _freeze(options), _wrapper_key(wrapper),
           os.environ.get(WRAPPER_ENV))
    with _fs_cache_lock:
        fs = _fs_cache.get(key)
        if fs is None:
            kwargs = fs_kwargs(protocol, options)
            # skip_instance_cache: fsspec's own instance cache is not pid-aware for every fs.
            fs = configure_client(fsspec.filesystem(protocol, skip_instance_cache=True, **kwargs))
            for wrap in (env_wrapper(), wrapper):
                if wrap is not None:
                    fs = wrap(fs)
            _fs_cache[key] = fs
        return fs


@dataclass(frozen=True)
class Location:
    """A storage root: canonical URI, storage options (never printed) and an fs wrapper hook."""

    uri: str
    storage_options: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)
    wrapper: FilesystemWrapper | None = field(default=None, repr=False, compare=False)

    @classmethod
    def of(cls, uri: str, storage_options: Mapping[str, Any] | None = None,
           wrapper: FilesystemWrapper | None = None) -> "Location":
        register_uri_secrets(uri)
        return cls(normalise_uri(uri), dict(storage_options or {}), wrapper)

    @property
    def protocol(self) -> str:
        return split_protocol(self.uri)[0]

    @property
    def path(self) -> str:
        """The filesystem-internal path of the root (no protocol)."""
        return split_protocol(self.uri)[1]

    @property
    def is_local(self) -> bool:
        return self.protocol == "file"

    @property
    def fs(self) -> AbstractFileSystem:
        return get_filesystem(self.protocol, self.storage_options, self.wrapper)

    def join(self, *parts: str) -> str:
        """URI of a path below the root."""
        tail = "/".join(p.strip("/") for p in parts if p)
        return f"{self.uri.rstrip('/')}/{tail}" if tail else self.uri

    def fs_path(self, *parts: str) -> str:
        """Filesystem-internal path of a child (what fs methods take)."""
        return split_protocol(self.join(*parts))[1]

    def uri_of(self, fs_path: str) -> str:
        """URI for a filesystem-internal path of this location's protocol."""
        return f"{self.protocol}://{fs_path}" if self.protocol != "file" else f"file://{fs_path}"

    def display(self) -> str:
        return redact(self.uri)

    @contextlib.contextmanager
    def refusals_named(self, path: str, needed: int | None = None) -> Iterator[None]:
        """Turn a local write refused for good (disk full, read-only, permission denied)
        into one line naming this location, the file and the bytes it needed."""
        try:
            yield
        except OSError as exc:
            if exc.errno not in DISK_ERRNOS:
                raise
            relative = os.path.relpath(path, self.path) if self.is_local else path
            raise OutputWriteError(disk_error_line(self.display(), exc, relative, needed),
                                   exc.errno) from exc

    # ---- small-object helpers: S3 calls retried by the client, local writes by with_retries
    def read_bytes(self, *parts: str) -> bytes:
        return with_retries(self.fs.cat_file, self.fs_path(*parts))

    def write_bytes(self, data: bytes, *parts: str) -> None:
        """Write a whole object; local files go via a temp name + rename so they are atomic."""
        path = self.fs_path(*parts)
        if self.is_local:
            with self.refusals_named(path, len(data)):
                with_retries(write_local_atomic, path, data)
        else:
            with_retries(self.fs.pipe_file, path, data)

    def create_exclusive(self, data: bytes, *parts: str) -> bool:
        """Create an object only if absent (O_EXCL locally, If-None-Match on S3); False if it exists."""
        path = self.fs_path(*parts)
        if self.is_local:
            with self.refusals_named(path, len(data)):
                os.makedirs(os.path.dirname(path), exist_ok=True)
                try:
                    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                except FileExistsError:
                    return False
                try:
                    with os.fdopen(fd, "wb") as fh:
                        fh.write(data)
                        fh.flush()
                        os.fsync(fh.fileno())
                except OSError:
                    os.unlink(path)  # a half-written create is no create
                    raise
            return True
        return self._conditional_put(path, data, mode="create")

    def _conditional_put(self, path: str, data: bytes, **condition: Any) -> bool:
        """One PUT with an S3 precondition; False when the precondition failed (412)."""
        try:
            with_retries(self.fs.pipe_file, path, data, **condition)
        except FileExistsError:
            return False
        except OSError as exc:
            if precondition_failed(exc):
                return False
            raise
        return True

    def read_versioned(self, *parts: str) -> tuple[bytes, str | None]:
        """An object's bytes and the version tag a conditional replace needs (S3: the
        ETag of exactly these bytes; local files: None)."""
        if self.protocol not in ("s3", "s3a"):
            return self.read_bytes(*parts), None
        path = self.fs_path(*parts)

        def get() -> tuple[bytes, str | None]:
            # s3fs reads an open file with If-Match on the ETag it saw when opening it, so
            # the bytes are exactly that version's (a replace in between fails the read,
            # and it is repeated).
            try:
                with self.fs.open(path, "rb") as handle:
                    return handle.read(), handle.details.get("ETag")
            except OSError as exc:
                if replaced_while_reading(exc):
                    self.fs.invalidate_cache(path)  # the next try must see the new version
                raise

        # Repeated for a replace in between; for transient errors only where the client
        # does not retry them itself.
        client_retries = has_client_retries(self.fs)
        return with_retries(get, retry_if=lambda exc: precondition_failed(exc)
                            or replaced_while_reading(exc)
                            or (not client_retries and is_transient(exc)))

    def replace_if_unchanged(self, data: bytes, version: str | None, *parts: str) -> bool:
        """Overwrite an object only if it is still at ``version`` (S3 If-Match); False if
        someone replaced it since. Without a version (local files) it simply overwrites."""
        if version is None:
            self.write_bytes(data, *parts)
            return True
        try:
            return self._conditional_put(self.fs_path(*parts), data, IfMatch=version)
        except FileNotFoundError:
            return False  # removed since: not ours to write any more

    def remove_if_unchanged(self, version: str, *parts: str) -> bool:
        """Delete an object only if it is still at ``version`` (S3 DeleteObject If-Match);
        False if someone replaced or removed it since."""
        bucket, _, key = self.fs_path(*parts).partition("/")
        try:
            with_retries(self.fs.call_s3, "delete_object", Bucket=bucket, Key=key, IfMatch=version)
        except FileNotFoundError:
            return False
        except OSError as exc:
            if precondition_failed(exc):
                return False
            raise
        finally:
            self.fs.invalidate_cache()
        return True

    def exists(self, *parts: str) -> bool:
        return with_retries(self.fs.exists, self.fs_path(*parts))

    def bucket_exists(self) -> bool:
        """Whether this location's bucket exists. s3fs's ``exists`` answers False for any
        failure; here only a 404 is False, and a store that is down or refuses raises."""
        bucket = self.path.split("/", 1)[0]
        if self.protocol != "s3":
            return bool(with_retries(self.fs.exists, bucket))
        try:
            with_retries(self.fs.call_s3, "head_bucket", Bucket=bucket)
        except FileNotFoundError:
            return False
        return True

    def remove(self, *parts: str, recursive: bool = False) -> None:
        """Remove a path if present (missing is fine)."""
        path = self.fs_path(*parts)
        try:
            if recursive:
                if self.fs.exists(path):
                    with_retries(self.fs.rm, path, recursive=True)
            else:
                with_retries(self.fs.rm_file, path)
        except FileNotFoundError:
            pass
        self.fs.invalidate_cache()

    def ls_names(self, *parts: str) -> list[str]:
        """Base names directly below a path ([] if it does not exist)."""
        path = self.fs_path(*parts)
        try:
            entries = with_retries(self.fs.ls, path, detail=False, refresh=True) \
                if not self.is_local else self.fs.ls(path, detail=False)
        except FileNotFoundError:
            return []
        names = []
        for entry in entries:
            name = entry.rstrip("/").rsplit("/", 1)[-1]
            if name and entry.rstrip("/") != path.rstrip("/"):
                names.append(name)
        return sorted(names)

    def pyarrow_filesystem(self) -> pafs.FileSystem:
        """The pyarrow filesystem Parquet readers use here: native for local files and S3, so
        no reader thread calls back into Python (arrow_fs.py, the one place that decides)."""
        return reader_filesystem(self)


@contextlib.contextmanager
def staged_local_file(path: str, data: bytes) -> Iterator[str]:
    """``data`` in a synced temp file next to ``path``, for the block to rename over it (atomic:
    same filesystem); removed if the block did not. How every local file is written whole."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.{random.getrandbits(32):08x}{WRITE_TEMP_SUFFIX}"
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        yield tmp
    finally:
        with contextlib.suppress(OSError):  # already renamed, or never created
            os.unlink(tmp)


def write_local_atomic(path: str, data: bytes) -> None:
    with staged_local_file(path, data) as tmp:
        os.replace(tmp, path)
