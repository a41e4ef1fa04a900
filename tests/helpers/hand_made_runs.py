"""Runs committed by hand, the way a scan commits them (score files, vanished list, the
`latest` snapshot, the record last), without Ray or a model: OUTs for the snapshot, diff and
reader tests, on local files or moto S3."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa

from vip2scan.pipeline.output.records import write_json
from vip2scan.pipeline.output.schema import STATUS_COMPLETE, scores_table
from vip2scan.pipeline.output.snapshot import commit_snapshot
from vip2scan.pipeline.run.publish import commit_parts
from vip2scan.pipeline.run.staging import StagingWriter, parquet_bytes
from vip2scan.pipeline.storage.location import Location

LAKE = "file:///lake"
T0 = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)


def at(day: int, minute: int = 0) -> dt.datetime:
    return T0 + dt.timedelta(days=day, minutes=minute)


class Night:
    """Commits hand-made runs the way scan.commit_run does: score files, vanished list,
    snapshot, record last."""

    def __init__(self, out: Location):
        self.out = out
        self.seq = 0

    def commit(self, day: int, model: str, rows: dict[str, int], vanished: list[str] = (),
               source: str = LAKE, started: dt.datetime | None = None,
               write_record: bool = True, resumed: bool = False) -> dict:
        """``rows``: object name -> size (status 'error' when the size is negative)."""
        self.seq += 1
        started = started or at(day)
        run_id = f"{started:%Y%m%dT%H%M%S}000Z-{self.seq:06d}"
        table = pa.Table.from_pylist([
            {"image_uri": f"{LAKE}/{name}", "size_bytes": abs(size), "etag": None,
             "mtime": T0, "status": "ok" if size >= 0 else "error", "image_score": 0.1,
             "error": None if size >= 0 else "bad", "map_index": i}
            for i, (name, size) in enumerate(sorted(rows.items()))]) if rows else None
        if table is not None and not resumed:  # a resumed run's rows are staged already
            writer = StagingWriter(self.out, run_id)
            writer.add(scores_table(table, run_id=run_id, model_id=model,
                                    scanned_at=started + dt.timedelta(seconds=30),
                                    map_store=None))
            writer.flush()
        result = commit_parts(self.out, run_id, f"{started:%Y-%m-%d}")
        vanished_file = None
        if vanished:
            vanished_file = f"runs/{run_id}.vanished.parquet"
            uris = [f"{LAKE}/{name}" for name in vanished]
            self.out.write_bytes(parquet_bytes(pa.table(
                {"image_uri": uris, "run_id": [run_id] * len(uris)})), vanished_file)
        run = {"run_id": run_id, "model_id": model, "started_at": started.isoformat(),
               "files": result.files, "vanished_file": vanished_file}
        latest = commit_snapshot(self.out, run)
        if write_record:
            write_json(self.out, {**run, "status": STATUS_COMPLETE, "source": source,
                                  "scan_date": f"{started:%Y-%m-%d}", "rows": result.rows,
                                  "counts": {"vanished": len(vanished), "scored": result.ok},
                                  "latest": latest}, "runs", f"{run_id}.json")
        return latest
