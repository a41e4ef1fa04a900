"""Processes that die or are stopped in a scan (issue 23, items 1 and 2).

- SIGTERM in the commit phase, after the Ray engine shut Ray down: one line, exit 143, the
  lease released, and the rerun finishes the run (Ray's shutdown used to leave SIGTERM on its
  default action while Python still reported the scan's handler);
- the deaths of reader processes, recorded in the run's staging, outlive the driver: after a
  restart an object in flight at two deaths is not read again. (A poison object whose read
  kills its reader, on both engines: test_poison_files.py.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
from vip2scan.pipeline import faults
from vip2scan.pipeline.run.lock import read_lease
from vip2scan.pipeline.storage.location import Location

from tests.helpers.cli_runner import VENV_BIN, VIP2SCAN
from tests.helpers.hostile_files import small_png

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


POISON = "poison/read_kills.png"  # a valid PNG: only the fault hook makes its read deadly
DIED = "reader process died: SIGKILL"


def test_deaths_recorded_in_staging_quarantine_the_object_after_a_restart(tmp_path):
    """What a dead driver knew survives it: the deaths its reader processes recorded in the
    run's staging make the restarted one skip the object without reading it again."""
    import numpy as np
    from vip2scan.pipeline.run.staging import death_log, earlier_deaths
    from vip2scan.pipeline.specs import LimitSpec
    from vip2scan.pipeline.stages.decode import DecodeSettings, ReadDecode

    lake, out = tmp_path / "lake", Location.of(str(tmp_path / "out"))
    _lake(lake, ["a.png", POISON])
    uris = np.array([f"file://{lake}/a.png", f"file://{lake}/{POISON}"])
    hooks = faults.FaultHooks(kill_reader_on=("read_kills",))
    settings = DecodeSettings(image_size=16, limit_spec=LimitSpec(read_timeout_s=30),
                              faults=hooks, deaths=death_log(out, "run-1"))
    first = ReadDecode(settings)({"image_uri": uris})
    assert list(first["status"]) == ["ok", "error"] and first["error"][1] == DIED
    # The group's death, then its own alone: two deaths, both recorded.
    recorded = earlier_deaths(out, "run-1")
    assert recorded == {uris[0]: [1, DIED], uris[1]: [2, DIED]}
    restarted = ReadDecode(DecodeSettings(image_size=16, faults=hooks,
                                          deaths=death_log(out, "run-1"), suspects=recorded))
    again = restarted({"image_uri": uris})
    assert list(again["status"]) == ["ok", "error"] and again["error"][1] == DIED
    assert again["read_bytes"][1] == 0 and earlier_deaths(out, "run-1") == recorded
