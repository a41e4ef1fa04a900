"""Commit: rows staged durably during a run, compacted at its end, the run record last.

While a run streams, each result batch is buffered and written as a small Parquet part below
the run's staging folder: a row counts as processed once its part exists, which is what makes
a crashed run resumable. At the end the parts are compacted into a few large files in
``scores/scan_date=D/``, and ``runs/<run_id>.json`` is written last: only then is the run
visible to the next diff and to every reader (layout.py has the paths).
"""

from __future__ import annotations

import io
import os
import platform
import secrets
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .. import faults
from ..output.paths import (VANISHED_FILE, in_progress_name, is_run_score_file,
                     part_name, parts_dir, record_name, score_file_name, scores_partition,
                     staging_dir, staging_file, vanished_name)
from ..output.records import write_json
from ..storage.redaction import redact
from ..storage.retries import with_retries
from ..output.schema import RECORD_VERSION, SCORES_SCHEMA, STATUS_COMPLETE
from ..storage.location import Location

if TYPE_CHECKING:
    from .plan import Plan

ROW_GROUP_ROWS = 65_536
MAX_ROWS_PER_FILE = 1_000_000


def parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd", row_group_size=ROW_GROUP_ROWS)
    return sink.getvalue()


# --------------------------------------------------------------------------- staging

class StagingWriter:
    """Writes a run's rows as small Parquet parts to its staging folder.

    A row counts as processed once its part exists: each part is one atomic object write
    (rename locally, single PUT on S3), so a crash loses at most the rows still buffered,
    which the resumed run then processes again.
    """

    def __init__(self, out: Location, run_id: str, flush_rows: int = 2048,
                 flush_s: float = 30.0, on_flush: Callable[[int, int], None] | None = None,
                 fence: Callable[[], None] | None = None):
        self.out = out
        self.fence = fence  # raises when our lease on OUT is gone: checked before each part
        self.run_id = run_id
        self.flush_rows = max(1, flush_rows)
        self.flush_s = flush_s
        self.on_flush = on_flush
        self._tables: list[pa.Table] = []
        self._buffered_rows = 0
        self._buffered_batches = 0
        self._last_flush = time.monotonic()
        self._token = secrets.token_hex(4)
        self._seq = 0
        self.rows_staged = 0
        self.batches_staged = 0
        self.write_s = 0.0

    def add(self, table: pa.Table) -> None:
        self._tables.append(table)
        self._buffered_rows += table.num_rows
        self._buffered_batches += 1
        if self._buffered_rows >= self.flush_rows or \
                time.monotonic() - self._last_flush >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        if not self._tables:
            return
        t0 = time.perf_counter()
        table = pa.concat_tables(self._tables)
        if self.fence is not None:
            self.fence()
        self.out.write_bytes(parquet_bytes(table), parts_dir(self.run_id),
                             part_name(self._seq, self._token))
        self._seq += 1
        self.rows_staged += table.num_rows
        self.batches_staged += self._buffered_batches
        self._tables, self._buffered_rows, self._buffered_batches = [], 0, 0
        self._last_flush = time.monotonic()
        self.write_s += time.perf_counter() - t0
        if self.on_flush is not None:
            self.on_flush(self.rows_staged, self.batches_staged)


def staged_part_names(out: Location, run_id: str) -> list[str]:
    return [n for n in out.ls_names(parts_dir(run_id)) if n.endswith(".parquet")]


def iter_staged_tables(out: Location, run_id: str) -> Iterator[pa.Table]:
    for name in staged_part_names(out, run_id):
        yield pq.read_table(io.BytesIO(out.read_bytes(parts_dir(run_id), name)))


# --------------------------------------------------------------------------- compaction

@dataclass
class CommitResult:
    files: list[str]
    rows: int
    ok: int
    failed: int


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


def commit_parts(out: Location, run_id: str, scan_date: str,
                 max_rows_per_file: int = MAX_ROWS_PER_FILE, dedupe: bool = False,
                 fence: Callable[[], None] | None = None) -> CommitResult:
    """Compact the staged parts into the run's score files of ``scan_date``'s partition.

    File names are deterministic, so a commit interrupted and repeated overwrites instead of
    duplicating. ``dedupe`` keeps only the first row per image_uri (holds the run's URIs in
    memory). ``fence`` is called before each file is published (it raises to stop).
    """
    partition = scores_partition(scan_date)
    files = _ScoreFiles(out, run_id, partition, max_rows_per_file, fence)
    rows = ok = 0
    seen: set[str] = set()
    try:
        # A local disk that fills up (or turns read-only) mid-commit is one line naming the
        # partition; the half-written file is removed and no record is written.
        with out.refusals_named(out.fs_path(partition)):
            for table in iter_staged_tables(out, run_id):
                table = table.cast(SCORES_SCHEMA)
                if dedupe:
                    table = _first_rows_only(table, seen)
                files.write(table)
                rows += table.num_rows
                ok += int(pc.sum(pc.equal(table["status"], "ok")).as_py() or 0)
            files.close_file()
    finally:
        files.cleanup()
    # Remove files a previous, larger attempt of this commit may have left beyond ours.
    for name in out.ls_names(partition):
        if is_run_score_file(name, run_id) and f"{partition}/{name}" not in files.files:
            out.remove(partition, name)
    return CommitResult(files=files.files, rows=rows, ok=ok, failed=rows - ok)


# --------------------------------------------------------------------------- the record

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
        "map_size": plan.map_size,
        # which rows have a map, its dtype and the shard size (pipeline/output/map_format.py)
        "maps": {"mode": plan.maps_mode if plan.map_store else "none", "dtype": plan.map_dtype,
                 "maps_per_shard": plan.maps_per_shard},
        "image_size": image_size,
        "image_threshold": plan.image_threshold,
        "pixel_threshold": plan.pixel_threshold,
        "threshold_source": plan.threshold_source,  # where image_threshold came from
        "image_thresholds": plan.image_thresholds,  # per URI prefix (label-free, --by)
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
