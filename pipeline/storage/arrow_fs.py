"""The pyarrow filesystem that every Parquet reader (DuckDB views, datasets) gets for a Location.

Why native: Arrow's scanner reads from its own I/O threads, under DuckDB's threads. Over a
``PyFileSystem(FSSpecHandler(s3fs))`` each of those reads calls back into Python and s3fs's
event loop, and about one `verify` in thirty deadlocked (Arrow's merged generator waiting on
a mutex, two reads waiting on an event loop idle over half-closed connections; issue 27). So
``s3://`` locations get pyarrow's own C++ :class:`pyarrow.fs.S3FileSystem`, built from the same
storage options s3fs takes (endpoint, region, credentials, anonymous), with the AWS standard
retry policy as the one retry layer of its requests (retries.py's figure). Local paths get
pyarrow's LocalFileSystem; other protocols (gcs, memory, ...) keep the fsspec handler, retried.

:func:`reader_filesystem` is the one place that turns a Location into that filesystem. The
filesystem is built once per process and options (like get_filesystem's), and a Location's
fsspec ``wrapper`` never sees these reads: a native reader has no Python calls to wrap.
Credentials are passed to the C++ client only, never put into a message.

One gap of the C++ client needs a layer above it. A ranged read smaller than an S3 error answer
(a Parquet column chunk of a few rows is a few dozen bytes; a ``503 SlowDown`` body is ~250)
makes the AWS SDK write the error body into a buffer sized for the range; the stream turns bad
and the SDK reports a client-side ``INTERNAL_FAILURE`` it marks not retryable, so a single 5xx
fails the read (apache/doris#66557 describes the same SDK path). :func:`is_transient_native_error`
recognises those failures, and the readers run again the statement or the step that met one
(output/read_retries.py): reads have no side effects, and a statement that fails is rolled back.
"""

from __future__ import annotations

import os
import re
import threading
from typing import TYPE_CHECKING, Any, Callable, Mapping, TypeVar
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from .redaction import install_log_redaction, register_secrets, secret_option_values
from .retries import CLIENT_MAX_ATTEMPTS, with_retries

if TYPE_CHECKING:
    from .location import Location

# A reader must fail, not wait forever, when the store stops answering mid-body.
CONNECT_TIMEOUT_S = 10.0
REQUEST_TIMEOUT_S = 60.0
T = TypeVar("T")
ENDPOINT_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
REGION_ENV = ("AWS_REGION", "AWS_DEFAULT_REGION")

# Arrow reports an S3 failure as text only: "... AWS Error <NAME> [(HTTP status <N>)] during
# <Operation> operation: ...". The key is quoted earlier in the same message, so only the last
# match is Arrow's own words (a key may well contain "AWS Error SLOW_DOWN").
_AWS_ERROR = re.compile(r"AWS Error ([A-Z_]+)(?: \(HTTP status (\d{3})\))? during \w+ operation")
TRANSIENT_AWS_ERRORS = frozenset({
    "INTERNAL_FAILURE",  # client side, e.g. an error body that overflowed a small read's buffer
    "NETWORK_CONNECTION", "REQUEST_TIMEOUT", "SLOW_DOWN", "SERVICE_UNAVAILABLE", "THROTTLING",
})

_cache: dict[tuple, pafs.FileSystem] = {}
_cache_lock = threading.Lock()


def reader_filesystem(location: "Location") -> pafs.FileSystem:
    """The pyarrow filesystem Parquet readers use for ``location`` (see the module's doc)."""
    if location.is_local:
        return pafs.LocalFileSystem()
    if location.protocol != "s3":
        return pafs.PyFileSystem(RetryingFSSpecHandler(location.fs))
    options = dict(location.storage_options)
    register_secrets(secret_option_values(options))
    install_log_redaction()
    bucket = location.path.split("/", 1)[0]
    key = (os.getpid(), _freeze(options), bucket,
           tuple(os.environ.get(name) for name in ENDPOINT_ENV + REGION_ENV))
    with _cache_lock:
        fs = _cache.get(key)
        if fs is None:
            fs = _cache[key] = pafs.S3FileSystem(**s3_arguments(options, bucket))
        return fs


def is_transient_native_error(exc: BaseException) -> bool:
    """True when ``exc`` (an Arrow or DuckDB error) reports a native S3 read that failed for a
    reason worth one more try: throttling, a 5xx, a dropped connection, or the SDK's
    client-side failure on an error body (the module's doc)."""
    found = _AWS_ERROR.findall(str(exc))
    if not found:
        return False
    name, status = found[-1]
    return name in TRANSIENT_AWS_ERRORS or (status != "" and (int(status) >= 500 or status == "429"))


def with_native_read_retries(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``, run again (bounded backoff, counted as retries) while it fails
    with :func:`is_transient_native_error`. Only for calls without side effects outside the
    process, or that start over cleanly."""
    return with_retries(fn, *args, retry_if=is_transient_native_error, **kwargs)


def s3_arguments(options: Mapping[str, Any], bucket: str | None = None) -> dict[str, Any]:
    """``pyarrow.fs.S3FileSystem`` keyword arguments for s3fs-style storage options.

    Endpoint: ``endpoint_url`` or ``client_kwargs.endpoint_url`` (else $AWS_ENDPOINT_URL_S3,
    $AWS_ENDPOINT_URL, as for s3fs); region: ``client_kwargs.region_name`` / ``region_name``
    (else the environment; else, on AWS itself, the bucket's own region); credentials: ``key``
    / ``secret`` / ``token``, or a ``profile``'s, or ``anon``, else the default chain.
    """
    client = dict(options.get("client_kwargs") or {})
    args: dict[str, Any] = {
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=CLIENT_MAX_ATTEMPTS),
        "connect_timeout": CONNECT_TIMEOUT_S, "request_timeout": REQUEST_TIMEOUT_S,
    }
    config = dict(options.get("config_kwargs") or {})
    if config.get("connect_timeout") is not None:
        args["connect_timeout"] = float(config["connect_timeout"])
    if config.get("read_timeout") is not None:
        args["request_timeout"] = float(config["read_timeout"])
    endpoint = options.get("endpoint_url") or client.get("endpoint_url") or next(
        (os.environ[name] for name in ENDPOINT_ENV if os.environ.get(name)), None)
    if endpoint:
        parts = urlsplit(str(endpoint) if "://" in str(endpoint) else f"https://{endpoint}")
        args["scheme"] = parts.scheme or "https"
        args["endpoint_override"] = parts.netloc + parts.path.rstrip("/")
    if options.get("use_ssl") is False:
        args["scheme"] = "http"
    region = options.get("region_name") or client.get("region_name") or next(
        (os.environ[name] for name in REGION_ENV if os.environ.get(name)), None)
    if region is None and not endpoint and bucket:
        region = _bucket_region(bucket)
    if region is None and endpoint:
        region = "us-east-1"  # a custom endpoint (MinIO, moto) ignores it; skips the SDK's probing
    if region:
        args["region"] = str(region)
    key = options.get("key") or client.get("aws_access_key_id")
    secret = options.get("secret") or client.get("aws_secret_access_key")
    token = options.get("token") or client.get("aws_session_token")
    if not key and options.get("profile"):
        key, secret, token = _profile_credentials(str(options["profile"]))
    if key and secret:
        args.update(access_key=str(key), secret_key=str(secret))
        if token:
            args["session_token"] = str(token)
    elif options.get("anon"):
        args["anonymous"] = True
    return args


def _bucket_region(bucket: str) -> str | None:
    """The bucket's region as AWS answers it (one native HEAD; None when it cannot be asked)."""
    try:
        return pafs.resolve_s3_region(bucket)
    except (OSError, ValueError):
        return None


def _profile_credentials(profile: str) -> tuple[str | None, str | None, str | None]:
    """A named profile's credentials (pyarrow's client reads only $AWS_PROFILE's)."""
    import botocore.session

    found = botocore.session.Session(profile=profile).get_credentials()
    if found is None:
        return None, None, None
    frozen = found.get_frozen_credentials()
    register_secrets([frozen.secret_key, frozen.token or ""])
    return frozen.access_key, frozen.secret_key, frozen.token


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)


class RetryingFSSpecHandler(pafs.FSSpecHandler):
    """pyarrow's FSSpecHandler, retrying the calls that start a read where the filesystem
    has no retries of its own (s3fs retries every request itself; retries.py). Only for
    protocols without a native pyarrow filesystem.

    Reads inside an open file go through the filesystem's own retries.
    """

    def get_file_info(self, paths):
        return with_retries(super().get_file_info, paths, fs=self.fs)

    def get_file_info_selector(self, selector):
        return with_retries(super().get_file_info_selector, selector, fs=self.fs)

    def open_input_file(self, path):
        return with_retries(super().open_input_file, path, fs=self.fs)

    def open_input_stream(self, path):
        return with_retries(super().open_input_stream, path, fs=self.fs)
