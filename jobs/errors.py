"""How the CLI reports failures: one line on stderr, secrets blanked, a fixed exit code.

Exit codes (documented in the README):
  0  success (also a scan where some images became error rows, unless --strict)
  1  runtime error: unreachable store, bad credentials, missing checkpoint file, job failed
  2  usage error: bad flag, missing argument, missing --checkpoint, bad config file
  3  partial failure with --strict: the run finished but some images became error rows
"""

from __future__ import annotations

import os
import re
import sys
import traceback

try:  # typer >= 0.29 vendors its own click; its exceptions and Context are the ones typer uses
    from typer import _click as click
except ImportError:  # pragma: no cover - older typer runs on the click package
    import click  # type: ignore[no-redef]

UsageError = click.exceptions.UsageError  # exit 2, one line
BadParameter = click.exceptions.BadParameter

__all__ = ["click", "UsageError", "BadParameter", "redact", "register_secret", "is_secret_name",
           "report_usage_error", "report_runtime_error"]

EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3

# Names of settings that hold credentials, beyond the pipeline's fixed lists: environment
# variables (their values are blanked from messages), --storage-option keys (remembered for
# blanking) and what `submit` refuses to store in a cluster's job table. "key" counts only as
# a whole word ("api_key", "key_id"), not inside one ("monkey", "keyboard_layout").
SECRET_NAME = re.compile(r"secret|token|passw(?:or)?d|credential|private|access_?key|(?:^|_)key(?:$|_)",
                         re.I)
_MIN_SECRET_LEN = 6  # shorter values ("1", "true") would blank innocent text


def is_secret_name(name: str) -> bool:
    """Whether a setting called ``name`` (environment variable or option key) holds a credential."""
    return SECRET_NAME.search(name) is not None


def register_secret(value: str | None) -> None:
    """Remember a secret that did not come from the environment (e.g. --storage-option secret=...)."""
    from vip2scan.pipeline.storage.redaction import register_secrets

    if value and len(value) >= _MIN_SECRET_LEN:
        register_secrets([value])


def _ray_token() -> str | None:
    """The Ray token file's content, only so that it can be blanked if some message echoes it."""
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    try:
        with open(path, encoding="utf-8", errors="ignore") as f:
            token = f.read().strip()
    except OSError:
        return None
    return token if len(token) >= _MIN_SECRET_LEN else None


def redact(text: str) -> str:
    """Blank credentials: the pipeline's rules (URL userinfo, signed URLs, known values) plus
    any *SECRET*/*TOKEN*/*PASSWORD* environment value and the Ray token file."""
    from vip2scan.pipeline.storage.redaction import redact as redact_known

    extra = {v for k, v in os.environ.items() if is_secret_name(k) and len(v) >= _MIN_SECRET_LEN}
    token = _ray_token()
    if token:
        extra.add(token)
    for value in sorted(extra, key=len, reverse=True):
        text = text.replace(value, "***")
    return redact_known(text)


def headline(exc: BaseException) -> str:
    """What a person reads at the terminal for a failed command: the exception's first
    meaningful line, prefixed by its type only when the text says little without it.

    Unlike the pipeline's ``one_line`` (an error *record*: always 'Name: message', whole text
    on one line, cut to a length), this keeps a ScanError's own sentence as it is written.
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    name = type(exc).__name__
    if not text:
        return name
    # Builtin errors like KeyError('x') say little without their type.
    if type(exc).__module__ == "builtins" and not isinstance(exc, (OSError, ValueError, RuntimeError)):
        return f"{name}: {text}"
    return text


def report_usage_error(message: str, command_path: str | None) -> None:
    hint = f" (see '{command_path} --help')" if command_path else ""
    sys.stderr.write(redact(f"usage error: {message}{hint}") + "\n")


def report_runtime_error(exc: BaseException, debug: bool) -> None:
    if debug:
        sys.stderr.write(redact("".join(traceback.format_exception(exc))))
    hint = "" if debug else " (run with --debug for the traceback)"
    sys.stderr.write(redact(f"error: {headline(exc)}{hint}") + "\n")
