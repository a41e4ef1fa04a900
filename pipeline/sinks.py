"""Sinks: the scores Parquet schema, staging parts + commit, and the Zarr maps store.

Layout under OUT (fixed for every later issue):
- ``_staging/<run_id>/parts/part-<seq>-<token>.parquet``: rows as they are durably staged;
- ``scores/scan_date=YYYY-MM-DD/<run_id>-<part>.parquet``: the committed rows (a few large
  files per run, compacted from the staging parts at commit);
- ``maps/<run_id>.zarr``: Zarr v3 group, array ``maps`` [N, R, R] float16, chunk (1, R, R).
"""

from __future__ import annotations

import datetime as dt
import io
import os
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .storage import Location, _fs_kwargs, safe_relative_path, with_retries, wrap_zarr_store

SCHEMA_VERSION = "1"
SCHEMA_VERSION_KEY = b"vip2scan.schema_version"
MAPS_ARRAY = "maps"
MAP_JOIN_RULE = (
    "scores rows whose map_store names this store hold their map at maps[map_index] "
    "(float16, resolution x resolution, values in [0, 1]); rows with status 'error' have no map"
)

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

ROW_GROUP_ROWS = 65_536
MAX_ROWS_PER_FILE = 1_000_000


def maps_store_name(run_id: str) -> str:
    """The map store path relative to OUT, as written in the ``map_store`` column."""
    return f"maps/{run_id}.zarr"


def scores_partition(scan_date: str) -> str:
    return f"scores/scan_date={scan_date}"


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


def scores_table(batch: pa.Table | dict[str, Any], *, run_id: str, model_id: str,
                 scanned_at: dt.datetime, map_store: str | None) -> pa.Table:
    """Build a SCORES_SCHEMA table from a pipeline output batch (pyarrow table or numpy dict).

    Error rows get no scores and no map: their score columns, ``map_store`` and ``map_index``
    are null, and ``error`` holds the reason.
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
        "map_store": only_ok(pa.array([map_store] * n, pa.string())),
        "map_index": only_ok(col("map_index", pa.int64())) if map_store else pa.nulls(n, pa.int64()),
        "model_id": pa.array([model_id] * n, pa.string()),
        "run_id": pa.array([run_id] * n, pa.string()),
        "scanned_at": pa.array([scanned_at] * n, UTC_US),
        "status": status,
        "error": pc.if_else(ok, pa.nulls(n, pa.string()), col("error", pa.string())),
    }
    return pa.Table.from_pydict(columns, schema=SCORES_SCHEMA)


def parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd", row_group_size=ROW_GROUP_ROWS)
    return sink.getvalue()


class StagingWriter:
    """Writes a run's rows as small Parquet parts to ``_staging/<run_id>/parts/``.

    A row counts as processed once its part exists: each part is one atomic object write
    (rename locally, single PUT on S3), so a crash loses at most the rows still buffered,
    which the resumed run then processes again.
    """

    def __init__(self, out: Location, run_id: str, flush_rows: int = 2048,
                 flush_s: float = 30.0, on_flush: Callable[[int, int], None] | None = None):
        self.out = out
        self.run_id = run_id
        self.flush_rows = max(1, flush_rows)
        self.flush_s = flush_s
        self.on_flush = on_flush
        self._tables: list[pa.Table] = []
        self._buffered_rows = 0
        self._buffered_batches = 0
        self._last_flush = time.monotonic()
        self._token = secrets.token_hex(4)
        self._seq = 0
        self.rows_staged = 0
        self.batches_staged = 0
        self.write_s = 0.0

    def add(self, table: pa.Table) -> None:
        self._tables.append(table)
        self._buffered_rows += table.num_rows
        self._buffered_batches += 1
        if self._buffered_rows >= self.flush_rows or \
                time.monotonic() - self._last_flush >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        if not self._tables:
            return
        t0 = time.perf_counter()
        table = pa.concat_tables(self._tables)
        name = f"part-{self._seq:06d}-{self._token}.parquet"
        self.out.write_bytes(parquet_bytes(table), "_staging", self.run_id, "parts", name)
        self._seq += 1
        self.rows_staged += table.num_rows
        self.batches_staged += self._buffered_batches
        self._tables, self._buffered_rows, self._buffered_batches = [], 0, 0
        self._last_flush = time.monotonic()
        self.write_s += time.perf_counter() - t0
        if self.on_flush is not None:
            self.on_flush(self.rows_staged, self.batches_staged)


def staged_part_names(out: Location, run_id: str) -> list[str]:
    return [n for n in out.ls_names("_staging", run_id, "parts") if n.endswith(".parquet")]


def iter_staged_tables(out: Location, run_id: str) -> Iterator[pa.Table]:
    for name in staged_part_names(out, run_id):
        data = out.read_bytes("_staging", run_id, "parts", name)
        yield pq.read_table(io.BytesIO(data))


@dataclass
class CommitResult:
    files: list[str]
    rows: int
    ok: int
    failed: int


def commit_parts(out: Location, run_id: str, scan_date: str,
                 max_rows_per_file: int = MAX_ROWS_PER_FILE, dedupe: bool = False) -> CommitResult:
    """Compact the staged parts into ``scores/scan_date=D/<run_id>-<k>.parquet``.

    File names are deterministic, so a commit interrupted and repeated overwrites instead of
    duplicating. Local files appear by rename, S3 objects on upload completion.
    ``dedupe`` keeps only the first row per image_uri (holds the run's URIs in memory).
    """
    partition = scores_partition(scan_date)
    local_tmp: list[str] = []

    def tmp_dir() -> str:
        if not local_tmp:
            local_tmp.append(tempfile.mkdtemp(prefix="vip2scan-commit-"))
        return local_tmp[0]

    try:
        return _commit_parts(out, run_id, partition, max_rows_per_file, dedupe, tmp_dir)
    finally:
        if local_tmp:
            shutil.rmtree(local_tmp[0], ignore_errors=True)


def _commit_parts(out: Location, run_id: str, partition: str, max_rows_per_file: int,
                  dedupe: bool, tmp_dir: Callable[[], str]) -> CommitResult:
    files: list[str] = []
    rows = ok = 0
    writer: pq.ParquetWriter | None = None
    sink: Any = None
    final_path = tmp_path = ""
    rows_in_file = 0

    def open_file() -> None:
        nonlocal writer, sink, final_path, tmp_path, rows_in_file
        name = f"{run_id}-{len(files):05d}.parquet"
        final_path = out.fs_path(partition, name)
        files.append(f"{partition}/{name}")
        if out.is_local:
            os.makedirs(os.path.dirname(final_path), exist_ok=True)
            # A dot-name is ignored by pyarrow datasets; the rename makes the file appear whole.
            tmp_path = os.path.join(os.path.dirname(final_path), f".{name}.inprogress")
        else:
            # Written locally first, then uploaded in one retried put: a failed or throttled
            # upload is simply repeated, where a half-streamed multipart upload could not be.
            tmp_path = os.path.join(tmp_dir(), name)
        sink = open(tmp_path, "wb")
        writer = pq.ParquetWriter(sink, SCORES_SCHEMA, compression="zstd")
        rows_in_file = 0

    def close_file() -> None:
        nonlocal writer, sink
        if writer is None:
            return
        writer.close()
        sink.flush()
        os.fsync(sink.fileno())
        sink.close()
        if out.is_local:
            os.replace(tmp_path, final_path)
        else:
            try:
                with_retries(out.fs.put_file, tmp_path, final_path)
            finally:
                os.remove(tmp_path)
        writer, sink = None, None

    seen: set[str] = set()
    for table in iter_staged_tables(out, run_id):
        table = table.cast(SCORES_SCHEMA)
        if dedupe:
            keep = []
            for uri in table["image_uri"].to_pylist():
                keep.append(uri not in seen)
                seen.add(uri)
            table = table.filter(pa.array(keep))
        start = 0
        while start < table.num_rows:
            if writer is None:
                open_file()
            take = min(table.num_rows - start, max_rows_per_file - rows_in_file)
            piece = table.slice(start, take)
            writer.write_table(piece, row_group_size=ROW_GROUP_ROWS)  # type: ignore[union-attr]
            rows_in_file += take
            start += take
            if rows_in_file >= max_rows_per_file:
                close_file()
        rows += table.num_rows
        ok += int(pc.sum(pc.equal(table["status"], "ok")).as_py() or 0)
    close_file()
    # Remove files a previous, larger attempt of this commit may have left beyond ours.
    for name in out.ls_names(partition):
        if name.startswith(f"{run_id}-") and f"{partition}/{name}" not in files \
                and name.endswith(".parquet"):
            out.remove(partition, name)
    return CommitResult(files=files, rows=rows, ok=ok, failed=rows - ok)


# --------------------------------------------------------------------------- Zarr maps

def _zarr_store(out: Location, store_name: str, read_only: bool = False):
    """The Zarr store ``store_name`` below OUT (a name read back from OUT must stay inside it)."""
    import zarr.storage

    safe_relative_path(store_name)
    if out.is_local:
        store = zarr.storage.LocalStore(out.fs_path(store_name), read_only=read_only)
    else:
        options = _fs_kwargs(out.protocol, out.storage_options)
        store = zarr.storage.FsspecStore.from_url(out.join(store_name), storage_options=options,
                                                  read_only=read_only)
    return wrap_zarr_store(store, out.wrapper)


def create_map_store(out: Location, run_id: str, n_maps: int, resolution: int,
                     attributes: dict[str, Any]) -> str:
    """Create ``maps/<run_id>.zarr`` with array ``maps`` [n, R, R] float16 (NaN = not written)."""
    import zarr

    name = maps_store_name(run_id)
    group = zarr.open_group(_zarr_store(out, name), mode="w",
                            attributes={"vip2scan.schema_version": SCHEMA_VERSION,
                                        "run_id": run_id})
    group.create_array(
        MAPS_ARRAY, shape=(max(n_maps, 0), resolution, resolution), chunks=(1, resolution, resolution),
        dtype="float16", fill_value=float("nan"),
        attributes={"run_id": run_id, "resolution": resolution, "join": MAP_JOIN_RULE,
                    "vip2scan.schema_version": SCHEMA_VERSION, **attributes},
        dimension_names=("map_index", "y", "x"),
    )
    return name


_open_arrays: dict[tuple, Any] = {}


def open_maps_array(out: Location, store_name: str, read_only: bool = True):
    """The ``maps`` array of a store, cached per process (each worker opens it once)."""
    import zarr

    key = (os.getpid(), out.uri, store_name, read_only)
    array = _open_arrays.get(key)
    if array is None:
        array = zarr.open_array(_zarr_store(out, store_name, read_only=read_only),
                                path=MAPS_ARRAY, mode="r" if read_only else "r+")
        if len(_open_arrays) > 16:
            _open_arrays.clear()
        _open_arrays[key] = array
    return array


def write_maps(out: Location, store_name: str, indices: np.ndarray, maps: np.ndarray) -> None:
    """Write whole chunks maps[i] (one writer per index, so no chunk is ever shared)."""
    if len(indices) == 0:
        return
    array = open_maps_array(out, store_name, read_only=False)
    order = np.argsort(indices)
    with_retries(array.set_orthogonal_selection, (np.asarray(indices)[order],),
                 np.asarray(maps, dtype=np.float16)[order])


@dataclass(frozen=True)
class MapWriterSettings:
    out_uri: str
    store_name: str | None
    storage_options: dict | None = field(default=None, repr=False)
    wrapper: Any = field(default=None, repr=False)


class WriteMaps:
    """Ray Data map_batches callable: write each ok row's map to its Zarr chunk, drop the maps.

    Rows leave this stage only after their map is written, so the driver stages a row (the
    exactly-once record) only once its map is durable.
    """

    def __init__(self, settings: MapWriterSettings):
        self.settings = settings
        self.out = Location(settings.out_uri, settings.storage_options or {}, settings.wrapper)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        t0 = time.perf_counter()
        maps = batch.pop("map", None)
        n = len(batch["image_uri"])
        if self.settings.store_name and maps is not None:
            ok = np.asarray(batch["status"]) == "ok"
            write_maps(self.out, self.settings.store_name,
                       np.asarray(batch["map_index"])[ok].astype(np.int64), maps[ok])
        batch["write_s"] = np.full(n, (time.perf_counter() - t0) / max(n, 1))
        return batch


def read_map_array(out: Location, store_name: str, index: int) -> np.ndarray:
    """maps[index] as float32 [R, R]."""
    array = open_maps_array(out, store_name, read_only=True)
    return np.asarray(array[int(index)], dtype=np.float32)


def write_maps_batch(batch: dict[str, np.ndarray], settings: MapWriterSettings
                     ) -> dict[str, np.ndarray]:
    """Stateless form of :class:`WriteMaps` for Ray tasks (the array is cached per process)."""
    return WriteMaps(settings)(batch)
