"""The incremental diff and the commit, on hand-made runs (no Ray, no model)."""

from __future__ import annotations

import datetime as dt
import os

import pyarrow as pa
import pyarrow.parquet as pq

from vip2scan.pipeline.run.publish import commit_parts
from vip2scan.pipeline.run.staging import StagingWriter
from vip2scan.pipeline.selection.diff import diff_listing
from vip2scan.pipeline.selection.listing import ObjectFilter
from vip2scan.pipeline.output.records import committed_records, write_json
from vip2scan.pipeline.output.schema import (MANIFEST_SCHEMA, SCHEMA_VERSION, SCORES_SCHEMA,
                                      STATUS_COMPLETE, scores_table)
from vip2scan.pipeline.storage.location import Location

SRC = "file:///lake"
T0 = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)
T1 = dt.datetime(2025, 1, 2, tzinfo=dt.timezone.utc)


def _listing(path, rows):
    pq.write_table(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), path)
    return path


def _commit_run(out: Location, run_id: str, rows: list[dict], started: str,
                vanished: list[str] = (), source: str = SRC, model_id: str = "m1"):
    table = scores_table(pa.Table.from_pylist(rows), run_id=run_id, model_id=model_id,
                         scanned_at=T1, map_store=None)
    writer = StagingWriter(out, run_id)
    writer.add(table)
    writer.flush()
    result = commit_parts(out, run_id, "2025-01-02")
    vanished_file = None
    if vanished:
        vanished_file = f"runs/{run_id}.vanished.parquet"
        pq.write_table(pa.table({"image_uri": list(vanished), "run_id": [run_id] * len(vanished)}),
                       out.fs_path(vanished_file))
    write_json(out, {"run_id": run_id, "status": STATUS_COMPLETE, "source": source,
                     "model_id": model_id, "started_at": started, "files": result.files,
                     "vanished_file": vanished_file}, "runs", f"{run_id}.json")


def _row(name, size=10, etag=None, mtime=T0, status="ok"):
    return {"image_uri": f"{SRC}/{name}", "size_bytes": size, "etag": etag, "mtime": mtime,
            "status": status, "error": "bad" if status == "error" else "", "map_index": 0}


def test_diff_new_changed_unchanged_vanished_retry_and_limit(tmp_path):
    out = Location.of(str(tmp_path / "out"))
    _commit_run(out, "r1", [_row("a.png"), _row("b.png"), _row("c.png", etag="e1"),
                            _row("d.png", status="error"), _row("gone.png"), _row("old.png")],
                started="2025-01-01T00:00:00")
    # a later run saw old.png vanish: it must not be counted as vanished again
    _commit_run(out, "r2", [_row("b.png", size=11)], started="2025-01-02T00:00:00",
                vanished=[f"{SRC}/old.png"])
    _commit_run(out, "other-model", [_row("z.png")], started="2025-01-03", model_id="m2")
    previous = [r for r in committed_records(out) if r.get("source") == SRC and r.get("model_id") == "m1"]
    assert [r["run_id"] for r in previous] == ["r1", "r2"]

    listing = _listing(str(tmp_path / "l.parquet"), [
        {"image_uri": f"{SRC}/a.png", "size_bytes": 10, "etag": None, "mtime": T0},  # unchanged
        {"image_uri": f"{SRC}/b.png", "size_bytes": 11, "etag": None, "mtime": T0},  # as in r2
        {"image_uri": f"{SRC}/c.png", "size_bytes": 99, "etag": "e1", "mtime": T1},  # same etag
        {"image_uri": f"{SRC}/d.png", "size_bytes": 10, "etag": None, "mtime": T0},  # error before
        {"image_uri": f"{SRC}/e.png", "size_bytes": 10, "etag": None, "mtime": T0},  # new
        {"image_uri": f"{SRC}/a2.png", "size_bytes": 10, "etag": None, "mtime": T1},  # new
        {"image_uri": f"{SRC}/z.png", "size_bytes": 10, "etag": None, "mtime": T0},  # other model
        {"image_uri": f"{SRC}/e.png", "size_bytes": 10, "etag": None, "mtime": T0},  # duplicate
    ])
    work = tmp_path / "w"
    work.mkdir()
    result = diff_listing(listing, out, previous, str(work), ObjectFilter(), SRC, "r3")
    counts = result.counts
    assert (counts.listed, counts.new, counts.changed, counts.unchanged, counts.vanished) == \
        (7, 3, 0, 4, 1)
    todo = pq.read_table(result.todo_path).to_pylist()
    assert [r["image_uri"].rsplit("/", 1)[1] for r in todo] == ["a2.png", "e.png", "z.png"]
    assert [r["map_index"] for r in todo] == [0, 1, 2]
    assert pq.read_table(result.vanished_path)["image_uri"].to_pylist() == [f"{SRC}/gone.png"]

    # changed size (no etag) -> changed; --retry-errors picks up d.png; --limit caps
    os.remove(listing)
    _listing(listing, [{"image_uri": f"{SRC}/a.png", "size_bytes": 12, "etag": None, "mtime": T0},
                       {"image_uri": f"{SRC}/d.png", "size_bytes": 10, "etag": None, "mtime": T0},
                       {"image_uri": f"{SRC}/e.png", "size_bytes": 1, "etag": None, "mtime": T0}])
    work2 = tmp_path / "w2"
    work2.mkdir()
    result = diff_listing(listing, out, previous, str(work2), ObjectFilter(), SRC, "r4",
                          retry_errors=True, limit=2)
    c = result.counts
    assert (c.changed, c.retried, c.new, c.to_scan, c.deferred) == (1, 1, 1, 2, 1)
    assert c.vanished == 3  # b, c, gone (old.png vanished earlier)


def test_commit_compacts_parts_into_few_files_with_schema_version(tmp_path):
    out = Location.of(str(tmp_path / "out"))
    writer = StagingWriter(out, "run9", flush_rows=3)
    for i in range(10):
        writer.add(scores_table(pa.Table.from_pylist([_row(f"{i}.png")]), run_id="run9",
                                model_id="m", scanned_at=T1, map_store="maps/run9.zarr"))
    writer.flush()
    assert writer.rows_staged == 10 and len(os.listdir(out.fs_path("_staging/run9/parts"))) == 4
    first = commit_parts(out, "run9", "2025-01-02", max_rows_per_file=4)
    again = commit_parts(out, "run9", "2025-01-02", max_rows_per_file=4)  # a repeated commit
    assert first.files == again.files and len(first.files) == 3
    part_dir = out.fs_path("scores/scan_date=2025-01-02")
    assert sorted(os.listdir(part_dir)) == [f"run9-0000{i}.parquet" for i in range(3)]
    table = pq.read_table(part_dir)
    assert table.num_rows == 10
    meta = pq.read_schema(os.path.join(part_dir, "run9-00000.parquet")).metadata
    assert meta[b"vip2scan.schema_version"] == SCHEMA_VERSION.encode()
    assert pq.read_schema(os.path.join(part_dir, "run9-00000.parquet")).remove_metadata() == \
        SCORES_SCHEMA.remove_metadata()


def test_diff_counts_what_the_last_runs_other_model_scored_as_rescored(tmp_path):
    """An OUT without a snapshot (runs of an older version): the window over that model's runs."""
    from vip2scan.pipeline.selection.diff import ModelChange

    out = Location.of(str(tmp_path / "out"))
    _commit_run(out, "r1", [_row("a.png"), _row("b.png")], started="2025-01-01T00:00:00")
    listing = _listing(str(tmp_path / "l.parquet"), [
        {"image_uri": f"{SRC}/{name}", "size_bytes": 10, "etag": None, "mtime": T0}
        for name in ("a.png", "b.png", "c.png")])
    work = tmp_path / "w"
    work.mkdir()
    change = ModelChange("r1", "m1", committed_records(out))
    result = diff_listing(listing, out, [], str(work), ObjectFilter(), SRC, "r2", model_id="m2",
                          changed_from=change)
    assert (result.counts.new, result.rescored) == (3, 2)  # c.png is new to the lake itself
