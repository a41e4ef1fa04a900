"""verify's check of the `latest` snapshot (snapshot_check.py), on hand-made runs (no Ray, no
model). The default check recomputes the newest snapshot from the previous one and its run's
rows, `--deep` from every run's rows; both must catch a snapshot file rewritten with the same
row count but other rows, and the summary line says which check ran."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.helpers.cli_runner import invoke
from tests.helpers.hand_made_runs import LAKE, Night
from vip2scan.pipeline.output.records import committed_records, write_json
from vip2scan.pipeline.output.snapshot_ref import SNAPSHOT_SCHEMA, current_snapshot
from vip2scan.pipeline.output.verify import verify
from vip2scan.pipeline.storage.location import Location


@pytest.fixture(scope="module")
def nights(tmp_path_factory) -> Path:
    """Four nights: a first scan, a change and a vanished object, a change, a quiet night
    (which names night 3's snapshot again, so the check must find the run that built it)."""
    root = tmp_path_factory.mktemp("nights") / "out"
    night = Night(Location.of(str(root)))
    night.commit(1, "m1", {"a.png": 1, "b.png": 2, "c.png": 3, "d.png": 4})
    night.commit(2, "m1", {"b.png": 20, "e.png": 5}, vanished=["a.png"])
    night.commit(3, "m1", {"c.png": 30})
    night.commit(4, "m1", {})
    return root


@pytest.fixture
def out(nights, tmp_path) -> Path:
    shutil.copytree(nights, tmp_path / "out")
    return tmp_path / "out"


def snapshot_file(out: Path) -> Path:
    snap = current_snapshot(committed_records(Location.of(str(out))))
    assert snap is not None and len(snap.files) == 1
    return out / snap.files[0]


def row_of(table: pa.Table, name: str) -> int:
    return table.column("image_uri").to_pylist().index(f"{LAKE}/{name}")


def with_score(table: pa.Table, name: str, score: float) -> pa.Table:
    scores = table.column("image_score").to_pylist()
    scores[row_of(table, name)] = score
    index = table.schema.get_field_index("image_score")
    return table.set_column(index, "image_score", pa.array(scores, pa.float32()))


def changed_score(out: Path, table: pa.Table) -> tuple[pa.Table, list[str]]:
    """d.png (untouched since night 1) with another image_score."""
    return with_score(table, "d.png", 0.9), ["d.png"]


def older_row(out: Path, table: pa.Table) -> tuple[pa.Table, list[str]]:
    """b.png's night-2 row replaced by its night-1 row (what a stale merge would leave)."""
    first = committed_records(Location.of(str(out)))[0]
    rows = pq.read_table(out / first["files"][0]).to_pylist()
    old = next(r for r in rows if r["image_uri"] == f"{LAKE}/b.png")
    kept = table.to_pylist()
    kept[row_of(table, "b.png")] = {**old, "scan_date": dt.date(2025, 1, 2), "state": True,
                                     "shown": True}
    return pa.Table.from_pylist(kept, SNAPSHOT_SCHEMA), ["b.png"]


def dropped_and_doubled(out: Path, table: pa.Table) -> tuple[pa.Table, list[str]]:
    """e.png's row dropped and d.png's written twice: the same row count."""
    rows = table.to_pylist()
    rows.insert(row_of(table, "d.png"), rows[row_of(table, "d.png")])
    del rows[row_of(table, "e.png") + 1]
    return pa.Table.from_pylist(rows, SNAPSHOT_SCHEMA), ["d.png", "e.png"]


@pytest.mark.parametrize("deep", [False, True], ids=["incremental", "deep"])
@pytest.mark.parametrize("corrupt", [changed_score, older_row, dropped_and_doubled])
def test_a_corrupted_snapshot_is_caught(out, corrupt, deep) -> None:
    path = snapshot_file(out)
    table = pq.read_table(path)
    corrupted, named = corrupt(out, table)
    assert corrupted.num_rows == table.num_rows and corrupted != table
    pq.write_table(corrupted.cast(SNAPSHOT_SCHEMA), path)
    report = verify(str(out), deep=deep)
    assert report.snapshot.mode == ("deep" if deep else "incremental")
    assert [p.kind for p in report.problems] == ["snapshot"], report.problems
    message = report.problems[0].message
    assert "(1 row(s) too many, 1 missing or different" in message, message
    assert all(f"{LAKE}/{name}" in message for name in named), message


def test_a_healthy_out_is_consistent_both_ways_and_the_line_says_which_check(out) -> None:
    for flags, check in (((), "incremental snapshot check"), (("--deep",), "deep snapshot check")):
        ran = invoke("verify", str(out), *flags)
        assert ran.exit_code == 0, ran.stdout + ran.stderr
        assert ran.stdout.strip() == (f"file://{out}: consistent (4 run(s), 7 rows, "
                                      f"0 maps checked; {check})")
    path = snapshot_file(out)
    pq.write_table(with_score(pq.read_table(path), "d.png", 0.9), path)
    for flags, check in (((), "incremental snapshot check"), (("--deep",), "deep snapshot check")):
        ran = invoke("verify", str(out), *flags)
        assert ran.exit_code == 1 and ran.stdout.splitlines()[0].endswith(f"; {check})"), ran.stdout


def test_the_first_snapshot_gets_the_full_check_and_says_why(tmp_path) -> None:
    Night(Location.of(str(tmp_path / "out"))).commit(1, "m1", {"a.png": 1, "b.png": 2})
    report = verify(str(tmp_path / "out"))
    assert report.ok and report.snapshot.mode == "full"
    assert report.snapshot.summary().startswith(
        "full snapshot check (no previous snapshot to start from:"), report.snapshot.summary()
    path = snapshot_file(tmp_path / "out")
    pq.write_table(with_score(pq.read_table(path), "a.png", 0.7), path)
    assert [p.kind for p in verify(str(tmp_path / "out")).problems] == ["snapshot"]


def test_a_quiet_night_must_name_the_same_snapshot_files(out) -> None:
    location = Location.of(str(out))
    quiet = committed_records(location)[-1]
    assert not quiet["files"] and not quiet["vanished_file"]
    write_json(location, {**quiet, "latest": {**quiet["latest"], "rows": 99}},
               "runs", f"{quiet['run_id']}.json")
    problems = [p.message for p in verify(str(out)).problems]
    assert any(f"run {quiet['run_id']} names" in p and "other files or row count" in p
               for p in problems), problems
