"""Errors a scan reports, always as one line without secrets.

:func:`one_line` is the one formatter: an object's ``error`` column, a :class:`ScanError` and
the message of a run that failed inside the engine all go through it. Ray wraps a worker's
exception in layers (RayTaskError, ActorDiedError, the executor's own errors) whose text holds
whole remote tracebacks; :func:`engine_failure_line` digs out the stage that failed and the
innermost error, e.g. ``inference actor failed to start: SafetensorError: invalid JSON in
header``.
"""

from __future__ import annotations

import re

from .redaction import redact

ERROR_MAX_CHARS = 300  # an object's ``error`` column
ENGINE_LINE_MAX_CHARS = 400
# Error text of a row whose read was refused for the credentials, not for the object: the
# scan's driver stops the run on such a row rather than record it.
CREDENTIALS_REJECTED = "credentials rejected"
# A traceback's last line: "package.module.SomeError: message" (or a bare "SomeError").
_ERROR_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?(?P<name>[A-Za-z_]\w*(?:Error|Exception|Exit))"
                         r"(?::\s*(?P<text>.*))?$")


class ScanError(RuntimeError):
    """A scan that cannot start or finish; the message is one line without secrets."""


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


def engine_failure_line(run_id: str, exc: BaseException) -> str:
    """``run R failed: <stage>: <innermost error> (<what to do>)``, redacted, one line."""
    cause = innermost_error(exc)
    if actor_init_failed(exc):
        what = (f"inference actor failed to start: {cause} (the driver could load the "
                "checkpoint but a worker could not: check that every node sees the same, "
                "complete checkpoint, then rerun to resume)")
    else:
        what = f"{cause} (rerun to resume)"
    return one_line(f"run {run_id} failed: {what}", limit=ENGINE_LINE_MAX_CHARS)
