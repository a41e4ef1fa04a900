"""`vip2scan explore OUT`: a static explorer of the lake's current state under OUT/reports/explorer/
(what it holds and how it is built: :mod:`vip2scan.jobs.explorer_page`), or with ``--serve`` the
same page served locally over every object (:mod:`vip2scan.jobs.explore_serve`)."""

from __future__ import annotations

from typing import Annotated

import typer

from vip2scan.jobs.config import ConfigOption, storage_options_from_flags
from vip2scan.jobs.deadline import DEFAULT_DEADLINE, DeadlineOption, reader_deadline
from vip2scan.jobs.explore_tableset import DEFAULT_TABLE_ROWS
from vip2scan.jobs.storage import StorageOption

EXAMPLE = ("Example: vip2scan explore s3://bucket/vip2scan-out --max-images 300   "
           "(then open OUT/reports/explorer/index.html, or copy that folder anywhere first; "
           "every object: vip2scan explore OUT --serve)")


def explore(
    out: Annotated[str, typer.Argument(help="The scan's output location (path or URI).")],
    max_images: Annotated[int, typer.Option(
        "--max-images", min=0, metavar="N",
        help="Images to pre-render (half the most anomalous, half a sample).")] = 200,
    table_rows: Annotated[int, typer.Option(
        "--table-rows", min=1, metavar="K",
        help="Objects in the static table at most: the most anomalous overall and per prefix, "
             "and errors (all of them when the lake has no more).")] = DEFAULT_TABLE_ROWS,
    serve: Annotated[bool, typer.Option(
        "--serve", help="Serve the explorer over every object (read-only, pictures on demand) "
                        "instead of writing files; Ctrl-C stops it.")] = False,
    host: Annotated[str, typer.Option("--host", help="With --serve: the address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535,
                                      help="With --serve: the port (0: any free one).")] = 8765,
    storage_option: StorageOption = None,
    deadline: DeadlineOption = DEFAULT_DEADLINE,
    config: ConfigOption = None,
) -> None:
    """Write a static explorer of the lake's current state under OUT/reports/explorer/ (or serve it)."""
    options = storage_options_from_flags(storage_option)
    if serve:
        from vip2scan.jobs.explore_serve import serve_explorer

        serve_explorer(out, options, host, port, deadline)
        return
    from vip2scan.jobs.explorer_page import export_explorer

    with reader_deadline("explore", deadline):
        built = export_explorer(out, options, max_images, table_rows)
    shown = "" if built.table_rows == built.objects else f", {built.table_rows} in the table"
    typer.echo(f"explorer: {built.uri} ({built.objects} objects{shown}, {built.rendered} pre-rendered; "
               f"{built.written} files written, {built.deleted} deleted)")


def register(app: typer.Typer) -> None:
    app.command("explore", epilog=EXAMPLE)(explore)
