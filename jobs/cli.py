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
    "alerts",
    "calibrate",
    "train",
    "train_embedded",
    "eval",
    "convert",
    "bench",
    "submit",
    "demo",
)

_debug = False
_command_path: Optional[str] = None  # "vip2scan scan" once the group has picked the command


class OneLineErrorsGroup(TyperGroup):
    """A typer group whose failures print one line and exit 1 (runtime), 2 (usage) or 3 (partial).

    Overriding ``main`` (rather than wrapping ``app()``) makes typer's ``CliRunner``
    see exactly what a shell user sees. Which line and which code: :data:`errors.OUTCOMES`.
    """

    def get_command(self, ctx: click.Context, cmd_name: str) -> Optional[click.Command]:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            upper_case_arguments(command)
        return command

    def invoke(self, ctx: click.Context) -> Any:
        global _command_path
        try:
            return super().invoke(ctx)
        finally:
            # The command's own context is closed before main() reports its error: keep its path
            # for the usage line of a setting's bad value ("see 'vip2scan scan --help'").
            _command_path = " ".join(p for p in (ctx.command_path, ctx.invoked_subcommand) if p)

    def main(  # type: ignore[override]
        self,
        args: Optional[Sequence[str]] = None,
        prog_name: Optional[str] = None,
        complete_var: Optional[str] = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        global _debug, _command_path
        _debug = os.environ.get("VIP2SCAN_DEBUG", "") not in ("", "0")
        _command_path = None
        args, anywhere = without_debug_flag(sys.argv[1:] if args is None else list(args))
        _debug = _debug or anywhere
        prog_name = prog_name or "vip2scan"
        try:
            result = super().main(args=args, prog_name=prog_name,
                                  complete_var=complete_var, standalone_mode=False, **extra)
            code = result if isinstance(result, int) else 0
        except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - the CLI's one last-resort handler
            code = errors.report_failure(exc, _command_path or prog_name, _debug)
        if standalone_mode:
            sys.exit(code)
        return code


def upper_case_arguments(command: click.Command) -> None:
    """Name positional arguments in capitals, as the help texts do: typer shows an argument
    without a metavar by its Python name ({out}, {image_uri}) beside ones with one ({SOURCE})."""
    for param in command.params:
        if param.param_type_name == "argument" and param.metavar is None:
            param.metavar = (param.name or "").upper()
    for sub in getattr(command, "commands", {}).values():
        upper_case_arguments(sub)


def without_debug_flag(args: list[str]) -> tuple[list[str], bool]:
    """``args`` without ``--debug``, and whether it was there: every error line says "run with
    --debug", so it is taken anywhere on the line (after the command too), up to a ``--``
    (what follows is another command's, e.g. `submit -- scan ...`)."""
    end = args.index("--") if "--" in args else len(args)
    kept = [a for a in args[:end] if a != "--debug"] + args[end:]
    return kept, len(kept) != len(args)


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


# The one line `vip2scan --help` lists per command: click cuts a longer docstring's first
# sentence mid-way at 80 columns ("Score every new or changed image under SOURCE into...").
# At most SHORT_HELP_WIDTH characters, so the list fits 80 columns whole.
SHORT_HELP_WIDTH = 58
SHORT_HELP = {
    "scan": "Score new or changed images: Parquet rows, Zarr maps.",
    "query": "Run SQL (DuckDB) over a scan's outputs.",
    "report": "Write a static HTML report of one run.",
    "explore": "Write a static explorer of the lake's current state.",
    "map": "Print or save one image's anomaly map.",
    "verify": "Check that every run under OUT is complete.",
    "calibrate": "Set the image threshold from the lake's own scores.",
    "train": "Train the ViP2-CLIP head on labelled images.",
    "train-embedded": "Rebuild the embedded checkpoint from generated data.",
    "eval": "Evaluate a checkpoint on labelled data.",
    "convert": "Convert released CLIP or ViP2-CLIP weights.",
    "bench": "Measure the scan pipeline against the bare model.",
    "submit": "Submit a vip2scan command to a Ray cluster as a job.",
    "demo": "Run the whole product offline on a generated lake.",
    "jobs": "Inspect Ray Jobs started with `vip2scan submit`.",
    "jobs status": "Print a submitted job's status and message.",
    "jobs logs": "Print a submitted job's logs.",
}


def _register_commands() -> None:
    for name in COMMAND_MODULES:
        module_name = f"vip2scan.jobs.{name}"
        importlib.import_module(module_name).register(app)
    for info in app.registered_commands:
        info.short_help = info.short_help or SHORT_HELP.get(info.name or "")
    for group in app.registered_groups:
        group.short_help = group.short_help or SHORT_HELP.get(group.name or "")
        for info in group.typer_instance.registered_commands:
            info.short_help = info.short_help or SHORT_HELP.get(f"{group.name} {info.name}")


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
