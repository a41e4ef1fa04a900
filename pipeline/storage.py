"""Storage access: fsspec filesystems built from a URI + storage options, per process.

Everything the pipeline reads or writes goes through a :class:`Location`, a small picklable
value (URI + options + an optional filesystem wrapper). The filesystem itself is built lazily
and cached per process, because s3fs/fsspec async filesystems are not fork-safe: Ray workers
must build their own instead of inheriting the driver's.

Two hooks for reliability work:
- ``wrapper``: a picklable callable ``fs -> fs`` applied to every filesystem a Location builds
  (fault injection, custom retries). Also settable for a whole process tree with the env var
  ``VIP2SCAN_FS_WRAPPER="package.module:callable"``.
- :func:`with_retries`: bounded exponential backoff with jitter around transient errors.
Secrets never appear in messages: :func:`redact` scrubs URIs and known credential values.
"""

from __future__ import annotations

import errno
import importlib
import logging
import os
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, TypeVar

import fsspec
import pyarrow.fs as pafs
from fsspec.spec import AbstractFileSystem

# Redaction lives in .redaction; re-exported here, where callers have always found it.
from .redaction import (SECRET_ENV_NAMES, SECRET_OPTION_NAMES,  # noqa: F401
                        _secret_option_values, install_log_redaction, public_options, redact,
                        register_secrets,
                        register_uri_secrets)

log = logging.getLogger(__name__)

T = TypeVar("T")
FilesystemWrapper = Callable[[AbstractFileSystem], AbstractFileSystem]

WRAPPER_ENV = "VIP2SCAN_FS_WRAPPER"


# --------------------------------------------------------------------------- retries

TRANSIENT_MARKERS = (
    "slowdown", "slow down", "throttl", "too many requests", "requesttimeout", "timed out",
    "timeout", "internalerror", "internal server error", "serviceunavailable",
    "service unavailable", "connection reset", "connectionreset", "connection aborted",
    "broken pipe", "temporarily", "try again", " 500", " 502", " 503", " 504", "(500)",
    "(502)", "(503)", "(504)", "status 500", "status 503", "server disconnected",
    "internalfailure", "could not connect to the endpoint", "connection closed",
)
# s3fs maps S3 error codes to errnos: SlowDown/ServiceUnavailable -> EBUSY, InternalError (HTTP
# 500) -> EREMOTEIO; both are the server asking us to come back later.
TRANSIENT_ERRNOS = {errno.ECONNRESET, errno.ETIMEDOUT, errno.ECONNABORTED, errno.EPIPE,
                    errno.EAGAIN, errno.EBUSY, getattr(errno, "EREMOTEIO", errno.EBUSY)}


def is_transient(exc: BaseException) -> bool:
    """True for errors worth retrying (throttling, 5xx, resets, timeouts); False for 403/404."""
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError,
                        NotADirectoryError, FileExistsError, ValueError, TypeError)):
        return False
    if isinstance(exc, (TimeoutError, ConnectionError)):
        return True
    if isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS:
        return True
    text = f"{type(exc).__name__} {exc}".lower()
    return any(marker in text for marker in TRANSIENT_MARKERS)


# S3 answers that are about the caller's credentials, never about one object: a run that
# meets one stops (its credentials expired or were rotated) instead of turning every
# remaining object into an error row. (AccessDenied stays per object: it can be an ACL.)
CREDENTIAL_ERROR_CODES = frozenset({
    "ExpiredToken", "ExpiredTokenException", "InvalidToken", "TokenRefreshRequired",
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidClientTokenId",
})


def credential_error_code(exc: BaseException) -> str | None:
    """The S3 error code when ``exc`` says the credentials themselves were rejected."""
    for err in (exc, exc.__cause__):
        code = (getattr(err, "response", None) or {}).get("Error", {}).get("Code")
        if code in CREDENTIAL_ERROR_CODES:
            return code
    if type(exc).__name__ in ("NoCredentialsError", "PartialCredentialsError"):
        return type(exc).__name__
    return None


def _precondition_failed(exc: BaseException) -> bool:
    """S3's 412 for a conditional write or read (s3fs raises it as OSError(EINVAL, ...))."""
    return isinstance(exc, OSError) and (exc.errno == errno.EINVAL
                                         or "precondition" in str(exc).lower())


def with_retries(
    fn: Callable[..., T],
    *args: Any,
    attempts: int = 5,
    base_delay_s: float = 0.2,
    max_delay_s: float = 5.0,
    retry_if: Callable[[BaseException], bool] = is_transient,
    **kwargs: Any,
) -> T:
    """Call ``fn`` retrying transient errors with bounded exponential backoff and full jitter."""
    for attempt in range(1, attempts + 1):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - classified below
            if attempt >= attempts or not retry_if(exc):
                raise
            delay = random.uniform(0, min(max_delay_s, base_delay_s * 2 ** (attempt - 1)))
            log.debug("transient storage error (attempt %d/%d), retrying in %.2fs: %s",
                      attempt, attempts, delay, redact(str(exc)))
            time.sleep(delay)
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- filesystems

_fs_cache: dict[tuple, AbstractFileSystem] = {}
_fs_cache_lock = threading.Lock()


def _load_env_wrapper() -> FilesystemWrapper | None:
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
    if "://" in uri:
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


def _fs_kwargs(protocol: str, options: Mapping[str, Any]) -> dict[str, Any]:
    kwargs = dict(options)
    if protocol == "s3":
        # Accept the AWS standard endpoint variable like boto does, so moto/MinIO work
        # without explicit options; an explicit endpoint_url still wins.
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        client_kwargs = dict(kwargs.get("client_kwargs") or {})
        if "endpoint_url" not in kwargs and "endpoint_url" not in client_kwargs and endpoint:
            kwargs["endpoint_url"] = endpoint
    return kwargs


def get_filesystem(
    protocol: str,
    storage_options: Mapping[str, Any] | None = None,
    wrapper: FilesystemWrapper | None = None,
) -> AbstractFileSystem:
    """The process-local filesystem for ``protocol`` + options (built once per process)."""
    options = dict(storage_options or {})
    register_secrets(_secret_option_values(options))
    install_log_redaction()  # before any storage client can log a request
    # The pid is part of the key: a forked child must never reuse its parent's async fs.
    key = (os.getpid(), protocol, _freeze(options), _wrapper_key(wrapper),
           os.environ.get(WRAPPER_ENV))
    with _fs_cache_lock:
        fs = _fs_cache.get(key)
        if fs is None:
            kwargs = _fs_kwargs(protocol, options)
            # skip_instance_cache: fsspec's own instance cache is not pid-aware for every fs.
            fs = fsspec.filesystem(protocol, skip_instance_cache=True, **kwargs)
            for wrap in (_load_env_wrapper(), wrapper):
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

    def child(self, *parts: str) -> "Location":
        """A Location below this one, sharing its options."""
        return Location(self.join(*parts), self.storage_options, self.wrapper)

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

    # ---- small-object helpers, all retried on transient errors
    def read_bytes(self, *parts: str) -> bytes:
        return with_retries(self.fs.cat_file, self.fs_path(*parts))

    def write_bytes(self, data: bytes, *parts: str) -> None:
        """Write a whole object; local files go via a temp name + rename so they are atomic."""
        path = self.fs_path(*parts)
        if self.is_local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.{os.getpid()}.{random.getrandbits(32):08x}.tmp"
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        else:
            with_retries(self.fs.pipe_file, path, data)

    def create_exclusive(self, data: bytes, *parts: str) -> bool:
        """Create an object only if absent (O_EXCL locally, If-None-Match on S3); False if it exists."""
        path = self.fs_path(*parts)
        if self.is_local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            return True
        return self._conditional_put(path, data, mode="create")

    def _conditional_put(self, path: str, data: bytes, **condition: Any) -> bool:
        """One PUT with an S3 precondition; False when the precondition failed (412)."""
        try:
            with_retries(self.fs.pipe_file, path, data, **condition)
        except FileExistsError:
            return False
        except OSError as exc:
            if _precondition_failed(exc):
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
            with self.fs.open(path, "rb") as handle:
                return handle.read(), handle.details.get("ETag")

        return with_retries(get, retry_if=lambda exc: is_transient(exc) or _precondition_failed(exc))

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

    def exists(self, *parts: str) -> bool:
        return with_retries(self.fs.exists, self.fs_path(*parts))

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

    def makedirs(self, *parts: str) -> None:
        if self.is_local:
            os.makedirs(self.fs_path(*parts), exist_ok=True)

    def pyarrow_filesystem(self):
        """A pyarrow filesystem over this location (native for local, fsspec-backed otherwise).

        Opening files and reading their info retry transient errors, so pyarrow, DuckDB and
        Ray Data reading through it survive a throttled or briefly failing store.
        """
        if self.is_local:
            return pafs.LocalFileSystem()
        return pafs.PyFileSystem(RetryingFSSpecHandler(self.fs))


class RetryingFSSpecHandler(pafs.FSSpecHandler):
    """pyarrow's FSSpecHandler with transient-error retries on the calls that start a read.

    Reads inside an open file go through the filesystem's own (s3fs) retries.
    """

    def get_file_info(self, paths):
        return with_retries(super().get_file_info, paths)

    def get_file_info_selector(self, selector):
        return with_retries(super().get_file_info_selector, selector)

    def open_input_file(self, path):
        return with_retries(super().open_input_file, path)

    def open_input_stream(self, path):
        return with_retries(super().open_input_stream, path)


# --------------------------------------------------------------------------- safe names

def safe_relative_path(path: str) -> str:
    """``path`` if it is a plain relative path below a root, else ValueError.

    Names read back from OUT (a record's ``files``, a row's ``map_store``, a run id) are joined
    to OUT to open or delete things; a doctored record must not point outside OUT, so absolute
    paths, URIs, backslashes and '.'/'..' segments are refused.
    """
    text = str(path)
    segments = text.split("/")
    if (not text or text.startswith("/") or "://" in text or "\\" in text or "\x00" in text
            or any(seg in ("", ".", "..") for seg in segments)):
        raise ValueError(f"unsafe path below the output root: {redact(text)!r}")
    return text


def wrap_zarr_store(store: Any, wrapper: FilesystemWrapper | None) -> Any:
    """Apply the ``wrap_zarr_store(store)`` method of the env and explicit fs wrappers, if any.

    Zarr writes maps through its own async store, not through our fsspec filesystems, so a
    wrapper that injects faults (or adds behaviour) can opt in to wrapping Zarr stores too.
    """
    for wrap in (_load_env_wrapper(), wrapper):
        method = getattr(wrap, "wrap_zarr_store", None)
        if method is not None:
            store = method(store)
    return store
