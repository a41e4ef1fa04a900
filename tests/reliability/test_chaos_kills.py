"""Chaos: the scan's driver SIGKILLed at seeded random moments, and Ray workers killed mid-run.

Every case starts from an OUT that already holds a committed night (so the diff, the latest
view and the vanished list all matter), changes the lake (4 new, 2 changed, 1 deleted
object), starts the next scan in a child process and kills it with a real SIGKILL at one
point of its run (pipeline/faults.py ``VIP2SCAN_FAULT_KILL_DRIVER_AT=POINT:N``; N drawn from
a seeded RNG among the passes the run makes of that point). Then the same scan is rerun and
must end exactly once: each object once per run, the latest view one row per listed object
(the rerun's rows for the new and changed ones, the first night's for the rest, the deleted
one gone), `vip2scan verify` clean, no staging and no lock left behind.

The seed is printed; VIP2SCAN_CHAOS_SEED=N replays another draw.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.helpers import SCAN_CHILD
from tests.helpers.hostile_files import small_png
from vip2scan.pipeline import ScanOptions, scan
from vip2scan.pipeline import faults
from vip2scan.pipeline.output.views import Outputs

SEED = int(os.environ.get("VIP2SCAN_CHAOS_SEED", "14"))
CHILD = Path(SCAN_CHILD)
VIP2SCAN = Path(sys.executable).with_name("vip2scan")
N_FIRST = 10
NEW = [f"new/n{i}.png" for i in range(4)]
CHANGED = ["d0/img0.png", "d1/img1.png"]
DELETED = "d0/img2.png"
TO_SCAN = len(NEW) + len(CHANGED)
LISTED = N_FIRST - 1 + len(NEW)
# Tiny batches, parts and score files, so that batch, staged and score_file each have
# several passes to draw from (TO_SCAN / 2 = 3 of each).
OPTIONS = dict(engine="local", batch_size=2, stage_rows=2, max_rows_per_file=2, map_size=16,
               lock_ttl_s=2.0, heartbeat_s=0.5)
# Passes a run makes of each kill point; the drawn N is 1..passes.
PASSES = {"lease": 1, "listing": LISTED, "plan": 1, "planned": 1, "batch": TO_SCAN // 2,
          "staged": TO_SCAN // 2, "score_file": TO_SCAN // 2, "committed": 1, "snapshot": 1, "record": 1}
CHILD_TIMEOUT_S = 300  # against a hang only


def moment(point: str, seed: int = SEED) -> int:
    """The seeded pass of ``point`` at which the driver dies."""
    return random.Random(f"{seed}:{point}").randint(1, PASSES[point])


def lake_names() -> list[str]:
    return [f"d{i % 2}/img{i}.png" for i in range(N_FIRST)]


@pytest.fixture()
def first_night(tmp_path, tiny_checkpoint) -> dict:
    """A lake and an OUT holding one committed scan of it (the night before the chaos); the
    lake then changes: objects added, changed (another size) and deleted."""
    lake, out = tmp_path / "lake", tmp_path / "out"
    for i, name in enumerate(lake_names()):
        (lake / name).parent.mkdir(parents=True, exist_ok=True)
        (lake / name).write_bytes(small_png(i))
    summary = scan(str(lake), str(out), tiny_checkpoint, ScanOptions(**OPTIONS))
    assert summary.counts["scored"] == N_FIRST
    for i, name in enumerate(NEW):
        (lake / name).parent.mkdir(parents=True, exist_ok=True)
        (lake / name).write_bytes(small_png(100 + i))
    for i, name in enumerate(CHANGED):
        (lake / name).write_bytes(small_png(200 + i, side=28))
    (lake / DELETED).unlink()
    return {"lake": lake, "out": out, "run_id": summary.run_id}


def kill_child_at(lake: Path, out: Path, checkpoint: str, point: str, n: int,
                  extra_env: dict[str, str] | None = None) -> None:
    """Run the scan in a child process that SIGKILLs itself at ``point:n``; it must die so."""
    env = {**os.environ, faults.KILL_DRIVER_AT_ENV: f"{point}:{n}", **(extra_env or {})}
    child = subprocess.Popen([sys.executable, str(CHILD), str(lake), str(out), checkpoint,
                              json.dumps(OPTIONS)], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, start_new_session=True)
    try:
        stdout, stderr = child.communicate(timeout=CHILD_TIMEOUT_S)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
    assert child.returncode == -signal.SIGKILL, (
        f"{point}:{n}: the child was not killed there (exit {child.returncode}): "
        f"{stdout.decode()[-500:]} {stderr.decode()[-2000:]}")


def rerun(lake: Path, out: Path, checkpoint: str):
    """The operator's rerun of the same command; it waits out the dead driver's short lease
    (a same-host takeover of a provably dead holder makes this immediate)."""
    return scan(str(lake), str(out), checkpoint, ScanOptions(**OPTIONS, wait=60))


def verify_cli(out: Path) -> str:
    """`vip2scan verify OUT` as an operator runs it: exit 0 and 'consistent'."""
    ran = subprocess.run([str(VIP2SCAN), "verify", str(out)], capture_output=True, text=True,
                         timeout=300)
    assert ran.returncode == 0 and "consistent" in ran.stdout, ran.stdout + ran.stderr[-2000:]
    return ran.stdout


def assert_exactly_once(lake: Path, out: Path, first_run: str) -> str:
    """Each committed run holds each object once; the latest view is the lake as it is now.
    Returns the run that scored the new and changed objects."""
    con = Outputs(str(out)).connect()
    try:
        per_run = con.execute("SELECT run_id, count(*), count(DISTINCT image_uri) FROM scores "
                              "GROUP BY run_id").fetchall()
        latest = con.execute("SELECT image_uri, run_id, size_bytes, status FROM latest").fetchall()
        runs = con.execute("SELECT run_id, status FROM runs").fetchall()
    finally:
        con.close()
    assert all(rows == distinct for _, rows, distinct in per_run), per_run  # once per run
    assert all(status == "complete" for _, status in runs), runs
    by_uri = {uri: (run_id, size, status) for uri, run_id, size, status in latest}
    assert len(latest) == len(by_uri) == LISTED  # one row per listed object, none vanished
    now = {f"file://{p}" for p in lake.rglob("*.png")}
    assert set(by_uri) == now and f"file://{lake / DELETED}" not in by_uri
    scored_now = {f"file://{lake / n}" for n in NEW + CHANGED}
    second = {by_uri[u][0] for u in scored_now}
    assert len(second) == 1 and first_run not in second, second  # one run scored them all
    assert {by_uri[u][0] for u in now - scored_now} == {first_run}  # unchanged: not rescored
    for uri, (_, size, status) in by_uri.items():
        assert status == "ok" and size == os.path.getsize(uri[len("file://"):]), uri
    rows = {run_id: rows for run_id, rows, _ in per_run}
    assert rows[first_run] == N_FIRST and rows[second.copy().pop()] == TO_SCAN
    assert sum(rows.values()) == N_FIRST + TO_SCAN  # nothing scored twice across runs either
    assert not list((out / "_staging").glob("*")) and not (out / "_lock").exists()
    return second.pop()


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("point", faults.DRIVER_POINTS)
def test_driver_sigkilled_at_a_seeded_moment_resumes_exactly_once(
        point, first_night, tiny_checkpoint):
    lake, out = first_night["lake"], first_night["out"]
    n = moment(point)
    print(f"seed {SEED}: SIGKILL at {point}:{n}")
    kill_child_at(lake, out, tiny_checkpoint, point, n)
    staged_runs = [p.name for p in (out / "_staging").glob("*")]

    summary = rerun(lake, out, tiny_checkpoint)
    scored_by = assert_exactly_once(lake, out, first_night["run_id"])
    if point == "record":
        # The killed run had published its record: it is the complete one; the rerun only
        # removes its staging and finds nothing new.
        assert summary.removed_runs == staged_runs and scored_by in staged_runs
        assert summary.counts["scored"] == 0 and not summary.inference_started
    else:
        assert summary.run_id == scored_by
        assert (summary.counts["new"], summary.counts["changed"],
                summary.counts["vanished"]) == (len(NEW), len(CHANGED), 1)
        assert summary.counts["scored"] == TO_SCAN
        # Killed once its plan was saved: the rerun resumes that run, under the same id.
        assert summary.resumed == (point not in ("lease", "listing", "plan")), summary
        if summary.resumed:
            assert [summary.run_id] == staged_runs
    verify_cli(out)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_resumed_run_killed_again_still_ends_exactly_once(first_night,
                                                            tiny_checkpoint):
    """Two crashes in a row (inference, then the resumed run's commit) and a third attempt."""
    lake, out = first_night["lake"], first_night["out"]
    kill_child_at(lake, out, tiny_checkpoint, "staged", 1)
    kill_child_at(lake, out, tiny_checkpoint, "score_file", moment("score_file", SEED + 1))
    summary = rerun(lake, out, tiny_checkpoint)
    assert summary.resumed and assert_exactly_once(lake, out, first_night["run_id"]) == summary.run_id
    record = json.loads((out / "runs" / f"{summary.run_id}.json").read_text())
    assert record["attempts"] == 3
    verify_cli(out)


# ------------------------------------------------------------------------------ Ray workers

def infer_actor_pids() -> list[int]:
    """PIDs of the live Ray Data inference actors (Ray names the process after its actor)."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info.get("cmdline") or [])
        if cmdline.startswith("ray::") and "InferActor" in cmdline:
            found.append(proc.info["pid"])
    return found


class KillActorWhenStaged:
    """A progress callback (called by the driver as rows are staged) that SIGKILLs the
    inference actor from outside once ``after`` rows are durable: a real kill -9, at a moment
    the driver observes, of a process the scan does not own."""

    def __init__(self, after: int):
        self.after, self.killed = after, []

    def __call__(self, done: int, total: int) -> None:
        if done >= self.after and not self.killed:
            for pid in infer_actor_pids():
                os.kill(pid, signal.SIGKILL)
                self.killed.append(pid)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_ray_workers_killed_at_seeded_moments_end_exactly_once(
        first_night, tmp_path, monkeypatch, ray_for_faults, tiny_checkpoint):
    """A decode worker dies (os._exit in its task) and the inference actor is SIGKILLed from
    outside after a seeded number of staged rows; Ray replaces both. Whether the scan then
    finishes or stops in one line, the rerun ends exactly once and verifies clean."""
    lake, out = first_night["lake"], first_night["out"]
    markers = tmp_path / "markers"
    markers.mkdir()
    monkeypatch.setenv(faults.MARKER_DIR_ENV, str(markers))
    monkeypatch.setenv(faults.KILL_DECODE_ENV, "1")  # few objects: one decode batch per task
    after = 2 * random.Random(f"{SEED}:actor").randint(1, TO_SCAN // 2 - 1)
    killer = KillActorWhenStaged(after)
    print(f"seed {SEED}: decode worker dies on its first batch; actor SIGKILLed after {after} rows")
    ray_options = {**OPTIONS, "engine": "ray", "actors": (1, 1)}
    try:
        first = scan(str(lake), str(out), tiny_checkpoint,
                     ScanOptions(**ray_options, progress=killer))
        outcome = f"finished: {first.counts}"
    except Exception as exc:  # noqa: BLE001 - a stop is allowed, if it is one line
        outcome = f"stopped: {exc}"
        assert "\n" not in str(exc) and len(str(exc)) < 600, str(exc)
    print(outcome)
    assert (markers / "decode.fired").exists() and killer.killed, (outcome, killer.killed)
    monkeypatch.delenv(faults.KILL_DECODE_ENV)
    summary = scan(str(lake), str(out), tiny_checkpoint, ScanOptions(**ray_options, wait=60))
    scored_by = assert_exactly_once(lake, out, first_night["run_id"])
    if outcome.startswith("finished"):
        assert summary.counts["scored"] == 0  # nothing left for the rerun
    else:
        assert summary.resumed and summary.run_id == scored_by
    verify_cli(out)
