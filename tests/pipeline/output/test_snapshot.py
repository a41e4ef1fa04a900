"""The `latest` snapshot written at commit, on hand-made runs (no Ray, no model).

Over a sequence of commits (new, changed, vanished, a rerun, a sub-prefix scan, two models
sharing URIs, a quiet night, a run committing out of order) the snapshot must give exactly
what the old window queries gave: the `latest` view's rows, and the diff's counts, work list
and vanished list. A driver killed between the snapshot and the record leaves readers on the
old snapshot; the rerun's commit fixes it.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.helpers.hand_made_runs import LAKE, T0, Night
from tests.helpers.hand_made_runs import at as _at
from vip2scan.pipeline.output.records import committed_records
from vip2scan.pipeline.output.schema import MANIFEST_SCHEMA
from vip2scan.pipeline.output.snapshot_ref import current_snapshot
from vip2scan.pipeline.output.views import LATEST_SQL, Outputs
from vip2scan.pipeline.selection.diff import diff_listing, state_runs
from vip2scan.pipeline.selection.listing import ObjectFilter
from vip2scan.pipeline.storage.location import Location


def latest_rows(out: Location) -> tuple[list, list]:
    """(the `latest` view's rows, the old window query's rows), every column, by URI."""
    con = Outputs(out.uri, out.storage_options).connect("500MB")
    view = con.execute("SELECT * FROM latest ORDER BY image_uri").fetchall()
    con.execute(LATEST_SQL.replace("VIEW latest", "VIEW latest_window"))
    window = con.execute("SELECT * FROM latest_window ORDER BY image_uri").fetchall()
    con.close()
    return view, window


def diffs(out: Location, tmp_path, model: str, source: str, listing: dict[str, int]) -> tuple:
    """The diff of ``listing`` (name -> size) from the snapshot and from the window."""
    path = str(tmp_path / f"listing-{len(list(tmp_path.iterdir()))}.parquet")
    pq.write_table(pa.Table.from_pylist(
        [{"image_uri": f"{LAKE}/{n}", "size_bytes": s, "etag": None, "mtime": T0}
         for n, s in listing.items()], schema=MANIFEST_SCHEMA), path)
    snap = current_snapshot(committed_records(out))
    assert snap is not None
    found = []
    for use_snapshot in (True, False):
        work = tmp_path / f"w{len(list(tmp_path.iterdir()))}"
        work.mkdir()
        previous = [] if use_snapshot else state_runs(out, source, model, False)
        result = diff_listing(path, out, previous, str(work), ObjectFilter(), source, "rX",
                              snapshot=snap if use_snapshot else None, model_id=model,
                              listed_under_source=True)
        found.append((result.counts.as_dict(), pq.read_table(result.todo_path).to_pylist(),
                      pq.read_table(result.vanished_path).to_pylist()))
    return found[0], found[1]


def _check(out: Location, tmp_path, lake: dict[str, int]) -> None:
    view, window = latest_rows(out)
    assert view == window
    for model in ("m1", "m2"):
        for source in (LAKE, f"{LAKE}/sub"):
            under = {n: s for n, s in lake.items()
                     if source == LAKE or f"{LAKE}/{n}".startswith(source + "/")}
            from_snapshot, from_window = diffs(out, tmp_path, model, source, under)
            assert from_snapshot == from_window, (model, source)


# The s3 variant of the sequence test takes ~17 s: the local one stays in the fast lane.
@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.slow)])
def out(request, tmp_path) -> Location:
    if request.param == "local":
        return Location.of(str(tmp_path / "out"))
    server = request.getfixturevalue("s3_server")
    bucket = request.getfixturevalue("s3_bucket")
    return Location.of(f"s3://{bucket}/out", server.storage_options)


def test_the_snapshot_equals_the_window_over_a_sequence_of_commits(out, tmp_path) -> None:
    night = Night(out)
    lake = {"a.png": 1, "b.png": 2, "c.png": 3, "d.png": -4, "sub/x.png": 5, "sub/y.png": 6}
    first = night.commit(1, "m1", lake)
    assert first["built"] == "rebuilt" and first["rows"] == 6
    _check(out, tmp_path, lake)

    lake.update({"b.png": 20, "e.png": 7})
    del lake["c.png"]
    second = night.commit(2, "m1", {"b.png": 20, "e.png": 7}, vanished=["c.png"])
    assert second["built"] == "incremental" and second["generation"] == 2
    _check(out, tmp_path, lake)

    lake.update({"sub/x.png": 50, "sub/z.png": 8})  # a sub-prefix scan; y vanishes under it
    del lake["sub/y.png"]
    night.commit(3, "m1", {"sub/x.png": 50, "sub/z.png": 8}, vanished=["sub/y.png"],
                 source=f"{LAKE}/sub")
    _check(out, tmp_path, lake)

    night.commit(4, "m2", {"a.png": 1, "b.png": 20})  # a second model, sharing two URIs
    _check(out, tmp_path, lake)

    before = current_snapshot(committed_records(out))
    quiet = night.commit(5, "m1", {})  # nothing new: the same snapshot, nothing written
    assert quiet["dir"] == before.dir and quiet["generation"] == before.generation
    _check(out, tmp_path, lake)

    night.commit(6, "m1", dict(lake))  # a rerun of everything (--full)
    del lake["a.png"]
    night.commit(7, "m2", {}, vanished=["a.png"])  # m2 finds a gone: gone from latest too
    _check(out, tmp_path, lake)

    # A run that started before the last one but commits after it (resumed): rebuilt.
    lake["c.png"] = 30
    late = night.commit(8, "m1", {"c.png": 30}, started=_at(6, 30))
    assert late["built"] == "rebuilt"
    _check(out, tmp_path, lake)
    back = night.commit(9, "m1", {"e.png": 70})
    lake["e.png"] = 70
    assert back["built"] == "incremental"
    _check(out, tmp_path, lake)
    # Only the current snapshot and the previous one are kept.
    assert len(out.ls_names("latest")) == 2


def test_an_out_without_snapshots_falls_back_and_the_next_commit_writes_one(tmp_path) -> None:
    out = Location.of(str(tmp_path / "out"))
    night = Night(out)
    night.commit(1, "m1", {"a.png": 1, "b.png": 2})
    night.commit(2, "m1", {"b.png": 3}, vanished=["a.png"])
    for path in (tmp_path / "out" / "runs").glob("*.json"):  # as an older version wrote them
        record = json.loads(path.read_text())
        record.pop("latest")
        path.write_text(json.dumps(record))
    assert current_snapshot(committed_records(out)) is None
    view, window = latest_rows(out)
    assert view == window and [r[0] for r in view] == [f"{LAKE}/b.png"]
    latest = night.commit(3, "m1", {})  # even a quiet night writes the first snapshot
    assert latest["built"] == "rebuilt" and len(latest["legacy_runs"]) == 2
    assert current_snapshot(committed_records(out)) is not None
    _check(out, tmp_path, {"b.png": 3})


def test_a_kill_between_snapshot_and_record_leaves_readers_on_the_old_one(tmp_path) -> None:
    out = Location.of(str(tmp_path / "out"))
    night = Night(out)
    night.commit(1, "m1", {"a.png": 1, "b.png": 2})
    old = latest_rows(out)[0]
    # The driver dies after writing the snapshot, before the record: no record names it.
    night.commit(2, "m1", {"b.png": 20}, vanished=["a.png"], write_record=False)
    assert len(out.ls_names("latest")) == 2
    assert latest_rows(out)[0] == old
    # The rerun (the same run, resumed) commits again: snapshot rewritten, record last.
    night.seq -= 1
    night.commit(2, "m1", {"b.png": 20}, vanished=["a.png"], resumed=True)
    view, window = latest_rows(out)
    assert view == window and [(r[0], r[3]) for r in view] == [(f"{LAKE}/b.png", 20)]
    _check(out, tmp_path, {"b.png": 20})


def test_verify_accepts_the_snapshot_and_flags_one_that_disagrees(tmp_path) -> None:
    from vip2scan.pipeline.output.verify import verify

    out = Location.of(str(tmp_path / "out"))
    night = Night(out)
    night.commit(1, "m1", {"a.png": 1, "b.png": 2})
    latest = night.commit(2, "m1", {"b.png": 20}, vanished=["a.png"])
    assert verify(str(tmp_path / "out")).ok
    # The previous snapshot's file put in place of the current one: stale rows.
    older = [n for n in out.ls_names("latest") if f"latest/{n}" != latest["dir"]][0]
    (tmp_path / "out" / latest["files"][0]).write_bytes(
        (tmp_path / "out" / "latest" / older / "part-00000.parquet").read_bytes())
    problems = verify(str(tmp_path / "out")).problems
    assert [p.kind for p in problems] == ["snapshot"], problems
