"""The ``vip2scan`` typer application."""

from __future__ import annotations

from typing import Optional

import typer

from vip2scan import __version__

app = typer.Typer(
    name="vip2scan",
    help="Zero-shot defect scanning of image lakes with ViP2-CLIP.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
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
) -> None:
    """Zero-shot defect scanning of image lakes with ViP2-CLIP."""


def main() -> None:
    app()
