"""Pieces of the Ray engine: reading the work list without Ray's Parquet reader."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from vip2scan.pipeline.engines.ray import work_list_dataset
from vip2scan.pipeline.storage import Location


def test_work_list_is_read_whole_and_in_order_across_row_groups(ray_ready, tmp_path):
    rows = 1000
    table = pa.table({"image_uri": [f"s3://lake/{i:05d}.png" for i in range(rows)],
                      "map_index": pa.array(range(rows), pa.int64())})
    pq.write_table(table, tmp_path / "work.parquet", row_group_size=128)  # 8 row groups
    assert pq.ParquetFile(tmp_path / "work.parquet").metadata.num_row_groups == 8

    ds = work_list_dataset(Location.of(str(tmp_path)), "work.parquet")
    got = pa.concat_tables(ds.iter_batches(batch_format="pyarrow", batch_size=None))
    assert got.num_rows == rows
    assert sorted(got["map_index"].to_pylist()) == list(range(rows))
    assert got.sort_by("map_index").equals(table)


def test_work_list_on_s3(ray_ready, s3_server, s3_bucket, tmp_path):
    table = pa.table({"image_uri": ["a", "b", "c"], "map_index": pa.array([0, 1, 2], pa.int64())})
    pq.write_table(table, tmp_path / "work.parquet")
    s3_server.filesystem().put(str(tmp_path / "work.parquet"), f"{s3_bucket}/out/_staging/w.parquet")
    work = Location.of(f"s3://{s3_bucket}/out", s3_server.storage_options)
    ds = work_list_dataset(work, "_staging/w.parquet")
    got = pa.concat_tables(ds.iter_batches(batch_format="pyarrow", batch_size=None))
    assert got.sort_by("map_index").equals(table)


def test_object_store_budget_holds_a_fixed_number_of_decoded_batches_per_actor(ray_ready):
    from vip2scan.pipeline.engines import EngineConfig
    from vip2scan.pipeline.engines.ray import (DECODED_BATCHES_PER_ACTOR, MIN_OBJECT_STORE_BUDGET,
                                               object_store_budget)

    # Small CPU batches: the floor.
    assert object_store_budget(EngineConfig(batch_size=32), 224) == MIN_OBJECT_STORE_BUDGET
    # ViT-L at 518 px, batch 64, up to 4 actors: 16 decoded batches each, whatever the lake.
    big = EngineConfig(batch_size=64, actors=(1, 4))
    assert object_store_budget(big, 518) == DECODED_BATCHES_PER_ACTOR * 4 * 64 * 518 * 518 * 3
    assert object_store_budget(EngineConfig(object_store_budget_mb=300), 518) == 300 * 2**20
