"""Publishing a run: its staged parts compacted into score files, then the ``latest`` snapshot,
then the run record, last.

The order is what makes a commit atomic to readers: the record is what makes a run (and its
snapshot) visible, so a crash before it leaves a resumable run and files nobody reads. Score
file names are deterministic, so a repeated commit overwrites instead of duplicating.
:func:`write_score_files` takes any stream of score tables (the scan's staged parts, or the
bench's fabricated nights), so everything that commits runs goes through the same steps:
``write_score_files`` -> ``output.snapshot.commit_snapshot`` -> ``publish_record``.
"""

from __future__ import annotations

import os
import platform
import shutil
import socket
import tempfile
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .. import faults
from ..output.paths import (VANISHED_FILE, in_progress_name, is_run_score_file, record_name,
                            score_file_name, scores_partition, staging_dir, staging_file,
                            vanished_name)
from ..output.records import write_json
from ..output.schema import RECORD_VERSION, SCORES_SCHEMA, STATUS_COMPLETE
from ..storage.location import Location
from ..storage.redaction import redact
from ..storage.retries import with_retries
from .staging import ROW_GROUP_ROWS, iter_staged_tables

if TYPE_CHECKING:
    from .plan import Plan

MAX_ROWS_PER_FILE = 1_000_000


@dataclass
class CommitResult:
    files: list[str]
    rows: int
    ok: int
    failed: int
    flagged: int = 0  # ok rows at or above the image threshold (is_anomalous)


class _ScoreFiles:
    """Writes a partition's score files for one run in turn; each appears whole or not at all
    (a rename locally, one retried upload on object stores)."""

    def __init__(self, out: Location, run_id: str, partition: str, max_rows_per_file: int,
                 fence: Callable[[], None] | None = None):
        self.out, self.run_id, self.partition = out, run_id, partition
        self.fence = fence  # raises when our lease on OUT is gone: checked before each file
        self.max_rows = max_rows_per_file
        self.files: list[str] = []
        self._writer: pq.ParquetWriter | None = None
        self._sink: Any = None
        self._final_path = self._tmp_path = ""
        self._rows_in_file = 0
        self._tmp_dir: str | None = None

    def write(self, table: pa.Table) -> None:
        start = 0
        while start < table.num_rows:
            if self._writer is None:
                self._open()
            take = min(table.num_rows - start, self.max_rows - self._rows_in_file)
            self._writer.write_table(table.slice(start, take),  # type: ignore[union-attr]
                                     row_group_size=ROW_GROUP_ROWS)
            self._rows_in_file += take
            start += take
            if self._rows_in_file >= self.max_rows:
                self.close_file()

    def _open(self) -> None:
        name = score_file_name(self.run_id, len(self.files))
        self._final_path = self.out.fs_path(self.partition, name)
        self.files.append(f"{self.partition}/{name}")
        if self.out.is_local:
            os.makedirs(os.path.dirname(self._final_path), exist_ok=True)
            self._tmp_path = os.path.join(os.path.dirname(self._final_path), in_progress_name(name))
        else:
            # Written locally first, then uploaded in one retried put: a failed or throttled
            # upload is simply repeated, where a half-streamed multipart upload could not be.
            if self._tmp_dir is None:
                self._tmp_dir = tempfile.mkdtemp(prefix="vip2scan-commit-")
            self._tmp_path = os.path.join(self._tmp_dir, name)
        self._sink = open(self._tmp_path, "wb")
        self._writer = pq.ParquetWriter(self._sink, SCORES_SCHEMA, compression="zstd")
        self._rows_in_file = 0

    def close_file(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        self._sink.flush()
        os.fsync(self._sink.fileno())
        self._sink.close()
        if self.fence is not None:
            self.fence()
        if self.out.is_local:
            os.replace(self._tmp_path, self._final_path)
        else:
            try:
                with_retries(self.out.fs.put_file, self._tmp_path, self._final_path)
            finally:
                os.remove(self._tmp_path)
        self._writer, self._sink = None, None
        faults.driver_point("score_file")

    def cleanup(self) -> None:
        """Drop what a failed commit left half-written (a full disk, a lost lease)."""
        if self._writer is not None:
            for close in (self._writer.close, self._sink.close):
                try:
                    close()
                except Exception:  # noqa: BLE001 - the write already failed; tidy up only
                    pass
            if self.out.is_local and self._tmp_path:
                try:
                    os.remove(self._tmp_path)
                except OSError:
                    pass
            self._writer, self._sink = None, None
        if self._tmp_dir is not None:
            shutil.rmtree(self._tmp_dir, ignore_errors=True)


def _first_rows_only(table: pa.Table, seen: set[str]) -> pa.Table:
    keep = []
    for uri in table["image_uri"].to_pylist():
        keep.append(uri not in seen)
        seen.add(uri)
    return table.filter(pa.array(keep))


def write_score_files(out: Location, run_id: str, scan_date: str, tables: Iterable[pa.Table],
                      max_rows_per_file: int = MAX_ROWS_PER_FILE, dedupe: bool = False,
                      fence: Callable[[], None] | None = None) -> CommitResult:
    """Write ``tables`` (score rows) as the run's score files of ``scan_date``'s partition.

    File names are deterministic, so a commit interrupted and repeated overwrites instead of
    duplicating, and files a previous, larger attempt left beyond ours are removed. ``dedupe``
    keeps only the first row per image_uri (holds the run's URIs in memory). ``fence`` is
    called before each file is published (it raises to stop).
    """
    partition = scores_partition(scan_date)
    files = _ScoreFiles(out, run_id, partition, max_rows_per_file, fence)
    rows = ok = flagged = 0
    seen: set[str] = set()
    try:
        # A local disk that fills up (or turns read-only) mid-commit is one line naming the
        # partition; the half-written file is removed and no record is written.
        with out.refusals_named(out.fs_path(partition)):
            for table in tables:
                table = table.cast(SCORES_SCHEMA)
                if dedupe:
                    table = _first_rows_only(table, seen)
                files.write(table)
                rows += table.num_rows
                ok += int(pc.sum(pc.equal(table["status"], "ok")).as_py() or 0)
                flagged += int(pc.sum(table["is_anomalous"].cast(pa.int64())).as_py() or 0)
            files.close_file()
    finally:
        files.cleanup()
    for name in out.ls_names(partition):
        if is_run_score_file(name, run_id) and f"{partition}/{name}" not in files.files:
            out.remove(partition, name)
    return CommitResult(files=files.files, rows=rows, ok=ok, failed=rows - ok, flagged=flagged)


def commit_parts(out: Location, run_id: str, scan_date: str,
                 max_rows_per_file: int = MAX_ROWS_PER_FILE, dedupe: bool = False,
                 fence: Callable[[], None] | None = None) -> CommitResult:
    """Compact the run's staged parts into its score files (:func:`write_score_files`)."""
    return write_score_files(out, run_id, scan_date, iter_staged_tables(out, run_id),
                             max_rows_per_file, dedupe, fence)


def publish_vanished(out: Location, run_id: str) -> str:
    """Copy the run's staged vanished list to where its record points; returns that name."""
    name = vanished_name(run_id)
    out.write_bytes(out.read_bytes(staging_file(run_id, VANISHED_FILE)), name)
    return name


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in ("vip2scan", "torch", "ray", "pyarrow", "zarr"):
        try:
            module = __import__(name)
            found[name] = str(getattr(module, "__version__", "?"))
        except Exception:  # noqa: BLE001
            pass
    return found


def run_record(plan: "Plan", out: Location, result: CommitResult, *, checkpoint: str,
               finished_at: str, counts: dict[str, int], image_size: int,
               vanished_file: str | None, wall_s: float, images_per_s: float,
               stage_s: dict[str, float], io_counts: dict[str, Any],
               inference_started: bool) -> dict[str, Any]:
    return {
        "record_version": RECORD_VERSION,
        "run_id": plan.run_id,
        "status": STATUS_COMPLETE,
        "source": plan.source,
        "out": out.display(),
        "model_id": plan.model_id,
        "checkpoint": redact(checkpoint),
        "scan_date": plan.scan_date,
        "started_at": plan.started_at,
        "finished_at": finished_at,
        "attempts": plan.attempts,
        "counts": counts,
        "rows": result.rows,
        "wall_s": round(wall_s, 3),
        "images_per_s": round(images_per_s, 3),
        "stage_s": {k: round(v, 4) for k, v in stage_s.items()},
        "io": io_counts,
        "inference_started": inference_started,
        "files": result.files,
        "map_store": plan.map_store,
        "map_size": plan.map_spec.map_size,
        # which rows have a map, its dtype and the shard size (pipeline/output/map_format.py)
        "maps": {"mode": plan.map_spec.maps if plan.map_store else "none",
                 "dtype": plan.map_spec.map_dtype, "maps_per_shard": plan.map_spec.maps_per_shard},
        "image_size": image_size,
        "image_threshold": plan.thresholds.image_threshold,
        "pixel_threshold": plan.thresholds.pixel_threshold,
        "threshold_source": plan.thresholds.threshold_source,  # where image_threshold came from
        "image_thresholds": plan.thresholds.image_thresholds,  # per URI prefix (label-free, --by)
        "vanished_file": vanished_file,
        "config": plan.config,
        "host": socket.gethostname(),
        "versions": versions(),
    }


def publish_record(out: Location, record: dict[str, Any]) -> None:
    """Write the run record, then drop the run's staging. The record is written last: it is
    what makes the run visible as complete, and a crash before it leaves a resumable run."""
    write_json(out, record, record_name(record["run_id"]))
    faults.driver_point("record")
    out.remove(staging_dir(record["run_id"]), recursive=True)
