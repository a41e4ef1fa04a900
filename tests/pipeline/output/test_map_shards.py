"""Sharded map stores: K maps per object, written whole per work unit, read one map at a time;
``--maps anomalous`` (sparse stores verify accepts) and ``--map-dtype uint8``."""

from __future__ import annotations

import datetime as dt
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vip2scan.pipeline.output.calibration import Thresholds
from vip2scan.pipeline.output.map_format import (choose_maps_per_shard, decode_maps, encode_maps,
                                                 unit_rows)
from vip2scan.pipeline.output.map_store import (create_map_store, open_maps, read_map_array, shard_length,
                                    write_maps, written_indices)
from vip2scan.pipeline.specs import MAX_MAPS_PER_SHARD, MapSpec
from vip2scan.pipeline.stages.units import unit_slices
from vip2scan.pipeline.storage.location import Location

R = 8


def shard_objects(out: str, store: str) -> list[str]:
    root = os.path.join(out, store, "maps", "c")
    return sorted(os.path.relpath(os.path.join(d, f), root)
                  for d, _, files in os.walk(root) for f in files)


def random_maps(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, R, R)).astype(np.float16)


# ------------------------------------------------------------------------------ the rules

def test_shard_size_follows_the_map_size_and_stays_a_power_of_two():
    # 256 px float16 maps are 128 KiB: 32 make a 4 MiB shard; uint8 halves the bytes.
    assert choose_maps_per_shard(256, "float16", 10**6) == 32
    assert choose_maps_per_shard(256, "uint8", 10**6) == 64
    assert choose_maps_per_shard(16, "float16", 10**6) == MAX_MAPS_PER_SHARD
    assert choose_maps_per_shard(256, "float16", 100) == 8  # a small run still gets 8+ units
    assert choose_maps_per_shard(256, "float16", 3) == 1
    assert choose_maps_per_shard(256, "float16", 10**6, requested=5) == 5
    for k in (1, 4, 32, 256):
        for batch in (1, 3, 32, 100):
            rows = unit_rows(k, batch)
            assert rows % k == 0 and rows >= batch and rows - k < max(batch, k)


def test_uint8_quantisation_error_is_within_the_documented_bound():
    values = np.linspace(0, 1, 10_001, dtype=np.float32).reshape(-1, 1, 1)
    codes = encode_maps(values, "uint8")
    assert codes.max() == 254  # 255 is the fill: "no map"
    assert np.abs(decode_maps(codes) - values).max() <= 1 / 508 + 1e-7
    assert np.isnan(decode_maps(np.full((2, 2), 255, np.uint8))).all()


def test_unit_slices_never_split_a_unit():
    map_index = np.array([0, 1, 3, 4, 5, 9, 12, 13])
    assert list(unit_slices(map_index, 4)) == [(0, 0, 3), (1, 3, 5), (2, 5, 6), (3, 6, 8)]


# ------------------------------------------------------------------------------ the store

@pytest.mark.parametrize("dtype", ["float16", "uint8"])
def test_a_sharded_store_round_trips_one_object_per_shard(tmp_path, dtype):
    out = Location.of(str(tmp_path))
    n, k = 70, 32  # the last shard is short
    store = create_map_store(out, "run", n, MapSpec(map_size=R, map_dtype=dtype, maps_per_shard=k), {},
                             image_uris=[f"u{i}" for i in range(n)])
    maps = random_maps(n)
    for lo in range(0, n, k):  # one write per unit of whole shards
        write_maps(out, store, np.arange(lo, min(lo + k, n)), maps[lo:lo + k])
    array = open_maps(out, store)
    assert shard_length(array) == k and tuple(array.chunks) == (1, R, R)
    assert shard_objects(str(tmp_path), store) == ["0/0/0", "1/0/0", "2/0/0"]
    assert written_indices(array).tolist() == list(range(n))
    tolerance = 0 if dtype == "float16" else 1 / 508 + 1e-3
    for index in (0, 31, 32, 69):
        assert np.abs(read_map_array(out, store, index) - maps[index].astype(np.float32)).max() \
            <= tolerance


def test_a_retried_unit_rewrites_its_shard_whole(tmp_path):
    out = Location.of(str(tmp_path))
    store = create_map_store(out, "run", 16, MapSpec(map_size=R, maps_per_shard=8), {})
    first, second = random_maps(16, 1), random_maps(16, 2)
    write_maps(out, store, np.arange(8), first[:8])
    write_maps(out, store, np.arange(8, 16), first[8:])
    # The retried unit 1 scored all but slot 11 (an error row this time): the shard is
    # replaced, not merged, so slot 11 holds no stale map from the first attempt.
    again = np.array([8, 9, 10, 12, 13, 14, 15])
    write_maps(out, store, again, second[again])
    array = open_maps(out, store)
    assert written_indices(array).tolist() == [*range(8), *again.tolist()]
    assert np.isnan(read_map_array(out, store, 11)).all()
    assert np.array_equal(read_map_array(out, store, 12), second[12].astype(np.float32))
    assert np.array_equal(read_map_array(out, store, 3), first[3].astype(np.float32))
    assert len(shard_objects(str(tmp_path), store)) == 2


def test_a_shard_with_no_map_is_not_stored(tmp_path):
    out = Location.of(str(tmp_path))
    store = create_map_store(out, "run", 24, MapSpec("anomalous", R, maps_per_shard=8), {})
    maps = random_maps(24)
    write_maps(out, store, np.array([2]), maps[[2]])  # unit 0: one anomalous row
    write_maps(out, store, np.array([], dtype=np.int64), maps[:0])  # unit 1: none
    write_maps(out, store, np.array([17, 23]), maps[[17, 23]])
    assert shard_objects(str(tmp_path), store) == ["0/0/0", "2/0/0"]
    assert written_indices(open_maps(out, store)).tolist() == [2, 17, 23]


def test_stores_written_before_sharding_stay_readable(tmp_path):
    import zarr

    out = Location.of(str(tmp_path))
    store = create_map_store(out, "old", 5, R, {})  # an int: the old one-object-per-map layout
    array = zarr.open_array(str(tmp_path / store), path="maps", mode="r")
    assert array.shards is None and tuple(array.chunks) == (1, R, R)
    maps = random_maps(5)
    write_maps(out, store, np.array([0, 3]), maps[[0, 3]])
    assert shard_objects(str(tmp_path), store) == ["0/0/0", "3/0/0"]
    assert written_indices(open_maps(out, store)).tolist() == [0, 3]
    assert np.array_equal(read_map_array(out, store, 3), maps[3].astype(np.float32))


# ------------------------------------------------------------------------------ resuming

def test_a_resumed_run_redoes_each_half_staged_unit_whole(tmp_path):
    from vip2scan.pipeline.output.paths import parts_dir
    from vip2scan.pipeline.run.plan import Plan, remaining_work
    from vip2scan.pipeline.output.schema import scores_table

    out = Location.of(str(tmp_path / "out"))
    todo = pa.table({"image_uri": [f"s3://lake/{i:02d}.png" for i in range(12)],
                     "map_index": pa.array(range(12), pa.int64())})
    plan = Plan(run_id="r1", source="s3://lake/", model_id="m", started_at="", scan_date="2026-12-02",
                counts={}, n_todo=12, map_store="maps/r1.zarr",
                map_spec=MapSpec(map_size=R, maps_per_shard=4),
                thresholds=Thresholds(0.5, 0.5, "flag"), unit_rows=4)
    os.makedirs(out.fs_path(parts_dir("r1")))
    pq.write_table(todo, out.fs_path(plan.todo_file))
    # Staged before the crash: all of unit 0, half of unit 1 (the driver got it in two batches).
    staged = [0, 1, 2, 3, 4, 5]
    part = scores_table({"image_uri": [f"s3://lake/{i:02d}.png" for i in staged],
                         "status": ["ok"] * len(staged), "map_index": staged},
                        run_id="r1", model_id="m", scanned_at=dt.datetime.now(dt.timezone.utc),
                        map_store=plan.map_store)
    pq.write_table(part, os.path.join(out.fs_path(parts_dir("r1")), "part-0.parquet"))

    left = remaining_work(out, plan, str(tmp_path))
    redo = pq.read_table(left.path)
    assert redo["map_index"].to_pylist() == list(range(4, 12))  # unit 1 whole, then unit 2
    assert redo["already_staged"].to_pylist() == [True, True] + [False] * 6
    assert (left.left, left.staged) == (6, 6)


# ------------------------------------------------------------------------------ whole scans

@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> str:
    from vip2scan.model.data.synthetic import write_lake

    root = str(tmp_path_factory.mktemp("shard_lake") / "lake")
    write_lake(root, 24, size=32, seed=5)
    with open(os.path.join(root, "broken.png"), "wb") as fh:
        fh.write(b"not a png")
    return root


def scan_rows(out: str) -> dict[str, dict]:
    from vip2scan.pipeline import read_scores

    return {r["image_uri"]: r for r in read_scores(out).to_pylist()}


LOCAL = dict(engine="local", batch_size=4, map_size=R, maps_per_shard=4)


@pytest.mark.slow  # three scans
def test_anomalous_maps_only_and_uint8_maps_verify_clean(tmp_path, lake, checkpoint):
    from vip2scan.pipeline import ScanOptions, scan
    from vip2scan.pipeline.output.verify import verify

    full_out, sparse_out, small_out = (str(tmp_path / n) for n in ("all", "anomalous", "uint8"))
    scan(lake, full_out, checkpoint, ScanOptions(**LOCAL))
    full = scan_rows(full_out)
    scores = sorted(r["image_score"] for r in full.values() if r["status"] == "ok")
    threshold = float(scores[len(scores) * 3 // 4])  # about a quarter flagged
    scan(lake, sparse_out, checkpoint, ScanOptions(**LOCAL, maps="anomalous", image_threshold=threshold))
    scan(lake, small_out, checkpoint, ScanOptions(**LOCAL, map_dtype="uint8"))

    sparse = scan_rows(sparse_out)
    flagged = {u for u, r in sparse.items() if r["is_anomalous"]}
    assert 0 < len(flagged) < len(sparse) - 1
    for uri, row in sparse.items():
        has_map = row["map_store"] is not None
        assert has_map == (uri in flagged) and (row["map_index"] is not None) == has_map
    store = next(r["map_store"] for r in sparse.values() if r["map_store"])
    array = open_maps(Location.of(sparse_out), store)
    assert written_indices(array).tolist() == sorted(sparse[u]["map_index"] for u in flagged)
    for uri in flagged:  # the same maps as the full scan's (same model, same pixels)
        row, twin = sparse[uri], full[uri]
        assert np.array_equal(read_map_array(Location.of(sparse_out), store, row["map_index"]),
                              read_map_array(Location.of(full_out), twin["map_store"],
                                             twin["map_index"]))
    assert verify(sparse_out).ok, verify(sparse_out).problems

    small = scan_rows(small_out)
    for uri, row in small.items():
        if row["status"] == "ok":
            twin = full[uri]
            got = read_map_array(Location.of(small_out), row["map_store"], row["map_index"])
            want = read_map_array(Location.of(full_out), twin["map_store"], twin["map_index"])
            assert np.abs(got - want).max() <= 1 / 508 + 1e-3  # float16 -> uint8 codes
    assert verify(small_out).ok, verify(small_out).problems

    # verify is not blind to a sparse store: remove one shard and it names the missing maps
    victim = os.path.join(sparse_out, store, "maps", "c", str(min(sparse[u]["map_index"]
                                                                  for u in flagged) // 4), "0", "0")
    os.remove(victim)
    problems = verify(sparse_out).problems
    assert any("have no written map" in p.message for p in problems), problems


def test_report_and_explorer_of_an_anomalous_only_run(tmp_path, lake, checkpoint):
    """Rows without a stored map show their image and say why there is no map."""
    from tests.helpers.cli_runner import invoke

    out = str(tmp_path / "out")
    ran = invoke("scan", lake, "--out", out, "--checkpoint", checkpoint, "--engine", "local",
                 "--maps", "anomalous", "--threshold", "0.999", "--map-size", str(R),
                 "--no-progress")
    assert ran.exit_code == 0, ran.stderr[-2000:]
    ran = invoke("report", out, "--top", "3")
    assert ran.exit_code == 0, ran.stderr[-2000:]
    page = open(ran.stdout.split("report: ", 1)[1].strip().removeprefix("file://")).read()
    assert page.count("no map stored") == 3
    assert invoke("verify", out).exit_code == 0
