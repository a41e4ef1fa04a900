"""The counts the shift rule (alerts.py) compares: per run and group, rows, ok rows, flagged
images and error rows.

A run records its own counts at its commit (``group_counts`` in its record, for the default
grouping), so a night's alerts read the earlier nights' counts from their records instead of
their score files. Runs committed before that, or a ``--by`` other than the recorded one, are
counted from their score files with one DuckDB pass over the columns needed.
"""

from __future__ import annotations

import logging
import tempfile
from typing import Any, Sequence

from ..storage.location import Location
from .alerts import DEFAULT_BY, AlertRule, GroupNight, RunAlerts, evaluate, group_thresholds
from .calibration import group_of, relative_key
from .records import committed_records
from .schema import SCORES_SCHEMA
from .views import duckdb_connect, register_parquet

log = logging.getLogger(__name__)

TOP_LEVEL = "(top level)"  # objects right under a run's source (the explorer's name too)
NO_MATCH = "(no match)"  # objects under no prefix matching a --by glob (calibrate's name too)
COUNT_SQL = """
SELECT run_id, regexp_replace(image_uri, '/[^/]*$', '') AS folder, count(*) AS rows,
       count(*) FILTER (status = 'ok') AS ok,
       count(*) FILTER (status = 'ok' AND is_anomalous) AS flagged,
       count(*) FILTER (status <> 'ok') AS errors
FROM run_rows GROUP BY ALL
"""
COUNT_FIELDS = ("rows", "ok", "flagged", "errors")


def run_roots(records: Sequence[dict[str, Any]]) -> list[str]:
    """The runs' sources, shortest first: groups are named below the shortest that holds them."""
    return sorted({str(r.get("source")) for r in records if r.get("source")}, key=len)


def folder_group(folder: str, roots: Sequence[str], by: str) -> tuple[str, str]:
    """(group, absolute prefix) of the objects in ``folder``."""
    root, key = relative_key(folder + "/", roots)
    group = group_of(key, by)
    if group is None:  # right under the source, or (with a --by glob) under no match
        return (TOP_LEVEL if by == DEFAULT_BY else NO_MATCH), root
    return group, root + group


def count_files(out: Location, records: Sequence[dict[str, Any]], roots: Sequence[str],
                by: str) -> dict[str, dict[tuple[str, str], dict[str, int]]]:
    """run_id -> (group, prefix) -> counts, from the runs' score files."""
    files = [f for r in records for f in (r.get("files") or [])]
    found: dict[str, dict[tuple[str, str], dict[str, int]]] = {r["run_id"]: {} for r in records}
    if not files:
        return found
    with tempfile.TemporaryDirectory(prefix="vip2scan-alerts-") as workdir:
        con = duckdb_connect(workdir)
        try:
            register_parquet(con, "run_rows", out, files,
                             ["run_id", "image_uri", "status", "is_anomalous"], SCORES_SCHEMA)
            table = con.sql(COUNT_SQL).fetchall()
        finally:
            con.close()
    groups: dict[str, tuple[str, str]] = {}
    for run_id, folder, *values in table:
        if run_id not in found:
            continue
        key = groups.setdefault(folder, folder_group(folder, roots, by))
        counts = found[run_id].setdefault(key, dict.fromkeys(COUNT_FIELDS, 0))
        for name, value in zip(COUNT_FIELDS, values):
            counts[name] += int(value)
    return found


def recorded_counts(record: dict[str, Any], by: str) -> dict[tuple[str, str], dict[str, int]] | None:
    """The counts a run recorded at its commit, if it used grouping ``by``."""
    stored = record.get("group_counts")
    if not isinstance(stored, dict) or stored.get("by") != by or \
            not isinstance(stored.get("groups"), list):
        return None
    try:
        return {(str(g["group"]), str(g["prefix"])): {n: int(g[n]) for n in COUNT_FIELDS}
                for g in stored["groups"]}
    except (KeyError, TypeError, ValueError):
        return None


def to_recorded(counts: dict[tuple[str, str], dict[str, int]], by: str) -> dict[str, Any]:
    """A run's counts as its record holds them (``group_counts``)."""
    return {"by": by, "groups": [{"group": g, "prefix": p, **c}
                                 for (g, p), c in sorted(counts.items())]}


def group_nights(out: Location, records: Sequence[dict[str, Any]], by: str,
                 roots: Sequence[str] | None = None) -> list[GroupNight]:
    """Every (run, group) of ``records`` with its counts: recorded ones where the run has
    them, counted from score files for the rest."""
    roots = list(roots) if roots is not None else run_roots(records)
    counted: dict[str, dict[tuple[str, str], dict[str, int]]] = {}
    missing = []
    for record in records:
        stored = recorded_counts(record, by)
        if stored is None:
            missing.append(record)
        else:
            counted[record["run_id"]] = stored
    counted.update(count_files(out, missing, roots, by))
    nights = []
    for record in records:
        for (group, prefix), counts in counted.get(record["run_id"], {}).items():
            nights.append(GroupNight(
                run_id=record["run_id"], night=str(record.get("scan_date") or ""), group=group,
                prefix=prefix, model_id=str(record.get("model_id") or ""),
                thresholds=group_thresholds(prefix, record.get("image_threshold"),
                                            record.get("image_thresholds")),
                **counts))
    return nights


def alerts_of_runs(out: Location, records: Sequence[dict[str, Any]], rule: AlertRule,
                   by: str | None = None, only: set[str] | None = None) -> list[RunAlerts]:
    """The verdicts of ``records`` (oldest first) or of the runs in ``only`` among them."""
    nights = group_nights(out, records, by or DEFAULT_BY)
    return evaluate(nights, [r["run_id"] for r in records], rule, only)


def alerts_at_commit(out: Location, run: dict[str, Any], rule: AlertRule
                     ) -> tuple[RunAlerts, dict[str, Any]]:
    """A committing run's verdict and the counts to record with it; ``run`` is its record so
    far (run_id, source, model_id, scan_date, thresholds, files). Earlier nights are the last
    runs committed before it; the record written after this is what makes the run count."""
    earlier = [r for r in committed_records(out) if r.get("run_id") != run["run_id"]]
    earlier = earlier[-4 * rule.window * max(1, len(run_roots(earlier))):]
    records = [*earlier, run]
    roots = run_roots(records)
    mine = count_files(out, [run], roots, DEFAULT_BY)[run["run_id"]]
    recorded = to_recorded(mine, DEFAULT_BY)
    nights = group_nights(out, [*earlier, {**run, "group_counts": recorded}], DEFAULT_BY, roots)
    verdict = evaluate(nights, [r["run_id"] for r in records], rule, {run["run_id"]})[0]
    return verdict, recorded


def alert_fields(out: Location, run: dict[str, Any], rule: AlertRule | None = None
                 ) -> dict[str, Any]:
    """What a committing run's record says about alerts: ``alerts`` (shifts), ``alert_changes``
    (model or threshold changes), its ``group_counts`` and the ``alert_rule``. Never raises: a
    night whose alerts cannot be worked out still commits, and says so in ``alert_error``."""
    rule = rule or AlertRule()
    try:
        verdict, recorded = alerts_at_commit(out, run, rule)
    except Exception as exc:  # noqa: BLE001 - alerts are advice; the commit must not fail on them
        log.warning("alerts of run %s not computed: %s", run["run_id"], exc)
        return {"alerts": [], "alert_changes": [], "alert_rule": rule.to_dict(),
                "alert_error": f"{type(exc).__name__}: {exc}"[:300]}
    return {"alerts": verdict.alerts, "alert_changes": verdict.changes,
            "group_counts": recorded, "alert_rule": rule.to_dict()}
