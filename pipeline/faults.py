"""Fault-injection hooks for reliability tests: make a worker process die like a crash.

Set in the driver's environment; :func:`from_env` turns them into a small picklable value that
travels to the Ray workers inside the stage settings (so they work on an already running Ray,
whose workers do not see the driver's later environment changes):

- ``VIP2SCAN_FAULT_KILL_DRIVER_AFTER_BATCHES=N``: the scan's driver dies right after the
  durable staging part that brings its staged batches to N or more (read in the driver
  itself, so it needs no marker);
- ``VIP2SCAN_FAULT_KILL_ACTOR_AFTER_BATCHES=N``: an inference actor dies (``os._exit``) when it
  receives its N-th batch, before scoring it;
- ``VIP2SCAN_FAULT_KILL_DECODE_AFTER_BATCHES=N``: a decode worker dies on its N-th batch;
- ``VIP2SCAN_FAULT_MARKER_DIR=DIR`` (required by both): each fault fires once per run, across
  all processes and restarts: the first process to create ``DIR/<kind>.fired`` dies, others
  carry on. The marker is created before dying, so a restarted actor does not die again.

Nothing here runs unless those variables are set.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

KILL_DRIVER_ENV = "VIP2SCAN_FAULT_KILL_DRIVER_AFTER_BATCHES"
KILL_ACTOR_ENV = "VIP2SCAN_FAULT_KILL_ACTOR_AFTER_BATCHES"
KILL_DECODE_ENV = "VIP2SCAN_FAULT_KILL_DECODE_AFTER_BATCHES"
MARKER_DIR_ENV = "VIP2SCAN_FAULT_MARKER_DIR"
CRASH_EXIT_CODE = 87
DRIVER_CRASH_EXIT_CODE = 86


@dataclass(frozen=True)
class FaultHooks:
    """Which worker dies when; counters are per process (each worker counts its own batches)."""

    marker_dir: str
    kill_actor_after_batches: int | None = None
    kill_decode_after_batches: int | None = None

    def on_actor_batch(self, batches_seen: int) -> None:
        if self.kill_actor_after_batches is not None and \
                batches_seen >= self.kill_actor_after_batches:
            self._die_once("actor")

    def on_decode_batch(self) -> None:
        if self.kill_decode_after_batches is None:
            return
        _decode_batches[0] += 1
        if _decode_batches[0] >= self.kill_decode_after_batches:
            self._die_once("decode")

    def _die_once(self, kind: str) -> None:
        marker = os.path.join(self.marker_dir, f"{kind}.fired")
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return  # already fired in this run
        with os.fdopen(fd, "w") as fh:
            fh.write(str(os.getpid()))
        os._exit(CRASH_EXIT_CODE)  # no cleanup, no exception: like a segfault or an OOM kill


_decode_batches = [0]


def from_env() -> FaultHooks | None:
    """The hooks configured in this (driver) process's environment, or None."""
    marker_dir = os.environ.get(MARKER_DIR_ENV)
    actor = os.environ.get(KILL_ACTOR_ENV)
    decode = os.environ.get(KILL_DECODE_ENV)
    if not marker_dir or not (actor or decode):
        return None
    return FaultHooks(marker_dir=marker_dir,
                      kill_actor_after_batches=int(actor) if actor else None,
                      kill_decode_after_batches=int(decode) if decode else None)


def driver_kill_after() -> int | None:
    """Staged batches after which the driver dies (read once, when a run starts)."""
    value = os.environ.get(KILL_DRIVER_ENV)
    return int(value) if value else None


def on_driver_flush(batches_staged: int, kill_after: int | None) -> None:
    """Die like a killed driver once ``kill_after`` batches are durably staged."""
    if kill_after is not None and batches_staged >= kill_after:
        os._exit(DRIVER_CRASH_EXIT_CODE)
