"""The lake as the explorer sees it: OUT's ``latest`` view as the ``cur`` view of DuckDB (one
row per current object with its root, key, prefix, night and status class), and the helpers
the static export and ``explore --serve`` share.

Every aggregate is a DuckDB query over ``cur`` (through the ``objects`` table made from it):
nothing here holds one Python object per row, so the cost of an overview follows the number of
prefixes, nights and runs, not of objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vip2scan.pipeline.output.views import Outputs

HIST_BINS = 40
MAX_ERRORS_LISTED = 200
MAX_REASONS = 30
TOP_LEVEL = "(top level)"  # the prefix of objects directly under a run's source
STATUS_ERROR, FLAG_ANOMALOUS, FLAG_RENDERED, FLAG_IMAGE = 1, 2, 4, 8  # bits of the index's ``f``
NORMAL, ANOMALOUS, ERROR = 0, 1, 2  # ``cls``: the status class the filters and the cube use

PER_RUN_SQL = """
SELECT run_id, count(*) AS n, count(*) FILTER (status = 'ok') AS ok,
       count(*) FILTER (status = 'ok' AND is_anomalous) AS anomalous,
       count(*) FILTER (status = 'error') AS errors
FROM scores GROUP BY run_id
"""
# Rows of current objects written on another night than their current row's: the night
# filter matches an object scanned that night even when a later night (a --full rescan)
# wrote its current row, and its history lists them.
# The join is on a 64-bit hash of the URI: its build side is then 10 bytes an object (with the
# URI it did not fit 4 GiB at 10 M); two URIs of one lake sharing a hash (about 1e-5 at 10 M)
# would show one extra row in a history. ``score_rows`` reads the score files natively, so
# DuckDB knows their size and builds on ``objects`` (over an Arrow scan it guessed 1 row).
OTHER_ROWS_SQL = """
CREATE TEMP TABLE other_rows AS
SELECT s.image_uri, n.night, n.run, s.status, s.image_score, s.is_anomalous, s.scanned_at
FROM score_rows s JOIN run_nights n ON n.run_id = s.run_id
JOIN objects c ON hash(s.image_uri) = c.h
WHERE n.run <> c.run
"""
SCORE_COLUMNS = ["image_uri", "run_id", "status", "image_score", "is_anomalous", "scanned_at"]
# The root of an object under no run's source: its URI's protocol (what relative_key says).
OWN_ROOT_SQL = "CASE WHEN contains(image_uri, '://') THEN split_part(image_uri, '://', 1) || '://' ELSE '' END"


@dataclass
class Lake:
    """What the run records say about the lake: runs in record order, nights sorted, the
    runs' sources (shortest first: an object's root is the shortest source holding it)."""

    records: dict[str, dict]
    run_ids: list[str]
    nights: list[str]
    run_night: dict[str, int]
    roots: list[str]
    warnings: list[str]


def read_lake(outputs: "Outputs") -> Lake:
    records = {r["run_id"]: r for r in outputs.run_records()}
    warnings = drop_non_finite_thresholds(records)
    nights = sorted({night_of(r) for r in records.values()})
    night_index = {n: i for i, n in enumerate(nights)}
    roots = sorted({str(r.get("source")).rstrip("/") + "/" for r in records.values() if r.get("source")},
                   key=len)
    return Lake(records=records, run_ids=list(records), nights=nights,
                run_night={r: night_index[night_of(rec)] for r, rec in records.items()},
                roots=roots, warnings=warnings)


def open_current(con: Any, lake: Lake, outputs: "Outputs") -> None:
    """Create the ``cur`` view, the ``objects`` table (the columns every aggregate needs,
    computed once: the view's string work would otherwise be redone by each query) and the
    small ``run_nights`` table on ``con``."""
    import pyarrow as pa

    from vip2scan.pipeline.output.views import sql_str

    from vip2scan.pipeline.output.schema import SCORES_SCHEMA
    from vip2scan.pipeline.output.views import register_parquet

    register_parquet(con, "score_rows", outputs.location,
                     [f for r in lake.records.values() for f in r.get("files") or []], SCORE_COLUMNS, SCORES_SCHEMA)
    con.register("run_nights", pa.table({"run_id": pa.array(lake.run_ids, pa.string()),
                                         "night": pa.array([lake.run_night[r] for r in lake.run_ids], pa.int16()),
                                         "run": pa.array(range(len(lake.run_ids)), pa.int16())}))
    root = " ".join(f"WHEN starts_with(image_uri, {sql_str(r)}) THEN {sql_str(r)}" for r in lake.roots)
    code = " ".join(f"WHEN starts_with(l.image_uri, {sql_str(r)}) THEN {i}" for i, r in enumerate(lake.roots))
    own = OWN_ROOT_SQL
    con.execute(f"""
CREATE OR REPLACE TEMP VIEW cur AS
SELECT *, CASE WHEN contains(key, '/') THEN split_part(key, '/', 1) || '/' ELSE {sql_str(TOP_LEVEL)} END AS prefix
FROM (
  SELECT l.image_uri, l.status, l.error, l.model_id, l.run_id, l.width, l.height, l.map_store, l.map_index,
         CASE WHEN l.status = 'ok' THEN l.image_score END AS score,
         l.max_pixel_score AS mp, l.anomalous_area_fraction AS ar,
         CASE WHEN l.status <> 'ok' THEN {ERROR} WHEN l.is_anomalous THEN {ANOMALOUS} ELSE {NORMAL} END AS cls,
         coalesce(n.night, 0) AS night, n.run, r.root, substr(l.image_uri, length(r.root) + 1) AS key,
         {f"CASE {code} ELSE -1 END" if code else "-1"} AS root_code
  FROM latest l LEFT JOIN run_nights n ON n.run_id = l.run_id,
  LATERAL (SELECT {f"CASE {root} ELSE {own} END" if root else own} AS root) r
)""")
    # Small codes, not strings, for run and root: at 10 M objects every byte a row is 10 MB.
    con.execute("CREATE OR REPLACE TEMP TABLE objects AS SELECT image_uri, hash(image_uri) AS h, run, model_id, "
                "root_code, prefix, "
                "night::SMALLINT AS night, cls::TINYINT AS cls, score::FLOAT AS score, error FROM cur")


def split_root(uri: str, roots: list[str]) -> tuple[str, str]:
    """(root, key) of a URI as the ``cur`` view splits it."""
    for root in roots:
        if uri.startswith(root):
            return root, uri[len(root):]
    protocol, sep, _ = uri.partition("://")
    return (protocol + sep, uri[len(protocol + sep):]) if sep else ("", uri)


def night_of(record: dict) -> str:
    """The night (UTC date) a run belongs to: its scan_date, else the date it started."""
    return str(record.get("scan_date") or str(record.get("started_at") or "")[:10] or "unknown")


def thresholds_in_force(records: dict[str, dict], run_ids: set[str]) -> list[dict[str, Any]]:
    """The image thresholds of the runs that wrote the current rows: global and per prefix."""
    seen: dict[tuple[float, str], None] = {}
    for run_id in sorted(run_ids):
        record = records.get(run_id) or {}
        if record.get("image_threshold") is not None:
            source = record.get("threshold_source") or ""
            seen[(float(record["image_threshold"]), f"threshold{' (' + source + ')' if source else ''}")] = None
        root = str(record.get("source") or "").rstrip("/") + "/"
        for prefix, value in sorted((record.get("image_thresholds") or {}).items()):
            seen[(float(value), f"{str(prefix).removeprefix(root)} threshold")] = None
    return [{"value": v, "label": label} for v, label in seen]


def drop_non_finite_thresholds(records: dict[str, dict]) -> list[str]:
    """Blank, in place, the thresholds of run records that are not finite numbers (older
    versions accepted `--threshold nan`): JSON, and so the page, cannot hold them. Returns one
    warning per such run."""
    import math

    def finite(value: Any) -> bool:
        return isinstance(value, (int, float)) and math.isfinite(value)

    warnings = []
    for run_id, record in records.items():
        bad = [name for name in ("image_threshold", "pixel_threshold")
               if record.get(name) is not None and not finite(record[name])]
        by_prefix = record.get("image_thresholds") or {}
        kept = {p: v for p, v in by_prefix.items() if finite(v)} if isinstance(by_prefix, dict) else {}
        if len(kept) != len(by_prefix):
            bad.append("image_thresholds")
        for name in bad:
            record[name] = kept if name == "image_thresholds" else None
        if bad:
            warnings.append(f"run {run_id} recorded a non-finite {', '.join(bad)}: shown as none")
    return warnings


def mark_threshold_changes(per_night: list[dict[str, Any]], records: dict[str, dict],
                           run_night: dict[str, int]) -> None:
    """Give each night the image thresholds its runs used and, where they differ from the
    previous night's, a ``threshold_change`` note: a jump in the flagged rate there is the
    threshold's, not the lake's."""
    used: dict[int, set[float]] = {}
    for run_id, record in records.items():
        if record.get("image_threshold") is not None and run_id in run_night:
            used.setdefault(run_night[run_id], set()).add(round(float(record["image_threshold"]), 4))
    before: set[float] | None = None
    for j, night in enumerate(per_night):
        now = used.get(j)
        night["thresholds"] = sorted(now or ())
        if now and before and now != before:
            night["threshold_change"] = (f"threshold {', '.join(f'{v:g}' for v in sorted(before))}"
                                         f" \u2192 {', '.join(f'{v:g}' for v in sorted(now))}")
        before = now or before


def run_alerts(records: dict[str, dict]) -> list[dict[str, Any]]:
    """The anomaly-rate alerts (``alert``: 1) and model or threshold changes (0) the runs
    recorded at their commits (pipeline/output/alerts.py), oldest first, by night."""
    return [{"night": night_of(record), "run": run_id, "group": item.get("group"),
             "kind": item.get("kind"), "alert": int(key == "alerts"), "line": item.get("line")}
            for run_id, record in records.items() for key in ("alerts", "alert_changes")
            for item in record.get(key) or [] if isinstance(item, dict)]
