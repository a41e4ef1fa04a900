"""Retries around object-store calls: which errors are transient, and bounded backoff.

Object stores throttle (S3 SlowDown), time out and drop connections; those calls are simply
repeated after a pause. Answers about the request itself (404, 403, a bad argument) are not
retried, and answers about the caller's credentials stop a scan instead (see
:func:`credential_error_code`).
"""

from __future__ import annotations

import errno
import logging
import random
import time
from typing import Any, Callable, TypeVar

from .redaction import redact

log = logging.getLogger(__name__)

T = TypeVar("T")

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


def precondition_failed(exc: BaseException) -> bool:
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
