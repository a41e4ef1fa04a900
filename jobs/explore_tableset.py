"""The static explorer's table set: at most ``table_rows`` current objects, chosen in DuckDB
(the most anomalous overall, then the most anomalous of each prefix, so that page 1 of any
prefix sorted by score is exact, then error rows), with the per-object details the page shows
for them in chunk files keyed by a hash of the object's URI: one changed object rewrites one
chunk file, not all of them."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from vip2scan.jobs.explore_data import ANOMALOUS, ERROR, FLAG_ANOMALOUS, STATUS_ERROR, Lake

if TYPE_CHECKING:
    import pyarrow as pa

DEFAULT_TABLE_ROWS = 50_000
BUCKET_ROWS = 1000  # objects per chunk file, on average
ERROR_SHARE = 10  # at most table_rows // ERROR_SHARE error rows in a subset
# Scores as integers of 1e-9: distinct float32 scores near 0.5 stay distinct, so the page sorts
# them as DuckDB does (at 1e-6 neighbours tie and fall back to URI order).
SCORE_SCALE = 1e9

TABLE_SQL = """
SELECT image_uri, root, key, prefix, night, model_id, cls, score, mp, ar, error, width, height,
       run_id, map_store, map_index
FROM cur SEMI JOIN table_set USING (image_uri) ORDER BY image_uri
"""


@dataclass
class TableSet:
    """The table's rows (by URI) and what the page needs of them."""

    rows: "pa.Table"
    n_lake: int
    buckets: int
    history: dict[str, list[list]] = field(default_factory=dict)
    other_nights: dict[str, list[int]] = field(default_factory=dict)
    rendered: dict[str, dict[str, Any]] = field(default_factory=dict)  # by URI

    @property
    def subset(self) -> bool:
        return self.rows.num_rows < self.n_lake


def bucket_count(n: int) -> int:
    """A power of two near n / BUCKET_ROWS: it changes only when the table doubles."""
    return 1 << max(0, int(np.ceil(np.log2(max(1, n) / BUCKET_ROWS))))


def bucket_of(uri: str, buckets: int) -> int:
    return zlib.crc32(uri.encode("utf-8", "surrogatepass")) % buckets


def select_table_set(con: Any, lake: Lake, table_rows: int, n_prefixes: int) -> TableSet:
    """Create the ``table_set`` table on ``con`` and read its rows."""
    n_lake = con.execute("SELECT count(*) FROM objects").fetchall()[0][0]
    if n_lake <= table_rows:
        con.execute("CREATE OR REPLACE TEMP TABLE table_set AS SELECT image_uri FROM objects")
    else:
        top, errors = table_rows // 2, table_rows // ERROR_SHARE
        per_prefix = max(1, (table_rows - top - errors) // max(1, n_prefixes))
        con.execute(f"""
CREATE OR REPLACE TEMP TABLE table_set AS
(SELECT image_uri FROM objects WHERE cls < {ERROR} ORDER BY score DESC NULLS LAST, image_uri LIMIT {top})
UNION
(SELECT image_uri FROM objects WHERE cls < {ERROR}
 QUALIFY row_number() OVER (PARTITION BY prefix ORDER BY score DESC NULLS LAST, image_uri) <= {per_prefix})
UNION
(SELECT image_uri FROM objects WHERE cls = {ERROR} ORDER BY image_uri LIMIT {errors})""")
    rows = con.sql(TABLE_SQL).to_arrow_table()
    table = TableSet(rows=rows, n_lake=int(n_lake), buckets=bucket_count(min(n_lake, table_rows)))
    read_history(con, lake, table)
    return table


def read_history(con: Any, lake: Lake, table: TableSet) -> None:
    """Every row of the set's objects, oldest first, as [night, run, 0 ok / 1 error, score
    (6 decimals) or null, 0/1 anomalous]; and the nights of their older rows."""
    current = con.execute("""
        SELECT image_uri, night, run, CASE WHEN cls = 2 THEN 'error' ELSE 'ok' END, score, cls, NULL AS scanned
        FROM objects SEMI JOIN table_set USING (image_uri)
        UNION ALL
        SELECT image_uri, night, run, status, image_score, CASE WHEN is_anomalous THEN 1 ELSE 0 END,
               scanned_at FROM other_rows SEMI JOIN table_set USING (image_uri)
        ORDER BY image_uri, scanned NULLS LAST, run""").fetchall()
    for uri, night, run, status, score, cls, scanned in current:
        ok = status == "ok"
        value = round(float(score), 6) if ok and score is not None and np.isfinite(score) else None
        table.history.setdefault(uri, []).append(
            [int(night), -1 if run is None else int(run), 0 if ok else 1, value, int(ok and cls == ANOMALOUS)])
        if scanned is not None:
            table.other_nights.setdefault(uri, []).append(int(night))


def scaled(values: list, factor: float) -> list[Optional[int]]:
    """Floats as integers of ``factor`` (compact JSON); NaN or null -> null."""
    out = np.round(np.asarray([np.nan if v is None else v for v in values], dtype=np.float64) * factor)
    return [None if not np.isfinite(v) else int(v) for v in out]


def table_index(table: TableSet, meta: dict[str, Any], pictures: dict[str, str]) -> dict[str, list]:
    """One compact column per field the table filters and sorts on (row i = the i-th object
    of the set by URI); ``pictures``: URI -> the base name of its pre-rendered files."""
    from vip2scan.jobs.explore_data import FLAG_IMAGE, FLAG_RENDERED

    rows = table.rows
    column = {name: rows.column(name).to_pylist() for name in
              ("image_uri", "root", "key", "prefix", "night", "model_id", "cls", "score", "mp", "ar", "error")}
    codes = {name: {v: i for i, v in enumerate(meta[name])} for name in ("roots", "prefixes", "models")}
    flags = []
    for j, (uri, cls) in enumerate(zip(column["image_uri"], column["cls"])):
        f = STATUS_ERROR if cls == ERROR else FLAG_ANOMALOUS if cls == ANOMALOUS else 0
        render = table.rendered.get(uri)
        if render:
            f |= FLAG_RENDERED | (FLAG_IMAGE if render["img"] else 0)
        flags.append(f)
    uris = column["image_uri"]
    return {
        "k": column["key"], "root": [codes["roots"][r] for r in column["root"]],
        "pre": [codes["prefixes"][p] for p in column["prefix"]], "night": column["night"],
        "model": [codes["models"][m] for m in column["model_id"]], "f": flags,
        "sc": scaled(column["score"], SCORE_SCALE), "mp": scaled(column["mp"], 1e4), "ar": scaled(column["ar"], 1e5),
        "b": [bucket_of(u, table.buckets) for u in uris],
        "hn": [[j, sorted(set(table.other_nights[u]) - {column["night"][j]})] for j, u in enumerate(uris)
               if set(table.other_nights.get(u, ())) - {column["night"][j]}],
        "er": [[j, e or ""] for j, (e, c) in enumerate(zip(column["error"], column["cls"])) if c == ERROR],
        "im": [[j, pictures[u]] for j, u in enumerate(uris) if u in pictures],
    }


def chunks(table: TableSet, lake: Lake) -> dict[int, dict[str, list]]:
    """Per bucket: URI -> [error, width, height, run index, history, rendering or null]."""
    run_index = {r: i for i, r in enumerate(lake.run_ids)}
    out: dict[int, dict[str, list]] = {b: {} for b in range(table.buckets)}
    columns = {name: table.rows.column(name).to_pylist()
               for name in ("image_uri", "error", "width", "height", "run_id")}
    for uri, error, width, height, run in zip(*columns.values()):
        out[bucket_of(uri, table.buckets)][uri] = [
            error, width, height, run_index.get(run, -1), table.history.get(uri, []), table.rendered.get(uri)]
    return out
