"""`vip2scan verify OUT [--run RUN_ID] [--fix] [--deep]`: check an output tree's consistency."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from vip2scan.jobs.config import ConfigOption, storage_options_from_flags
from vip2scan.jobs.deadline import DEFAULT_DEADLINE, DeadlineOption, reader_deadline
from vip2scan.jobs.storage import StorageOption
from vip2scan.jobs.terminal import printable

EXAMPLE = ("Example: vip2scan verify s3://bucket/vip2scan-out   (exit 0: consistent; 1: problems, "
           "listed one per line; add --fix to remove abandoned staging data)")


def verify(
    out: Annotated[str, typer.Argument(help="The scan's output location (path or URI).")],
    run: Annotated[Optional[str], typer.Option("--run", help="Check only this run id.")] = None,
    fix: Annotated[bool, typer.Option(
        "--fix", help="Remove abandoned staging data (older than the lock expiry) and nothing "
                      "else; an interrupted run removed this way is rescanned by the next scan.")] = False,
    expiry: Annotated[Optional[float], typer.Option(
        "--expiry", min=0, metavar="SECONDS",
        help="Age after which staging data counts as abandoned (default: the lock's ttl, 300 s).")] = None,
    deep: Annotated[bool, typer.Option(
        "--deep", help="Check the latest snapshot against every run's rows (cost grows with the "
                       "number of nights) instead of against the previous snapshot and the "
                       "newest run's rows.")] = False,
    storage_option: StorageOption = None,
    deadline: DeadlineOption = DEFAULT_DEADLINE,
    config: ConfigOption = None,
) -> None:
    """Check that every run under OUT is complete and consistent: records, rows, maps, staging."""
    from vip2scan.pipeline.output.verify import verify as run_verify

    # A VerifyError (OUT missing or unreadable, or locked for --fix) reaches the CLI's handler:
    # one "error:" line, exit 1.
    options = storage_options_from_flags(storage_option)
    with reader_deadline("verify", deadline):
        report = run_verify(out, options, run_id=run, fix=fix, expiry_s=expiry, deep=deep)
    for removed in report.fixed:
        typer.echo(f"removed {removed}")
    scope = f"run {run}" if run else f"{len(report.runs_checked)} run(s)"
    checked = f"{report.rows_checked} rows, {report.maps_checked} maps checked"
    if not run:  # which snapshot check ran, for the nightly log
        checked += f"; {report.snapshot.summary()}"
    if report.ok:
        typer.echo(f"{report.out}: consistent ({scope}, {checked})")
        return
    typer.echo(f"{report.out}: {len(report.problems)} problem(s) ({scope}, {checked})")
    for problem in report.problems:
        typer.echo(f"  {printable(problem.line())}")
    raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("verify", epilog=EXAMPLE)(verify)
