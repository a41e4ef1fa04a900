"""Read-only access to a scan's output tree for `query` and `report`.

Layout (issue 3): ``OUT/scores/scan_date=YYYY-MM-DD/<run_id>-<part>.parquet``,
``OUT/maps/<run_id>.zarr``, ``OUT/runs/<run_id>.json`` (written last: a run is complete
exactly when its record exists), ``OUT/_staging/``, ``OUT/_lock``, ``OUT/reports/``.

Everything goes through fsspec + pyarrow (DuckDB's httpfs extension is not assumed to
be installable, e.g. offline), and the Parquet files are handed to DuckDB as an Arrow
dataset, which DuckDB scans lazily with projection and filter pushdown, so a query
does not load the whole table into memory.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Optional

import pyarrow as pa

RUN_COUNT_FIELDS = ("listed", "new", "changed", "unchanged", "vanished", "scored", "failed")

RUNS_SCHEMA = pa.schema(
    [("run_id", pa.string()), ("status", pa.string()), ("source", pa.string()), ("model_id", pa.string()),
     ("started_at", pa.timestamp("us", tz="UTC")), ("finished_at", pa.timestamp("us", tz="UTC")),
     ("wall_s", pa.float64()), ("images_per_s", pa.float64())]
    + [(name, pa.int64()) for name in RUN_COUNT_FIELDS]
)
VANISHED_SCHEMA = pa.schema(
    [("image_uri", pa.string()), ("run_id", pa.string()), ("detected_at", pa.timestamp("us", tz="UTC"))]
)

# `latest`: newest row per object; an object whose newest row predates the run that
# found it gone is dropped (it vanished); one that reappeared and was rescanned is kept.
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


def _timestamp(value: Any) -> Optional[datetime]:
    if value in (None, ""):
        return None
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, tz=timezone.utc)
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


class Outputs:
    """One OUT location (local path, file:// or any fsspec URI) opened read-only.

    Storage goes through the pipeline's ``Location`` so reads get the same retries on
    transient errors and the same credential handling as the scan itself.
    """

    def __init__(self, out: str, storage_options: Optional[dict] = None) -> None:
        from vip2scan.pipeline.storage import Location

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

    # ------------------------------------------------------------------ run records
    def run_records(self) -> list[dict]:
        """Every complete run's record, oldest first (a record is written last, at commit)."""
        from vip2scan.pipeline.state import STATUS_COMPLETE, list_records

        return [r for r in list_records(self.location) if r.get("status", STATUS_COMPLETE) == STATUS_COMPLETE]

    def run_record(self, run_id: Optional[str]) -> dict:
        """The record of ``run_id``; when None, of the newest complete run that wrote rows
        (a nightly rescan of an unchanged lake writes none), else simply the newest."""
        records = self.run_records()
        if not records:
            raise FileNotFoundError(f"no complete run under {self.location.display()} (no runs/*.json)")
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
                "model_id": r.get("model_id"), "started_at": _timestamp(r.get("started_at")),
                "finished_at": _timestamp(r.get("finished_at")), "wall_s": r.get("wall_s"),
                "images_per_s": r.get("images_per_s"),
                **{name: counts.get(name) for name in RUN_COUNT_FIELDS},
            })
        return pa.Table.from_pylist(rows, schema=RUNS_SCHEMA)

    def vanished_table(self, records: list[dict]) -> pa.Table:
        """URIs each run found gone, with the time that run started."""
        import io

        import pyarrow.parquet as pq
        from vip2scan.pipeline.state import vanished_name

        parts = []
        for r in records:
            if not (r.get("counts") or {}).get("vanished"):
                continue
            data = self.location.read_bytes(r.get("vanished_file") or vanished_name(r["run_id"]))
            uris = pq.read_table(io.BytesIO(data), columns=["image_uri"]).column("image_uri")
            detected = _timestamp(r.get("started_at"))
            parts.append(pa.table({
                "image_uri": uris.cast(pa.string()),
                "run_id": pa.array([r["run_id"]] * len(uris), pa.string()),
                "detected_at": pa.array([detected] * len(uris), VANISHED_SCHEMA.field("detected_at").type),
            }))
        return pa.concat_tables(parts) if parts else VANISHED_SCHEMA.empty_table()

    # ------------------------------------------------------------------ scores
    def scores_dataset(self, records: list[dict]) -> Any:
        """A lazy pyarrow dataset over the committed score files, with the hive ``scan_date`` column.

        The files come from the complete runs' records (what the scan committed), so
        files of a run still being committed are not even opened.
        """
        import pyarrow.dataset as ds
        from vip2scan.pipeline.sinks import SCORES_SCHEMA

        scan_date = pa.field("scan_date", pa.date32())
        files = [self.path(f) for r in records for f in r.get("files", [])]
        if not files:
            return SCORES_SCHEMA.append(scan_date).empty_table()
        return ds.dataset(files, filesystem=self.location.pyarrow_filesystem(), format="parquet",
                          schema=SCORES_SCHEMA.append(scan_date),
                          partitioning=ds.partitioning(pa.schema([scan_date]), flavor="hive"),
                          partition_base_dir=self.path("scores"))

    def connect(self) -> Any:
        """A DuckDB connection with views ``runs``, ``scores`` (complete runs only), ``latest``, ``vanished``."""
        import duckdb

        self.require_exists()
        con = duckdb.connect()
        con.execute("SET TimeZone = 'UTC'")
        records = self.run_records()
        con.register("runs", self.runs_table(records))
        con.register("vanished", self.vanished_table(records))
        con.register("scores_all", self.scores_dataset(records))
        # Rows of a run whose record is missing belong to a run that is still committing.
        con.execute("CREATE VIEW scores AS SELECT * FROM scores_all WHERE run_id IN (SELECT run_id FROM runs)")
        con.execute(LATEST_SQL)
        return con
