"""What a run scans: the listing (or a manifest) against the previous runs of its source.

The diff is DuckDB over Parquet: the new listing vs. the latest state per URI from the previous
complete runs of the same source and model_id, spilling to local disk, so a lake of tens of
millions of objects diffs in bounded memory. Its result is a work list sorted by URI with a
fixed ``map_index`` per row, and the list of URIs that vanished.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .errors import ScanError, one_line
from .listing import ObjectFilter, list_prefix, read_manifest
from .outputs import duckdb_connect, register_parquet, sql_str
from .records import previous_runs
from .retries import with_retries
from .schema import SCORES_SCHEMA, VANISHED_SCHEMA
from .storage import Location


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


@dataclass
class DiffResult:
    todo_path: str  # local Parquet: image_uri, size_bytes, etag, mtime, map_index, reason
    vanished_path: str  # local Parquet: image_uri, run_id
    counts: DiffCounts


@dataclass(frozen=True)
class Selection:
    """Which objects a run considers (the listing) and which of them it scans (the diff)."""

    object_filter: ObjectFilter
    manifest: Location | None = None  # an explicit listing instead of listing the source
    full: bool = False  # rescan unchanged objects too
    retry_errors: bool = False  # rescan unchanged objects whose last row was an error
    limit: int | None = None  # scan at most this many; the rest is deferred


def list_and_diff(src: Location, out: Location, selection: Selection, model_id: str,
                  run_id: str, workdir: str) -> DiffResult:
    """List the source (or read the manifest) into ``workdir`` and diff it against the previous
    complete runs of this source and model."""
    manifest_path = os.path.join(workdir, "listing.parquet")
    try:
        if selection.manifest is not None:
            read_manifest(selection.manifest, src, manifest_path, selection.object_filter)
        else:
            # A listing that fails midway on a transient error starts over (it rewrites the
            # manifest from scratch, so a repeat is harmless).
            with_retries(list_prefix, src, manifest_path, selection.object_filter)
    except ScanError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise ScanError(one_line(f"cannot list {src.display()}", exc)) from None
    previous = previous_runs(out, src.uri, model_id)
    return diff_listing(manifest_path, out, previous, workdir, selection.object_filter, src.uri,
                        run_id, full=selection.full, retry_errors=selection.retry_errors,
                        limit=selection.limit)


def diff_listing(manifest_path: str, out: Location, previous: list[dict[str, Any]],
                 workdir: str, object_filter: ObjectFilter, source_uri: str, run_id: str, *,
                 full: bool = False, retry_errors: bool = False, limit: int | None = None
                 ) -> DiffResult:
    """Anti-join the new listing against the latest state per URI of the previous runs."""
    con = duckdb_connect(workdir)
    con.execute("CREATE OR REPLACE TEMP VIEW listing AS SELECT image_uri, any_value(size_bytes) "
                "AS size_bytes, any_value(etag) AS etag, any_value(mtime) AS mtime "
                f"FROM read_parquet({sql_str(manifest_path)}) GROUP BY image_uri")
    runs = pa.table({"run_id": [r["run_id"] for r in previous],
                     "seq": list(range(len(previous)))})
    con.register("prev_runs", runs)
    score_files = [f for r in previous for f in r.get("files", [])]
    vanished_files = [r["vanished_file"] for r in previous if r.get("vanished_file")]
    register_parquet(con, "prev_scores", out, score_files,
                     ["image_uri", "etag", "size_bytes", "mtime", "status", "run_id"],
                     SCORES_SCHEMA)
    register_parquet(con, "prev_vanished", out, vanished_files, ["image_uri", "run_id"],
                     VANISHED_SCHEMA)
    # The latest event per URI: its row in the newest run that scanned it, or 'vanished' if the
    # newest run that knew it saw it disappear.
    con.execute("""
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
