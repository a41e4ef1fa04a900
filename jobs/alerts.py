"""`vip2scan alerts OUT [--since DATE] [--format json] [--by GLOB]`: the nights whose
anomaly rate or error rate in a group jumped (the rule: pipeline/output/alerts.py)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated, Optional

import typer

from vip2scan.jobs.config import ConfigOption, storage_options_from_flags
from vip2scan.jobs.deadline import DEFAULT_DEADLINE, DeadlineOption, reader_deadline
from vip2scan.jobs.errors import BadParameter
from vip2scan.jobs.storage import StorageOption

EXAMPLE = ("Example: vip2scan alerts s3://bucket/vip2scan-out --since 2026-12-01   "
           "(one line per alert; --format json for scripts)")


def check_date(value: Optional[str]) -> Optional[str]:
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value).isoformat()
    except ValueError:
        raise BadParameter(f"expected a date YYYY-MM-DD, got {value!r}") from None


def check_glob(value: Optional[str]) -> Optional[str]:
    if value is not None and not value.strip("/ "):
        raise BadParameter("needs a glob naming a folder level, e.g. 'line*/'")
    return value


def check_format(value: str) -> str:
    if value not in ("text", "json"):
        raise BadParameter(f"expected text or json, got {value!r}")
    return value


def alerts(
    out: Annotated[str, typer.Argument(help="The scan's output location (path or URI).")],
    since: Annotated[Optional[str], typer.Option(
        "--since", callback=check_date, metavar="DATE",
        help="Only runs of this night (scan date, UTC) or later.")] = None,
    output_format: Annotated[str, typer.Option(
        "--format", callback=check_format, metavar="text|json",
        help="text: one line per alert; json: every alert and change with its counts.")] = "text",
    by: Annotated[Optional[str], typer.Option(
        "--by", callback=check_glob, metavar="GLOB",
        help="Group by the folder prefixes matching GLOB, e.g. 'line*/' (default: the first "
             "folder below the scanned source).")] = None,
    storage_option: StorageOption = None,
    deadline: DeadlineOption = DEFAULT_DEADLINE,
    config: ConfigOption = None,
) -> None:
    """List the nights whose anomaly or error rate jumped.

    Also the nights whose model or threshold changed (not compared).

    An alert: a group's share of flagged images (or of error rows) on a night is far above its previous nights' (exact one-sided test, false-alarm rate at most 0.1 % per group-night and measure).
    """  # noqa: E501 - one line per paragraph: the help reflows it
    from vip2scan.pipeline.output.alert_counts import alerts_of_runs
    from vip2scan.pipeline.output.alerts import AlertRule
    from vip2scan.pipeline.output.views import Outputs

    outputs = Outputs(out, storage_options_from_flags(storage_option))
    rule = AlertRule()
    with reader_deadline("alerts", deadline):
        outputs.require_exists()
        records = outputs.run_records()
        chosen = [r for r in records if since is None or str(r.get("scan_date") or "") >= since]
        first = records.index(chosen[0]) if chosen else len(records)
        # Earlier runs only as baselines: the rule looks back at most 4 windows of nights.
        window = records[max(0, first - 4 * rule.window):]
        verdicts = alerts_of_runs(outputs.location, window, rule, by,
                                  only={r["run_id"] for r in chosen})
    found = [a for v in verdicts for a in v.alerts]
    changes = [c for v in verdicts for c in v.changes]
    if output_format == "json":
        typer.echo(json.dumps({"out": outputs.location.display(), "since": since,
                               "by": by or "first folder", "rule": rule.to_dict(),
                               "runs": len(chosen), "alerts": found, "changes": changes},
                              indent=2))
        return
    for verdict in verdicts:
        for item in verdict.alerts:
            typer.echo(f"{item['night']}  {item['run_id']}  alert: {item['line']}")
        for item in verdict.changes:
            typer.echo(f"{item['night']}  {item['run_id']}  changed: {item['line']}")
    scope = f"since {since}" if since else "in all"
    typer.echo(f"{len(found)} alert(s), {len(changes)} change(s) {scope} ({len(chosen)} run(s) "
               f"of {outputs.location.display()})")


def register(app: typer.Typer) -> None:
    app.command("alerts", epilog=EXAMPLE)(alerts)
