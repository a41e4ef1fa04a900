"""A reader command's deadline (pipeline/deadline.py): a stalled step ends the process with one
line naming it and exit 1; steps that keep coming never fire it."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
import time

from vip2scan.pipeline.deadline import Deadline, step

LINE = "error: verify stalled in 'reading scores' for 0.3 s (deadline; --deadline to change)"


def test_a_stalled_step_fires_one_line_and_exit_1() -> None:
    codes: list[int] = []
    stderr = io.StringIO()
    released = threading.Event()

    def fake_exit(code: int) -> None:  # the real one ends the process; this one unblocks
        codes.append(code)
        released.set()

    t0 = time.monotonic()
    with Deadline("verify", 0.3, exit=fake_exit, stderr=stderr):
        with step("reading run records"):
            pass
        with step("reading scores"):
            assert released.wait(10), "the deadline never fired"
    assert codes == [1] and stderr.getvalue() == LINE + "\n"
    assert time.monotonic() - t0 < 3


def test_steps_that_keep_coming_and_no_deadline_never_fire() -> None:
    codes: list[int] = []
    with Deadline("query", 0.4, exit=codes.append, stderr=io.StringIO()):
        for i in range(8):
            with step(f"run {i}"):
                time.sleep(0.1)
    with Deadline("query", 0, exit=codes.append) as off:  # 0: no deadline, no thread
        with step("anything"):
            time.sleep(0.05)
    assert codes == [] and off.fired is None


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from vip2scan.pipeline.deadline import "
                           "Deadline, step\n" + code], capture_output=True, text=True, timeout=60)


def test_the_real_exit_ends_the_process_past_a_stuck_wait() -> None:
    """The stuck call cannot be interrupted (here: a lock never released); the process still
    ends, with exactly the one line."""
    proc = _run("import threading\n"
                "stuck = threading.Lock(); stuck.acquire()\n"
                "with Deadline('verify', 1), step('reading scores'):\n"
                "    stuck.acquire()\n")
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [LINE.replace("0.3 s", "1 s")]


def test_a_stall_holding_the_interpreter_lock_still_ends_with_exit_1() -> None:
    """Issue 27's deadlock holds the lock the watchdog thread needs: faulthandler's timer
    (no lock needed) ends the process a little later, with Python's thread dump."""
    proc = _run("import ctypes\n"
                "with Deadline('verify', 0.3), step('reading scores'):\n"
                "    ctypes.PyDLL(None).sleep(30)\n")  # PyDLL: the lock stays held
    assert proc.returncode == 1
    assert proc.stderr.startswith("Timeout (") and "line 3" in proc.stderr
