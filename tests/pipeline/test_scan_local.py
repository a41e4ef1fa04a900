"""A full scan of a 220-object local lake (nested prefixes, broken and awkward files), then
incremental rescans: add, modify, delete, unchanged, --full."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow.dataset as pads
import pytest

from tests.helpers.lake_files import (AWKWARD, BROKEN, MAX_IMAGE_PIXELS, NOT_IMAGES, ReadLog,
                                      awkward_files, broken_files, put_files, small_png)
from vip2scan.pipeline import SCHEMA_VERSION, ScanOptions, read_map, scan

pytestmark = pytest.mark.slow  # the module's Ray scan of a 220-object lake (first)

N_LAKE = 200
MAP_SIZE = 32


def _options(readlog: ReadLog | None = None, **kw) -> ScanOptions:
    kw.setdefault("engine", "ray")
    return ScanOptions(batch_size=16, map_size=MAP_SIZE, max_image_pixels=MAX_IMAGE_PIXELS,
                       stage_rows=64, fs_wrapper=readlog, **kw)


def _run_rows(out: str, run_id: str) -> list[dict]:
    ds = pads.dataset(os.path.join(out, "scores"), format="parquet", partitioning="hive")
    return ds.to_table(filter=pads.field("run_id") == run_id).to_pylist()


def _lake_reads(readlog: ReadLog, lake: str) -> list[str]:
    return sorted(p for p in readlog.paths() if p.startswith(lake))


@pytest.fixture(scope="module")
def first(tmp_path_factory, checkpoint, ray_ready):
    from vip2scan.model.data.synthetic import write_lake

    base = tmp_path_factory.mktemp("local")
    lake, out = str(base / "lake"), str(base / "out")
    write_lake(lake, N_LAKE, size=32, seed=0, nested=True)
    put_files(None, lake, {**broken_files(), **awkward_files(),
                           **{name: b"not an image" for name in NOT_IMAGES}})
    readlog = ReadLog(str(base / "reads.log"))
    summary = scan(lake, out, checkpoint, _options(readlog))
    return {"lake": lake, "out": out, "summary": summary, "readlog": readlog,
            "rows": _run_rows(out, summary.run_id), "n_listed": N_LAKE + len(BROKEN) + len(AWKWARD)}


def test_every_listed_object_has_exactly_one_row(first):
    rows, summary = first["rows"], first["summary"]
    assert summary.status == "complete" and summary.inference_started
    assert summary.counts["listed"] == first["n_listed"] == len(rows)
    uris = [r["image_uri"] for r in rows]
    assert len(set(uris)) == len(uris)
    on_disk = {f"file://{d}/{f}" for d, _, fs in os.walk(first["lake"]) for f in fs
               if not f.endswith((".txt", ".json"))}
    assert set(uris) == on_disk
    assert all(r["run_id"] == summary.run_id and r["model_id"] == summary.model_id for r in rows)
    assert sorted(_lake_reads(first["readlog"], first["lake"])) == sorted(
        u[len("file://"):] for u in uris)


def test_ok_rows_have_maps_and_errors_have_reasons(first):
    import zarr

    rows = first["rows"]
    by_name = {r["image_uri"].split("/lake/", 1)[1]: r for r in rows}
    for name, word in BROKEN.items():
        row = by_name[name]
        assert row["status"] == "error" and word in row["error"].lower(), row
        assert row["map_index"] is None and row["image_score"] is None
    for name, (width, height) in AWKWARD.items():
        row = by_name[name]
        assert row["status"] == "ok", row
        assert (row["width"], row["height"]) == (width, height)
    ok_rows = [r for r in rows if r["status"] == "ok"]
    assert len(ok_rows) == N_LAKE + len(AWKWARD)
    store = zarr.open_group(os.path.join(first["out"], ok_rows[0]["map_store"]), mode="r")
    maps = store["maps"]
    assert maps.dtype == np.float16 and maps.chunks == (1, MAP_SIZE, MAP_SIZE)
    assert maps.attrs["model_id"] == first["summary"].model_id
    assert maps.shape == (len(rows), MAP_SIZE, MAP_SIZE)
    indices = sorted(r["map_index"] for r in ok_rows)
    assert len(set(indices)) == len(indices)
    data = maps.get_orthogonal_selection((np.array(indices),))
    assert data.shape == (len(indices), MAP_SIZE, MAP_SIZE)
    assert np.isfinite(data).all() and data.min() >= 0 and data.max() <= 1
    for r in ok_rows:
        assert 0 <= r["image_score"] <= 1 and 0 <= r["anomalous_area_fraction"] <= 1
        assert r["max_pixel_score"] == pytest.approx(float(maps[r["map_index"]].max()), abs=0.05)
        assert r["is_anomalous"] == (r["image_score"] >= 0.5)


def test_duckdb_and_pyarrow_read_scores_with_a_partition_filter(first):
    import duckdb

    out, summary = first["out"], first["summary"]
    glob = os.path.join(out, "scores", "**", "*.parquet")
    n = duckdb.sql(f"SELECT count(*) FROM read_parquet('{glob}') "
                   f"WHERE scan_date = '{summary.scan_date}' AND run_id = '{summary.run_id}'"
                   ).fetchall()[0][0]
    assert n == first["n_listed"]
    assert duckdb.sql(f"SELECT count(*) FROM read_parquet('{glob}') "
                      "WHERE scan_date = '1999-01-01'").fetchall()[0][0] == 0
    dataset = pads.dataset(os.path.join(out, "scores"), format="parquet", partitioning="hive")
    table = dataset.to_table(filter=(pads.field("scan_date") == summary.scan_date)
                             & (pads.field("run_id") == summary.run_id))
    assert table.num_rows == first["n_listed"]
    assert table.schema.metadata[b"vip2scan.schema_version"] == SCHEMA_VERSION.encode()


def test_run_record_counts_match_rows(first):
    summary, rows = first["summary"], first["rows"]
    with open(os.path.join(first["out"], "runs", f"{summary.run_id}.json")) as fh:
        record = json.load(fh)
    ok = sum(r["status"] == "ok" for r in rows)
    assert record["status"] == "complete" and record["model_id"] == summary.model_id
    assert record["counts"]["scored"] == ok and record["counts"]["failed"] == len(rows) - ok
    assert record["counts"]["listed"] == record["counts"]["new"] == len(rows)
    assert record["counts"]["vanished"] == record["counts"]["unchanged"] == 0
    assert record["rows"] == len(rows) and record["wall_s"] > 0 and record["images_per_s"] > 0
    assert set(record["stage_s"]) >= {"list_diff", "read", "decode", "infer", "write", "commit"}
    assert record["stage_s"]["infer"] > 0 and record["stage_s"]["decode"] > 0
    assert "storage_options" in record["config"] and "progress" not in record["config"]
    assert not os.path.exists(os.path.join(first["out"], "_staging", summary.run_id))
    assert not os.path.exists(os.path.join(first["out"], "_lock"))


def test_read_map_returns_the_original_size(first):
    rows = first["rows"]
    row = next(r for r in rows if r["image_uri"].endswith("exif_rotated.jpg"))
    amap = read_map(row, first["out"])
    assert amap.shape == (48, 24) and amap.dtype == np.float32
    by_uri = read_map(row["image_uri"], first["out"])
    np.testing.assert_array_equal(amap, by_uri)
    plain = next(r for r in rows if r["status"] == "ok" and r["width"] == 32)
    assert read_map(plain, first["out"]).shape == (32, 32)
    broken = next(r for r in rows if r["status"] == "error")
    with pytest.raises(KeyError):
        read_map(broken, first["out"])


def test_incremental_rescans(first, checkpoint):
    """add 10 + modify 1 + delete 1 -> exactly those scanned; unchanged lake -> no inference.
    (--full is tested on the smaller lake of test_pipeline_resume.)"""
    lake, out, readlog = first["lake"], first["out"], first["readlog"]
    first_run = first["summary"].run_id
    added = {f"added/batch2/img_{i}.png": small_png(100 + i) for i in range(10)}
    put_files(None, lake, added)
    modified = os.path.join(lake, "line1/day01/img_00001.png")
    with open(modified, "wb") as fh:
        fh.write(small_png(999, size=40))
    deleted = os.path.join(lake, "line2/day01/img_00002.png")
    os.remove(deleted)
    readlog.clear()

    second = scan(lake, out, checkpoint, _options(readlog))
    c = second.counts
    assert (c["new"], c["changed"], c["vanished"]) == (10, 1, 1)
    assert c["unchanged"] == first["n_listed"] - 2 and c["listed"] == first["n_listed"] + 9
    rows = _run_rows(out, second.run_id)
    expected = {f"{lake}/{name}" for name in added} | {modified}
    assert {r["image_uri"][len("file://"):] for r in rows} == expected and len(rows) == 11
    assert _lake_reads(readlog, lake) == sorted(expected)  # unchanged objects were not read
    assert second.io["objects_read"] == 11
    with open(os.path.join(out, "runs", f"{second.run_id}.json")) as fh:
        record = json.load(fh)
    vanished = pads.dataset(os.path.join(out, record["vanished_file"])).to_table()
    assert vanished["image_uri"].to_pylist() == [f"file://{deleted}"]

    # Leftovers of an abandoned run of another source: the next run removes all of them.
    abandoned = "20200101T000000000Z-dead00"
    os.makedirs(os.path.join(out, "_staging", abandoned, "parts"))
    with open(os.path.join(out, "_staging", abandoned, "plan.json"), "w") as fh:
        json.dump({"run_id": abandoned, "source": "file:///elsewhere", "scan_date": "2020-01-01"}, fh)
    os.makedirs(os.path.join(out, "maps", f"{abandoned}.zarr"))
    os.makedirs(os.path.join(out, "scores", "scan_date=2020-01-01"))
    half_committed = os.path.join(out, "scores", "scan_date=2020-01-01", f"{abandoned}-00000.parquet")
    with open(half_committed, "wb") as fh:
        fh.write(b"partial")

    readlog.clear()
    third = scan(lake, out, checkpoint, _options(readlog))
    assert third.removed_runs == [abandoned]
    assert not os.path.exists(os.path.join(out, "_staging", abandoned))
    assert not os.path.exists(os.path.join(out, "maps", f"{abandoned}.zarr"))
    assert not os.path.exists(half_committed)
    assert not third.inference_started and third.counts["scored"] == 0
    assert third.counts["unchanged"] == third.counts["listed"] and third.counts["vanished"] == 0
    assert third.files == [] and _lake_reads(readlog, lake) == []

    assert len(_run_rows(out, first_run)) == first["n_listed"]  # earlier runs intact
    runs = sorted(os.listdir(os.path.join(out, "runs")))
    assert len([r for r in runs if r.endswith(".json")]) == 3
