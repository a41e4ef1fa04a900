"""Run state: run records, the incremental diff, plans of work, resume and cleanup.

- ``runs/<run_id>.json``: the record of a committed run (written last); only records with
  ``status == 'complete'`` count as previous runs.
- ``runs/<run_id>.vanished.parquet``: URIs that disappeared since the previous runs.
- ``_staging/<run_id>/plan.json`` + ``todo.parquet``: the frozen work list of a run (with
  ``map_index`` fixed per row). A rerun after a crash finds the plan and resumes under the same
  run_id: the work left is the todo list minus the rows already staged.

The diff is DuckDB over Parquet (the new listing vs. the latest state per URI from the previous
complete runs of the same source and model_id), spilling to local disk, so a lake of tens of
millions of objects diffs in bounded memory.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import secrets
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from .listing import ObjectFilter
from .sinks import maps_store_name, scores_partition
from .storage import Location, safe_relative_path

RECORD_VERSION = 1
STATUS_COMPLETE = "complete"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # a run id
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
VANISHED_SCHEMA = pa.schema([pa.field("image_uri", pa.string(), nullable=False),
                             pa.field("run_id", pa.string(), nullable=False)])


def new_run_id(now: dt.datetime | None = None) -> str:
    """Sortable and unique: 20250102T030405123Z-1a2b3c (UTC, milliseconds, random suffix)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    return f"{now:%Y%m%dT%H%M%S}{now.microsecond // 1000:03d}Z-{secrets.token_hex(3)}"


# --------------------------------------------------------------------------- records

def record_name(run_id: str) -> str:
    return f"runs/{run_id}.json"


def vanished_name(run_id: str) -> str:
    return f"runs/{run_id}.vanished.parquet"


def read_json(out: Location, *parts: str) -> dict[str, Any] | None:
    try:
        content = json.loads(out.read_bytes(*parts))
    except FileNotFoundError:
        return None
    except ValueError:
        return None
    return content if isinstance(content, dict) else None


def write_json(out: Location, content: dict[str, Any], *parts: str) -> None:
    out.write_bytes(json.dumps(content, indent=2, sort_keys=True, default=str).encode(), *parts)


def trustworthy_record(record: dict[str, Any], file_name: str) -> bool:
    """A record that names itself (``runs/<run_id>.json``) and only paths inside OUT.

    Readers join a record's run_id, files and map store to OUT to read, write (reports) or
    delete; a doctored record must not steer them outside OUT, so such records are ignored
    (``verify`` reports them).
    """
    run_id = record.get("run_id")
    if not isinstance(run_id, str) or file_name != f"{run_id}.json" or \
            not _SAFE_NAME.match(run_id):
        return False
    try:
        for name in [*(record.get("files") or []), record.get("map_store"),
                     record.get("vanished_file")]:
            if name is not None:
                safe_relative_path(name)
    except (ValueError, TypeError):
        return False
    return True


def list_records(out: Location) -> list[dict[str, Any]]:
    """All readable, trustworthy run records, oldest first."""
    records = []
    for name in out.ls_names("runs"):
        if name.endswith(".json"):
            record = read_json(out, "runs", name)
            if record and trustworthy_record(record, name):
                records.append(record)
    return sorted(records, key=lambda r: (str(r.get("started_at", "")), str(r["run_id"])))


def previous_runs(out: Location, source_uri: str, model_id: str) -> list[dict[str, Any]]:
    """Complete runs of this source with this model, oldest first."""
    return [r for r in list_records(out)
            if r.get("status") == STATUS_COMPLETE and r.get("source") == source_uri
            and r.get("model_id") == model_id]


# --------------------------------------------------------------------------- diff

@dataclass
class DiffCounts:
    listed: int = 0
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    retried: int = 0  # previous status 'error', unchanged, retried by --retry-errors
    vanished: int = 0
    deferred: int = 0  # would be scanned, left for a later run by --limit
    to_scan: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def _duckdb(workdir: str):
    import duckdb

    con = duckdb.connect(config={"temp_directory": os.path.join(workdir, "duckdb.tmp"),
                                 "memory_limit": os.environ.get("VIP2SCAN_DUCKDB_MEMORY", "1GB"),
                                 "preserve_insertion_order": "false", "threads": "2"})
    return con


def sql_str(value: str) -> str:
    """A SQL string literal."""
    return "'" + str(value).replace("'", "''") + "'"


def sql_list(values: list[str]) -> str:
    return "[" + ", ".join(sql_str(v) for v in values) + "]"


def _register_parquet(con, name: str, out: Location, relpaths: list[str],
                      columns: list[str], schema: pa.Schema) -> None:
    """Expose Parquet files under OUT to DuckDB as a view (streamed, projected)."""
    if not relpaths:
        con.register(name, pa.table({c: pa.array([], schema.field(c).type) for c in columns}))
        return
    if out.is_local:
        paths = sql_list([out.fs_path(p) for p in relpaths])
        cols = ", ".join(columns)
        con.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS SELECT {cols} FROM read_parquet({paths}, "
                    "union_by_name=true, hive_partitioning=false)")
        return
    import pyarrow.dataset as pads

    dataset = pads.dataset([out.fs_path(p) for p in relpaths], format="parquet",
                           filesystem=out.pyarrow_filesystem(), schema=schema)
    con.register(f"{name}_arrow", dataset)
    con.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS SELECT {', '.join(columns)} "
                f"FROM {name}_arrow")


@dataclass
class DiffResult:
    todo_path: str  # local Parquet: image_uri, size_bytes, etag, mtime, map_index, reason
    vanished_path: str  # local Parquet: image_uri
    counts: DiffCounts


def diff_listing(manifest_path: str, out: Location, previous: list[dict[str, Any]],
                 workdir: str, object_filter: ObjectFilter, source_uri: str, run_id: str, *,
                 full: bool = False, retry_errors: bool = False, limit: int | None = None
                 ) -> DiffResult:
    """Anti-join the new listing against the latest state per URI of the previous runs."""
    from .sinks import SCORES_SCHEMA

    con = _duckdb(workdir)
    con.execute("CREATE OR REPLACE TEMP VIEW listing AS SELECT image_uri, any_value(size_bytes) "
                "AS size_bytes, any_value(etag) AS etag, any_value(mtime) AS mtime "
                f"FROM read_parquet({sql_str(manifest_path)}) GROUP BY image_uri")
    runs = pa.table({"run_id": [r["run_id"] for r in previous],
                     "seq": list(range(len(previous)))})
    con.register("prev_runs", runs)
    score_files = [f for r in previous for f in r.get("files", [])]
    vanished_files = [r["vanished_file"] for r in previous if r.get("vanished_file")]
    _register_parquet(con, "prev_scores", out, score_files,
                      ["image_uri", "etag", "size_bytes", "mtime", "status", "run_id"],
                      SCORES_SCHEMA)
    _register_parquet(con, "prev_vanished", out, vanished_files, ["image_uri", "run_id"],
                      VANISHED_SCHEMA)
    # The latest event per URI: its row in the newest run that scanned it, or 'vanished' if the
    # newest run that knew it saw it disappear.
    con.execute(f"""
        CREATE TEMP TABLE prev AS
        SELECT image_uri, etag, size_bytes, mtime, status FROM (
            SELECT s.image_uri, s.etag, s.size_bytes, s.mtime, s.status, r.seq
            FROM prev_scores s JOIN prev_runs r USING (run_id)
            UNION ALL
            SELECT v.image_uri, NULL, NULL, NULL, 'vanished', r.seq
            FROM prev_vanished v JOIN prev_runs r USING (run_id)
        ) QUALIFY row_number() OVER (PARTITION BY image_uri ORDER BY seq DESC) = 1
    """)
    changed = """(
        CASE WHEN l.etag IS NOT NULL AND p.etag IS NOT NULL THEN l.etag <> p.etag
             ELSE (l.size_bytes IS DISTINCT FROM p.size_bytes) OR (l.mtime IS DISTINCT FROM p.mtime)
        END)"""
    con.execute(f"""
        CREATE TEMP TABLE classified AS
        SELECT l.image_uri, l.size_bytes, l.etag, l.mtime,
            CASE WHEN p.image_uri IS NULL OR p.status = 'vanished' THEN 'new'
                 WHEN {changed} THEN 'changed'
                 WHEN p.status = 'error' AND {bool(retry_errors)} THEN 'retried'
                 ELSE 'unchanged' END AS reason
        FROM listing l LEFT JOIN prev p USING (image_uri)
    """)
    counts = DiffCounts()
    for reason, n in con.execute("SELECT reason, count(*) FROM classified GROUP BY reason").fetchall():
        setattr(counts, reason, int(n))
    counts.listed = counts.new + counts.changed + counts.unchanged + counts.retried

    wanted = "TRUE" if full else "reason <> 'unchanged'"
    total = int(con.execute(f"SELECT count(*) FROM classified WHERE {wanted}").fetchone()[0])
    counts.to_scan = total if limit is None else min(total, max(0, int(limit)))
    counts.deferred = total - counts.to_scan
    todo_path = os.path.join(workdir, "todo.parquet")
    # Sorted by URI: a deterministic map_index and neighbouring keys in neighbouring batches.
    con.execute(f"""
        COPY (SELECT image_uri, size_bytes, etag, mtime,
                     (row_number() OVER (ORDER BY image_uri) - 1)::BIGINT AS map_index, reason
              FROM classified WHERE {wanted} ORDER BY image_uri LIMIT {counts.to_scan})
        TO {sql_str(todo_path)} (FORMAT parquet, ROW_GROUP_SIZE 4096)
    """)

    # Vanished: known and not deleted before, absent now, and inside this run's selection
    # (an object outside the current include/exclude filters has not vanished).
    vanished_path = os.path.join(workdir, "vanished.parquet")
    root = source_uri.rstrip("/") + "/"
    writer = pq.ParquetWriter(vanished_path, VANISHED_SCHEMA)
    reader = con.sql("SELECT p.image_uri FROM prev p ANTI JOIN listing l USING (image_uri) "
                     "WHERE p.status <> 'vanished' ORDER BY p.image_uri").to_arrow_reader(50_000)
    for batch in reader:
        uris = [u for u in batch.column(0).to_pylist()
                if u.startswith(root) and object_filter.matches(u[len(root):])]
        counts.vanished += len(uris)
        writer.write_table(pa.table({"image_uri": uris, "run_id": [run_id] * len(uris)},
                                    schema=VANISHED_SCHEMA))
    writer.close()
    con.close()
    return DiffResult(todo_path=todo_path, vanished_path=vanished_path, counts=counts)


# --------------------------------------------------------------------------- plans

@dataclass
class Plan:
    """The frozen work of one run, persisted so an interrupted run resumes identically."""

    run_id: str
    source: str
    model_id: str
    started_at: str
    scan_date: str
    counts: dict[str, int]
    n_todo: int
    map_store: str | None
    map_size: int
    image_threshold: float
    pixel_threshold: float
    attempts: int = 1
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def todo_file(self) -> str:
        return f"_staging/{self.run_id}/todo.parquet"

    @property
    def vanished_staged(self) -> str:
        return f"_staging/{self.run_id}/vanished.parquet"

    def save(self, out: Location) -> None:
        write_json(out, asdict(self), "_staging", self.run_id, "plan.json")

    @classmethod
    def load(cls, out: Location, run_id: str) -> "Plan | None":
        content = read_json(out, "_staging", run_id, "plan.json")
        if not content:
            return None
        known = {f for f in cls.__dataclass_fields__}
        try:
            return cls(**{k: v for k, v in content.items() if k in known})
        except TypeError:  # an incomplete or foreign plan: not resumable
            return None


def upload_file(out: Location, local_path: str, relpath: str) -> None:
    with open(local_path, "rb") as fh:
        out.write_bytes(fh.read(), relpath)


def staging_runs(out: Location) -> list[str]:
    return out.ls_names("_staging")




def remove_run_leftovers(out: Location, run_id: str, scan_date: str | None) -> None:
    """Delete an abandoned run's staging, Zarr store and any half-committed score files.

    Names come from OUT's own listing and plan files; anything that is not a plain run id or
    date is refused so that a doctored plan cannot point the deletion outside OUT.
    """
    if not _SAFE_NAME.match(run_id) or ".." in run_id:
        return
    if scan_date is not None and not _DATE.match(scan_date):
        scan_date = None
    # Outputs first, the staging folder last: a cleanup interrupted halfway leaves the staging
    # behind, so the next scan (or verify --fix) still finds and finishes it.
    if scan_date:
        for name in out.ls_names(scores_partition(scan_date)):
            if name.startswith(f"{run_id}-"):
                out.remove(scores_partition(scan_date), name)
    out.remove(maps_store_name(run_id), recursive=True)
    out.remove("_staging", run_id, recursive=True)


def find_resumable(out: Location, source_uri: str, model_id: str) -> tuple[Plan | None, list[str]]:
    """The interrupted run of this source + model to resume, and what was cleaned up.

    Staging of committed runs (crash after the record) and of runs that cannot be resumed
    (another source or model, or a crash before the plan was saved) is removed.
    """
    resumable: Plan | None = None
    removed: list[str] = []
    for run_id in staging_runs(out):
        plan = Plan.load(out, run_id)
        if plan is not None and (plan.run_id != run_id or not _DATE.match(str(plan.scan_date))):
            plan = None  # not written by us for this directory: never resume it
        record = read_json(out, "runs", f"{run_id}.json")
        if record and record.get("status") == STATUS_COMPLETE:
            out.remove("_staging", run_id, recursive=True)
            removed.append(run_id)
        elif plan and plan.source == source_uri and plan.model_id == model_id and resumable is None:
            resumable = plan
        else:
            raw = read_json(out, "_staging", run_id, "plan.json") or {}
            scan_date = plan.scan_date if plan else raw.get("scan_date")
            remove_run_leftovers(out, run_id, str(scan_date) if scan_date else None)
            removed.append(run_id)
    return resumable, removed


def remaining_work(out: Location, plan: Plan, workdir: str) -> tuple[str, int, int, int]:
    """(local Parquet of todo rows not yet staged, rows left, distinct URIs staged, rows staged).

    The last two differ only if an object was staged twice, which the caller treats as a bug.
    """
    from .sinks import SCORES_SCHEMA, staged_part_names

    con = _duckdb(workdir)
    todo_local = os.path.join(workdir, "todo.parquet")
    if out.is_local:
        todo_local = out.fs_path(plan.todo_file)
    else:
        with open(todo_local, "wb") as fh:
            fh.write(out.read_bytes(plan.todo_file))
    parts = [f"_staging/{plan.run_id}/parts/{n}" for n in staged_part_names(out, plan.run_id)]
    _register_parquet(con, "staged", out, parts, ["image_uri"], SCORES_SCHEMA)
    staged, staged_rows = (int(v) for v in con.execute(
        "SELECT count(DISTINCT image_uri), count(*) FROM staged").fetchone())
    remaining_path = os.path.join(workdir, "remaining.parquet")
    con.execute(f"""
        COPY (SELECT t.* FROM read_parquet({sql_str(todo_local)}) t
              ANTI JOIN staged s USING (image_uri) ORDER BY map_index)
        TO {sql_str(remaining_path)} (FORMAT parquet, ROW_GROUP_SIZE 4096)
    """)
    left = int(con.execute(f"SELECT count(*) FROM read_parquet({sql_str(remaining_path)})"
                           ).fetchone()[0])
    con.close()
    return remaining_path, left, staged, staged_rows


def iter_uris(path: str) -> Iterable[str]:
    for batch in pq.ParquetFile(path).iter_batches(columns=["image_uri"]):
        yield from batch.column(0).to_pylist()
