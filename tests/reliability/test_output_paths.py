"""Paths read back from OUT (run ids, score files, map stores) cannot steer a reader or writer
outside OUT: a doctored record is ignored by every reader and reported by verify, and a row
naming a map store outside OUT is refused."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from vip2scan.jobs.cli import app
from vip2scan.pipeline import read_map, read_scores
from vip2scan.pipeline.output.verify import verify


def _files_outside(root, inside) -> set[str]:
    return {str(p) for p in root.rglob("*") if inside not in p.parents and p != inside}


def test_a_doctored_record_cannot_make_report_write_outside_out(out_copy, small_scan):
    out = out_copy
    record = json.loads((out / "runs" / f"{small_scan['run_id']}.json").read_text())
    evil = {**record, "run_id": "../../escaped", "started_at": "2999-01-01T00:00:00+00:00"}
    (out / "runs" / "zzz.json").write_text(json.dumps(evil))
    traversal = {**record, "run_id": "20990101T000000000Z-aaaaaa",
                 "files": ["../../../etc/hostname"], "map_store": "/tmp/elsewhere.zarr"}
    (out / "runs" / f"{traversal['run_id']}.json").write_text(json.dumps(traversal))
    before = _files_outside(out.parent, out)

    ran = CliRunner().invoke(app, ["report", str(out), "--run", "../../escaped", "--top", "1"])
    assert ran.exit_code == 1 and "not a complete run" in ran.stderr
    newest = CliRunner().invoke(app, ["report", str(out), "--top", "1"])
    assert newest.exit_code == 0 and small_scan["run_id"] in newest.stdout  # the real run
    assert _files_outside(out.parent, out) == before  # nothing written outside OUT
    assert read_scores(str(out)).num_rows == small_scan["summary"].counts["to_scan"]
    problems = " | ".join(p.line() for p in verify(str(out)).problems)
    assert "names run '../../escaped'" in problems and "outside OUT" in problems


def test_a_row_naming_a_map_store_outside_out_is_refused(small_scan, tmp_path):
    row = next(r for r in read_scores(str(small_scan["out"])).to_pylist() if r["status"] == "ok")
    assert read_map(row, str(small_scan["out"])).shape == (row["height"], row["width"])
    for store in ("../outside.zarr", "/tmp/outside.zarr", "maps/../../x.zarr",
                  "s3://other-bucket/x.zarr"):
        with pytest.raises(ValueError, match="unsafe path"):
            read_map({**row, "map_store": store}, str(small_scan["out"]))
