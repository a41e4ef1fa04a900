"""Races for OUT's lease and scans stopped by signals (issue 14: fencing, locks that do not
outlive their scan).

Real child processes (helpers/lease_child.py: the pipeline's scan with the CLI's one-line errors), a
real moto S3 server, the fault proxy of the test kit to slow one racer down, real signals:

- N scans race for the expired lease of a crashed scan (whose run is staged), one of them
  slowed between reading the lease and acting on it: exactly one resumes the run, the
  others fail with one line naming it; the run is committed once; verify is clean;
- a scan whose lease was taken over while it was stopped (SIGSTOP past the expiry) stops at
  its next durable step instead of writing into the new holder's run;
- SIGTERM / SIGINT release the lease (with either engine): an immediate rerun is accepted and
  resumes the run;
- after SIGKILL, a rerun on the same host takes over at once (the holder's pid is gone).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.helpers import LEASE_CHILD
from tests.helpers.cli_runner import invoke
from tests.helpers.fault_proxy import FaultProxy
from tests.helpers.hostile_files import small_png

from vip2scan.pipeline import read_scores
from vip2scan.pipeline.run.holder import holder_gone, process_started, this_process
from vip2scan.pipeline.run.lock import read_lease
from vip2scan.pipeline.storage.location import Location

CHILD = LEASE_CHILD
N_IMAGES = 12
N_RACERS = 4
OPTIONS = {"engine": "local", "batch_size": 2, "stage_rows": 2, "map_size": 16}
SLOW_RACER_DELAY_S = 1.5
TIMEOUT_S = 300  # against hangs only


@dataclass
class Ran:
    pid: int
    returncode: int
    stdout: str
    stderr: str

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("error:")]

    def summary(self) -> dict:
        return json.loads(self.stdout.strip().splitlines()[-1])


def spawn(lake: Path, out: str, checkpoint: str, options: dict | None = None,
          **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, CHILD, str(lake), out, checkpoint, json.dumps({**OPTIONS, **(options or {})})],
        env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)


def finish(proc: subprocess.Popen) -> Ran:
    try:
        stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return Ran(proc.pid, proc.returncode, stdout, stderr)


def wait_for(condition, what: str, procs: list[subprocess.Popen] = ()) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        for proc in procs:
            assert proc.poll() is None, f"a child ended before {what}: {finish(proc).stderr[-2000:]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture()
def lake(tmp_path) -> Path:
    root = tmp_path / "lake"
    for i in range(N_IMAGES):
        (root / f"d{i % 2}").mkdir(parents=True, exist_ok=True)
        (root / f"d{i % 2}" / f"img{i}.png").write_bytes(small_png(i))
    return root


def crashed_run(lake: Path, out: Location, checkpoint: str, tmp_path: Path) -> str:
    """A scan that died after staging part of its run, its lease left behind and then made
    to look like a crashed scan's on another host whose expiry has passed; its run id."""
    ran = finish(spawn(lake, out.uri, checkpoint, VIP2SCAN_FAULT_KILL_DRIVER_AFTER_BATCHES="2"))
    assert ran.returncode == 86, ran.stderr[-2000:]
    lease = read_lease(out)
    assert lease and lease["run_id"], "the crashed scan left no lease"
    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=5)
    out.write_bytes(json.dumps({**lease, "host": "night-node-7",
                                "expires_at": past.isoformat()}).encode(), "_lock")
    return lease["run_id"]


def assert_committed_once(out: Location, run_id: str, lake: Path) -> None:
    """One run record (``run_id``), every object of the lake exactly once, verify clean."""
    records = [n for n in out.ls_names("runs") if n.endswith(".json")]
    assert records == [f"{run_id}.json"], records
    uris = read_scores(out.uri, dict(out.storage_options), columns=["image_uri"])["image_uri"].to_pylist()
    assert len(uris) == len(set(uris)) == N_IMAGES
    assert read_lease(out) is None, "the lease outlived every scan"
    checked = invoke("verify", out.uri)
    assert checked.exit_code == 0, checked.stdout + checked.stderr


def race(lake: Path, out: Location, checkpoint: str, tmp_path: Path, slow_options: dict,
         slow_env: dict, slow_is_acting) -> list[Ran]:
    """Start N racers at a barrier just before the lease; let the slow one read the lease
    first, and the others go while it is still acting on what it read."""
    procs = []
    for i in range(N_RACERS):
        env = {"LEASE_CHILD_READY": str(tmp_path / f"ready{i}"),
               "LEASE_CHILD_GO": str(tmp_path / ("go-slow" if i == 0 else "go"))}
        procs.append(spawn(lake, out.uri, checkpoint, slow_options if i == 0 else None,
                           **env, **(slow_env if i == 0 else {})))
    try:
        wait_for(lambda: all((tmp_path / f"ready{i}").exists() for i in range(N_RACERS)),
                 "every racer at the barrier", procs)
        (tmp_path / "go-slow").touch()
        wait_for(slow_is_acting, "the slow racer acting on the lease it read", procs)
        (tmp_path / "go").touch()
        return [finish(proc) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)


def assert_one_winner(results: list[Ran], run_id: str) -> Ran:
    """Exactly one racer resumed the run; every other failed in one line naming it."""
    winners = [r for r in results if r.returncode == 0]
    assert len(winners) == 1, [(r.returncode, r.error_lines or r.stderr[-500:]) for r in results]
    winner = winners[0]
    assert winner.summary()["run_id"] == run_id and winner.summary()["resumed"]
    for loser in results:
        if loser is winner:
            continue
        assert loser.returncode == 1 and len(loser.error_lines) == 1, loser.stderr[-2000:]
        assert "Traceback" not in loser.stderr
        line = loser.error_lines[0]
        assert "is locked by run" in line and f"pid {winner.pid}" in line, line
    return winner


@pytest.mark.slow
def test_racers_for_an_expired_lease_on_s3_one_slowed_by_the_proxy(
        s3_server, s3_bucket, lake, tiny_checkpoint, tmp_path):
    out = Location.of(f"s3://{s3_bucket}/out")
    run_id = crashed_run(lake, out, tiny_checkpoint, tmp_path)
    # The slow racer's writes of the lease (PUT, DELETE) are held by the proxy: it acts late
    # on the expired lease it read, after another racer took it over.
    with FaultProxy(s3_server.endpoint_url, delays={"PUT": SLOW_RACER_DELAY_S,
                                                    "DELETE": SLOW_RACER_DELAY_S},
                    paths=("/_lock",)) as proxy:
        results = race(lake, out, tiny_checkpoint, tmp_path,
                       {"out_storage_options": {"endpoint_url": proxy.endpoint_url}}, {},
                       lambda: any(kind in ("PUT", "DELETE") for kind, _, _ in proxy.log))
    assert_one_winner(results, run_id)
    assert_committed_once(out, run_id, lake)


@pytest.mark.slow
def test_racers_for_an_expired_lease_on_a_local_dir_one_slowed(lake, tiny_checkpoint, tmp_path):
    out = Location.of(str(tmp_path / "out"))
    run_id = crashed_run(lake, out, tiny_checkpoint, tmp_path)
    mark = tmp_path / "slow-read"
    results = race(lake, out, tiny_checkpoint, tmp_path, {},
                   {"LEASE_CHILD_READ_PAUSE_S": str(SLOW_RACER_DELAY_S),
                    "LEASE_CHILD_READ_MARK": str(mark)}, mark.exists)
    assert_one_winner(results, run_id)
    assert_committed_once(out, run_id, lake)


def slow_scan(lake: Path, out: Location, checkpoint: str, tmp_path: Path,
              options: dict | None = None, pause_s: float = 0.5) -> tuple[subprocess.Popen, Path]:
    """A scan pausing after each staged batch; returns once it has staged some rows."""
    progress = tmp_path / "progress"
    proc = spawn(lake, out.uri, checkpoint, options, LEASE_CHILD_PROGRESS=str(progress),
                 LEASE_CHILD_BATCH_PAUSE_S=str(pause_s))
    wait_for(lambda: progress.exists() and progress.read_text().strip(), "rows staged", [proc])
    return proc, progress


@pytest.mark.slow
def test_a_scan_whose_lease_was_taken_over_stops_before_its_next_write(
        lake, tiny_checkpoint, tmp_path):
    """Stopped past its expiry, a scan looks dead; a second scan takes over and finishes its
    run. Woken up, the first stops at its next durable step, in one line naming the holder,
    and writes nothing more. (The first scan's heartbeat is off and it is stopped while it
    pauses between batches, so the stop lands outside the lease's flocked few microseconds,
    as a stalled scan's usually does.)"""
    out = Location.of(str(tmp_path / "out"))
    ttl = {"lock_ttl_s": 2.0, "heartbeat_s": 0.3}
    first, _ = slow_scan(lake, out, tiny_checkpoint, tmp_path, {**ttl, "heartbeat_s": 3600},
                         pause_s=5.0)
    os.kill(first.pid, signal.SIGSTOP)
    try:
        run_id = read_lease(out)["run_id"]
        time.sleep(ttl["lock_ttl_s"] + 0.5)
        second = finish(spawn(lake, out.uri, tiny_checkpoint, ttl))
        assert second.returncode == 0, second.stderr[-2000:]
        assert second.summary()["run_id"] == run_id and second.summary()["resumed"]
    finally:
        os.kill(first.pid, signal.SIGCONT)
    stopped = finish(first)
    assert stopped.returncode == 1 and len(stopped.error_lines) == 1, stopped.stderr[-2000:]
    # (The second scan has finished by now: the line cannot name it any more.)
    assert stopped.error_lines[0].startswith("error: lost the lease on"), stopped.error_lines
    assert_committed_once(out, run_id, lake)
    assert not out.ls_names("_staging"), "the stopped scan wrote into the finished run's staging"


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stopped_scan_releases_its_lease_and_a_rerun_resumes_at_once(
        signum, lake, tiny_checkpoint, tmp_path):
    out = Location.of(str(tmp_path / "out"))
    scan, _ = slow_scan(lake, out, tiny_checkpoint, tmp_path)
    run_id = read_lease(out)["run_id"]
    t0 = time.monotonic()
    os.kill(scan.pid, signum)
    stopped = finish(scan)
    print(f"{signal.Signals(signum).name}: the scan exited {time.monotonic() - t0:.2f} s later")
    assert stopped.returncode == (143 if signum == signal.SIGTERM else 130), stopped.stderr[-2000:]
    assert read_lease(out) is None, "the stopped scan left its lease behind"
    rerun = finish(spawn(lake, out.uri, tiny_checkpoint))  # no --wait: refused if locked
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert rerun.summary()["run_id"] == run_id and rerun.summary()["resumed"]
    print(f"{signal.Signals(signum).name}: rerun waited {rerun.summary()['acquire_wait_s']:.3f} s")
    assert_committed_once(out, run_id, lake)


@pytest.mark.slow
def test_sigterm_under_the_ray_engine_releases_the_lease(lake, tiny_checkpoint, tmp_path):
    """ray.init installs its own SIGTERM handler (sys.exit): that too must unwind through
    the scan's release, and the rerun resume the run at once."""
    out = Location.of(str(tmp_path / "out"))
    ray_options = {"engine": "ray", "ray_init_kwargs": {"num_cpus": 2, "include_dashboard": False}}
    scan, _ = slow_scan(lake, out, tiny_checkpoint, tmp_path, ray_options)
    run_id = read_lease(out)["run_id"]
    os.kill(scan.pid, signal.SIGTERM)
    stopped = finish(scan)
    assert stopped.returncode not in (0, -signal.SIGTERM), stopped.stderr[-2000:]
    assert read_lease(out) is None, "the stopped scan left its lease behind"
    rerun = finish(spawn(lake, out.uri, tiny_checkpoint))
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert rerun.summary()["run_id"] == run_id and rerun.summary()["resumed"]
    assert_committed_once(out, run_id, lake)


@pytest.mark.slow
@pytest.mark.parametrize("where", ["local", "s3"])
def test_after_sigkill_a_rerun_on_the_same_host_takes_over_at_once(
        where, lake, tiny_checkpoint, tmp_path, request):
    if where == "s3":
        out = Location.of(f"s3://{request.getfixturevalue('s3_bucket')}/out")
    else:
        out = Location.of(str(tmp_path / "out"))
    scan, _ = slow_scan(lake, out, tiny_checkpoint, tmp_path)  # default expiry: 300 s
    run_id = read_lease(out)["run_id"]
    os.killpg(scan.pid, signal.SIGKILL)
    finish(scan)
    assert read_lease(out)["pid"] == scan.pid  # left behind, unexpired
    rerun = finish(spawn(lake, out.uri, tiny_checkpoint))  # no --wait: refused if locked
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert rerun.summary()["run_id"] == run_id and rerun.summary()["resumed"]
    print(f"SIGKILL ({where}): rerun waited {rerun.summary()['acquire_wait_s']:.3f} s")
    assert_committed_once(out, run_id, lake)


def test_a_holder_is_gone_only_when_provably_dead_on_this_host():
    """Same host and pid namespace: a pid that no longer exists, or that a later process
    reused (another start time), is gone; anything on another host may still be alive."""
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait()
    me = this_process()
    alive = {**me, "pid": os.getppid(), "pid_started": process_started(os.getppid())}
    assert not holder_gone(alive)
    assert holder_gone({**alive, "pid_started": "1"})  # the pid was reused
    assert holder_gone({**me, "pid": exited.pid})  # exited (and reaped)
    assert not holder_gone({**me, "pid": exited.pid, "host": "other-host"})
    assert not holder_gone({**me, "pid": exited.pid, "pid_namespace": "another/container"})
    assert not holder_gone(me)  # this very process


def test_a_holder_frozen_inside_the_local_guard_fails_the_next_scan_in_one_line(
        tmp_path, monkeypatch):
    """The flocked compare-and-swap takes microseconds; a process stopped inside it must not
    hang every later scan: they fail after GUARD_WAIT_S, naming the guard."""
    import fcntl

    from vip2scan.pipeline.run import lock

    out = Location.of(str(tmp_path / "out"))
    (tmp_path / "out").mkdir()
    monkeypatch.setattr(lock, "GUARD_WAIT_S", 0.3)
    with open(tmp_path / "out" / "_lock.guard", "w") as frozen:
        fcntl.flock(frozen, fcntl.LOCK_EX)  # what a holder stopped inside the swap keeps
        with pytest.raises(lock.OutputLocked, match="does not let go"):
            lock.Lease(out, ttl_s=30).acquire()
    lock.Lease(out, ttl_s=30).acquire().release()  # let go: usable again
    assert read_lease(out) is None
