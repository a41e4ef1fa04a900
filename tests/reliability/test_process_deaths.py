"""Processes that die or are stopped in a scan (issue 23, items 1 and 2).

- SIGTERM in the commit phase, after the Ray engine shut Ray down: one line, exit 143, the
  lease released, and the rerun finishes the run (Ray's shutdown used to leave SIGTERM on its
  default action while Python still reported the scan's handler);
- a poison object whose *read* kills the reading process (pipeline/faults.py SIGKILLs it, on
  every attempt, as an OOM on a mislabelled huge object would): one error row naming the
  cause, the rest committed, on both engines; the next night does not read it again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from tests.helpers.cli_runner import VENV_BIN, VIP2SCAN, invoke
from tests.helpers.hostile_files import small_png
from vip2scan.pipeline import faults
from vip2scan.pipeline.run.lock import read_lease
from vip2scan.pipeline.storage.location import Location

TIMEOUT_S = 300  # against hangs only


def _lake(root, names: list[str]) -> None:
    for i, name in enumerate(names):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(small_png(200 + i))


def _cli(*args: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [VIP2SCAN, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
        env={**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", **env})


def _finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    try:
        stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, stdout, stderr


@pytest.mark.slow  # a Ray scan in a real CLI process, then a rerun
@pytest.mark.timeout(TIMEOUT_S * 2)
def test_sigterm_after_the_ray_engine_shut_ray_down_releases_the_lease_in_one_line(
        tmp_path, tiny_checkpoint):
    lake, out, markers = tmp_path / "lake", tmp_path / "out", tmp_path / "markers"
    markers.mkdir()
    _lake(lake, [f"img{i}.png" for i in range(4)])
    args = ("scan", str(lake), "--out", str(out), "--checkpoint", tiny_checkpoint, "--batch-size", "2",
            "--map-size", "16", "--no-progress")
    # Paused while publishing its first score file: Ray has run and been shut down.
    proc = _cli(*args, "--engine", "ray", **{faults.PAUSE_DRIVER_AT_ENV: "score_file:1",
                                             faults.MARKER_DIR_ENV: str(markers)})
    deadline = time.monotonic() + TIMEOUT_S
    while not (markers / "paused-at-score_file").exists():
        assert proc.poll() is None, _finish(proc)[2][-2000:]
        assert time.monotonic() < deadline, "the scan never reached its commit"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGTERM)
    code, _, stderr = _finish(proc)
    said = [line for line in stderr.splitlines() if line.strip() and not line.startswith("starting ")]
    assert code == 143, stderr[-2000:]
    assert len(said) == 1 and said[0].startswith("stopped by SIGTERM: run "), said
    assert said[0].endswith("rerun the same command to resume it")
    # (That a rerun then resumes such a run: test_lease_races.py.)
    assert read_lease(Location.of(str(out))) is None, "the stopped scan left its lease behind"
