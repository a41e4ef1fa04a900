"""verify's check of the ``latest`` snapshot readers use (snapshot.py builds it).

- **incremental** (the default): the snapshot is recomputed the way its commit built it, from
  the previous snapshot (the one readers used before) plus its run's rows and vanished list,
  and compared with what is there. One pass over the lake's size, whatever the number of
  nights; the previous snapshot is trusted (the previous night's verify checked it).
- **full**: when there is no previous snapshot to start from (the first snapshot, a rebuilt
  one, an out-of-order commit), the window over every committed run, as ``--deep`` does.
- **deep** (``--deep``): always the window over every committed run (cost grows with nights).

Every snapshot column is compared (a changed score, an older row of the same object, a row
dropped and another doubled are all differences), as a multiset of row hashes: a streaming
count and sum in DuckDB, then, only when they differ, a grouped count within the connection's
memory limit (spilling to its temp directory) to name the rows.
Records that reuse the snapshot (quiet nights) must name the same files and have no rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..deadline import step
from ..storage.location import Location
from .paths import snapshot_dir
from .snapshot import history_select, in_order, incremental_select
from .snapshot_ref import SNAPSHOT_SCHEMA, Snapshot, current_snapshot
from .views import register_parquet

MAX_LISTED = 5  # example URIs quoted per difference


@dataclass
class SnapshotCheck:
    """Which check ran (``mode``: incremental, full, deep or none), why, and what it found."""

    mode: str
    reason: str = ""  # why a full check replaced the incremental one
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """The words the verify line ends with, so a nightly log shows which check ran."""
        if self.mode == "none":
            return "no snapshot to check"
        return f"{self.mode} snapshot check" + (f" ({self.reason})" if self.reason else "")


def check_snapshot(out: Location, con: Any, records: list[dict[str, Any]],
                   deep: bool = False) -> SnapshotCheck:
    """Check the snapshot the committed ``records`` name against the rows it was built from."""
    snap = current_snapshot(records)
    if snap is None:
        return SnapshotCheck("none")
    naming = [r for r in records if _dir_of(r) == snap.dir]
    builder = next((r for r in naming if snapshot_dir(r["run_id"]) == snap.dir), None)
    previous = current_snapshot([r for r in records if _dir_of(r) != snap.dir])
    reason = "" if deep else _why_not_incremental(out, snap, previous, builder)
    check = SnapshotCheck("deep" if deep else "full" if reason else "incremental", reason)
    check.problems = _reuse_problems(snap, naming, builder)
    missing = [f for f in snap.files if not out.exists(f)]
    if missing:
        check.problems.append(f"{len(missing)} file(s) of the latest snapshot {snap.dir} are "
                              f"missing, e.g. {missing[0]}")
        return check
    with step("reading the latest snapshot"):
        register_parquet(con, "snap_check", out, list(snap.files), SNAPSHOT_SCHEMA.names,
                         SNAPSHOT_SCHEMA)
        rows = int(con.execute("SELECT count(*) FROM snap_check").fetchall()[0][0])
    if rows != snap.rows:
        check.problems.append(f"the latest snapshot {snap.dir} holds {rows} rows, its record "
                              f"says {snap.rows}")
        return check
    if check.mode == "incremental":
        with step("reading the previous snapshot and the newest run's rows"):
            expected = incremental_select(con, out, previous, builder, ordered=False)
        source = "the previous snapshot and its run's rows"
    else:
        with step("reading every run's scores"):
            expected = history_select(con, out, records, ordered=False)
        source = "the committed runs' rows"
    with step("comparing the snapshot with the rows it was built from"):
        extra, lacking, examples = _differences(con, expected)
    if extra or lacking:
        check.problems.append(
            f"the latest snapshot {snap.dir} differs from {source} ({extra} row(s) too many, "
            f"{lacking} missing or different, e.g. {', '.join(examples)}); the next scan's "
            "commit rebuilds it if its record is removed")
    return check


def _dir_of(record: dict[str, Any]) -> str | None:
    snap = Snapshot.from_record(record.get("latest"))
    return snap.dir if snap else None


def _reuse_problems(snap: Snapshot, naming: list[dict[str, Any]],
                    builder: dict[str, Any] | None) -> list[str]:
    """A quiet night names the previous snapshot again: the same files, and no rows of its own
    (rows of a run naming a snapshot that was built without them are missing from latest)."""
    problems = []
    for record in naming:
        named = Snapshot.from_record(record["latest"])
        if named.files != snap.files or named.rows != snap.rows:
            problems.append(f"run {record['run_id']} names {snap.dir} with other files or row "
                            "count than the run that readers take it from")
        if record is not builder and (record.get("files") or record.get("vanished_file")):
            problems.append(f"run {record['run_id']} has rows or a vanished list but names the "
                            f"snapshot {snap.dir} of another run: they are not in latest")
    return problems


def _why_not_incremental(out: Location, snap: Snapshot, previous: Snapshot | None,
                         builder: dict[str, Any] | None) -> str:
    """Why the snapshot cannot be recomputed from the previous one ('' when it can)."""
    if builder is None:
        return f"no committed record of the run that built {snap.dir}"
    if snap.built != "incremental":
        return f"no previous snapshot to start from: {snap.dir} was rebuilt from every run"
    if previous is None:
        return "no previous snapshot to start from"
    if not in_order(previous, builder):
        return f"no previous snapshot to start from: run {builder['run_id']} committed out of order"
    gone = [f for f in previous.files if not out.exists(f)]
    if gone:
        return f"no previous snapshot to start from: {gone[0]} is gone"
    return ""


def _differences(con: Any, expected: str) -> tuple[int, int, list[str]]:
    """(rows only in snap_check, rows only in ``expected``, example URIs), every column
    compared. First each side's row count and sum of row hashes (a streaming aggregate, no
    memory to speak of); only when they differ, a count of each hash, +1 for a snapshot row
    and -1 for an expected one, to count and name the differences."""
    types = dict(con.execute("SELECT column_name, column_type FROM (DESCRIBE snap_check)")
                 .fetchall())
    cols = SNAPSHOT_SCHEMA.names
    # The expected side is cast to the snapshot's own column types: a hash depends on them.
    mine = f"hash({', '.join(cols)})"
    theirs = f"hash({', '.join(f'CAST({c} AS {types[c]})' for c in cols)})"
    totals = [con.execute(f"SELECT count(*), sum({h}::HUGEINT) FROM {source}").fetchall()[0]
              for h, source in ((mine, "snap_check"), (theirs, f"({expected})"))]
    if totals[0] == totals[1]:
        return 0, 0, []
    both = (f"SELECT image_uri, {mine} AS h, 1 AS side FROM snap_check UNION ALL "
            f"SELECT image_uri, {theirs}, -1 FROM ({expected})")
    con.execute(f"CREATE OR REPLACE TEMP TABLE snap_diff AS SELECT h, sum(side) AS n "
                f"FROM (SELECT h, side FROM ({both})) GROUP BY h HAVING sum(side) <> 0")
    extra, lacking = (int(v or 0) for v in con.execute(
        "SELECT sum(n) FILTER (n > 0), -sum(n) FILTER (n < 0) FROM snap_diff").fetchall()[0])
    examples = [r[0] for r in con.execute(
        f"SELECT DISTINCT image_uri FROM ({both}) WHERE h IN (SELECT h FROM snap_diff) "
        f"ORDER BY image_uri LIMIT {MAX_LISTED}").fetchall()]
    return extra, lacking, examples
