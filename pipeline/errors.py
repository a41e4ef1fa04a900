"""Errors a scan reports, always as one line without secrets.

:func:`one_line` is the one formatter: an object's ``error`` column, a :class:`ScanError` and
the message of a run that failed inside the engine all go through it. Ray wraps a worker's
exception in layers (RayTaskError, ActorDiedError, the executor's own errors) whose text holds
whole remote tracebacks; :func:`engine_failure_line` digs out the stage that failed and the
innermost error, e.g. ``inference actor failed to start: SafetensorError: invalid JSON in
header``.

Every error the pipeline raises on purpose descends from :class:`PipelineError` (itself a
:class:`vip2scan.errors.Vip2scanError`); classes that were ``RuntimeError``s keep that base, so
existing ``except RuntimeError`` clauses still catch them::

    PipelineError
      ScanError              a scan that cannot start or finish
        OutputWriteError     a write below OUT refused by its filesystem
        StoreUnavailable     (storage/retries.py) a store that answered only failures for too long
      OutputLocked, LeaseLost    (run/lock.py) OUT's lease is held by another scan / was taken over
      VerifyError            (output/verify.py) OUT cannot be verified at all
      CalibrationError       (output/calibration.py) calibration cannot run or its file is unusable
      SandboxUnavailable, DecoderFailed    the decode sandbox failed (not an object's fault)
"""

from __future__ import annotations

import errno
import re

from vip2scan.errors import Vip2scanError

from .storage.redaction import redact

ERROR_MAX_CHARS = 300  # an object's ``error`` column
ENGINE_LINE_MAX_CHARS = 400
# Error text of a row whose read was refused for the credentials, not for the object: the
# scan's driver stops the run on such a row rather than record it.
CREDENTIALS_REJECTED = "credentials rejected"
# A traceback's last line: "package.module.SomeError: message" (or a bare "SomeError").
_ERROR_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?(?P<name>[A-Za-z_]\w*(?:Error|Exception|Exit))"
                         r"(?::\s*(?P<text>.*))?$")


class PipelineError(Vip2scanError):
    """Root of the pipeline's errors; the message is one line without secrets."""


class ScanError(PipelineError, RuntimeError):
    """A scan that cannot start or finish; the message is one line without secrets."""


# The decode sandbox's (stages/sandbox.py) failures are defined here, not there: that file is
# also the child's program, which must not import the pipeline package to define them.
class SandboxUnavailable(PipelineError, RuntimeError):
    """A fresh decode child did not come up: an environment fault, never an object's, so it
    fails the task (and, past Ray's retries, the run) instead of turning every object into an error."""


class DecoderFailed(PipelineError, RuntimeError):
    """The decoder raised something other than DecodeError, or broke the protocol: a bug."""


# A local write refused by the filesystem for a reason no retry fixes: what OUT "is".
DISK_ERRNO_QUOTA = getattr(errno, "EDQUOT", errno.ENOSPC)
DISK_ERRNOS = {
    errno.ENOSPC: "is full",
    DISK_ERRNO_QUOTA: "is over its disk quota",
    errno.EROFS: "is on a read-only filesystem",
    errno.EACCES: "is not writable (permission denied)",
    errno.EPERM: "is not writable (operation not permitted)",
}


class OutputWriteError(ScanError):
    """A write below OUT refused by its filesystem (full, read-only, permission denied)."""

    def __init__(self, line: str, errno_: int):
        super().__init__(line)
        self.errno = errno_


def disk_error(exc: BaseException) -> OSError | OutputWriteError | None:
    """The first write refusal (ENOSPC, EDQUOT, EROFS, EACCES, EPERM) in ``exc``'s chain,
    Ray's wrapped causes included."""
    for item in _chain(exc):
        if isinstance(item, (OSError, OutputWriteError)) and \
                getattr(item, "errno", None) in DISK_ERRNOS:
            return item
    return None


def disk_error_line(out: str, exc: OSError, path: str | None = None,
                    needed: int | None = None) -> str:
    """``OUT <out> is full: N bytes needed for <path> (No space left on device); ...``"""
    what = DISK_ERRNOS[exc.errno]
    target = path or exc.filename or "a file below it"
    full = exc.errno in (errno.ENOSPC, DISK_ERRNO_QUOTA)
    need = f"{needed} bytes needed for {target}" if full and needed is not None \
        else f"writing {target}"
    advice = ("free space, then rerun to resume" if full
              else "fix the permissions or mount, then rerun to resume")
    reason = exc.strerror or str(exc)
    return one_line(f"OUT {out} {what}: {need} ({reason}); {advice}",
                    limit=ENGINE_LINE_MAX_CHARS)


def write_failure(out: str, exc: BaseException) -> ScanError | None:
    """A one-line ScanError for a write refusal anywhere in ``exc``'s chain (None if none)."""
    found = disk_error(exc)
    if found is None:
        return None
    if isinstance(found, OutputWriteError):
        return found
    path = str(found.filename or "")
    root = out[len("file://"):] if out.startswith("file://") else out
    if root and path.startswith(root.rstrip("/") + "/"):
        path = path[len(root.rstrip("/")) + 1:]  # relative to OUT, as the other lines say
    return OutputWriteError(disk_error_line(out, found, path or None), found.errno)


def one_line(what: BaseException | str, cause: BaseException | None = None,
             limit: int | None = None) -> str:
    """``what`` (text, or an exception as 'Name: message'), then ``: Name: message`` of
    ``cause`` if given; redacted, whitespace collapsed, cut to ``limit`` characters."""
    text = what if isinstance(what, str) else f"{type(what).__name__}: {what}"
    if cause is not None:
        text = f"{text}: {type(cause).__name__}: {cause}"
    text = " ".join(redact(text).split())
    return text if limit is None or len(text) <= limit else text[: limit - 3] + "..."


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception, its causes and Ray's wrapped causes, outermost first (no cycles)."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop(0)
        if current is None or any(current is s for s in seen):
            continue
        seen.append(current)
        todo += [getattr(current, "cause", None), current.__cause__, current.__context__]
    return [e for e in seen if isinstance(e, BaseException)]


def innermost_error(exc: BaseException) -> str:
    """'Name: message' of the deepest application error named in the exception's text."""
    best = ""
    for item in _chain(exc):
        for line in reversed(str(item).splitlines()):
            match = _ERROR_LINE.match(line.strip())
            if match and not match["name"].startswith(("Ray", "ActorDied", "ActorUnavailable")):
                best = f"{match['name']}: {match['text']}" if match["text"] else match["name"]
                break
    if not best:
        inner = _chain(exc)[-1]
        lines = [line.strip() for line in str(inner).splitlines() if line.strip()]
        best = f"{type(inner).__name__}: {lines[-1] if lines else ''}".rstrip(": ")
    return best


def actor_init_failed(exc: BaseException) -> bool:
    return any(getattr(e, "actor_init_failed", False) is True or
               "error raised in its creation task" in str(e) for e in _chain(exc))


def engine_failure_line(run_id: str, exc: BaseException, out: str | None = None) -> str:
    """``run R failed: <stage>: <innermost error> (<what to do>)``, redacted, one line; a
    write refused by OUT's filesystem says so (``run R failed: OUT ... is full: ...``)."""
    refused = write_failure(out or "", exc) if out is not None else None
    if refused is not None:
        return one_line(f"run {run_id} failed: {refused}", limit=ENGINE_LINE_MAX_CHARS)
    cause = innermost_error(exc)
    if actor_init_failed(exc):
        what = (f"inference actor failed to start: {cause} (the driver could load the "
                "checkpoint but a worker could not: check that every node sees the same, "
                "complete checkpoint, then rerun to resume)")
    else:
        what = f"{cause} (rerun to resume)"
    return one_line(f"run {run_id} failed: {what}", limit=ENGINE_LINE_MAX_CHARS)
