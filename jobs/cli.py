"""The ``vip2scan`` typer application: the root options, the command list, and error handling.

Every command lives in its own module under ``vip2scan.jobs`` and exposes
``register(app)``; adding a command is one entry in :data:`COMMAND_MODULES`. Command
modules import heavy libraries (torch, ray, duckdb) inside the command body so that
``vip2scan --help`` and usage errors stay instant.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any, Optional, Sequence

import typer
from typer.core import TyperGroup

from vip2scan import __version__
from vip2scan.jobs import errors
from vip2scan.jobs.config import parse_only, set_command_tree
from vip2scan.jobs.errors import click

# Order here is the order in `vip2scan --help`; every listed module must exist.
COMMAND_MODULES: tuple[str, ...] = (
    "scan",
    "query",
    "report",
    "explore",
    "map",
    "verify",
    "calibrate",
    "train",
    "eval",
    "convert",
    "bench",
    "submit",
    "demo",
)

_debug = False


class OneLineErrorsGroup(TyperGroup):
    """A typer group whose failures print one line and exit 1 (runtime), 2 (usage) or 3 (partial).

    Overriding ``main`` (rather than wrapping ``app()``) makes typer's ``CliRunner``
    see exactly what a shell user sees.
    """

    def main(  # type: ignore[override]
        self,
        args: Optional[Sequence[str]] = None,
        prog_name: Optional[str] = None,
        complete_var: Optional[str] = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        global _debug
        _debug = os.environ.get("VIP2SCAN_DEBUG", "") not in ("", "0")
        try:
            result = super().main(args=args, prog_name=prog_name or "vip2scan",
                                  complete_var=complete_var, standalone_mode=False, **extra)
            code = result if isinstance(result, int) else 0
        except click.exceptions.NoArgsIsHelpError as exc:
            # With rich installed the help was already printed while building the message.
            if exc.format_message().strip():
                typer.echo(exc.format_message())
            code = errors.EXIT_USAGE
        except errors.UsageError as exc:
            command_path = exc.ctx.command_path if exc.ctx is not None else None
            errors.report_usage_error(exc.format_message(), command_path)
            code = errors.EXIT_USAGE
        except click.exceptions.ClickException as exc:
            sys.stderr.write(errors.redact(f"error: {exc.format_message()}") + "\n")
            code = exc.exit_code
        except typer.Abort:
            sys.stderr.write("error: aborted\n")
            code = errors.EXIT_RUNTIME
        except KeyboardInterrupt as exc:
            # Ctrl-C: 130; SIGTERM arrives as pipeline.holder.Terminated, with 143. A scan
            # interrupted mid-run prints its own line (how to resume) before this.
            said = "interrupted" if type(exc) is KeyboardInterrupt else (str(exc) or "interrupted")
            sys.stderr.write(f"error: {said}\n")
            code = int(getattr(exc, "exit_code", 130))
        except Exception as exc:  # noqa: BLE001 - the CLI's one place that turns crashes into a line
            errors.report_runtime_error(exc, debug=_debug)
            code = errors.EXIT_RUNTIME
        if standalone_mode:
            sys.exit(code)
        return code


app = typer.Typer(
    name="vip2scan",
    cls=OneLineErrorsGroup,
    help="Zero-shot defect scanning of image lakes with ViP2-CLIP.",
    epilog="Example: vip2scan demo   (offline, about 3 minutes; then see its printed next steps)",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # click's plain help: at 80 columns rich's boxed tables cut option names and wrap each
    # help text into a narrow column (scan --help ran to 155 lines).
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"vip2scan {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Optional[bool] = typer.Option(
        None, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    debug: bool = typer.Option(
        False, "--debug", envvar="VIP2SCAN_DEBUG", help="Show full tracebacks instead of one-line errors."
    ),
) -> None:
    """Zero-shot defect scanning of image lakes with ViP2-CLIP."""
    global _debug
    _debug = _debug or debug


def _register_commands() -> None:
    for name in COMMAND_MODULES:
        module_name = f"vip2scan.jobs.{name}"
        importlib.import_module(module_name).register(app)


_register_commands()
set_command_tree(lambda: typer.main.get_command(app))


def parse_command_line(argv: Sequence[str]) -> click.Context:
    """Parse a vip2scan command line with the real parser, running nothing (see
    :func:`vip2scan.jobs.config.parse_only`); for checking the command lines written in
    manifests and docs."""
    return parse_only(typer.main.get_command(app), argv)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
