"""Pieces of the Ray engine: reading the work list as whole work units, without Ray's
Parquet reader."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vip2scan.pipeline.engines.ray import work_list_dataset
from vip2scan.pipeline.stages.units import from_ipc
from vip2scan.pipeline.storage.location import Location

pytestmark = pytest.mark.slow  # Ray Data on the session's Ray (its start-up alone is ~15 s)


def unit_tables(ds) -> dict[int, pa.Table]:
    """unit -> its rows; fails if a unit arrives twice (split between two read tasks)."""
    units: dict[int, pa.Table] = {}
    for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
        for unit, blob in zip(batch["unit"], batch["rows"]):
            assert int(unit) not in units, f"unit {unit} arrived split"
            units[int(unit)] = from_ipc(blob)
    return units


def test_work_units_are_whole_and_in_order_across_row_groups(ray_ready, tmp_path):
    rows, unit_rows = 1000, 48  # units straddle the row groups of 128 rows
    gaps = [i for i in range(rows) if i % 7 != 3]  # a resumed list has holes
    table = pa.table({"image_uri": [f"s3://lake/{i:05d}.png" for i in gaps],
                      "map_index": pa.array(gaps, pa.int64())})
    pq.write_table(table, tmp_path / "work.parquet", row_group_size=128)
    assert pq.ParquetFile(tmp_path / "work.parquet").metadata.num_row_groups == 7

    units = unit_tables(work_list_dataset(Location.of(str(tmp_path)), "work.parquet", unit_rows))
    assert sorted(units) == list(range(-(-rows // unit_rows)))
    for unit, rows_of_unit in units.items():
        assert rows_of_unit["map_index"].to_pylist() == \
            [i for i in gaps if i // unit_rows == unit]
    got = pa.concat_tables([units[u] for u in sorted(units)])
    assert got.equals(table)


def test_work_list_on_s3(ray_ready, s3_server, s3_bucket, tmp_path):
    table = pa.table({"image_uri": ["a", "b", "c"], "map_index": pa.array([0, 1, 2], pa.int64())})
    pq.write_table(table, tmp_path / "work.parquet")
    s3_server.filesystem().put(str(tmp_path / "work.parquet"), f"{s3_bucket}/out/_staging/w.parquet")
    work = Location.of(f"s3://{s3_bucket}/out", s3_server.storage_options)
    units = unit_tables(work_list_dataset(work, "_staging/w.parquet", 2))
    assert [units[u]["image_uri"].to_pylist() for u in sorted(units)] == [["a", "b"], ["c"]]


def test_object_store_budget_holds_a_fixed_number_of_decoded_batches_per_actor(ray_ready):
    from vip2scan.pipeline.engines import EngineConfig
    from vip2scan.pipeline.engines.ray import (DECODED_BATCHES_PER_ACTOR, MIN_OBJECT_STORE_BUDGET,
                                               object_store_budget)
    from vip2scan.pipeline.specs import EngineSpec

    def config(**settings) -> EngineConfig:
        spec = EngineSpec(**settings)
        return EngineConfig(spec, unit_rows=spec.batch_size)

    # Small CPU batches: the floor.
    assert object_store_budget(config(batch_size=32), 224) == MIN_OBJECT_STORE_BUDGET
    # ViT-L at 518 px, batch 64, up to 4 actors: 16 decoded batches each, whatever the lake.
    big = config(batch_size=64, actors=(1, 4))
    assert object_store_budget(big, 518) == DECODED_BATCHES_PER_ACTOR * 4 * 64 * 518 * 518 * 3
    assert object_store_budget(config(object_store_budget_mb=300), 518) == 300 * 2**20
