"""calibrate's DuckDB computations against plain Python and numpy on fabricated rows (no OUT,
no model): the --by glob as SQL gives group_of's groups on awkward keys, per-group quantiles
and flagged counts are numpy's, per-row thresholds are the longest matching prefix's."""

from __future__ import annotations

import fnmatch
import re

import duckdb
import numpy as np
import pyarrow as pa
import pytest

ROOTS = ["s3://lake", "s3://lake/line1"]  # a parent and a sub-prefix scan, as records name them
AWKWARD_KEYS = [
    "line1/d1/x.png", "LINE2/day 01/x.png", "line1/x.png", "x.png", "misc/deep/er/x.png",
    "ünïcødé/ΟΔΟΣ/x.png", "ΟΔΟΣ/x.png", "ΣΑΣ ΣΑ/x.png", "İstanbul/x.png", "Straße/x.png",
    "100%_done/x.png", "_/x.png", "%/x.png", "br[acket]/x.png", "[/x.png", "st*r/x.png",
    "it's/x.png", 'say "hi"/x.png', "a b/c d/x.png", "a\\b/x.png", "a//b/x.png", "日本/x.png",
    "line3/ /x.png", "-/x.png", "!/x.png", "^/x.png",
]
OUTSIDE = ["s3://other-bucket/line1/x.png", "s3://lake-other/line1/x.png", "gs://lake/line1/x.png"]
PATTERNS = [
    "line*/", "Line*", "*/d1/", "*", "**/", "?/", "*/*/", "[!a-l]*/", "[%_]*", "%*", "_*",
    "*[*]*/", "[]x]*/", "[z-a]/", "[!]/", "[/", "br[[]acket]/", "it's*", 'say "*', "a b/",
    "a\\b/", "ünï*/", "ünïcødé/οδος/", "ΟΔΟΣ/", "σας σα/", "i̇stanbul/", "STRASSE/", "straße/",
    "line[0-9]/", "line[!0-2]/", "[a-c-]*/", "[--/]/", "[\\-^]/", "a/", "a//", "日*/",
    "line3/ /", "[^!]/", "[!!]/",
]


def uris() -> list[str]:
    return [f"s3://lake/{k}" for k in AWKWARD_KEYS] + OUTSIDE


def python_group(uri: str, by: str) -> tuple[str, str] | None:
    from vip2scan.pipeline.output.calibration import group_of, relative_key

    root, key = relative_key(uri, ROOTS)
    group = group_of(key, by)
    return None if group is None else (root, group)


def sql_groups(con, all_uris: list[str], by: str) -> dict[str, tuple[str, str] | None]:
    from vip2scan.pipeline.output.calibration_sql import DIR_SQL, folder_groups_sql

    con.register("uris", pa.table({"image_uri": all_uris}))
    dirs = f"(SELECT DISTINCT {DIR_SQL.format('image_uri')} AS dir FROM uris)"
    found = {d: None if g is None else (r, g)
             for d, r, g in con.execute(folder_groups_sql(dirs, ROOTS, by)).fetchall()}
    return {u: found[u[:u.rfind("/") + 1]] for u in all_uris}


def test_the_by_glob_in_sql_gives_the_groups_group_of_gives():
    from vip2scan.pipeline.output.calibration_sql import by_pattern, glob_regex

    con = duckdb.connect()
    matched = 0
    for by in PATTERNS:
        # The one translation, read by Python's re, agrees with fnmatch itself...
        for key in AWKWARD_KEYS:
            for i in [i for i, c in enumerate(key) if c == "/"]:
                prefix = key[:i + 1].lower()
                assert bool(re.fullmatch(glob_regex(by_pattern(by)), prefix)) == \
                    fnmatch.fnmatchcase(prefix, by_pattern(by)), (by, prefix)
        # ...and read by DuckDB over whole URIs, with roots and lowering, gives group_of's groups.
        got = sql_groups(con, uris(), by)
        for uri in uris():
            assert got[uri] == python_group(uri, by), (by, uri)
            matched += got[uri] is not None
    assert matched > 100  # most patterns match something: the comparison is not of Nones


def naive_threshold(uri: str, default: float, by_prefix: dict[str, float]) -> float:
    matching = [p for p in by_prefix if uri.startswith(p)]
    return by_prefix[max(matching, key=len)] if matching else default


def fabricated_rows(seed: int = 3) -> pa.Table:
    """Scores (rounded, so ties occur) under lines of different sizes, one line too small
    for its own quantile, objects right under the root and outside it."""
    rng = np.random.default_rng(seed)
    all_uris, scores = [], []
    for line, n in [("line0", 400), ("Line1", 250), ("line2/sub", 120), ("line3", 7),
                    ("misc", 50), ("", 30)]:
        for i in range(n):
            all_uris.append(f"s3://lake/{line}/img_{i}.png".replace("//img", "/img"))
            scores.append(round(float(rng.beta(2 + len(line), 5)), 3))
    all_uris += [f"s3://elsewhere/line9/img_{i}.png" for i in range(20)]
    scores += [round(float(s), 3) for s in rng.random(20)]
    flagged = [s >= 0.5 for s in scores]
    return pa.table({"image_uri": all_uris, "score": pa.array(scores, pa.float64()),
                     "flagged": flagged})


@pytest.mark.parametrize("way", ["around DuckDB's quantile", "by sorting"])
@pytest.mark.parametrize("by", [None, "line*/", "*/"])
def test_quantiles_and_flagged_counts_equal_numpy(by, way, monkeypatch):
    from vip2scan.pipeline.output import calibration_sql
    from vip2scan.pipeline.output.calibration import min_scores
    from vip2scan.pipeline.output.calibration_sql import calibration_stats, load_rows

    if way == "by sorting":  # the fall-back when DuckDB's quantile is not between the two
        monkeypatch.setattr(calibration_sql, "near_quantile_statistics", lambda *a: {})
    else:  # ties included, every group is found without sorting
        def no_sorting(con, wanted):
            assert not wanted, f"sorted for groups {sorted(wanted, key=str)}"
            return {}
        monkeypatch.setattr(calibration_sql, "order_statistics", no_sorting)
    rate = 0.05
    rows = fabricated_rows()
    con = duckdb.connect()
    con.register("rows", rows)
    load_rows(con, "SELECT * FROM rows", ROOTS, by)
    everything, groups = calibration_stats(con, rate, min_scores(rate))

    all_uris = rows.column("image_uri").to_pylist()
    scores = rows.column("score").to_numpy()
    flagged = np.asarray(rows.column("flagged").to_pylist())
    overall = float(np.quantile(scores, 1 - rate))
    members: dict[tuple[str, str], list[int]] = {}
    for i, uri in enumerate(all_uris):
        group = python_group(uri, by) if by else None
        if group is not None:
            members.setdefault(group, []).append(i)
    limits = np.full(len(scores), overall)
    expected = []
    for (root, group), index in sorted(members.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        q = float(np.quantile(scores[index], 1 - rate)) if len(index) >= min_scores(rate) else None
        limits[index] = overall if q is None else q
        expected.append((root, group, len(index), int(flagged[index].sum()), q,
                         int((scores[index] >= limits[index]).sum())))
    got = [(g.root, g.group, g.n_scores, g.flagged_before, g.quantile, g.flagged_after)
           for g in groups]
    assert got == expected  # bit-equal quantiles, not approximately
    assert (everything.n_scores, everything.flagged_before, everything.quantile,
            everything.flagged_after) == (len(scores), int(flagged.sum()), overall,
                                          int((scores >= limits).sum()))
    if by:
        assert any(q is None for *_, q, _ in expected) and any(q is not None for *_, q, _ in expected)


def test_per_row_thresholds_are_the_longest_matching_prefixs_in_sql_and_arrow():
    from vip2scan.pipeline.output.calibration import row_thresholds
    from vip2scan.pipeline.output.calibration_sql import threshold_sql

    all_uris = uris() + [f"s3://lake/line1/d{i % 3}/img_{i}.png" for i in range(30)]
    by_prefix = {"s3://lake/line1/": 0.6, "s3://lake/line1/d1/": 0.7, "s3://lake/ünïcødé/": 0.8,
                 "s3://lake/100%_done/": 0.2, "s3://lake/li": 0.1, "s3://lake/ΟΔΟΣ/": 0.3}
    expected = [naive_threshold(u, 0.5, by_prefix) for u in all_uris]
    assert row_thresholds(all_uris, 0.5, by_prefix).tolist() == expected
    assert row_thresholds(np.asarray(all_uris, dtype=object), 0.5, by_prefix).tolist() == expected
    assert row_thresholds(np.asarray(all_uris), 0.5, by_prefix).tolist() == expected  # as Ray hands them
    assert row_thresholds(pa.chunked_array([all_uris[:5], all_uris[5:]]), 0.5,
                          by_prefix).tolist() == expected
    con = duckdb.connect()
    con.register("t", pa.table({"image_uri": all_uris, "i": range(len(all_uris))}))
    joins, limit = threshold_sql(con, "t.image_uri", 0.5, by_prefix)
    got = [v for _, v in con.execute(f"SELECT t.i, {limit} FROM t {joins}ORDER BY t.i").fetchall()]
    assert got == expected
    assert len(set(expected)) == 7  # every prefix and the default decide some row
