"""A deadline on each step of a reader command, so that a stuck read ends the command with one
line instead of holding a cron slot forever (issue 27).

The readers name what they are doing with :func:`step` (``with step("reading scores"):``);
outside a :class:`Deadline` that costs a dict lookup. A command (verify, query, report,
explore, calibrate) runs inside ``with Deadline("verify", 600):``, whose watchdog thread checks
how long the current step has lasted. Past the deadline it writes one line naming the step,
e.g. ``error: verify stalled in 'reading scores' for 600 s (deadline; --deadline to change)``,
and ends the process with exit 1 through ``os._exit``: the stuck call is usually native (a
DuckDB or Arrow thread waiting on a lock) and cannot be interrupted, and a normal exit would
wait for it. Entering or leaving a step restarts the clock, so a long command that keeps making
progress is never stopped; ``0`` or ``None`` turns the deadline off.

The watchdog is a Python thread, so it needs the interpreter lock; a native thread stuck while
holding it (issue 27's deadlock: DuckDB's scan thread holding it, waiting on Arrow, whose I/O
thread waits for it) would silence it. So a real deadline also arms :mod:`faulthandler`'s
timer, whose C thread needs no lock, a little later: it writes Python's thread dump (first
line ``Timeout (...)!``) and exits 1.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import sys
import threading
import time
from typing import Callable, Iterator

from .storage.redaction import redact

EXIT_STALLED = 1
# How a fired deadline ends the process; looked up when it fires, so tests can replace it.
exit_process: Callable[[int], None] = os._exit
OUTSIDE_STEPS = "starting"  # the step named while no step is entered yet
BACKSTOP_GRACE_S = 10.0  # faulthandler's exit comes this much later (at most the deadline again)

_lock = threading.Lock()
_active: "Deadline | None" = None


@contextlib.contextmanager
def step(name: str) -> Iterator[None]:
    """Name what the current command is doing (nested steps: the innermost is named)."""
    watch = _active
    if watch is None:
        yield
        return
    watch.enter(name)
    try:
        yield
    finally:
        watch.leave(name)


class Deadline:
    """The watchdog of one command: at most ``seconds`` in any one step, else one line + exit 1.

    ``exit`` (default :data:`exit_process`) and ``stderr`` are for tests; with no deadline
    (``seconds`` None or 0) nothing is started.
    """

    def __init__(self, command: str, seconds: float | None,
                 exit: Callable[[int], None] | None = None, stderr=None, poll_s: float = 1.0,
                 hint: str = "--deadline to change") -> None:
        self.command = command
        self.seconds = float(seconds) if seconds else None
        self.hint = hint
        self._exit = exit
        self._stderr = stderr
        self._poll_s = min(poll_s, self.seconds / 4) if self.seconds else poll_s
        self._steps: list[str] = []
        self._since = time.monotonic()
        self._state = threading.Lock()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._backstop = False  # faulthandler's timer is armed (real exits only)
        self.fired: str | None = None  # the line written, once it fired

    def enter(self, name: str) -> None:
        with self._state:
            self._steps.append(name)
            self._since = time.monotonic()
            self._rearm()

    def leave(self, name: str) -> None:
        with self._state:
            if self._steps and self._steps[-1] == name:
                self._steps.pop()
            self._since = time.monotonic()
            self._rearm()

    def _rearm(self) -> None:
        """Restart faulthandler's timer with the step's clock."""
        if self._backstop and self.seconds is not None:
            faulthandler.dump_traceback_later(
                self.seconds + min(BACKSTOP_GRACE_S, self.seconds), exit=True,
                file=sys.__stderr__)

    def current(self) -> tuple[str, float]:
        """(the innermost step, seconds since the clock last restarted)."""
        with self._state:
            return (self._steps[-1] if self._steps else OUTSIDE_STEPS,
                    time.monotonic() - self._since)

    def __enter__(self) -> "Deadline":
        global _active
        if self.seconds is None:
            return self
        with _lock:
            if _active is not None:
                return self  # an outer command's deadline already watches this one
            _active = self
        self._since = time.monotonic()
        stderr = sys.__stderr__
        self._backstop = (self._exit is None and exit_process is os._exit
                          and stderr is not None and _has_fileno(stderr))
        self._rearm()
        self._thread = threading.Thread(target=self._watch, name=f"{self.command}-deadline",
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        global _active
        self._done.set()
        if self._backstop:
            self._backstop = False
            faulthandler.cancel_dump_traceback_later()
        with _lock:
            if _active is self:
                _active = None
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _watch(self) -> None:
        assert self.seconds is not None
        while not self._done.wait(self._poll_s):
            name, elapsed = self.current()
            if elapsed >= self.seconds:
                self.fire(name)
                return

    def fire(self, name: str) -> None:
        """Write the one line and end the process (the stalled call is left where it is)."""
        self.fired = redact(f"error: {self.command} stalled in {name!r} for "
                            f"{self.seconds:g} s (deadline; {self.hint})")
        stream = self._stderr or sys.stderr
        try:
            stream.write(self.fired + "\n")
            stream.flush()
        except (OSError, ValueError):  # stderr closed: the exit code still tells
            pass
        (self._exit or exit_process)(EXIT_STALLED)


def _has_fileno(stream) -> bool:
    try:
        stream.fileno()
    except (OSError, ValueError, AttributeError):
        return False
    return True
