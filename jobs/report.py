"""`vip2scan report OUT`: a static page an analyst opens first (counts, histogram, worst images)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from vip2scan.jobs.config import ConfigOption, storage_options_from_flags
from vip2scan.jobs.deadline import DEFAULT_DEADLINE, DeadlineOption, reader_deadline
from vip2scan.jobs.report_page import build_report
from vip2scan.jobs.storage import StorageOption

EXAMPLE = "Example: vip2scan report s3://bucket/vip2scan-out --top 24   (then open OUT/reports/<run_id>/report.html)"


def report(
    out: Annotated[str, typer.Argument(help="The scan's output location (path or URI).")],
    run: Annotated[Optional[str], typer.Option(
        "--run", help="Run id (default: the newest complete run that scored something).")] = None,
    top: Annotated[int, typer.Option("--top", min=0, help="How many of the most anomalous images to show.")] = 12,
    storage_option: StorageOption = None,
    deadline: DeadlineOption = DEFAULT_DEADLINE,
    config: ConfigOption = None,
) -> None:
    """Write a static HTML report of one run under OUT/reports/<run_id>/."""
    options = storage_options_from_flags(storage_option)
    with reader_deadline("report", deadline):
        where = build_report(out, run, top, options)
    typer.echo(f"report: {where}")


def register(app: typer.Typer) -> None:
    app.command("report", epilog=EXAMPLE)(report)
