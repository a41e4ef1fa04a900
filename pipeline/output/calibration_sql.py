"""Calibration and per-row thresholds as DuckDB queries, so `calibrate` and `report` stay
within DuckDB's memory limit at any lake size instead of copying every row into Python.

The ``--by`` glob becomes one regular expression (:func:`~vip2scan.pipeline.globs.glob_regex`) that means what
``fnmatch`` means in :func:`~.calibration.group_of` and that RE2 (DuckDB) and Python's ``re``
both read; groups are worked out once per distinct folder and joined back to the rows.
Quantiles are numpy's linear ones: DuckDB finds the two order statistics around the
(n - 1) * q position and numpy interpolates between them, so thresholds are bit-equal.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa

from ..globs import glob_regex
from .views import MEMORY_ENV, sql_str

# calibrate and report hold a lake's scores in DuckDB: 1 GB keeps them (with Python and
# Arrow) under 1.5 GiB; above it DuckDB spills to its temp directory.
ANALYST_MEMORY = "1GB"
CASED = r"\p{Lu}\p{Ll}\p{Lt}"
CASE_IGNORABLE = r"\p{Mn}\p{Me}\p{Cf}\p{Lm}\p{Sk}'.:\x{B7}\x{2019}"
# Python lowers a word-final capital sigma to 'ς' and 'İ' to 'i̇' (two code points); DuckDB's
# lower() does neither, so those two are spelled out before it.
FINAL_SIGMA = (f"([{CASED}][{CASE_IGNORABLE}]*)\u03a3([{CASE_IGNORABLE}]*(?:[^{CASED}"
               f"{CASE_IGNORABLE}]|$))")


def analyst_memory() -> str:
    """DuckDB's memory limit for calibrate and report ($VIP2SCAN_DUCKDB_MEMORY wins)."""
    return os.environ.get(MEMORY_ENV) or ANALYST_MEMORY


def by_pattern(by: str) -> str:
    """The pattern :func:`~.calibration.group_of` matches folder prefixes against."""
    return by.lower() if by.endswith("/") else by.lower() + "/"


def sql_lower(expr: str) -> str:
    """SQL lowering ``expr`` as Python's str.lower() does."""
    spelled = f"replace({expr}, '\u0130', 'i\u0307')"
    return f"lower(regexp_replace({spelled}, {sql_str(FINAL_SIGMA)}, '\\1\u03c2\\2', 'g'))"


def folder_groups_sql(dirs: str, roots: Sequence[str], by: str) -> str:
    """SELECT dir, root, grp FROM ``dirs`` (a relation of distinct ``dir``: a URI up to its
    last '/'): :func:`~.calibration.relative_key` and :func:`~.calibration.group_of` in SQL."""
    root_list = "[" + ", ".join(sql_str(r.rstrip("/") + "/") for r in roots) + "]::VARCHAR[]"
    regex = sql_str(glob_regex(by_pattern(by)))
    return f"""
    WITH r AS (
        SELECT dir, [x FOR x IN {root_list} IF starts_with(dir, x)][1] AS source FROM {dirs}
    ), k AS (
        SELECT dir,
            CASE WHEN source IS NOT NULL THEN source
                 WHEN contains(dir, '://') THEN dir[:strpos(dir, '://') + 2] ELSE '' END AS root,
            CASE WHEN source IS NOT NULL THEN substring(dir, length(source) + 1)
                 WHEN contains(dir, '://') THEN substring(dir, strpos(dir, '://') + 3)
                 ELSE dir END AS key
        FROM r
    ), p AS (
        SELECT dir, root, string_split(key, '/') AS parts FROM k
    )
    SELECT dir, root,
        [x FOR x IN [array_to_string(parts[1:i], '/') || '/' FOR i IN range(1, len(parts))]
         IF regexp_full_match({sql_lower('x')}, {regex})][1] AS grp
    FROM p
    """


DIR_SQL = "regexp_replace({}, '[^/]*$', '')"  # up to the last '/', '' without one


def threshold_sql(con: Any, uri: str, default: float,
                  by_prefix: Mapping[str, float] | Sequence[tuple[str, float]]) -> tuple[str, str]:
    """(LEFT JOINs to append to a FROM clause, a SQL expression for each row's image threshold)
    as :func:`~.calibration.row_thresholds`: the longest prefix of ``uri`` with a threshold,
    else ``default``. One hash join per prefix length (registered as ``row_limits``), so
    thousands of prefixes cost what a few do."""
    pairs = dict(by_prefix)
    con.register("row_limits", pa.table({
        "length": pa.array([len(p) for p in pairs], pa.int64()),
        "prefix": pa.array(list(pairs), pa.string()),
        "threshold": pa.array([float(v) for v in pairs.values()], pa.float64())}))
    # The default rides in the table too: a float literal in SQL could round differently.
    con.register("row_limit_default", pa.table({"threshold": pa.array([float(default)],
                                                                      pa.float64())}))
    lengths = sorted({len(p) for p in pairs}, reverse=True)
    joins = " ".join(
        f"LEFT JOIN (SELECT prefix, threshold FROM row_limits WHERE length = {length}) AS rl{i} "
        f"ON rl{i}.prefix = left({uri}, {length})" for i, length in enumerate(lengths))
    picked = [f"rl{i}.threshold" for i in range(len(lengths))]
    default_sql = "(SELECT threshold FROM row_limit_default)"
    return f"{joins} ", f"coalesce({', '.join([*picked, default_sql])})"


def lerp_quantile(n: int, q: float, lo: float, hi: float) -> float:
    """numpy's linear quantile of n sorted values from the two around (n - 1) * q."""
    position = (n - 1) * np.float64(q)
    gamma = position - np.floor(position)
    return float(np.quantile(np.array([lo, hi], dtype=np.float64), gamma))


@dataclass(frozen=True)
class GroupStats:
    """One group's counts and (with enough scores) its quantile."""

    root: str
    group: str
    n_scores: int
    flagged_before: int
    quantile: float | None = None
    flagged_after: int = 0


def load_rows(con: Any, rows_sql: str, roots: Sequence[str], by: str | None) -> None:
    """TEMP TABLE cal(gid, score, flagged) and cal_groups(gid, root, grp) from ``rows_sql``
    (image_uri, score, flagged); gid is NULL for rows under no group (or without ``by``)."""
    con.execute(f"CREATE OR REPLACE TEMP VIEW cal_rows AS {rows_sql}")
    if not by:
        con.execute("CREATE OR REPLACE TEMP TABLE cal_groups (gid INTEGER, root VARCHAR, grp VARCHAR)")
        con.execute("CREATE OR REPLACE TEMP TABLE cal AS "
                    "SELECT NULL::INTEGER AS gid, score, flagged FROM cal_rows")
        return
    # The URIs are read and cut to their folder once; groups are worked out per folder.
    con.execute("CREATE OR REPLACE TEMP TABLE cal_uris AS SELECT "
                f"{DIR_SQL.format('image_uri')} AS dir, score, flagged FROM cal_rows")
    dirs = "(SELECT DISTINCT dir FROM cal_uris)"
    con.execute(f"CREATE OR REPLACE TEMP TABLE cal_dirs AS {folder_groups_sql(dirs, roots, by)}")
    con.execute("CREATE OR REPLACE TEMP TABLE cal_groups AS SELECT (row_number() OVER "
                "(ORDER BY grp, root))::INTEGER AS gid, root, grp FROM "
                "(SELECT DISTINCT root, grp FROM cal_dirs WHERE grp IS NOT NULL)")
    con.execute("""CREATE OR REPLACE TEMP TABLE cal AS
        SELECT g.gid, r.score, r.flagged FROM cal_uris r JOIN cal_dirs d USING (dir)
        LEFT JOIN cal_groups g ON g.root = d.root AND g.grp = d.grp""")
    con.execute("DROP TABLE cal_uris")


def order_statistics(con: Any, wanted: dict[int | None, int]) -> dict[int | None, list[float]]:
    """gid -> [the k-th, (k+1)-th] smallest scores (0-based k, those that exist) by sorting
    each group; gid None: over all rows, not only those under no group."""
    if not wanted:
        return {}
    con.register("cal_wanted", pa.table({"gid": pa.array([-1 if g is None else g for g in wanted],
                                                         pa.int32()),
                                         "k": pa.array(list(wanted.values()), pa.int64())}))
    found: dict[int | None, list[float]] = {g: [] for g in wanted}
    parts = []
    if None in wanted:
        parts.append("SELECT -1 AS gid, score, row_number() OVER (ORDER BY score) - 1 AS i FROM cal")
    if any(g is not None for g in wanted):
        parts.append("SELECT gid, score, row_number() OVER (PARTITION BY gid ORDER BY score) - 1 "
                     "AS i FROM cal WHERE gid IN (SELECT gid FROM cal_wanted)")
    rows = con.execute(f"SELECT o.gid, o.i, o.score FROM ({' UNION ALL '.join(parts)}) o "
                       "JOIN cal_wanted w ON w.gid = o.gid AND o.i IN (w.k, w.k + 1) "
                       "ORDER BY o.gid, o.i").fetchall()
    con.unregister("cal_wanted")
    for gid, _, score in rows:
        found[None if gid == -1 else gid].append(float(score))
    return found


def candidate_quantiles(con: Any, q: float, gids: Sequence[int]) -> dict[int | None, float]:
    """DuckDB's quantile_cont of all scores (None) and of each group in ``gids``: a value
    between the two order statistics numpy interpolates, found without sorting."""
    found = {None: con.execute("SELECT quantile_cont(score, ?) FROM cal", [q]).fetchall()[0][0]}
    if gids:
        found.update(con.execute(
            "SELECT gid, quantile_cont(score, ?) FROM cal WHERE gid IN "
            "(SELECT unnest(?::INTEGER[])) GROUP BY gid", [q, list(gids)]).fetchall())
    return found


def rank_value(rank: int, n_below: int, n_at: int, below: float | None, at: float,
               above: float | None) -> float | None:
    """The rank-th smallest score (0-based), from how many scores lie below and at ``at``
    and the nearest scores either side; None when it lies further from ``at``."""
    if n_below <= rank < n_below + n_at:
        return at
    if rank == n_below - 1:
        return below
    if rank == n_below + n_at:
        return above
    return None


def near_quantile_statistics(con: Any, q: float, wanted: dict[int | None, int]
                             ) -> dict[int | None, list[float]]:
    """:func:`order_statistics` in two passes without a sort: around DuckDB's own quantile,
    checked by counting; groups where that check fails are left out (the caller sorts)."""
    import duckdb

    try:
        found = candidate_quantiles(con, q, [g for g in wanted if g is not None])
    except duckdb.OutOfMemoryException:
        return {}  # quantile_cont holds a group's scores in memory; the sort can spill
    candidates = {g: c for g, c in found.items() if c is not None and g in wanted}
    if not candidates:
        return {}
    con.register("cal_cand", pa.table({
        "gid": pa.array([-1 if g is None else g for g in candidates], pa.int32()),
        "c": pa.array([float(c) for c in candidates.values()], pa.float64())}))
    around = ("count(*) FILTER (score < k.c), count(*) FILTER (score = k.c), "
              "max(score) FILTER (score < k.c), min(score) FILTER (score > k.c)")
    parts = [f"SELECT k.gid, count(*), {around} FROM cal JOIN cal_cand k ON k.gid = cal.gid "
             "GROUP BY k.gid"]
    if None in candidates:
        parts.append(f"SELECT -1, count(*), {around} FROM cal, cal_cand k WHERE k.gid = -1")
    rows = con.execute(" UNION ALL ".join(parts)).fetchall()
    con.unregister("cal_cand")
    found: dict[int | None, list[float]] = {}
    for gid, n, n_below, n_at, below, above in rows:
        gid = None if gid == -1 else gid
        k = wanted[gid]
        pair = [rank_value(r, n_below, n_at, below, candidates[gid], above)
                for r in (k, min(k + 1, n - 1))]
        if None not in pair:
            found[gid] = [float(v) for v in pair]
    return found


def quantile_of(n: int, q: float, stats: list[float]) -> float:
    lo = stats[0]
    return lerp_quantile(n, q, lo, stats[1] if len(stats) > 1 else lo)


def calibration_stats(con: Any, rate: float, minimum: int) -> tuple[GroupStats, list[GroupStats]]:
    """(all rows, each group) over TEMP TABLE cal: counts, (1 - rate) quantiles of groups with
    at least ``minimum`` scores, and what those thresholds (else the overall one) flag."""
    q = 1.0 - rate
    names = {gid: (root, grp) for gid, root, grp in con.execute(
        "SELECT gid, root, grp FROM cal_groups").fetchall()}
    counts = {gid: (int(n), int(f)) for gid, n, f in con.execute(
        "SELECT gid, count(*), count(*) FILTER (flagged) FROM cal GROUP BY gid").fetchall()}
    total = sum(n for n, _ in counts.values())
    wanted: dict[int | None, int] = {None: int(np.floor((total - 1) * np.float64(q)))}
    wanted.update({gid: int(np.floor((counts[gid][0] - 1) * np.float64(q))) for gid in names
                   if counts[gid][0] >= minimum})
    ranks = near_quantile_statistics(con, q, wanted)
    ranks.update(order_statistics(con, {g: k for g, k in wanted.items() if g not in ranks}))
    overall = quantile_of(total, q, ranks[None])
    quantiles = {gid: quantile_of(counts[gid][0], q, ranks[gid]) for gid in wanted if gid is not None}
    limits = [(gid, quantiles.get(gid, overall)) for gid in names]
    con.register("cal_limits", pa.table({"gid": pa.array([g for g, _ in limits], pa.int32()),
                                         "limit": pa.array([v for _, v in limits], pa.float64())}))
    after = dict(con.execute(
        "SELECT c.gid, count(*) FILTER (c.score >= coalesce(l.limit, ?)) FROM cal c "
        "LEFT JOIN cal_limits l ON l.gid = c.gid GROUP BY c.gid", [overall]).fetchall())
    con.unregister("cal_limits")
    groups = [GroupStats(root, grp, counts[gid][0], counts[gid][1], quantiles.get(gid),
                         int(after.get(gid, 0))) for gid, (root, grp) in sorted(names.items())]
    everything = GroupStats("", "", total, sum(f for _, f in counts.values()), overall,
                            sum(int(v) for v in after.values()))
    return everything, groups
