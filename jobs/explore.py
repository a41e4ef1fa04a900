"""`vip2scan explore OUT`: a static explorer of the lake's current state under OUT/reports/explorer/
(what it holds and how it is built: :mod:`vip2scan.jobs.explorer_page`)."""

from __future__ import annotations

from typing import Annotated

import typer

from vip2scan.jobs.config import ConfigOption, storage_options_from_flags
from vip2scan.jobs.deadline import DEFAULT_DEADLINE, DeadlineOption, reader_deadline
from vip2scan.jobs.explorer_page import build_explorer
from vip2scan.jobs.storage import StorageOption

EXAMPLE = ("Example: vip2scan explore s3://bucket/vip2scan-out --max-images 300   "
           "(then open OUT/reports/explorer/index.html, or copy that folder anywhere first)")

def explore(
    out: Annotated[str, typer.Argument(help="The scan's output location (path or URI).")],
    max_images: Annotated[int, typer.Option(
        "--max-images", min=0, metavar="N",
        help="Images to pre-render (half the most anomalous, half a sample).")] = 200,
    storage_option: StorageOption = None,
    deadline: DeadlineOption = DEFAULT_DEADLINE,
    config: ConfigOption = None,
) -> None:
    """Write a static explorer of the lake's current state under OUT/reports/explorer/."""
    options = storage_options_from_flags(storage_option)
    with reader_deadline("explore", deadline):
        where, objects, rendered = build_explorer(out, options, max_images)
    typer.echo(f"explorer: {where} ({objects} objects, {rendered} pre-rendered)")


def register(app: typer.Typer) -> None:
    app.command("explore", epilog=EXAMPLE)(explore)
