"""Reading a scan's committed outputs: score rows, maps, run records, and SQL over them.

Only complete runs count: their records (written last, at commit) name the score files to
read, so the files of a run still committing are never opened. Parquet is read through the
Location's native pyarrow filesystem (storage/arrow_fs.py; DuckDB's httpfs extension is not
assumed to be installable, e.g. offline), everything else through fsspec; Parquet is
handed to DuckDB as a lazy Arrow dataset, which it scans with projection and filter pushdown,
so neither a query nor the scan's diff loads the whole table into memory.

    read_scores(OUT)            all committed rows (pyarrow)
    read_map(row_or_uri, OUT)   one anomaly map at the image's own size
    Outputs(OUT).connect()      DuckDB with the views scores, latest, runs, vanished
"""

from __future__ import annotations

import io
import os
import tempfile
from typing import Any, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vip2scan.model.files import is_uri

from ..deadline import step
from ..storage.location import Location, normalise_uri
from ..storage.arrow_fs import with_native_read_retries
from .map_store import read_map_array, resize_map
from .read_retries import RetryingReads
from .paths import RUNS, SCORES, vanished_name
from .records import committed_records
from .schema import (RUN_COUNT_FIELDS, RUNS_SCHEMA, SCORES_SCHEMA, UTC_US, VANISHED_SCHEMA,
                     utc_timestamp)
from .snapshot_ref import SNAPSHOT_SCHEMA, VIEW_COLUMNS, current_snapshot

# `latest`: newest row per object; an object whose newest row predates the run that
# found it gone is dropped (it vanished); one that reappeared and was rescanned is kept.
# This window over all runs is the fallback: a committed OUT has a snapshot of its result
# (snapshot.py), which the view reads instead.
LATEST_SQL = """
CREATE VIEW latest AS
SELECT s.* FROM (
    SELECT * FROM scores
    QUALIFY row_number() OVER (PARTITION BY image_uri ORDER BY scanned_at DESC, run_id DESC) = 1
) AS s
WHERE NOT EXISTS (
    SELECT 1 FROM vanished v WHERE v.image_uri = s.image_uri AND v.detected_at >= s.scanned_at
)
"""
# The `vanished` view: a vanished file's rows with the time the run that found them started.
VANISHED_VIEW_SCHEMA = VANISHED_SCHEMA.append(pa.field("detected_at", UTC_US))


# --------------------------------------------------------------------------- DuckDB

MEMORY_ENV = "VIP2SCAN_DUCKDB_MEMORY"
# Analysts' queries get a quarter of RAM by default: DuckDB's own default (80 %) leaves an
# 8 GiB laptop one window function over a large history away from swapping; above the
# limit DuckDB spills to its temp directory instead.
QUERY_MEMORY_FRACTION = 0.25


def query_memory_limit(explicit: str | None = None) -> str:
    """The DuckDB ``memory_limit`` of analyst queries: ``explicit`` (e.g. '4GB'), else
    $VIP2SCAN_DUCKDB_MEMORY, else a quarter of this machine's RAM."""
    chosen = explicit or os.environ.get(MEMORY_ENV)
    if chosen:
        return chosen
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return f"{max(256, int(ram * QUERY_MEMORY_FRACTION) >> 20)}MB"


def duckdb_connect(workdir: str) -> Any:
    """A DuckDB connection for the scan's own bookkeeping (diff, plan, verify): 1 GB unless
    $VIP2SCAN_DUCKDB_MEMORY says otherwise, spilling to ``workdir``."""
    import duckdb

    return RetryingReads(duckdb.connect(config={
        "temp_directory": os.path.join(workdir, "duckdb.tmp"),
        "memory_limit": os.environ.get(MEMORY_ENV, "1GB"),
        "preserve_insertion_order": "false", "threads": "2"}))


def sql_str(value: str) -> str:
    """A SQL string literal."""
    return "'" + str(value).replace("'", "''") + "'"


def register_parquet(con: Any, name: str, out: Location, relpaths: list[str],
                     columns: list[str], schema: pa.Schema) -> None:
    """Expose Parquet files under OUT to DuckDB as a view (streamed, projected).

    Always a ``CREATE OR REPLACE`` view, also for no files: callers register the same name
    once per run, and DuckDB refuses to ``register`` an Arrow table over an existing view
    (a run that wrote no rows, after one that did, used to crash verify)."""
    if not relpaths:
        con.register(f"{name}_empty", pa.table({c: pa.array([], schema.field(c).type)
                                                for c in columns}))
        con.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS SELECT {', '.join(columns)} "
                    f"FROM {name}_empty")
        return
    if out.is_local:
        paths = "[" + ", ".join(sql_str(out.fs_path(p)) for p in relpaths) + "]"
        cols = ", ".join(columns)
        con.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS SELECT {cols} FROM read_parquet({paths}, "
                    "union_by_name=true, hive_partitioning=false)")
        return
    import pyarrow.dataset as pads

    dataset = pads.dataset([out.fs_path(p) for p in relpaths], format="parquet",
                           filesystem=out.pyarrow_filesystem(), schema=schema)
    con.register(f"{name}_arrow", dataset)
    con.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS SELECT {', '.join(columns)} "
                f"FROM {name}_arrow")


# --------------------------------------------------------------------------- rows and maps

def read_scores(out: str, storage_options: Mapping[str, Any] | None = None,
                filter: Any = None, columns: list[str] | None = None) -> pa.Table:
    """All committed score rows with their ``scan_date`` (date32), optionally filtered by a
    pyarrow expression and reduced to ``columns``."""
    outputs = Outputs(out, storage_options)
    dataset = outputs.scores_dataset(outputs.run_records())
    if isinstance(dataset, pa.Table):  # no complete run yet
        return dataset.select(columns) if columns else dataset
    return with_native_read_retries(dataset.to_table, filter=filter, columns=columns)


def _row_fields(row: Any) -> dict[str, Any]:
    if isinstance(row, Mapping):
        return dict(row)
    if hasattr(row, "_asdict"):  # namedtuple, e.g. from DataFrame.itertuples()
        return dict(row._asdict())
    if hasattr(row, "to_dict"):  # pandas Series
        return dict(row.to_dict())
    raise TypeError(f"expected a scores row (mapping) or an image URI, got {type(row).__name__}")


def _latest_ok_row(loc: Location, image_uri: str) -> dict[str, Any]:
    table = read_scores(loc.uri, loc.storage_options,
                        filter=(pc.field("image_uri") == image_uri) & (pc.field("status") == "ok"),
                        columns=["map_store", "map_index", "width", "height", "scanned_at"])
    table = table.filter(pc.is_valid(table["map_store"]))
    if table.num_rows == 0:
        raise KeyError(f"no scored row with a map for {image_uri}")
    latest = int(pc.index(table["scanned_at"], pc.max(table["scanned_at"])).as_py())
    return table.slice(latest, 1).to_pylist()[0]


def read_map(row_or_uri: Any, out: str, storage_options: Mapping[str, Any] | None = None
             ) -> np.ndarray:
    """The anomaly map of a scored image, resized back to its original width x height.

    ``row_or_uri``: a scores row (mapping, namedtuple or pandas Series with ``map_store``,
    ``map_index``, ``width``, ``height``) or an ``image_uri``, in which case the newest ``ok``
    row of that image in the committed runs under ``out`` is used. Returns float32
    [height, width] in [0, 1]; KeyError for an error row or an object without a scored row.

    Example::

        rows = read_scores("s3://bucket/out").to_pandas()
        amap = read_map(rows[rows.status == "ok"].iloc[0], "s3://bucket/out")
        amap = read_map("s3://lake/line3/img_00042.png", "s3://bucket/out")  # newest ok row
        y, x = divmod(int(amap.argmax()), amap.shape[1])  # where the map peaks
    """
    loc = Location.of(out, storage_options)
    if isinstance(row_or_uri, str):
        row = _latest_ok_row(loc, row_or_uri if is_uri(row_or_uri) else normalise_uri(row_or_uri))
    else:
        row = _row_fields(row_or_uri)
    store, index = row.get("map_store"), row.get("map_index")
    if store is None or index is None or (isinstance(index, float) and np.isnan(index)):
        raise KeyError("this row has no map (status 'error' or a scan without maps)")
    amap = read_map_array(loc, str(store), int(index))
    if np.isnan(amap).any():
        raise KeyError(f"map {store}[{int(index)}] was never written")
    return resize_map(amap, int(row["width"]), int(row["height"]))


# --------------------------------------------------------------------------- SQL views

class Outputs:
    """One OUT location (local path, file:// or any fsspec URI) opened read-only, for
    ``query``, ``report`` and the demo. Storage goes through :class:`Location`, so reads get
    the same retries and credential handling as the scan itself."""

    def __init__(self, out: str, storage_options: Mapping[str, Any] | None = None) -> None:
        self.out = out
        self.storage_options = dict(storage_options or {})
        self.location = Location.of(out, self.storage_options)
        self.fs = self.location.fs
        self.root = self.location.path.rstrip("/")

    def path(self, *parts: str) -> str:
        """A path inside the filesystem (no protocol)."""
        return self.location.fs_path(*parts)

    def uri(self, *parts: str) -> str:
        """A full URI, for messages and for other libraries."""
        return self.location.join(*parts)

    def require_exists(self) -> None:
        if not self.fs.exists(self.root):
            raise FileNotFoundError(f"no such output location: {self.location.display()}")

    def run_records(self) -> list[dict]:
        """Every complete run's record, oldest first (a record is written last, at commit)."""
        return committed_records(self.location)

    def run_record(self, run_id: str | None) -> dict:
        """The record of ``run_id``; when None, of the newest complete run that wrote rows
        (a nightly rescan of an unchanged lake writes none), else simply the newest."""
        records = self.run_records()
        if not records:
            raise FileNotFoundError(f"no complete run under {self.location.display()} (no {RUNS}/*.json)")
        if run_id is None:
            with_rows = [r for r in records if (r.get("counts") or {}).get("scored")
                         or (r.get("counts") or {}).get("failed")]
            return (with_rows or records)[-1]
        for record in records:
            if record["run_id"] == run_id:
                return record
        raise FileNotFoundError(f"run {run_id!r} is not a complete run under {self.location.display()}")

    def runs_table(self, records: list[dict]) -> pa.Table:
        rows = []
        for r in records:
            counts = r.get("counts") or {}
            rows.append({
                "run_id": r["run_id"], "status": r.get("status"), "source": r.get("source"),
                "model_id": r.get("model_id"), "started_at": utc_timestamp(r.get("started_at")),
                "finished_at": utc_timestamp(r.get("finished_at")), "wall_s": r.get("wall_s"),
                "images_per_s": r.get("images_per_s"),
                **{name: counts.get(name) for name in RUN_COUNT_FIELDS},
            })
        return pa.Table.from_pylist(rows, schema=RUNS_SCHEMA)

    def vanished_table(self, records: list[dict]) -> pa.Table:
        """URIs each run found gone, with the time that run started."""
        import pyarrow.parquet as pq

        parts = []
        for r in records:
            if not (r.get("counts") or {}).get("vanished"):
                continue
            data = self.location.read_bytes(r.get("vanished_file") or vanished_name(r["run_id"]))
            uris = pq.read_table(io.BytesIO(data), columns=["image_uri"]).column("image_uri")
            detected = utc_timestamp(r.get("started_at"))
            parts.append(pa.table({
                "image_uri": uris.cast(pa.string()),
                "run_id": pa.array([r["run_id"]] * len(uris), pa.string()),
                "detected_at": pa.array([detected] * len(uris), UTC_US),
            }))
        return pa.concat_tables(parts) if parts else VANISHED_VIEW_SCHEMA.empty_table()

    def scores_dataset(self, records: list[dict]) -> Any:
        """A lazy pyarrow dataset over the committed score files, with the hive ``scan_date`` column."""
        import pyarrow.dataset as ds

        scan_date = pa.field("scan_date", pa.date32())
        files = [self.path(f) for r in records for f in r.get("files", [])]
        if not files:
            return SCORES_SCHEMA.append(scan_date).empty_table()
        return ds.dataset(files, filesystem=self.location.pyarrow_filesystem(), format="parquet",
                          schema=SCORES_SCHEMA.append(scan_date),
                          partitioning=ds.partitioning(pa.schema([scan_date]), flavor="hive"),
                          partition_base_dir=self.path(SCORES))

    def connect(self, memory_limit: str | None = None) -> Any:
        """A DuckDB connection with views ``runs``, ``scores`` (complete runs only), ``latest``,
        ``vanished``; bounded by :func:`query_memory_limit`, spilling to the system temp dir.
        Its statements rerun after a transient S3 read failure (read_retries.py; ``.raw`` is
        the plain ``duckdb`` connection)."""
        import duckdb

        with step("opening the output location"):
            self.require_exists()
        con = RetryingReads(duckdb.connect(config={
            "memory_limit": query_memory_limit(memory_limit),
            "temp_directory": os.path.join(tempfile.gettempdir(), f"vip2scan-duckdb-{os.getpid()}")}))
        con.execute("SET TimeZone = 'UTC'")
        # No progress bar: DuckDB draws it on stdout, inside `query --format csv` output.
        con.execute("SET enable_progress_bar = false")
        with step("reading run records"):
            records = self.run_records()
        con.register("runs", self.runs_table(records))
        with step("reading vanished lists"):
            con.register("vanished", self.vanished_table(records))
        with step("opening score files"):
            con.register("scores_all", self.scores_dataset(records))
        # Rows of a run whose record is missing belong to a run that is still committing.
        con.execute("CREATE VIEW scores AS SELECT * FROM scores_all WHERE run_id IN (SELECT run_id FROM runs)")
        snapshot = current_snapshot(records)
        if snapshot is None:  # an OUT written before snapshots: window over every run
            con.execute(LATEST_SQL)
        else:  # the snapshot the newest commit wrote: no window, no history read
            with step("opening the latest snapshot"):
                register_parquet(con, "latest_snapshot", self.location, list(snapshot.files),
                                 SNAPSHOT_SCHEMA.names, SNAPSHOT_SCHEMA)
            con.execute(f"CREATE VIEW latest AS SELECT {', '.join(VIEW_COLUMNS)} "
                        "FROM latest_snapshot WHERE shown")
        return con
