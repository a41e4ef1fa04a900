"""How the CLI reports failures: one line on stderr, secrets blanked, a fixed exit code.

Exit codes (documented in docs/reference/exit-codes.md):
  0  success (also a scan where some images became error rows, unless --strict)
  1  runtime error: unreachable store, bad credentials, missing checkpoint file, job failed
  2  usage error: bad flag, missing argument, missing --checkpoint, bad config file, a setting's bad value
  3  partial failure with --strict: the run finished but some images became error rows
  130 / 143  interrupted by Ctrl-C / SIGTERM

:data:`OUTCOMES` is the one table from an error's class to its exit code and its line; the
CLI's group (jobs/cli.py) hands every failure to :func:`report_failure`. A command that cannot
do what it was asked raises :class:`JobError` (the jobs layer's root, under
:class:`vip2scan.errors.Vip2scanError`), or lets the model's and the pipeline's errors through.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
import traceback
from dataclasses import dataclass
from typing import Callable

import typer

from vip2scan.errors import InvalidSetting, Vip2scanError

try:  # typer >= 0.29 vendors its own click; its exceptions and Context are the ones typer uses
    from typer import _click as click
except ImportError:  # pragma: no cover - older typer runs on the click package
    import click  # type: ignore[no-redef]

UsageError = click.exceptions.UsageError  # exit 2, one line
BadParameter = click.exceptions.BadParameter

__all__ = ["click", "UsageError", "BadParameter", "JobError", "OUTCOMES", "report_failure", "redact",
           "register_secret", "is_secret_name", "report_usage_error", "report_runtime_error"]

EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3
EXIT_ALERT = 4  # scan --fail-on-alert: the run committed, and raised an anomaly-rate alert
EXIT_INTERRUPTED = 130  # 128 + SIGINT; a SIGTERM (pipeline.run.holder.Terminated) carries 143


class JobError(Vip2scanError):
    """A command that cannot do what it was asked; the message is the whole story, in one line."""

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
    from vip2scan.jobs.terminal import printable

    # split on newlines only: a CR inside an object key is part of the line, shown escaped
    lines = [printable(line.strip()) for line in str(exc).split("\n") if line.strip()]
    text = lines[0] if lines else ""
    name = type(exc).__name__
    if not text:
        return name
    # Builtin errors like KeyError('x') say little without their type.
    if type(exc).__module__ == "builtins" and not isinstance(exc, (OSError, ValueError, RuntimeError)):
        return f"{name}: {text}"
    return text


def report_usage_error(message: str, command_path: str | None) -> None:
    from vip2scan.jobs.terminal import printable

    hint = f" (see '{command_path} --help')" if command_path else ""
    sys.stderr.write(redact(printable(f"usage error: {message}{hint}")) + "\n")


def report_runtime_error(exc: BaseException, debug: bool) -> None:
    if debug:
        sys.stderr.write(redact("".join(traceback.format_exception(exc))))
    hint = "" if debug else " (run with --debug for the traceback)"
    sys.stderr.write(redact(f"error: {headline(exc)}{hint}") + "\n")


# ----------------------------------------------------------------------------- the one table
@dataclass(frozen=True)
class Outcome:
    """How the CLI ends for one class of error: its exit code and what it prints."""

    # The class, or 'module:Name' for a class of the pipeline, which this module loads only when
    # needed (as it does for redaction); while that module is not loaded, the row cannot match.
    error: type[BaseException] | str
    exit_code: int
    say: Callable[[BaseException, str, bool], None]  # (error, command path, --debug)
    own_code: bool = False  # the error's own ``exit_code`` attribute, where it has one, wins

    def error_class(self) -> type[BaseException]:
        if isinstance(self.error, type):
            return self.error
        module, name = self.error.split(":")
        return getattr(importlib.import_module(module), name)


def _say_help(exc: BaseException, command_path: str, debug: bool) -> None:
    assert isinstance(exc, click.exceptions.NoArgsIsHelpError)
    text = exc.format_message()
    if text.strip():  # with rich installed the help was already printed while building it
        typer.echo(text)


def _say_click_usage(exc: BaseException, command_path: str, debug: bool) -> None:
    assert isinstance(exc, click.exceptions.UsageError)
    report_usage_error(exc.format_message(), exc.ctx.command_path if exc.ctx is not None else None)


def flag_of(setting: str) -> str:
    """The flag that sets ``setting`` (a spec field is named after its flag)."""
    return "--" + setting.replace("_", "-")


def _say_setting(exc: BaseException, command_path: str, debug: bool) -> None:
    assert isinstance(exc, InvalidSetting)
    # click's own wording for a bad flag value, so a spec's refusal reads like any other
    report_usage_error(f"Invalid value for {flag_of(exc.setting)!r}: {exc.problem}", command_path)


def _say_click_error(exc: BaseException, command_path: str, debug: bool) -> None:
    assert isinstance(exc, click.exceptions.ClickException)
    from vip2scan.jobs.terminal import printable

    sys.stderr.write(redact(printable(f"error: {exc.format_message()}")) + "\n")


def _say_aborted(exc: BaseException, command_path: str, debug: bool) -> None:
    sys.stderr.write("error: aborted\n")


def _say_interrupted(exc: BaseException, command_path: str, debug: bool) -> None:
    # A scan interrupted mid-run prints its own line (how to resume) before this.
    said = "interrupted" if type(exc) is KeyboardInterrupt else (str(exc) or "interrupted")
    sys.stderr.write(f"error: {said}\n")


def _say_line(exc: BaseException, command_path: str, debug: bool) -> None:
    """The error's own line: it names the cause and the way out, a traceback would add nothing."""
    if debug:
        sys.stderr.write(redact("".join(traceback.format_exception(exc))))
    sys.stderr.write(redact(f"error: {headline(exc)}") + "\n")


def _say_runtime(exc: BaseException, command_path: str, debug: bool) -> None:
    report_runtime_error(exc, debug)


# First match wins, so a class comes before its bases.
OUTCOMES: tuple[Outcome, ...] = (
    Outcome(click.exceptions.NoArgsIsHelpError, EXIT_USAGE, _say_help),
    Outcome(click.exceptions.UsageError, EXIT_USAGE, _say_click_usage),
    Outcome(InvalidSetting, EXIT_USAGE, _say_setting),
    Outcome(click.exceptions.ClickException, EXIT_RUNTIME, _say_click_error, own_code=True),
    Outcome(typer.Abort, EXIT_RUNTIME, _say_aborted),
    Outcome(KeyboardInterrupt, EXIT_INTERRUPTED, _say_interrupted, own_code=True),
    Outcome("vip2scan.pipeline.run.lock:OutputLocked", EXIT_RUNTIME, _say_line),
    Outcome(JobError, EXIT_RUNTIME, _say_line),
    Outcome(Vip2scanError, EXIT_RUNTIME, _say_runtime),
    Outcome(Exception, EXIT_RUNTIME, _say_runtime),  # anything else: a crash, still one line
)


def outcome_of(exc: BaseException) -> Outcome:
    """The row of :data:`OUTCOMES` that handles ``exc``."""
    for row in OUTCOMES:
        if isinstance(row.error, str) and row.error.split(":")[0] not in sys.modules:
            continue  # its module was never imported, so no error of that class exists
        if isinstance(exc, row.error_class()):
            return row
    return OUTCOMES[-1]


def report_failure(exc: BaseException, command_path: str, debug: bool) -> int:
    """Print ``exc`` as its row of :data:`OUTCOMES` says and return the exit code."""
    row = outcome_of(exc)
    row.say(exc, command_path, debug)
    return int(getattr(exc, "exit_code", row.exit_code)) if row.own_code else row.exit_code

