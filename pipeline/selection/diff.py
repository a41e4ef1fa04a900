"""What a run scans: the listing (or a manifest) against the previous runs of the model.

An object's state is keyed by its URI and the model: the latest row any complete run of the
same model_id wrote for that URI, whatever prefix that run was started with. So scanning
``s3://lake/line1/`` into an OUT that already holds a scan of ``s3://lake/`` rescores only what
is new or changed under line1, and the next scan of the parent does not rescore what the
sub-prefix scan scored. Only objects under the scanned prefix that pass this run's selection
can be found vanished: a sub-prefix scan never deletes its siblings from ``latest``.

The latest state is read from the ``latest`` snapshot the newest commit wrote (snapshot.py: the
model's newest row per URI, sorted by URI), or, in an OUT without one, windowed over the
related runs' rows and vanished lists. The diff is DuckDB over Parquet: the new listing vs.
that state, spilling to local disk, so a lake of tens of millions of objects diffs in bounded memory. Its result is a
work list sorted by URI with a fixed ``map_index`` per row, and the list of URIs that vanished.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import ScanError, one_line
from ..output.records import committed_records
from ..output.schema import SCORES_SCHEMA, VANISHED_SCHEMA
from ..output.snapshot_ref import SNAPSHOT_SCHEMA, Snapshot, current_snapshot
from ..output.views import duckdb_connect, register_parquet, sql_str
from ..specs import SelectionSpec
from ..storage.arrow_fs import with_native_read_retries
from ..storage.location import Location
from ..storage.retries import with_retries
from .keyfilter import keys_kept
from .listing import ListingTally, ObjectFilter, list_prefix
from .manifest import read_manifest

log = logging.getLogger(__name__)


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
    skipped: int = 0  # selected but without an image suffix (by suffix: DiffResult)
    excluded: int = 0  # left out by --include/--exclude

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class DiffResult:
    todo_path: str  # local Parquet: image_uri, size_bytes, etag, mtime, map_index, reason
    vanished_path: str  # local Parquet: image_uri, run_id
    counts: DiffCounts
    skipped_by_suffix: dict[str, int] = field(default_factory=dict)  # '.gif' -> 3, '(none)' -> 1
    warnings: list[str] = field(default_factory=list)  # e.g. the selection is empty
    rescored: int = 0  # new for this model but scored by the last run's (another) model


def list_and_diff(src: Location, out: Location, selection: SelectionSpec,
                  manifest: Location | None, model_id: str, run_id: str, workdir: str) -> DiffResult:
    """List the source (or read ``manifest``, the opened ``selection.manifest``) into
    ``workdir`` and diff it against the previous complete runs of this model that can hold
    objects of this source."""
    manifest_path = os.path.join(workdir, "listing.parquet")
    object_filter = selection.object_filter()
    try:
        if manifest is not None:
            tally = read_manifest(manifest, src, manifest_path, object_filter, out=out,
                                  any_source=selection.manifest_any_source)
        else:
            # A listing that fails midway on a transient error starts over (it rewrites the
            # manifest from scratch, so a repeat is harmless); on S3 the client retries each
            # page request instead, and a listing is not repeated on top (retries.py).
            tally = with_retries(list_prefix, src, manifest_path, object_filter, fs=src.fs)
    except ScanError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise ScanError(one_line(f"cannot list {src.display()}", exc)) from None
    records = committed_records(out)
    snapshot = current_snapshot(records)
    previous = [] if snapshot is not None else \
        state_runs(out, src.uri, model_id, manifest is not None)
    last = last_related_run(records, src.uri, manifest is not None)
    changed_from = None
    if last is not None and last.get("model_id") and last["model_id"] != model_id:
        changed_from = ModelChange(str(last["run_id"]), str(last["model_id"]), [] if snapshot else [
            r for r in records if r.get("model_id") == last["model_id"]
            and is_related(r, src.uri, manifest is not None)])
    result = diff_listing(manifest_path, out, previous, workdir, object_filter,
                          src.uri, run_id, full=selection.full,
                          retry_errors=selection.retry_errors, limit=selection.limit,
                          snapshot=snapshot, model_id=model_id,
                          listed_under_source=manifest is None, changed_from=changed_from)
    result.counts.skipped, result.counts.excluded = tally.skipped_total, tally.excluded
    result.skipped_by_suffix = dict(sorted(tally.skipped.items(), key=lambda kv: (-kv[1], kv[0])))
    result.warnings = selection_warnings(tally, src, manifest)
    if changed_from is not None:
        result.warnings.insert(0, model_change_warning(changed_from, model_id,
                                                       result.rescored))
    for warning in result.warnings:
        log.warning("warning: %s", warning)
    return result


@dataclass(frozen=True)
class ModelChange:
    """The newest committed run of this source, when it scored with another model."""

    run_id: str
    model_id: str
    runs: list[dict[str, Any]]  # that model's related runs (their rows, without a snapshot)


def last_related_run(records: list[dict[str, Any]], source_uri: str, with_manifest: bool
                     ) -> dict[str, Any] | None:
    """The newest complete run whose rows can be objects of ``source_uri``, of any model."""
    related = [r for r in records if is_related(r, source_uri, with_manifest)]
    return related[-1] if related else None


def model_change_warning(change: ModelChange, model_id: str, rescored: int) -> str:
    """One line: the model differs from the last run's, and what that costs."""
    return (f"model changed since the last run ({change.run_id}): {change.model_id} -> "
            f"{model_id}; {rescored} object(s) scored by {change.model_id} count as new for "
            "this model and are rescored")


def is_related(record: dict[str, Any], source_uri: str, with_manifest: bool) -> bool:
    """Whether a run's rows can be objects of ``source_uri``: a run of this prefix, of a
    parent or of a sub-prefix of it, or a run that read a manifest (its URIs may lie
    anywhere)."""
    ours = source_uri.rstrip("/") + "/"
    theirs = str(record.get("source") or "").rstrip("/") + "/"
    manifest_run = bool((record.get("config") or {}).get("manifest"))
    return with_manifest or manifest_run or ours.startswith(theirs) or theirs.startswith(ours)


def state_runs(out: Location, source_uri: str, model_id: str, with_manifest: bool
               ) -> list[dict[str, Any]]:
    """The complete runs of ``model_id`` whose rows can be objects of ``source_uri``, oldest
    first: runs of this prefix, of a parent or of a sub-prefix of it, and runs that read a
    manifest (its URIs may lie anywhere). Runs of disjoint prefixes are left out so that a
    shared OUT does not make each line's diff read every other line's rows."""
    return [r for r in committed_records(out)
            if r.get("model_id") == model_id and is_related(r, source_uri, with_manifest)]


def selection_warnings(tally: ListingTally, src: Location, manifest: Location | None
                       ) -> list[str]:
    """A warning when nothing was selected: an empty prefix, or filters that keep nothing."""
    where = f"manifest {manifest.display()}" if manifest is not None else src.display()
    if tally.seen == 0:
        return [f"nothing to scan: {where} holds no objects (check the prefix)"]
    if tally.kept:
        return []
    why = []
    if tally.excluded:
        why.append(f"{tally.excluded} left out by --include/--exclude")
    if tally.skipped:
        shown = ", ".join(f"{k} {n}" for k, n in sorted(tally.skipped.items(),
                                                         key=lambda kv: (-kv[1], kv[0]))[:5])
        why.append(f"{tally.skipped_total} without an image suffix ({shown}; "
                   "add formats with --suffixes)")
    return [f"nothing selected: {where} holds {tally.seen} object(s), {'; '.join(why)}"]


def iter_todo(todo_path: str) -> Iterator[tuple[str, str]]:
    """(reason, image_uri) of each object of a work list, in URI order, a batch at a time."""
    for batch in pq.ParquetFile(todo_path).iter_batches(batch_size=10_000,
                                                        columns=["reason", "image_uri"]):
        yield from zip(batch.column(0).to_pylist(), batch.column(1).to_pylist())


def diff_listing(manifest_path: str, out: Location, previous: list[dict[str, Any]],
                 workdir: str, object_filter: ObjectFilter, source_uri: str, run_id: str, *,
                 full: bool = False, retry_errors: bool = False, limit: int | None = None,
                 snapshot: Snapshot | None = None, model_id: str = "",
                 listed_under_source: bool = False,
                 changed_from: ModelChange | None = None) -> DiffResult:
    """Anti-join the new listing against the latest state per URI: ``snapshot``'s rows of
    ``model_id`` when given, else a window over ``previous`` runs' rows and vanished lists.
    ``listed_under_source``: every listed URI lies under ``source_uri`` (no manifest), so
    only that range of the snapshot is read. ``changed_from``: the last run's other model,
    whose objects new to this one are counted as ``rescored``."""
    con = duckdb_connect(workdir)
    con.execute("CREATE OR REPLACE TEMP VIEW listing AS SELECT image_uri, any_value(size_bytes) "
                "AS size_bytes, any_value(etag) AS etag, any_value(mtime) AS mtime "
                f"FROM read_parquet({sql_str(manifest_path)}) GROUP BY image_uri")
    if snapshot is not None:
        _state_from_snapshot(con, out, snapshot, model_id,
                             source_uri if listed_under_source else None)
    else:
        _state_from_runs(con, out, previous)
    result = _classify(con, workdir, object_filter, source_uri, run_id, full=full,
                       retry_errors=retry_errors, limit=limit)
    if changed_from is not None:
        result.rescored = _count_rescored(con, out, snapshot, changed_from)
    con.close()
    return result


def _count_rescored(con: Any, out: Location, snapshot: Snapshot | None,
                    change: ModelChange) -> int:
    """Listed objects new to this model that the other model has rows for."""
    if snapshot is not None:
        known = f"SELECT image_uri FROM snap WHERE state AND model_id = {sql_str(change.model_id)}"
    else:
        register_parquet(con, "other_scores", out, [f for r in change.runs for f in r.get("files", [])],
                         ["image_uri"], SCORES_SCHEMA)
        known = "SELECT image_uri FROM other_scores"
    return int(con.execute(f"SELECT count(*) FROM classified WHERE reason = 'new' AND image_uri IN "
                           f"({known})").fetchone()[0])


def _state_from_snapshot(con: Any, out: Location, snapshot: Snapshot, model_id: str,
                         source_uri: str | None) -> None:
    """``prev``: the model's rows of the snapshot (vanished objects are not in it; the window
    below marks them 'vanished', which counts the same), optionally only under the source
    (a sorted snapshot lets the reader skip the rest of the lake's row groups)."""
    register_parquet(con, "snap", out, list(snapshot.files),
                     ["image_uri", "etag", "size_bytes", "mtime", "status", "model_id", "state"],
                     SNAPSHOT_SCHEMA)
    where = f"state AND model_id = {sql_str(model_id)}"
    if source_uri is not None:
        root = source_uri.rstrip("/") + "/"
        # Every URI starting with root sorts in [root, root with its '/' raised to '0').
        where += f" AND image_uri >= {sql_str(root)} AND image_uri < {sql_str(root[:-1] + '0')}"
    con.execute("CREATE TEMP TABLE prev AS SELECT image_uri, etag, size_bytes, mtime, status "
                f"FROM snap WHERE {where}")


def _state_from_runs(con: Any, out: Location, previous: list[dict[str, Any]]) -> None:
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


def _classify(con: Any, workdir: str, object_filter: ObjectFilter, source_uri: str,
              run_id: str, *, full: bool, retry_errors: bool, limit: int | None) -> DiffResult:
    """The work list and the vanished list from ``listing`` against ``prev``."""
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
    # (an object outside the current include/exclude filters has not vanished). A stream
    # cannot resume mid-way: a transient read failure writes the file again.
    vanished_path = os.path.join(workdir, "vanished.parquet")
    counts.vanished = with_native_read_retries(_write_vanished, con, vanished_path, source_uri,
                                               object_filter, run_id)
    return DiffResult(todo_path=todo_path, vanished_path=vanished_path, counts=counts)


def _write_vanished(con: Any, path: str, source_uri: str, object_filter: ObjectFilter,
                    run_id: str) -> int:
    """Write the ``prev`` URIs the listing no longer has to ``path``; returns how many."""
    root = source_uri.rstrip("/") + "/"
    vanished = 0
    writer = pq.ParquetWriter(path, VANISHED_SCHEMA)
    reader = con.sql("SELECT p.image_uri FROM prev p ANTI JOIN listing l USING (image_uri) "
                     "WHERE p.status <> 'vanished' ORDER BY p.image_uri").to_arrow_reader(50_000)
    for batch in reader:
        under = batch.column(0).filter(pc.starts_with(batch.column(0), root))
        uris = under.filter(keys_kept(object_filter, pc.utf8_slice_codeunits(under, len(root))))
        uris = uris.cast(pa.string())
        vanished += len(uris)
        writer.write_table(pa.table({"image_uri": uris, "run_id": [run_id] * len(uris)},
                                    schema=VANISHED_SCHEMA))
    writer.close()
    return vanished
