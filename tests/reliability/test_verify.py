"""`verify` finds every kind of inconsistency in an OUT tree, and `--fix` removes abandoned
staging data and nothing else.

One real scan (conftest's small_scan) is copied and damaged in a different way per test.
"""

from __future__ import annotations

import json
import os
import shutil
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from vip2scan.jobs.cli import app
from vip2scan.pipeline.output.verify import VerifyError, verify

N_GOOD, N_BROKEN = 10, 2  # conftest's small_scan lake
OLD = time.time() - 3600  # an hour ago: far beyond the 300 s lock expiry


@pytest.fixture()
def out(out_copy):
    return out_copy


def _record(out, run_id: str) -> dict:
    return json.loads((out / "runs" / f"{run_id}.json").read_text())


def _write_record(out, record: dict) -> None:
    (out / "runs" / f"{record['run_id']}.json").write_text(json.dumps(record))


def _rows(out, record: dict) -> pa.Table:
    return pa.concat_tables(pq.read_table(out / f) for f in record["files"])


def _maps(out, record: dict):
    import zarr

    return zarr.open_array(str(out / record["map_store"]), path="maps", mode="r+")


def _kinds(report) -> set[str]:
    return {p.kind for p in report.problems}


def _old_staging(out, run_id: str, scan_date: str) -> None:
    staging = out / "_staging" / run_id
    staging.mkdir(parents=True)
    (staging / "plan.json").write_text(json.dumps({"run_id": run_id, "scan_date": scan_date}))
    os.utime(staging / "plan.json", (OLD, OLD))


def test_a_fresh_scan_is_consistent(small_scan):
    report = verify(str(small_scan["out"]))
    assert report.ok, [p.line() for p in report.problems]
    assert report.runs_checked == [small_scan["run_id"]]
    assert report.rows_checked == N_GOOD + N_BROKEN and report.maps_checked == N_GOOD


def test_counts_that_do_not_match_the_rows(out, small_scan):
    record = _record(out, small_scan["run_id"])
    record["counts"]["scored"] += 1
    record["rows"] -= 1
    _write_record(out, record)
    report = verify(str(out))
    messages = " | ".join(p.line() for p in report.problems)
    assert _kinds(report) == {"counts"}
    assert "counts.scored" in messages and "rows is" in messages


def test_an_image_uri_twice_in_one_run(out, small_scan):
    record = _record(out, small_scan["run_id"])
    table = _rows(out, record)
    doubled = pa.concat_tables([table, table.slice(0, 1)])
    for f in record["files"][1:]:
        os.remove(out / f)
    pq.write_table(doubled, out / record["files"][0])
    record["files"] = record["files"][:1]
    _write_record(out, record)
    report = verify(str(out))
    dupes = [p for p in report.problems if p.kind == "duplicates"]
    assert len(dupes) == 1 and table["image_uri"][0].as_py() in dupes[0].message


def test_a_missing_map_and_a_map_without_a_row(out, small_scan):
    record = _record(out, small_scan["run_id"])
    rows = _rows(out, record).to_pylist()
    ok_index = next(r["map_index"] for r in rows if r["status"] == "ok")
    used = {r["map_index"] for r in rows if r["status"] == "ok"}
    free = next(i for i in range(len(rows)) if i not in used)  # an error row's slot
    maps = _maps(out, record)
    maps[free] = np.full(maps.shape[1:], 0.5, dtype=np.float16)
    shutil.rmtree(out / record["map_store"] / "maps" / "c" / str(ok_index))
    report = verify(str(out))
    lines = [p.line() for p in report.problems]
    assert _kinds(report) == {"maps"}, lines
    assert any(f"have no written map, e.g. map_index {ok_index}" in line for line in lines)
    assert any(f"without a row pointing at them, e.g. map_index {free}" in line for line in lines)


def test_orphan_outputs_extra_files_and_records_pointing_outside_out(out, small_scan):
    run_id = small_scan["run_id"]
    record = _record(out, run_id)
    shutil.copytree(out / record["map_store"], out / "maps" / "19990101T000000000Z-dead00.zarr")
    first = out / record["files"][0]
    shutil.copy(first, first.with_name(f"{run_id}-00042.parquet"))
    report = verify(str(out))
    lines = " | ".join(p.line() for p in report.problems)
    assert _kinds(report) == {"orphan", "files"}, lines
    assert "not in its record" in lines and "has no run record" in lines

    record["map_store"] = "../../outside.zarr"
    _write_record(out, record)
    assert "outside OUT" in " ".join(p.line() for p in verify(str(out), run_id=run_id).problems)


def test_fix_removes_abandoned_staging_and_nothing_else(out, small_scan):
    run_id, scan_date = small_scan["run_id"], small_scan["summary"].scan_date
    abandoned = "20200101T000000000Z-abc123"
    _old_staging(out, abandoned, scan_date)
    # What a crash mid-commit leaves: a map store and a half-committed score file.
    shutil.copytree(out / _record(out, run_id)["map_store"], out / "maps" / f"{abandoned}.zarr")
    partition = out / "scores" / f"scan_date={scan_date}"
    shutil.copy(next(partition.iterdir()), partition / f"{abandoned}-00000.parquet")
    _old_staging(out, run_id, scan_date)  # the committed run's staging, cleanup interrupted
    young = "20990101T000000000Z-fff000"  # a run being written right now
    (out / "_staging" / young).mkdir(parents=True)
    (out / "_staging" / young / "plan.json").write_text("{}")
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())

    report = verify(str(out))
    staging = [p for p in report.problems if p.kind == "staging"]
    assert {p.run_id for p in staging} == {abandoned, run_id}, [p.line() for p in staging]

    fixed = verify(str(out), fix=True)
    assert fixed.ok, [p.line() for p in fixed.problems]
    assert set(fixed.fixed) == {f"_staging/{abandoned}", f"_staging/{run_id}",
                                f"maps/{abandoned}.zarr",
                                f"scores/scan_date={scan_date}/{abandoned}-00000.parquet"}
    after = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    removed = set(before) - set(after)
    assert all(p.startswith((f"_staging/{abandoned}", f"_staging/{run_id}", f"maps/{abandoned}",
                             f"scores/scan_date={scan_date}/{abandoned}")) for p in removed)
    assert (out / "_staging" / young / "plan.json").exists()
    assert (out / "runs" / f"{run_id}.json").exists() and not (out / "_lock").exists()


def test_fix_refuses_while_a_scan_holds_the_lock_and_spares_the_live_run(out, small_scan):
    from vip2scan.pipeline.run.lock import Lease
    from vip2scan.pipeline.storage.location import Location

    live = "20200101T000000000Z-11ve00"
    _old_staging(out, live, small_scan["summary"].scan_date)
    lease = Lease(Location.of(str(out)), ttl_s=60).acquire()
    try:
        lease.set_run_id(live)
        assert verify(str(out)).ok  # old, but its run holds a live lease: not abandoned
        with pytest.raises(VerifyError, match="not fixing: .* is locked by run"):
            verify(str(out), fix=True, expiry_s=0)
    finally:
        lease.release()
    assert (out / "_staging" / live).exists()


def test_cli_exit_codes_and_problem_lines(out, small_scan):
    runner = CliRunner()
    clean = runner.invoke(app, ["verify", str(out)])
    assert clean.exit_code == 0 and "consistent (1 run(s)" in clean.stdout
    one = runner.invoke(app, ["verify", str(out), "--run", small_scan["run_id"]])
    assert one.exit_code == 0 and f"run {small_scan['run_id']}" in one.stdout
    _old_staging(out, "20200101T000000000Z-abc123", small_scan["summary"].scan_date)
    bad = runner.invoke(app, ["verify", str(out)])
    assert bad.exit_code == 1 and "1 problem(s)" in bad.stdout
    assert "abandoned _staging/20200101T000000000Z-abc123" in bad.stdout
    fixed = runner.invoke(app, ["verify", str(out), "--fix"])
    assert fixed.exit_code == 0, fixed.stdout
    assert "removed _staging/20200101T000000000Z-abc123" in fixed.stdout
    missing = runner.invoke(app, ["verify", str(out / "nope")])
    assert missing.exit_code == 1 and "no such output location" in missing.stderr
    unknown = runner.invoke(app, ["verify", str(out), "--run", "20000101T000000000Z-000000"])
    assert unknown.exit_code == 1 and "not a committed run" in unknown.stdout


def test_verify_and_fix_on_object_storage(small_scan, s3_server, s3_bucket):
    """The same checks over s3fs (listing-based chunk check, LastModified ages)."""
    fs = s3_server.filesystem()
    fs.put(str(small_scan["out"]), f"{s3_bucket}/out", recursive=True)
    out = f"s3://{s3_bucket}/out"
    report = verify(out, s3_server.storage_options)
    assert report.ok, [p.line() for p in report.problems]
    assert report.maps_checked == N_GOOD and report.rows_checked == N_GOOD + N_BROKEN

    abandoned = "20200101T000000000Z-abc123"
    fs.pipe_file(f"{s3_bucket}/out/_staging/{abandoned}/plan.json", b"{}")
    fs.pipe_file(f"{s3_bucket}/out/maps/{abandoned}.zarr/zarr.json", b"{}")
    assert verify(out, s3_server.storage_options).ok  # just written: not abandoned yet
    stale = verify(out, s3_server.storage_options, expiry_s=0)
    assert _kinds(stale) == {"staging"}
    fixed = verify(out, s3_server.storage_options, fix=True, expiry_s=0)
    assert fixed.ok and set(fixed.fixed) == {f"_staging/{abandoned}", f"maps/{abandoned}.zarr"}
    fs.invalidate_cache()
    assert not fs.exists(f"{s3_bucket}/out/_staging/{abandoned}")
    assert fs.exists(f"{s3_bucket}/out/runs/{small_scan['run_id']}.json")
