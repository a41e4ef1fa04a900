"""Scans from and to moto S3 over HTTP (s3fs, no mocks), and fail-fast checks."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.compute as pc
import pytest

from tests.helpers.lake_files import broken_files, put_files, small_png
from vip2scan.pipeline import ScanError, ScanOptions, read_map, read_scores, scan

N_LAKE = 24
SENTINEL = "SENTINEL-secret-0f9e8d"


@pytest.mark.slow  # a Ray scan
def test_scan_s3_lake_into_s3_output(s3_server, s3_bucket, checkpoint, ray_ready):
    from vip2scan.model.data.synthetic import write_lake

    # moto accepts any credentials: sentinel values prove none of them leaks into the outputs.
    options = {"endpoint_url": s3_server.endpoint_url, "key": "AKIASENTINELKEY0001",
               "secret": SENTINEL}
    fs = s3_server.filesystem()
    lake, out = f"s3://{s3_bucket}/lake/images", f"s3://{s3_bucket}/results"
    write_lake(lake, N_LAKE, size=32, seed=5, storage_options=options)
    put_files(fs, f"{s3_bucket}/lake/images", {
        "broken/empty.png": b"", "broken/truncated.png": broken_files()["broken/truncated.png"],
        "x/y/z/deep.PNG": small_png(7)})
    listed = N_LAKE + 3
    summary = scan(lake, out, checkpoint, ScanOptions(engine="ray", batch_size=8, map_size=16,
                                                      storage_options=options))
    assert summary.counts["listed"] == listed and summary.counts["failed"] == 2
    assert summary.scores_uri.startswith(f"s3://{s3_bucket}/results/scores/scan_date=")

    table = read_scores(out, options, filter=pc.field("run_id") == summary.run_id)
    rows = table.to_pylist()
    assert len(rows) == listed and len({r["image_uri"] for r in rows}) == listed
    assert all(r["etag"] for r in rows)  # S3 listing carries ETags
    ok = [r for r in rows if r["status"] == "ok"]
    amap = read_map(ok[0], out, options)
    assert amap.shape == (ok[0]["height"], ok[0]["width"]) and np.isfinite(amap).all()
    assert read_map(ok[0]["image_uri"], out, options).shape == amap.shape

    record = json.loads(fs.cat_file(f"{s3_bucket}/results/runs/{summary.run_id}.json"))
    assert record["counts"]["scored"] == len(ok) and record["files"]
    assert record["config"]["storage_options"]["key"] == "***"
    for path in fs.find(f"{s3_bucket}/results"):
        data = fs.cat_file(path)
        assert SENTINEL.encode() not in data and b"AKIASENTINELKEY0001" not in data, path
    assert not fs.exists(f"{s3_bucket}/results/_lock")
    assert not fs.exists(f"{s3_bucket}/results/_staging/{summary.run_id}")

    # the unchanged lake: nothing to do, no inference
    again = scan(lake, out, checkpoint, ScanOptions(engine="ray", batch_size=8, map_size=16,
                                                    storage_options=options))
    assert not again.inference_started and again.counts["unchanged"] == listed


def test_local_lake_into_s3_and_dry_run(s3_server, s3_bucket, checkpoint, tmp_path):
    lake = tmp_path / "lake"
    put_files(None, str(lake), {f"a/{i}.png": small_png(i) for i in range(5)})
    out = f"s3://{s3_bucket}/out"
    dry = scan(str(lake), out, checkpoint,
               ScanOptions(dry_run=True, storage_options=s3_server.storage_options))
    assert dry.status == "dry_run" and dry.counts["new"] == dry.counts["to_scan"] == 5
    assert not s3_server.filesystem().exists(f"{s3_bucket}/out/runs")
    limited = scan(str(lake), out, checkpoint, ScanOptions(
        dry_run=True, limit=2, exclude=("a/4.png",), storage_options=s3_server.storage_options))
    assert (limited.counts["listed"], limited.counts["to_scan"], limited.counts["deferred"]) == (4, 2, 2)
    manifest = tmp_path / "inventory.csv"
    manifest.write_text("image_uri,size_bytes\na/0.png,1\na/1.png,1\nelsewhere/9.png,1\n")
    listed = scan(str(lake), out, checkpoint, ScanOptions(
        dry_run=True, manifest=str(manifest), storage_options=s3_server.storage_options))
    assert listed.counts["listed"] == 3 and listed.counts["new"] == 3



@pytest.mark.timeout(300)  # against a retry loop that never gives up; not a speed target
@pytest.mark.parametrize("case", ["missing_source_bucket", "missing_out_bucket",
                                  "unwritable_local_out", "bad_checkpoint", "missing_local_source"])
def test_fail_fast_with_one_line_and_no_secret(case, s3_server, checkpoint, tmp_path):
    options = {**s3_server.storage_options, "secret": SENTINEL}
    good_lake = tmp_path / "lake"
    put_files(None, str(good_lake), {"a.png": small_png(1)})
    source, out, ckpt = str(good_lake), str(tmp_path / "out"), checkpoint
    expect = ""
    if case == "missing_source_bucket":
        source, expect = "s3://no-such-bucket-xyz/lake", "no-such-bucket-xyz"
    elif case == "missing_out_bucket":
        out, expect = "s3://no-such-out-bucket/x", "no-such-out-bucket"
    elif case == "unwritable_local_out":
        blocker = tmp_path / "file"
        blocker.write_text("x")
        out, expect = str(blocker / "out"), "not writable"
    elif case == "bad_checkpoint":
        bad = tmp_path / "ckpt"
        bad.mkdir()
        (bad / "config.json").write_text("{not json")
        ckpt, expect = str(bad), "checkpoint"
    else:
        source, expect = str(tmp_path / "nope"), "not a directory"
    with pytest.raises(ScanError) as info:
        scan(source, out, ckpt, ScanOptions(storage_options=options))
    message = str(info.value)
    assert expect in message and "\n" not in message and SENTINEL not in message
