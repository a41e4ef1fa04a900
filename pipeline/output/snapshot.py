"""The ``latest`` snapshot: the newest row per object, materialised when a run commits.

Without it the next night's diff and every ``SELECT ... FROM latest`` window over every run's
rows, so their cost grows with the number of nights. At its commit a run writes
``OUT/latest/<run_id>/part-*.parquet`` (sorted by image_uri) and its record names those files
(``latest``; snapshot_ref.py reads it). The record is written last, so readers see the
previous snapshot or the new one, never half of one, on a local disk and on S3 alike (no
rename needed); a driver killed in between leaves files no record names, which the resumed
run rewrites.

How a snapshot is built:

- **incremental** (the nightly case): the previous snapshot + this run's rows + its vanished
  list. Valid when the run is newer than everything in the previous snapshot: it started
  after every included run started (the diff's run order) and after every included row was
  scanned (the view's order). Then its rows replace the model's rows of the same objects,
  its vanished list removes them, and on either order its events win. Cost: one pass over
  the previous snapshot (the lake's size), whatever the number of nights.
- **rebuilt** from every committed run (the old window queries, once) when there is no
  snapshot yet (an OUT written before snapshots existed, whose runs it lists as
  ``legacy_runs``), when a run committed without one, or when the run is out of order (an
  interrupted run resumed and committed after a later run).
- **reused**: a run with no rows and nothing vanished names the previous snapshot again.

After a new snapshot is written, snapshots older than the previous one are deleted (the
previous stays for readers still reading it).
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any, Callable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .. import faults
from ..storage.arrow_fs import with_native_read_retries
from ..storage.location import Location
from ..storage.retries import with_retries
from .paths import LATEST, partition_date, snapshot_dir, snapshot_file_name
from .records import committed_records
from .schema import SCORES_SCHEMA, VANISHED_SCHEMA, utc_timestamp
from .snapshot_ref import SNAPSHOT_SCHEMA, Snapshot, current_snapshot, named_snapshots
from .views import duckdb_connect, register_parquet, sql_str

ROW_GROUP_ROWS = 65_536
FILE_ROWS = 2_000_000  # rows per snapshot file: one PUT each, a few hundred MB at most
SCORE_COLS = SCORES_SCHEMA.names


def _run_key(record: dict[str, Any]) -> tuple[str, str]:
    """The diff's run order (records.list_records sorts by it)."""
    return (str(record.get("started_at", "")), str(record["run_id"]))


def _scan_date(record: dict[str, Any]) -> str | None:
    """The run's scan_date: the partition its files lie in (what the hive readers see)."""
    for name in record.get("files") or []:
        parts = name.split("/")
        if len(parts) >= 2:
            return partition_date(parts[-2])
    return record.get("scan_date")


def in_order(previous: Snapshot, run: dict[str, Any]) -> bool:
    """Whether ``run``'s events are newer than everything ``previous`` was built from."""
    started = utc_timestamp(run.get("started_at"))
    newest_row = utc_timestamp(previous.max_scanned_at)
    return _run_key(run) > previous.last_run and (
        newest_row is None or (started is not None and started > newest_row))


def commit_snapshot(out: Location, run: dict[str, Any],
                    fence: Callable[[], None] | None = None) -> dict[str, Any]:
    """Write the snapshot that includes ``run`` (a record-shaped dict: run_id, model_id,
    started_at, files, vanished_file) and return the ``latest`` field for its record.

    ``fence`` is called before each file is published (it raises when the lease is lost)."""
    t0 = time.perf_counter()
    records = [r for r in committed_records(out) if r.get("run_id") != run["run_id"]]
    previous = current_snapshot(records)
    if previous is not None and not run.get("files") and not run.get("vanished_file"):
        faults.driver_point("snapshot")
        return previous.to_record()  # nothing changed: a quiet night costs nothing here
    generation = 1 + max((s.generation for s in named_snapshots(records)), default=0)
    with tempfile.TemporaryDirectory(prefix="vip2scan-snapshot-") as workdir:
        con = duckdb_connect(workdir)
        try:
            if previous is not None and in_order(previous, run):
                built, legacy = "incremental", previous.legacy_runs
                select = incremental_select(con, out, previous, run)
                last_run = _run_key(run)
            else:
                built = "rebuilt"
                legacy = tuple(r["run_id"] for r in records
                               if Snapshot.from_record(r.get("latest")) is None)
                select = history_select(con, out, [*records, run])
                last_run = max(_run_key(r) for r in [*records, run])
            # A stream cannot resume mid-way: a transient read failure writes the files again
            # (_write starts by removing what an earlier try left).
            files, rows, newest = with_native_read_retries(
                _write, con, select, out, run["run_id"], workdir, fence)
        finally:
            con.close()
    if built == "incremental":
        newest = max([t for t in (utc_timestamp(previous.max_scanned_at), newest) if t],
                     default=None)
    snap = Snapshot(dir=snapshot_dir(run["run_id"]), files=tuple(files), rows=rows,
                    generation=generation, last_run=last_run,
                    max_scanned_at=newest.isoformat() if newest else None, legacy_runs=legacy,
                    built=built, build_s=round(time.perf_counter() - t0, 3))
    faults.driver_point("snapshot")
    _remove_older(out, keep={snap.dir, previous.dir if previous else snap.dir}, fence=fence)
    return snap.to_record()


# --------------------------------------------------------------------------- the two builds

def _cols(alias: str) -> str:
    return ", ".join(f"{alias}.{c}" for c in SCORE_COLS)


def incremental_select(con: Any, out: Location, previous: Snapshot, run: dict[str, Any],
                       ordered: bool = True) -> str:
    """The previous snapshot with this run's objects replaced (its model's state rows, every
    model's shown flag), plus this run's rows (in file order if ``ordered``; verify compares
    them unordered)."""
    register_parquet(con, "snap_prev", out, list(previous.files), SNAPSHOT_SCHEMA.names,
                     SNAPSHOT_SCHEMA)
    register_parquet(con, "run_rows", out, list(run.get("files") or []), SCORE_COLS,
                     SCORES_SCHEMA)
    gone = [run["vanished_file"]] if run.get("vanished_file") else []
    register_parquet(con, "run_gone", out, gone, ["image_uri"], VANISHED_SCHEMA)
    con.execute("CREATE TEMP TABLE touched AS SELECT DISTINCT image_uri FROM ("
                "SELECT image_uri FROM run_rows UNION ALL SELECT image_uri FROM run_gone)")
    model, scan_date = sql_str(run["model_id"]), _scan_date(run)
    date = f"DATE {sql_str(scan_date)}" if scan_date else "NULL::DATE"
    return f"""
        SELECT * FROM (
            SELECT {_cols('p')}, p.scan_date,
                   p.state AND (t.image_uri IS NULL OR p.model_id <> {model}) AS state,
                   p.shown AND t.image_uri IS NULL AS shown
            FROM snap_prev p LEFT JOIN touched t ON t.image_uri = p.image_uri
        ) WHERE state OR shown
        UNION ALL
        SELECT {_cols('r')}, {date}, TRUE, TRUE FROM run_rows r
        {'ORDER BY image_uri, model_id' if ordered else ''}"""


def history_select(con: Any, out: Location, records: list[dict[str, Any]],
                   ordered: bool = True) -> str:
    """The snapshot of ``records`` from their rows and vanished lists: the diff's and the
    ``latest`` view's window queries over all history (slow; first snapshot, out-of-order
    runs, and verify's cross-check)."""
    ordered = sorted(records, key=_run_key)
    con.register("hist_runs_arrow", pa.table({
        "run_id": pa.array([r["run_id"] for r in ordered], pa.string()),
        "seq": pa.array(range(len(ordered)), pa.int64()),
        "model_id": pa.array([r.get("model_id") for r in ordered], pa.string()),
        "started_at": pa.array([utc_timestamp(r.get("started_at")) for r in ordered],
                               pa.timestamp("us", tz="UTC")),
        "scan_date": pa.array([_scan_date(r) for r in ordered], pa.string()).cast(pa.date32())}))
    con.execute("CREATE OR REPLACE TEMP TABLE hist_runs AS SELECT * FROM hist_runs_arrow")
    register_parquet(con, "hist", out, [f for r in ordered for f in r.get("files") or []],
                     SCORE_COLS, SCORES_SCHEMA)
    register_parquet(con, "hist_gone", out, [r["vanished_file"] for r in ordered
                                             if r.get("vanished_file")],
                     ["image_uri", "run_id"], VANISHED_SCHEMA)
    # The diff's state: the newest event per (object, model) in run order, rows or vanished.
    con.execute("""
        CREATE OR REPLACE TEMP TABLE state_keys AS
        SELECT image_uri, run_id FROM (
            SELECT * FROM (
                SELECT s.image_uri, s.run_id, s.model_id, r.seq, TRUE AS is_row
                FROM hist s JOIN hist_runs r USING (run_id)
                UNION ALL
                SELECT v.image_uri, v.run_id, r.model_id, r.seq, FALSE
                FROM hist_gone v JOIN hist_runs r USING (run_id)
            ) QUALIFY row_number() OVER (PARTITION BY image_uri, model_id ORDER BY seq DESC) = 1
        ) WHERE is_row""")
    # The view's row: newest of any model, unless a run started since found it gone.
    con.execute("""
        CREATE OR REPLACE TEMP TABLE shown_keys AS
        SELECT s.image_uri, s.run_id FROM (
            SELECT image_uri, run_id, scanned_at FROM hist
            QUALIFY row_number() OVER (PARTITION BY image_uri
                                       ORDER BY scanned_at DESC, run_id DESC) = 1
        ) s WHERE NOT EXISTS (
            SELECT 1 FROM hist_gone v JOIN hist_runs r USING (run_id)
            WHERE v.image_uri = s.image_uri AND r.started_at >= s.scanned_at)""")
    return f"""
        SELECT {_cols('s')}, r.scan_date,
               st.run_id IS NOT NULL AS state, sh.run_id IS NOT NULL AS shown
        FROM hist s JOIN hist_runs r ON r.run_id = s.run_id
        LEFT JOIN state_keys st ON st.image_uri = s.image_uri AND st.run_id = s.run_id
        LEFT JOIN shown_keys sh ON sh.image_uri = s.image_uri AND sh.run_id = s.run_id
        WHERE st.run_id IS NOT NULL OR sh.run_id IS NOT NULL
        {'ORDER BY s.image_uri, s.model_id' if ordered else ''}"""


# --------------------------------------------------------------------------- files

def _write(con: Any, select: str, out: Location, run_id: str, workdir: str,
           fence: Callable[[], None] | None) -> tuple[list[str], int, Any]:
    """Stream ``select`` (in order) into the run's snapshot files; returns their names, the
    row count and the newest scanned_at."""
    folder = snapshot_dir(run_id)
    if out.exists(folder):  # an earlier attempt of this (uncommitted) run: no record names it
        out.remove(folder, recursive=True)
    files: list[str] = []
    rows, newest = 0, None
    writer, local, in_file = None, "", 0
    reader = con.sql(select).to_arrow_reader(ROW_GROUP_ROWS)

    def publish() -> None:
        writer.close()
        name = f"{folder}/{snapshot_file_name(len(files))}"
        if fence is not None:
            fence()
        if out.is_local:
            os.replace(local, out.fs_path(name))
        else:
            try:
                with_retries(out.fs.put_file, local, out.fs_path(name))
            finally:
                os.remove(local)
        files.append(name)

    for batch in reader:
        if batch.num_rows == 0:
            continue
        table = pa.Table.from_batches([batch]).cast(SNAPSHOT_SCHEMA)
        if writer is None:
            if out.is_local:
                os.makedirs(out.fs_path(folder), exist_ok=True)
                local = out.fs_path(folder, f".{snapshot_file_name(len(files))}.inprogress")
            else:
                local = os.path.join(workdir, snapshot_file_name(len(files)))
            writer, in_file = pq.ParquetWriter(local, SNAPSHOT_SCHEMA, compression="zstd"), 0
        writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
        rows, in_file = rows + table.num_rows, in_file + table.num_rows
        batch_newest = pc.max(table["scanned_at"]).as_py()
        newest = batch_newest if newest is None or batch_newest > newest else newest
        if in_file >= FILE_ROWS:
            publish()
            writer = None
    if writer is not None:
        publish()
    return files, rows, newest


def _remove_older(out: Location, keep: set[str], fence: Callable[[], None] | None) -> None:
    """Delete snapshot folders other than ``keep`` (the new one and the previous one)."""
    stale = [f"{LATEST}/{name}" for name in out.ls_names(LATEST)
             if f"{LATEST}/{name}" not in keep]
    if stale and fence is not None:
        fence()
    for folder in stale:
        out.remove(folder, recursive=True)
