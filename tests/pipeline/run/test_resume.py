"""Interruption and concurrency: a driver killed mid-run by the fault hook, a second scan
refused while the first holds OUT, the rerun resuming the same run_id exactly once; --full."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.dataset as pads
import pytest

from tests.helpers import SCAN_CHILD
from tests.helpers.lake_files import ReadLog, broken_files, put_files
from vip2scan.pipeline import OutputLocked, ScanOptions, scan
from vip2scan.pipeline.output.verify import verify

pytestmark = pytest.mark.slow  # a Ray scan killed in a child process, then two more

N_LAKE = 40
CHILD = SCAN_CHILD
# Units of 8 rows (one shard of 8 maps) reach the driver in batches of 4 and are staged 4
# rows at a time, so the kill can leave a unit half staged: the rerun redoes it whole.
OPTIONS = dict(engine="ray", batch_size=4, map_size=16, stage_rows=4, maps_per_shard=8)
UNIT_ROWS = 8


def _rows(out: str) -> list[dict]:
    dataset = pads.dataset(os.path.join(out, "scores"), format="parquet", partitioning="hive")
    return dataset.to_table().to_pylist()


def test_killed_driver_resumes_same_run_exactly_once(tmp_path, checkpoint, ray_ready):
    import ray

    from vip2scan.model.data.synthetic import write_lake

    lake, out = str(tmp_path / "lake"), str(tmp_path / "out")
    write_lake(lake, N_LAKE, size=32, seed=3)
    put_files(None, lake, {k: v for k, v in broken_files().items() if "empty" in k or "random" in k})
    listed = N_LAKE + 3
    kill_after = 3
    child_options = {**OPTIONS, "lock_ttl_s": 6.0, "heartbeat_s": 1.0,
                     "ray_address": ray.get_runtime_context().gcs_address}
    env = {**os.environ, "VIP2SCAN_FAULT_KILL_DRIVER_AFTER_BATCHES": str(kill_after)}
    child = subprocess.Popen([sys.executable, CHILD, lake, out, checkpoint,
                              json.dumps(child_options)], env=env, start_new_session=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # While the child holds OUT, a second scan is refused with a clear message.
        deadline = time.time() + 180
        while not os.path.exists(os.path.join(out, "_lock")):
            assert child.poll() is None, child.stderr.read().decode()[-3000:]
            assert time.time() < deadline, "child never took the lease"
            time.sleep(0.2)
        with pytest.raises(OutputLocked, match="locked by run"):
            scan(lake, out, checkpoint, ScanOptions(**OPTIONS))
        _, stderr = child.communicate(timeout=300)
        assert child.returncode == 86, stderr.decode()[-3000:]
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)

    # The child died after a few durable parts: nothing committed, staging in place.
    staging = os.listdir(os.path.join(out, "_staging"))
    assert len(staging) == 1 and not os.path.exists(os.path.join(out, "runs"))
    run_id = staging[0]
    parts = os.listdir(os.path.join(out, "_staging", run_id, "parts"))
    staged_uris = set(pads.dataset([os.path.join(out, "_staging", run_id, "parts", p) for p in parts],
                                   format="parquet").to_table(columns=["image_uri"])
                      ["image_uri"].to_pylist())
    staged_before = len(staged_uris)
    assert kill_after * OPTIONS["batch_size"] <= staged_before < listed
    todo = pads.dataset(os.path.join(out, "_staging", run_id, "todo.parquet")).to_table()
    unit_of = dict(zip(todo["image_uri"].to_pylist(),
                       (i // UNIT_ROWS for i in todo["map_index"].to_pylist())))
    unfinished = {unit_of[u] for u in unit_of if u not in staged_uris}
    redone = sum(unit_of[u] in unfinished for u in staged_uris)  # staged rows of half-staged units
    print("staged before the kill", staged_before, "of which in half-staged units", redone)

    # The rerun waits for the dead child's lease to expire, then resumes the same run.
    readlog = ReadLog(str(tmp_path / "reads.log"))
    resumed = scan(lake, out, checkpoint, ScanOptions(**OPTIONS, wait=60, fs_wrapper=readlog))
    assert resumed.run_id == run_id and resumed.resumed
    rows = _rows(out)
    uris = [r["image_uri"] for r in rows]
    assert len(uris) == len(set(uris)) == listed  # exactly once, none missing
    assert {r["run_id"] for r in rows} == {run_id}
    assert resumed.counts["scored"] + resumed.counts["failed"] == listed
    assert resumed.counts["new"] == listed
    # only the objects not staged before the crash were read again, and the rest of each
    # half-staged unit (its shards are rewritten whole)
    lake_reads = [p for p in readlog.paths() if p.startswith(lake)]
    assert len(lake_reads) == len(set(lake_reads)) == listed - staged_before + redone
    report = verify(out)
    assert report.ok and report.maps_checked > 0, report.problems
    with open(os.path.join(out, "runs", f"{run_id}.json")) as fh:
        assert json.load(fh)["attempts"] == 2
    assert not os.path.exists(os.path.join(out, "_staging", run_id))

    # --full rescans everything into a new run; the resumed run stays intact. (--full is a
    # property of the diff, not of the engine: the in-process engine keeps this test short.)
    full = scan(lake, out, checkpoint, ScanOptions(**{**OPTIONS, "engine": "local"}, full=True))
    assert full.run_id != run_id and full.counts["unchanged"] == listed
    rows = _rows(out)
    assert sum(r["run_id"] == full.run_id for r in rows) == listed
    assert sum(r["run_id"] == run_id for r in rows) == listed
