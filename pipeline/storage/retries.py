"""Retries: one layer per call, which errors are transient, and a budget per run.

Object stores throttle (S3 SlowDown), time out and drop connections. Each call is retried by
exactly one layer:

- **S3**: the client itself. botocore resends a request in ``adaptive`` mode (exponential
  backoff with jitter plus client-side rate limiting when throttled) up to
  :data:`CLIENT_MAX_ATTEMPTS` times; s3fs repeats a call at most once more
  (:data:`S3FS_CALL_ATTEMPTS`), which is what re-reads a body cut mid-transfer (botocore had
  already handed the answer over). :func:`s3_client_options` is what every s3fs instance the
  pipeline builds is configured with; :func:`with_retries` never repeats a call on such a
  filesystem.
- **Everything without client retries** (local files, Zarr local stores, commit steps,
  wrapped filesystems): :func:`with_retries`, bounded exponential backoff with full jitter.

Errors are classified by exception type and S3 error code, never by message text (a key can
contain "500" or "timeout"). Answers about the request itself (404, 403, a bad argument) are
not retried; answers about the caller's credentials stop a scan (:func:`credential_error_code`).

A store that is down must fail a run in bounded time, not turn it into hours of backoff: every
S3 answer is seen by :class:`StoreHealth`, which raises :class:`StoreUnavailable` (one line)
once a store has failed :data:`DOWN_AFTER_FAILURES` attempts in a row over at least
:data:`DOWN_AFTER_S` seconds without one success. Retries are counted per process
(:func:`take_retries`) so the run record can hold them, and :func:`check_retry_budget` stops a
run whose retries exceed its budget (sustained throttling or failing). An object read that is
still failing with a transient error after all its retries stops the run too (stages/decode.py)
rather than becoming an error row that blames the object.
"""

from __future__ import annotations

import errno
import logging
import random
import threading
import time
from typing import Any, Callable, TypeVar

from ..errors import ScanError
from .accounting import instrument, instrument_filesystem
from .redaction import redact

log = logging.getLogger(__name__)

T = TypeVar("T")

CLIENT_MAX_ATTEMPTS = 5  # botocore: first request + 4 resends, per request
S3FS_CALL_ATTEMPTS = 2  # s3fs: a call once more, for a body cut after botocore returned
OUTER_ATTEMPTS = 5  # with_retries, where no client retries
DOWN_AFTER_FAILURES = 8  # failed attempts in a row at one endpoint ...
DOWN_AFTER_S = 8.0  # ... spread over at least this long, with no success: the store is down
RETRY_BUDGET_MIN = 500  # retries a run may spend whatever its size
RETRY_BUDGET_PER_OBJECT = 2.0  # ... plus this many per object it scores

# S3 error codes that mean "come back later" (throttling, server-side trouble, timeouts).
TRANSIENT_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "RequestThrottled", "TooManyRequests",
    "RequestLimitExceeded", "RequestTimeout", "RequestTimeoutException", "InternalError",
    "ServiceUnavailable", "InternalFailure", "OperationAborted", "PriorRequestNotComplete",
    "500", "502", "503", "504", "429",
})
# s3fs translates S3 answers to OSErrors with an errno: SlowDown/ServiceUnavailable -> EBUSY,
# InternalError -> EREMOTEIO; the others are the kernel's words for a dropped connection.
TRANSIENT_ERRNOS = frozenset({errno.ECONNRESET, errno.ETIMEDOUT, errno.ECONNABORTED,
                              errno.ECONNREFUSED, errno.EPIPE, errno.EAGAIN, errno.EBUSY,
                              errno.EINTR, getattr(errno, "EREMOTEIO", errno.EIO)})
PERMANENT_TYPES = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError,
                   FileExistsError, ValueError, TypeError)


class StoreUnavailable(ScanError):
    """A store answered nothing but failures for long enough: the run stops (one line)."""


# --------------------------------------------------------------------------- classification

def _botocore_types() -> tuple[type, ...]:
    try:
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from botocore.exceptions import HTTPClientError, ResponseStreamingError
    except ImportError:  # pragma: no cover - botocore ships with s3fs
        return ()
    return (BotoConnectionError, HTTPClientError, ResponseStreamingError)


def _body_cut_types() -> tuple[type, ...]:
    """Exceptions for an answer whose body stopped before its Content-Length."""
    import http.client

    found: list[type] = [http.client.IncompleteRead]
    try:
        from aiohttp import ClientPayloadError, ServerDisconnectedError

        found += [ClientPayloadError, ServerDisconnectedError]
    except ImportError:  # pragma: no cover
        pass
    try:
        from urllib3.exceptions import IncompleteRead, ProtocolError

        found += [IncompleteRead, ProtocolError]
    except ImportError:  # pragma: no cover
        pass
    return tuple(found)


def s3_error_code(exc: BaseException) -> str | None:
    """The S3 error code of ``exc`` or of the botocore ClientError s3fs translated it from."""
    for err in (exc, exc.__cause__):
        error = (getattr(err, "response", None) or {}).get("Error", {})
        if error.get("Code"):
            return str(error["Code"])
    return None


def is_transient(exc: BaseException) -> bool:
    """True for errors worth retrying (throttling, 5xx, resets, timeouts, cut bodies);
    False for answers about the request (403, 404, bad arguments) and for a store that is down."""
    if isinstance(exc, (StoreUnavailable, *PERMANENT_TYPES)):
        return False
    code = s3_error_code(exc)
    if code is not None:
        return code in TRANSIENT_CODES
    if isinstance(exc, (TimeoutError, ConnectionError, *_botocore_types(), *_body_cut_types())):
        return True
    return isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS


# S3 answers that are about the caller's credentials, never about one object: a run that
# meets one stops (its credentials expired or were rotated) instead of turning every
# remaining object into an error row. (AccessDenied stays per object: it can be an ACL.)
CREDENTIAL_ERROR_CODES = frozenset({
    "ExpiredToken", "ExpiredTokenException", "InvalidToken", "TokenRefreshRequired",
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidClientTokenId",
})


def credential_error_code(exc: BaseException) -> str | None:
    """The S3 error code when ``exc`` says the credentials themselves were rejected."""
    code = s3_error_code(exc)
    if code in CREDENTIAL_ERROR_CODES:
        return code
    if type(exc).__name__ in ("NoCredentialsError", "PartialCredentialsError"):
        return type(exc).__name__
    return None


def precondition_failed(exc: BaseException) -> bool:
    """S3's 412 for a conditional write or read (s3fs raises it as OSError(EINVAL, ...))."""
    code = s3_error_code(exc)
    if code is not None:
        return code in ("PreconditionFailed", "412")
    return isinstance(exc, OSError) and exc.errno == errno.EINVAL


def replaced_while_reading(exc: BaseException) -> bool:
    """s3fs's FileExpired: the object was replaced between opening and reading it (a lease
    being taken over, say); reading again gets the new version."""
    try:
        from s3fs.utils import FileExpired
    except ImportError:  # no s3fs: no S3 objects to be replaced
        return False
    return isinstance(exc, FileExpired)


# --------------------------------------------------------------------------- counting

class _Counter:
    """A process-wide counter that the stage reporting it can take (and reset)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._taken = 0
        self.total = 0

    def add(self, n: int = 1) -> None:
        with self._lock:
            self.total += n

    def take(self) -> int:
        """Retries counted since the last take (each retry is reported once)."""
        with self._lock:
            fresh, self._taken = self.total - self._taken, self.total
        return fresh


RETRIES = _Counter()


def take_retries() -> int:
    """Retries this process made since it last reported them (S3 resends + outer retries)."""
    return RETRIES.take()


def check_retry_budget(run_id: str, retries: int, objects: int, staged: int) -> None:
    """Stop a run whose retries exceed its budget: the store is throttling or failing
    so hard that going on would only multiply requests."""
    budget = int(RETRY_BUDGET_MIN + RETRY_BUDGET_PER_OBJECT * max(objects, 0))
    if retries > budget:
        raise ScanError(
            f"stopping run {run_id}: {retries} storage retries exceed the run's retry budget "
            f"of {budget} ({RETRY_BUDGET_MIN} + {RETRY_BUDGET_PER_OBJECT:g} per object); the "
            f"store is throttling or failing. {staged} rows are staged: rerun later to resume")


# --------------------------------------------------------------------------- store health

class StoreHealth:
    """Per endpoint: failed attempts in a row, since when; a success resets both.

    A store found down refuses requests at once until it has been left alone for
    ``seconds``; then one request may try again (and a failure refuses the next ones again).
    """

    def __init__(self, failures: int = DOWN_AFTER_FAILURES, seconds: float = DOWN_AFTER_S):
        self.failures, self.seconds = failures, seconds
        self._lock = threading.Lock()
        # endpoint -> (failures in a row, first failure, last failure, what failed last)
        self._streaks: dict[str, tuple[int, float, float, str]] = {}

    def failed(self, endpoint: str, what: str) -> None:
        now = time.monotonic()
        with self._lock:
            n, since, _, _ = self._streaks.get(endpoint, (0, now, now, ""))
            self._streaks[endpoint] = (n + 1, since, now, what)

    def succeeded(self, endpoint: str) -> None:
        with self._lock:
            self._streaks.pop(endpoint, None)

    def check(self, endpoint: str) -> None:
        """Raise StoreUnavailable if ``endpoint`` is down (see the module doc)."""
        now = time.monotonic()
        with self._lock:
            n, since, last, what = self._streaks.get(endpoint, (0, now, now, ""))
        if n >= self.failures and now - since >= self.seconds and now - last < self.seconds:
            raise StoreUnavailable(redact(
                f"storage at {endpoint} is unavailable: {n} attempts in a row failed over "
                f"{now - since:.0f}s (last: {what}); check the endpoint and network, then "
                "rerun to resume"))


HEALTH = StoreHealth()


def _endpoint(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}" if rest else url


def _before_send(request: Any = None, **_: Any) -> None:
    """botocore ``before-send``: fail fast on a store that is down; count resends."""
    if request is None:
        return
    HEALTH.check(_endpoint(request.url))
    attempt = ((getattr(request, "context", None) or {}).get("retries") or {}).get("attempt", 1)
    if attempt > 1:
        RETRIES.add()


def _response_received(exception: BaseException | None = None, response_dict: Any = None,
                       context: Any = None, **_: Any) -> None:
    """botocore ``response-received``: feed each attempt's outcome to :data:`HEALTH`."""
    url = ((response_dict or {}).get("url") or (context or {}).get("vip2scan_url") or "")
    status = int((response_dict or {}).get("status_code") or 0)
    endpoint = _endpoint(url) if url else "s3"
    if exception is not None:
        if not isinstance(exception, StoreUnavailable):
            HEALTH.failed(endpoint, f"{type(exception).__name__}")
    elif status >= 500 or status == 429:
        HEALTH.failed(endpoint, f"HTTP {status}")
    else:
        HEALTH.succeeded(endpoint)


def _remember_url(request: Any = None, **_: Any) -> None:
    """Keep the request URL in the context: a failed attempt's event has no response."""
    if request is not None and isinstance(getattr(request, "context", None), dict):
        request.context["vip2scan_url"] = request.url


def instrumented_session(**session_kwargs: Any) -> Any:
    """An aiobotocore session whose clients report to :data:`HEALTH` and :data:`RETRIES`.

    It pickles as "build another one like it", so an s3fs filesystem holding it stays
    picklable (s3fs pickles its constructor arguments)."""
    import aiobotocore.session

    class InstrumentedSession(aiobotocore.session.AioSession):
        def __reduce__(self) -> tuple:
            return (session_from, (dict(session_kwargs),))

    session = InstrumentedSession(**session_kwargs)
    session.register("before-send.s3", _remember_url)
    session.register("before-send.s3", _before_send)
    session.register("response-received.s3", _response_received)
    instrument(session)  # after the health check: a request refused locally is not counted
    return session


def session_from(session_kwargs: dict[str, Any]) -> Any:
    """:func:`instrumented_session` from a dict (what an unpickled session is rebuilt with)."""
    return instrumented_session(**session_kwargs)


def s3_client_options(options: dict[str, Any]) -> dict[str, Any]:
    """s3fs keyword arguments with the client's retries configured (explicit ones win)."""
    kwargs = dict(options)
    config = dict(kwargs.get("config_kwargs") or {})
    config.setdefault("retries", {"mode": "adaptive", "total_max_attempts": CLIENT_MAX_ATTEMPTS})
    kwargs["config_kwargs"] = config
    if kwargs.get("session") is None:
        profile = {"profile": kwargs.pop("profile")} if "profile" in kwargs else {}
        kwargs["session"] = instrumented_session(**profile)
    return kwargs


def configure_client(fs: Any) -> Any:
    """Set s3fs's own call repeats on an S3 filesystem (an attribute, not an init argument),
    and count its requests (accounting.py)."""
    if has_client_retries(fs):
        fs.retries = S3FS_CALL_ATTEMPTS
        instrument_filesystem(fs)
    return fs


def has_client_retries(fs: Any) -> bool:
    """True for an s3fs filesystem: its client retries every request itself."""
    try:
        from s3fs import S3FileSystem
    except ImportError:  # pragma: no cover
        return False
    return isinstance(fs, S3FileSystem)


# --------------------------------------------------------------------------- outer policy

def with_retries(
    fn: Callable[..., T],
    *args: Any,
    attempts: int = OUTER_ATTEMPTS,
    base_delay_s: float = 0.2,
    max_delay_s: float = 5.0,
    retry_if: Callable[[BaseException], bool] = is_transient,
    fs: Any = None,
    **kwargs: Any,
) -> T:
    """Call ``fn``, retrying transient errors with bounded exponential backoff and full
    jitter; only once when ``fs`` (or the object ``fn`` is a method of) retries itself."""
    owner = fs if fs is not None else getattr(fn, "__self__", None)
    if has_client_retries(owner):
        return fn(*args, **kwargs)
    for attempt in range(1, attempts + 1):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - classified below
            if attempt >= attempts or not retry_if(exc):
                raise
            RETRIES.add()
            delay = random.uniform(0, min(max_delay_s, base_delay_s * 2 ** (attempt - 1)))
            log.debug("transient storage error (attempt %d/%d), retrying in %.2fs: %s",
                      attempt, attempts, delay, redact(str(exc)))
            time.sleep(delay)
    raise AssertionError("unreachable")
