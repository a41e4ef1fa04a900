"""What ``vip2scan explore OUT --serve`` answers, with DuckDB over the ``latest`` snapshot.

At start-up the current objects go into one compact in-memory table (``served``: an integer id
in URI order, small integer codes for root, prefix, night and model, the status class and the
three numbers), and the rows of older nights into ``older``: a table page is then a filtered,
sorted LIMIT/OFFSET over columns in memory, whatever the lake's size on storage. Every
request gets its own cursor (DuckDB calls block: the server runs them in a thread pool).
"""

from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Mapping, Optional
from urllib.parse import quote

import pyarrow as pa

from vip2scan.jobs.explore_data import ANOMALOUS, ERROR, FLAG_ANOMALOUS, OTHER_ROWS_SQL, STATUS_ERROR

if TYPE_CHECKING:
    from vip2scan.pipeline.output.views import Outputs

MAX_PAGE_SIZE = 200
# DuckDB's memory for the served tables, spilling to disk past it ($VIP2SCAN_DUCKDB_MEMORY wins).
# At 10 M objects: 1.9 GB peak RSS with this limit, 4.6 GB without, the page's answers as quick.
SERVED_MEMORY = "1200MB"
PICTURES_KEPT = 64  # rendered pictures kept in memory (a person pages back and forth)
SORTS = {"score": "score", "mp": "mp", "area": "ar", "prefix": "pre", "night": "night", "model": "model",
         "status": f"CASE cls WHEN {ERROR} THEN 2 WHEN {ANOMALOUS} THEN 0 ELSE 1 END", "uri": "id"}
STATUSES = {"": "TRUE", "ok": f"cls < {ERROR}", "anomalous": f"cls = {ANOMALOUS}", "normal": "cls = 0",
            "error": f"cls = {ERROR}"}
SERVED_SQL = """
CREATE TABLE served AS
SELECT (row_number() OVER (ORDER BY c.image_uri) - 1)::INTEGER AS id, c.image_uri,
       r.code::SMALLINT AS root, p.code::SMALLINT AS pre, c.night::SMALLINT AS night,
       m.code::SMALLINT AS model, c.cls::TINYINT AS cls, c.score::FLOAT AS score, c.mp::FLOAT AS mp,
       c.ar::FLOAT AS ar, c.error, c.width, c.height, c.run, c.map_store, c.map_index
FROM cur c JOIN codes r ON r.kind = 'root' AND r.name = c.root
JOIN codes p ON p.kind = 'prefix' AND p.name = c.prefix
JOIN codes m ON m.kind = 'model' AND m.name = c.model_id
"""
OLDER_SQL = """
CREATE TABLE older AS
SELECT s.id, o.night, o.run, o.status, o.image_score::FLOAT AS score,
       coalesce(o.is_anomalous, FALSE) AS anomalous, o.scanned_at
FROM other_rows o JOIN served s USING (image_uri)
"""


class BadRequest(ValueError):
    """A query the page would never send: answered 400 with this text."""


class ServedLake:
    """The lake's current objects in memory, and the answers to the page's questions."""

    def __init__(self, outputs: "Outputs") -> None:
        from vip2scan.jobs.explore_aggregates import gather_meta
        from vip2scan.jobs.explore_data import open_current, read_lake
        from vip2scan.jobs.imaging import PEAK_RULE, SCALING_RULE, colour_stops

        self.outputs = outputs
        self.lake = read_lake(outputs)
        from vip2scan.pipeline.output.views import MEMORY_ENV

        self.con = outputs.connect(os.environ.get(MEMORY_ENV) or SERVED_MEMORY)
        open_current(self.con, self.lake, outputs)
        self.con.execute(OTHER_ROWS_SQL)
        self.meta = gather_meta(outputs, self.con, self.lake)
        self.meta.update({"api": True, "scaling": f"{SCALING_RULE}; {PEAK_RULE}", "colours": colour_stops(),
                          "generated_by": "vip2scan explore --serve", "rendered": 0, "max_images": 0})
        codes = [(kind, name, i) for kind, names in (("root", self.meta["roots"]), ("prefix", self.meta["prefixes"]),
                                                     ("model", self.meta["models"]))
                 for i, name in enumerate(names)]
        self.con.register("codes", pa.table({"kind": [c[0] for c in codes], "name": [c[1] for c in codes],
                                             "code": pa.array([c[2] for c in codes], pa.int32())}))
        self.con.execute(SERVED_SQL)
        self.con.execute(OLDER_SQL)
        for name in ("other_rows", "objects"):  # only served and older are asked from now on
            self.con.execute(f"DROP TABLE {name}")
        self.roots = self.meta["roots"]
        self.pictures: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self.lock = threading.Lock()

    def cursor(self) -> Any:
        return self.con.raw.cursor()

    def where(self, query: Mapping[str, str]) -> tuple[str, list[Any]]:
        """The SQL condition of the page's filters (the keys of its URL state)."""
        parts, params = [STATUSES.get(query.get("status", ""), None)], []
        if parts[0] is None:
            raise BadRequest("status must be one of: " + ", ".join(s for s in STATUSES if s))
        for name, column in (("prefix", "pre"), ("model", "model")):
            if query.get(name, "") != "":
                parts.append(f"{column} = ?")
                params.append(whole(query[name], name))
        if query.get("night", "") != "":
            parts.append("(night = ? OR id IN (SELECT id FROM older WHERE night = ?))")
            params += [whole(query["night"], "night")] * 2
        for name, op in (("smin", ">="), ("smax", "<=")):
            if query.get(name, "") != "":
                parts.append(f"score {op} ?")
                params.append(finite(query[name], name))
        return " AND ".join(parts), params

    def rows(self, query: Mapping[str, str]) -> dict[str, Any]:
        """One table page: the count matching the filters and the page's rows."""
        where, params = self.where(query)
        sort = query.get("sort") or "score"
        if sort not in SORTS:
            raise BadRequest("sort must be one of: " + ", ".join(SORTS))
        descending = (query.get("dir") or "-1").lstrip("+") != "1"
        page, size = whole(query.get("page", "0"), "page"), whole(query.get("size", "50"), "size")
        if not 1 <= size <= MAX_PAGE_SIZE:
            raise BadRequest(f"size must be 1 to {MAX_PAGE_SIZE}")
        order = f"{SORTS[sort]} {'DESC' if descending else 'ASC'} NULLS LAST" + (", id" if sort != "uri" else "")
        cur = self.cursor()
        try:
            total = cur.execute(f"SELECT count(*) FROM served WHERE {where}", params).fetchall()[0][0]
            rows = records(cur, f"SELECT id, image_uri, root, pre, night, model, cls, score, mp, ar, error FROM served "
                                f"WHERE {where} ORDER BY {order} LIMIT {size} OFFSET {page * size}", params)
        finally:
            cur.close()
        return {"total": int(total), "rows": [row_shape(r, self.roots) for r in rows]}

    def current(self, cur: Any, uri: str) -> dict[str, Any]:
        found = records(cur, "SELECT * FROM served WHERE image_uri = ?", [uri])
        if not found:  # never read a URI that is not a current object of OUT
            raise LookupError("not a current object of this OUT")
        return found[0]

    def object(self, uri: str) -> dict[str, Any]:
        """An object's row, details and history, and its rendering (drawn now) if it has a map."""
        cur = self.cursor()
        try:
            row = self.current(cur, uri)
            older = cur.execute("SELECT night, run, status, score, anomalous FROM older WHERE id = ? "
                                "ORDER BY scanned_at, run", [row["id"]]).fetchall()
        finally:
            cur.close()
        history = [[int(n), -1 if r is None else int(r), 0 if s == "ok" else 1, rounded(v) if s == "ok" else None,
                    int(bool(a) and s == "ok")] for n, r, s, v, a in older]
        ok = row["cls"] != ERROR
        run = -1 if row["run"] is None else int(row["run"])
        history.append([row["night"], run, 0 if ok else 1,
                        rounded(row["score"]) if ok else None, int(row["cls"] == ANOMALOUS)])
        render = self.render(row) if ok and row["map_store"] is not None and row["map_index"] is not None else None
        detail = [row["error"], row["width"], row["height"], run, history, render]
        return {"row": row_shape(row, self.roots), "detail": detail}

    def render(self, row: dict[str, Any]) -> Optional[dict[str, Any]]:
        """Draw the object's pictures with the export's imaging code (colours over this map's
        own range: there is no pre-rendered set of its run to share one with)."""
        from vip2scan.jobs.explorer_page import render_picture
        from vip2scan.jobs.imaging import display_range
        from vip2scan.pipeline.output.map_store import read_map_array

        amap = read_map_array(self.outputs.location, str(row["map_store"]), int(row["map_index"]))
        if amap.size == 0 or not (amap == amap).any():
            return None
        uri = row["image_uri"]
        image, heat, info = render_picture(self.outputs, uri, int(row["width"]), int(row["height"]), amap,
                                           display_range([amap]))
        with self.lock:
            for kind, data in (("image", image), ("map", heat)):
                if data is not None:
                    self.pictures[(uri, kind)] = data
            while len(self.pictures) > 2 * PICTURES_KEPT:
                self.pictures.popitem(last=False)
        link = "api/picture?uri=" + quote(uri, safe="")
        return {**info, "src": link + "&kind=image", "map": link + "&kind=map"}

    def picture(self, uri: str, kind: str) -> bytes:
        """A PNG of the object (``image``) or of its map (``map``), drawn when not kept."""
        if kind not in ("image", "map"):
            raise BadRequest("kind must be image or map")
        with self.lock:
            data = self.pictures.get((uri, kind))
        if data is None:
            cur = self.cursor()
            try:
                row = self.current(cur, uri)
            finally:
                cur.close()
            if row["cls"] == ERROR or row["map_store"] is None or row["map_index"] is None or not self.render(row):
                raise LookupError("no map stored for this object")
            with self.lock:
                data = self.pictures.get((uri, kind))
            if data is None:
                raise LookupError("the object could not be read now")
        return data


def records(cur: Any, sql: str, params: list[Any]) -> list[dict[str, Any]]:
    rows = cur.execute(sql, params).fetchall()
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row)) for row in rows]


def row_shape(row: dict[str, Any], roots: list[str]) -> dict[str, Any]:
    """A table row as the page reads it (the static index's fields, by name)."""
    cls = row["cls"]
    return {"uri": row["image_uri"], "key": row["image_uri"][len(roots[row["root"]]):], "pre": row["pre"], "night": row["night"],
            "model": row["model"], "f": STATUS_ERROR if cls == ERROR else FLAG_ANOMALOUS if cls == ANOMALOUS else 0,
            "sc": none_if_nan(row["score"]), "mp": none_if_nan(row["mp"]), "ar": none_if_nan(row["ar"]),
            "reason": (row["error"] or "") if cls == ERROR else ""}


def none_if_nan(value: Optional[float]) -> Optional[float]:
    return None if value is None or not math.isfinite(value) else float(value)


def rounded(value: Optional[float]) -> Optional[float]:
    return None if value is None or not math.isfinite(value) else round(float(value), 6)


def whole(text: str, name: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise BadRequest(f"{name} must be a whole number") from None
    if value < 0:
        raise BadRequest(f"{name} must not be negative")
    return value


def finite(text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise BadRequest(f"{name} must be a number") from None
    if not math.isfinite(value):
        raise BadRequest(f"{name} must be a finite number")
    return value
