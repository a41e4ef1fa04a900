"""The Parquet schemas of a scan's outputs and the column contract between its stages.

Stages hand each other numpy batch dicts (Ray Data's ``batch_format="numpy"``). The read+decode
stage adds ``pixels`` (uint8 [N, S, S, 3]), ``width``, ``height``, ``status`` ('ok' | 'error'),
``error``, ``read_bytes``, ``read_s``, ``decode_s``; the inference stage drops ``pixels`` and adds
``image_score``, ``is_anomalous``, ``max_pixel_score``, ``anomalous_area_fraction``, ``infer_s``,
``actor_init_s`` and ``map`` (float16 [N, R, R]), which the map writer turns into ``write_s``.
:func:`scores_table` turns what reaches the driver into SCORES_SCHEMA rows.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

SCHEMA_VERSION = "1"
SCHEMA_VERSION_KEY = b"vip2scan.schema_version"
RECORD_VERSION = 1
STATUS_COMPLETE = "complete"  # a run record's status

UTC_US = pa.timestamp("us", tz="UTC")

SCORES_SCHEMA = pa.schema(
    [
        pa.field("image_uri", pa.string(), nullable=False),
        pa.field("etag", pa.string()),
        pa.field("mtime", UTC_US),
        pa.field("size_bytes", pa.int64()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("image_score", pa.float32()),
        pa.field("is_anomalous", pa.bool_()),
        pa.field("max_pixel_score", pa.float32()),
        pa.field("anomalous_area_fraction", pa.float32()),
        pa.field("map_store", pa.string()),
        pa.field("map_index", pa.int64()),
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("scanned_at", UTC_US, nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
    ],
    metadata={SCHEMA_VERSION_KEY: SCHEMA_VERSION.encode(), b"vip2scan.table": b"scores"},
)

# A listing: one row per image object (etag and mtime when the store gives them).
MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("image_uri", pa.string(), nullable=False),
        pa.field("size_bytes", pa.int64()),
        pa.field("etag", pa.string()),
        pa.field("mtime", UTC_US),
    ]
)

# runs/<run_id>.vanished.parquet: the URIs a run found gone.
VANISHED_SCHEMA = pa.schema([pa.field("image_uri", pa.string(), nullable=False),
                             pa.field("run_id", pa.string(), nullable=False)])

# One row per complete run, as the `runs` view of `vip2scan query` shows it.
RUN_COUNT_FIELDS = ("listed", "new", "changed", "unchanged", "vanished", "scored", "failed")
RUNS_SCHEMA = pa.schema(
    [("run_id", pa.string()), ("status", pa.string()), ("source", pa.string()),
     ("model_id", pa.string()), ("started_at", UTC_US), ("finished_at", UTC_US),
     ("wall_s", pa.float64()), ("images_per_s", pa.float64())]
    + [(name, pa.int64()) for name in RUN_COUNT_FIELDS]
)


def utc_timestamp(value: Any) -> dt.datetime | None:
    """A listing's or record's time (datetime, epoch seconds or ISO text) as aware UTC."""
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
    if isinstance(value, (int, float)):
        return dt.datetime.fromtimestamp(float(value), tz=dt.timezone.utc)
    if isinstance(value, str):
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)
    return None


def _as_table(batch: pa.Table | dict[str, Any]) -> pa.Table:
    if isinstance(batch, pa.Table):
        return batch
    columns = {}
    for name, value in batch.items():
        if isinstance(value, np.ndarray) and value.ndim > 1:
            continue  # pixels / maps never go to Parquet
        if isinstance(value, np.ndarray) and value.dtype == object:
            value = value.tolist()
        columns[name] = value
    return pa.table(columns)


# Columns between the stages and the driver, not stored: whether a row's map was written
# (``--maps anomalous`` writes some), and whether a redone unit's row was staged before.
HAS_MAP = "has_map"
ALREADY_STAGED = "already_staged"


def scores_table(batch: pa.Table | dict[str, Any], *, run_id: str, model_id: str,
                 scanned_at: dt.datetime, map_store: str | None) -> pa.Table:
    """Build a SCORES_SCHEMA table from a pipeline output batch (pyarrow table or numpy dict).

    Error rows get no scores and no map: their score columns, ``map_store`` and ``map_index``
    are null, and ``error`` holds the reason. Rows whose ``has_map`` is false (below the
    threshold with ``--maps anomalous``) have a null ``map_store`` and ``map_index`` too.
    """
    table = _as_table(batch)
    n = table.num_rows

    def col(name: str, typ: pa.DataType) -> pa.Array:
        if name not in table.column_names:
            return pa.nulls(n, typ)
        values = table.column(name).combine_chunks()
        if pa.types.is_timestamp(typ) and pa.types.is_timestamp(values.type) \
                and values.type.tz is None:
            values = values.cast(pa.timestamp("us"))  # naive values from Ray are UTC
        if pa.types.is_floating(values.type):
            values = pc.if_else(pc.is_nan(values), pa.nulls(n, values.type), values)
        return values.cast(typ)

    status = col("status", pa.string())
    ok = pc.fill_null(pc.equal(status, "ok"), False)

    def only_ok(values: pa.Array) -> pa.Array:
        return pc.if_else(ok, values, pa.nulls(n, values.type))

    with_map = ok
    if HAS_MAP in table.column_names:
        with_map = pc.and_(ok, pc.fill_null(table.column(HAS_MAP).combine_chunks().cast(pa.bool_()),
                                            False))

    def only_mapped(values: pa.Array) -> pa.Array:
        return pc.if_else(with_map, values, pa.nulls(n, values.type))

    columns = {
        "image_uri": col("image_uri", pa.string()),
        "etag": col("etag", pa.string()),
        "mtime": col("mtime", UTC_US),
        "size_bytes": col("size_bytes", pa.int64()),
        "width": only_ok(col("width", pa.int32())),
        "height": only_ok(col("height", pa.int32())),
        "image_score": only_ok(col("image_score", pa.float32())),
        "is_anomalous": only_ok(col("is_anomalous", pa.bool_())),
        "max_pixel_score": only_ok(col("max_pixel_score", pa.float32())),
        "anomalous_area_fraction": only_ok(col("anomalous_area_fraction", pa.float32())),
        "map_store": only_mapped(pa.array([map_store] * n, pa.string())),
        "map_index": only_mapped(col("map_index", pa.int64())) if map_store else pa.nulls(n, pa.int64()),
        "model_id": pa.array([model_id] * n, pa.string()),
        "run_id": pa.array([run_id] * n, pa.string()),
        "scanned_at": pa.array([scanned_at] * n, UTC_US),
        "status": status,
        "error": pc.if_else(ok, pa.nulls(n, pa.string()), col("error", pa.string())),
    }
    return pa.Table.from_pydict(columns, schema=SCORES_SCHEMA)
