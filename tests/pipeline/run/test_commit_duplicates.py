"""The commit's duplicate-row safety net, made to run: staged parts that hold an object twice
(as when two holders of one run both staged it, or an engine re-delivered a batch) commit to
one row per object, and the run verifies clean.

The duplicate part is written by hand into an interrupted run's staging, each row with another
score than the original, so a commit that kept both rows (or mixed them up) shows."""

from __future__ import annotations

import io
import json
import logging
import os

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from tests.helpers.lake_files import put_files, small_png
from vip2scan.pipeline import ScanError, ScanOptions, read_scores, scan
from vip2scan.pipeline.output.paths import part_name, parts_dir
from vip2scan.pipeline.output.verify import verify

N = 8
OPTIONS = dict(engine="local", batch_size=2, stage_rows=2, map_size=16)


class StopAfter:
    """A progress callback that stops the scan once ``rows`` rows are durably staged (the
    driver calls it after staging), leaving a resumable run behind."""

    def __init__(self, rows: int):
        self.rows = rows

    def __call__(self, done: int, total: int) -> None:
        if done >= self.rows:
            raise RuntimeError(f"stopped by the test after {done} of {total} rows")


def staged_parts(out: str, run_id: str) -> list[str]:
    folder = os.path.join(out, parts_dir(run_id))
    return sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".parquet"))


def write_duplicate_part(out: str, run_id: str) -> pa.Table:
    """Copy every staged row once more into a new part, each with another score."""
    staged = pa.concat_tables(pq.read_table(p) for p in staged_parts(out, run_id))
    twin = staged.set_column(staged.schema.get_field_index("image_score"), "image_score",
                             pc.add(staged["image_score"], pa.scalar(0.25, pa.float32())))
    sink = io.BytesIO()
    pq.write_table(twin, sink)
    with open(os.path.join(out, parts_dir(run_id), part_name(999_999, "d0ub1e")), "wb") as fh:
        fh.write(sink.getvalue())
    return staged


@pytest.mark.parametrize("stop_after", [4, N], ids=["some-staged", "all-staged"])
def test_duplicate_staged_rows_commit_once(tmp_path, checkpoint, caplog, stop_after):
    """``some-staged``: the resumed run scores the rest, then commits; ``all-staged``: nothing
    is left to score, the resumed run goes straight to the commit."""
    lake, out = str(tmp_path / "lake"), str(tmp_path / "out")
    put_files(None, lake, {f"d{i % 2}/img{i}.png": small_png(i) for i in range(N)})
    with pytest.raises(ScanError, match="stopped by the test"):
        scan(lake, out, checkpoint, ScanOptions(**OPTIONS, progress=StopAfter(stop_after)))
    (run_id,) = os.listdir(os.path.join(out, "_staging"))
    original = write_duplicate_part(out, run_id)
    assert original.num_rows == stop_after  # the duplicates really are in the staging

    with caplog.at_level(logging.WARNING, logger="vip2scan.pipeline"):
        summary = scan(lake, out, checkpoint, ScanOptions(**OPTIONS))
    assert summary.resumed and summary.run_id == run_id
    assert f"staged {stop_after} duplicate rows" in caplog.text  # the safety net ran

    rows = read_scores(out).to_pylist()
    uris = [r["image_uri"] for r in rows]
    assert len(uris) == len(set(uris)) == N  # each object once
    assert summary.counts["scored"] == N and summary.counts["failed"] == 0
    # The kept row of a duplicated object is one of its two staged versions, whole (the
    # score and the time it was scored come from the same row).
    before = {r["image_uri"]: r for r in original.to_pylist()}
    for row in rows:
        if row["image_uri"] in before:
            first = before[row["image_uri"]]
            assert row["image_score"] in (pytest.approx(first["image_score"]),
                                            pytest.approx(first["image_score"] + 0.25))
    with open(os.path.join(out, "runs", f"{run_id}.json")) as fh:
        record = json.load(fh)
    assert record["rows"] == N and record["counts"]["scored"] == N
    assert not os.path.exists(os.path.join(out, "_staging", run_id))
    report = verify(out)
    assert report.ok, [p.line() for p in report.problems]
