"""verify(): check that an OUT tree is consistent, and optionally remove abandoned staging data.

Checks:
- every committed run has a readable record, and its ``files`` exist; no score file lies in
  ``scores/`` without a committed run (unless that run's staging is still there);
- the record's counts match its rows (rows, scored = ok rows, failed = error rows);
- no ``image_uri`` appears twice in one run;
- every ``ok`` row's ``map_index`` has a written map in the run's Zarr store, whose array has
  the recorded resolution; no store holds a map without an ``ok`` row (unwritten slots have
  no chunk and read as NaN, the fill value); no store exists without a run;
- the ``latest`` snapshot the newest record names holds exactly the rows it was built from:
  by default recomputed from the previous snapshot and its run's rows, with ``deep`` from the
  window over every committed run (snapshot_check.py);
- no staging leftover (a run's staging folder, half-written temp files) is older than the lock
  expiry, unless the live lease belongs to that run;
- every score file is readable Parquet (garbage is listed, not fatal), and OUT's
  calibration.json, which every scan reads first, is usable.

``fix=True`` (verify_staging.py) takes OUT's lease (so it never races a scan) and removes
abandoned staging data: an abandoned run's staging folder and, when that run never committed,
the half-written map store and score files it left; committed runs, records and everything
else are never touched. Rows and chunks are examined with DuckDB and store listings, so memory
stays bounded by one run's map indices (8 bytes per row). output/paths.py has the paths.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from ..deadline import step
from ..errors import PipelineError, one_line
from ..run.lock import OutputLocked
from ..storage.location import FilesystemWrapper, Location
from ..storage.redaction import redact
from .map_format import decode_maps
from .map_store import open_maps, written_indices
from .paths import (MAPS, MAPS_ARRAY, RUNS, SCORES, STAGING, is_run_id, record_name,
                     run_id_of_record, run_id_of_score_file, run_id_of_store,
                     safe_relative_path)
from .records import committed_records, read_json
from .schema import SCORES_SCHEMA, STATUS_COMPLETE
from .snapshot_check import SnapshotCheck, check_snapshot
from .verify_staging import fix_staging, staging_leftovers
from .views import duckdb_connect, register_parquet, sql_str

MAX_LISTED = 5  # example URIs / indices quoted per problem
SAMPLED_MAPS = 4  # maps per run read back to check their values, beyond chunk existence


class VerifyError(PipelineError, RuntimeError):
    """OUT cannot be verified at all (missing, unreadable); one line, no secrets."""


@dataclass(frozen=True)
class Problem:
    kind: str  # record, files, unreadable, counts, duplicates, maps, orphan, snapshot, calibration, …
    run_id: str | None
    message: str

    def line(self) -> str:
        return redact(f"{f'run {self.run_id}: ' if self.run_id else ''}{self.message}")


@dataclass
class VerifyReport:
    out: str
    runs_checked: list[str] = field(default_factory=list)
    rows_checked: int = 0
    maps_checked: int = 0
    problems: list[Problem] = field(default_factory=list)
    fixed: list[str] = field(default_factory=list)
    snapshot: SnapshotCheck = field(default_factory=lambda: SnapshotCheck("none"))

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, kind: str, run_id: str | None, message: str) -> None:
        self.problems.append(Problem(kind, run_id, message))


def verify(out: str, storage_options: Mapping[str, Any] | None = None, run_id: str | None = None,
           fix: bool = False, expiry_s: float | None = None,
           fs_wrapper: FilesystemWrapper | None = None, deep: bool = False) -> VerifyReport:
    """Check OUT (or one run of it); with ``fix``, first remove abandoned staging data; with
    ``deep``, check the snapshot against every run's rows instead of the previous snapshot."""
    loc = Location.of(out, storage_options, fs_wrapper)
    try:
        exists = loc.exists()
    except Exception as exc:  # noqa: BLE001
        raise VerifyError(one_line(f"cannot read {loc.display()}", exc)) from None
    if not exists:
        raise VerifyError(f"no such output location: {loc.display()}")
    fixed: list[str] = []
    if fix:
        try:
            fixed = fix_staging(loc, run_id, expiry_s)
        except OutputLocked as exc:
            raise VerifyError(f"not fixing: {exc}") from None
    report = VerifyReport(out=loc.display(), fixed=fixed)
    with tempfile.TemporaryDirectory(prefix="vip2scan-verify-") as workdir:
        _check(loc, report, run_id, expiry_s, workdir, deep)
    return report


# ------------------------------------------------------------------------------ checks

def _check(loc: Location, report: VerifyReport, only: str | None, expiry_s: float | None,
           workdir: str, deep: bool) -> None:
    with step("reading run records"):
        records = _records(loc, report, only)
        score_files = _score_files(loc)
        staged = set(loc.ls_names(STAGING))
    con = duckdb_connect(workdir)
    # verify runs alone: every core this process may use (a container's share, not the host's)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    con.execute(f"SET threads = {cores or 2}")
    try:
        for rid, record in records.items():
            with step(f"checking run {rid}"):
                _check_run(loc, con, report, rid, record, score_files.get(rid, []))
        unreadable = any(p.kind == "unreadable" for p in report.problems)
        if only is None and not unreadable:  # the `latest` snapshot against the runs' own rows
            with step("checking the latest snapshot"):
                report.snapshot = check_snapshot(loc, con, committed_records(loc), deep)
                for message in report.snapshot.problems:
                    report.add("snapshot", None, message)
    finally:
        con.close()
    if only is None:
        _check_calibration(loc, report)
    for rid, files in sorted(score_files.items()):
        if rid not in records and rid not in staged and only in (None, rid):
            report.add("orphan", rid, f"{len(files)} score file(s) without a run record or "
                       f"staging, e.g. {files[0]}: rows of no committed run")
    for name in loc.ls_names(MAPS):
        rid = run_id_of_store(name)
        if rid not in records and rid not in staged and only in (None, rid):
            report.add("orphan", rid, f"map store {MAPS}/{name} has no run record or staging")
    with step("looking for staging leftovers"):
        leftovers = staging_leftovers(loc, only, expiry_s)
    for left in leftovers:
        committed = "committed run; the scan's cleanup was interrupted" if left.committed \
            else "uncommitted: a rerun of the same scan would resume it"
        report.add("staging", left.run_id, f"abandoned {left.path} (last written "
                   f"{left.age_s:.0f} s ago, older than the lock expiry; {committed}); "
                   "`vip2scan verify --fix` removes it")


def _records(loc: Location, report: VerifyReport, only: str | None) -> dict[str, dict]:
    records: dict[str, dict] = {}
    for name in loc.ls_names(RUNS):
        rid = run_id_of_record(name)
        if rid is None or (only is not None and rid != only):
            continue
        record = read_json(loc, RUNS, name)
        if record is None:
            report.add("record", rid, f"{RUNS}/{name} is not a readable JSON record")
        elif record.get("run_id") != rid or not is_run_id(rid):
            report.add("record", rid, f"{RUNS}/{name} names run {record.get('run_id')!r}")
        elif record.get("status") != STATUS_COMPLETE:
            report.add("record", rid, f"record status is {record.get('status')!r}, not complete")
        else:
            records[rid] = record
    if only is not None and only not in records and not report.problems:
        report.add("record", only, f"no record {record_name(only)} (not a committed run)")
    return records


def _score_files(loc: Location) -> dict[str, list[str]]:
    """Committed-looking score files under scores/, by the run id in their name."""
    found: dict[str, list[str]] = {}
    for partition in loc.ls_names(SCORES):
        for name in loc.ls_names(SCORES, partition):
            rid = run_id_of_score_file(name)
            if rid is not None:
                found.setdefault(rid, []).append(f"{SCORES}/{partition}/{name}")
    return found


def _one_row(con: Any, sql: str) -> tuple:
    """The single row of an aggregate query, with the result drained: DuckDB refuses to
    register the next run's view on a connection holding a half-fetched result."""
    return con.execute(sql).fetchall()[0]


def _check_run(loc: Location, con: Any, report: VerifyReport, rid: str, record: dict,
               on_disk: list[str]) -> None:
    report.runs_checked.append(rid)
    files = list(record.get("files") or [])
    try:
        for name in files + [f for f in [record.get("map_store"), record.get("vanished_file")] if f]:
            safe_relative_path(name)
    except ValueError as exc:
        report.add("record", rid, f"record names a path outside OUT: {exc}")
        return
    missing = [f for f in files if not loc.exists(f)]
    if missing:
        report.add("files", rid, f"{len(missing)} score file(s) in the record are missing, "
                   f"e.g. {missing[0]}")
        return
    extra = sorted(set(on_disk) - set(files))
    if extra:
        report.add("files", rid, f"{len(extra)} score file(s) of this run are not in its record "
                   f"(readers of scores/ would count their rows twice), e.g. {extra[0]}")
    if record.get("vanished_file") and not loc.exists(record["vanished_file"]):
        report.add("files", rid, f"vanished list {record['vanished_file']} is missing")
    with step(f"reading scores of run {rid}"):
        broken = [f for f in files if not _readable_parquet(loc, f)]
    if broken:
        # Every later check reads these rows: name the files instead of failing on them.
        report.add("unreadable", rid, f"{len(broken)} score file(s) are not readable Parquet, "
                   f"e.g. {broken[0]}; the run's rows cannot be checked")
        return
    with step(f"reading scores of run {rid}"):
        register_parquet(con, "run_rows", loc, files, ["image_uri", "status", "is_anomalous",
                                                       "map_store", "map_index", "run_id"],
                         SCORES_SCHEMA)
        total, ok, failed, foreign = (int(v or 0) for v in _one_row(
            con, "SELECT count(*), count(*) FILTER (status = 'ok'), count(*) FILTER "
            f"(status = 'error'), count(*) FILTER (run_id <> {sql_str(rid)}) FROM run_rows"))
    report.rows_checked += total
    counts = record.get("counts") or {}
    expected = {"rows": (record.get("rows"), total), "counts.scored": (counts.get("scored"), ok),
                "counts.failed": (counts.get("failed"), failed),
                "counts.to_scan": (counts.get("to_scan"), total)}
    for label, (claimed, actual) in expected.items():
        if claimed is not None and int(claimed) != actual:
            report.add("counts", rid, f"{label} is {claimed} but the run has {actual} such rows")
    if ok + failed != total or foreign:
        report.add("counts", rid, f"{total - ok - failed} row(s) with an unknown status and "
                   f"{foreign} row(s) of another run_id in this run's files")
    with step(f"reading scores of run {rid}"):
        # count() OVER () counts every duplicated URI before LIMIT keeps a few to quote.
        dupes = con.execute("SELECT image_uri, count(*) OVER () FROM run_rows GROUP BY image_uri "
                            f"HAVING count(*) > 1 ORDER BY image_uri LIMIT {MAX_LISTED}").fetchall()
    if dupes:
        report.add("duplicates", rid, f"{dupes[0][1]} image_uri(s) appear more than once, e.g. "
                   + ", ".join(d[0] for d in dupes))
    with step(f"checking the maps of run {rid}"):
        _check_maps(loc, con, report, rid, record, total)


def _readable_parquet(loc: Location, rel: str) -> bool:
    """Whether ``rel`` has a Parquet footer that reads (a file of garbage has none)."""
    import pyarrow.parquet as pq
    try:
        with loc.fs.open(loc.fs_path(rel), "rb") as fh:
            pq.read_metadata(fh)
    except Exception:  # noqa: BLE001 - any failure to read is the problem to report
        return False
    return True


def _check_calibration(loc: Location, report: VerifyReport) -> None:
    """OUT's calibration.json, which every later scan of OUT reads first, must be usable."""
    from .calibration import CalibrationError, read_calibrations
    try:
        read_calibrations(loc)
    except CalibrationError as exc:
        report.add("calibration", None, f"{exc}; every scan of OUT stops on it")


def _check_maps(loc: Location, con: Any, report: VerifyReport, rid: str, record: dict,
                total: int) -> None:
    store = record.get("map_store")
    # 'anomalous': only ok rows at or above the threshold have a map; the others have a null
    # map_store and map_index, like error rows (records before it have no "maps": all).
    sparse = (record.get("maps") or {}).get("mode") == "anomalous"
    expected = "is_anomalous" if sparse else "TRUE"
    bad_rows = _one_row(
        con, "SELECT count(*) FILTER (status = 'error' AND map_index IS NOT NULL), "
        f"count(*) FILTER (map_store IS NOT NULL AND map_store <> {sql_str(store or '')}), "
        f"count(*) FILTER (status = 'ok' AND {expected} AND map_index IS NULL), "
        "count(*) FILTER ((map_store IS NULL) <> (map_index IS NULL)) FROM run_rows")
    if not store:
        return
    error_with_map, wrong_store, ok_without_index, half = (int(v or 0) for v in bad_rows)
    if error_with_map or wrong_store or ok_without_index or half:
        report.add("maps", rid, f"{error_with_map} error row(s) with a map_index, {wrong_store} "
                   f"row(s) naming another store, {ok_without_index} ok row(s) without a map "
                   f"that should have one, {half} row(s) with only one of map_store/map_index")
    indices = np.asarray(con.execute(
        "SELECT map_index FROM run_rows WHERE status = 'ok' AND map_index IS NOT NULL "
        "ORDER BY map_index").fetchnumpy()["map_index"], dtype=np.int64)
    if len(np.unique(indices)) != len(indices):
        report.add("maps", rid, "several ok rows share a map_index")
    try:
        array = open_maps(loc, store)
    except Exception as exc:  # noqa: BLE001 - any failure to open is the problem to report
        report.add("maps", rid, f"cannot open {store}: {type(exc).__name__}: {exc}")
        return
    size = int(record.get("map_size") or array.shape[-1])
    if tuple(array.shape) != (total, size, size) or tuple(array.chunks) != (1, size, size):
        report.add("maps", rid, f"{store}/{MAPS_ARRAY} has shape {tuple(array.shape)} and chunks "
                   f"{tuple(array.chunks)}; expected ({total}, {size}, {size}), one map a chunk")
    written = written_indices(array)
    report.maps_checked += len(written)
    missing = np.setdiff1d(indices, written)
    if len(missing):
        report.add("maps", rid, f"{len(missing)} ok row(s) have no written map, e.g. map_index "
                   + ", ".join(str(i) for i in missing[:MAX_LISTED]))
    orphans = np.setdiff1d(written, indices)
    if len(orphans):
        report.add("maps", rid, f"{len(orphans)} map(s) without a row pointing at them, e.g. "
                   "map_index " + ", ".join(str(i) for i in orphans[:MAX_LISTED]))
    present = np.intersect1d(indices, written)
    for index in present[np.linspace(0, len(present) - 1, min(SAMPLED_MAPS, len(present)),
                                     dtype=int)] if len(present) else []:
        values = decode_maps(np.asarray(array[int(index)]))
        if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
            report.add("maps", rid, f"map {int(index)} holds values outside [0, 1] or NaN")
