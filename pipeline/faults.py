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
- ``VIP2SCAN_FAULT_MARKER_DIR=DIR`` (required by the three above): each fault fires once per
  run, across all processes and restarts: the first process to create ``DIR/<kind>.fired``
  dies, others carry on. The marker is created before dying, so a restarted actor does not
  die again.

In the driver only (never shipped to workers):

- ``VIP2SCAN_FAULT_KILL_DRIVER_AT=POINT:N``: the driver SIGKILLs itself the N-th time it
  passes the named point (:data:`DRIVER_POINTS`; read at each pass, no marker needed: the
  rerun simply runs without the variable).
- ``VIP2SCAN_FAULT_PAUSE_DRIVER_AT=POINT:N`` (with the marker dir): the driver creates
  ``DIR/paused-at-POINT`` the N-th time it passes the point and sleeps there for a day, so a
  test can send it a signal at that very moment.

Poison objects (comma-separated substrings of an object's URI; they fire on every attempt,
like a real poison file, and need no marker):

- ``VIP2SCAN_FAULT_KILL_DECODER_ON=a.png,b``: the process decoding a matching object is
  SIGKILLed (the decode sandbox's child: stages/sandbox.py);
- ``VIP2SCAN_FAULT_HANG_DECODE_ON=...``: decoding a matching object hangs (sleeps for a day);
- ``VIP2SCAN_FAULT_HANG_READ_ON=...``: reading a matching object hangs (sleeps for a day);
- ``VIP2SCAN_FAULT_KILL_READER_ON=...``: the process reading a matching object is SIGKILLed
  (the reader process of stages/reader.py; before it existed, the driver or the decode task);
- ``VIP2SCAN_FAULT_KILL_DECODE_WORKER_ON=...``: the decode task's own process (not its
  sandboxed decoder) dies when its batch holds a matching object: a poison the sandbox cannot
  catch, so only Ray's bounded task retries stand between it and a loop. With the marker dir
  set, each death appends a line to ``DIR/decode-worker.kills`` (Ray engine only: on the
  local engine that process is the driver).

Nothing here runs unless those variables are set.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass

KILL_DRIVER_ENV = "VIP2SCAN_FAULT_KILL_DRIVER_AFTER_BATCHES"
KILL_ACTOR_ENV = "VIP2SCAN_FAULT_KILL_ACTOR_AFTER_BATCHES"
KILL_DECODE_ENV = "VIP2SCAN_FAULT_KILL_DECODE_AFTER_BATCHES"
MARKER_DIR_ENV = "VIP2SCAN_FAULT_MARKER_DIR"
KILL_DECODER_ON_ENV = "VIP2SCAN_FAULT_KILL_DECODER_ON"
HANG_DECODE_ON_ENV = "VIP2SCAN_FAULT_HANG_DECODE_ON"
HANG_READ_ON_ENV = "VIP2SCAN_FAULT_HANG_READ_ON"
KILL_READER_ON_ENV = "VIP2SCAN_FAULT_KILL_READER_ON"
KILL_DECODE_WORKER_ON_ENV = "VIP2SCAN_FAULT_KILL_DECODE_WORKER_ON"
HANG_S = 24 * 3600.0
KILL_DRIVER_AT_ENV = "VIP2SCAN_FAULT_KILL_DRIVER_AT"
PAUSE_DRIVER_AT_ENV = "VIP2SCAN_FAULT_PAUSE_DRIVER_AT"
CRASH_EXIT_CODE = 87
DRIVER_CRASH_EXIT_CODE = 86


@dataclass(frozen=True)
class FaultHooks:
    """Which worker dies when; counters are per process (each worker counts its own batches)."""

    marker_dir: str = ""
    kill_actor_after_batches: int | None = None
    kill_decode_after_batches: int | None = None
    kill_decoder_on: tuple[str, ...] = ()
    hang_decode_on: tuple[str, ...] = ()
    hang_read_on: tuple[str, ...] = ()
    kill_reader_on: tuple[str, ...] = ()
    kill_decode_worker_on: tuple[str, ...] = ()

    def decode_fault(self, uri: str) -> str | None:
        """'kill' or 'hang' when decoding ``uri`` should crash or hang the decoder, else None."""
        if any(part in uri for part in self.kill_decoder_on):
            return "kill"
        if any(part in uri for part in self.hang_decode_on):
            return "hang"
        return None

    def on_decode_uris(self, uris: list[str]) -> None:
        """Kill this decode worker when its batch holds a matching object (every attempt)."""
        if not any(part in uri for uri in uris for part in self.kill_decode_worker_on):
            return
        if self.marker_dir:
            with open(os.path.join(self.marker_dir, "decode-worker.kills"), "a") as fh:
                fh.write(f"{os.getpid()}\n")
        os._exit(CRASH_EXIT_CODE)

    def on_read(self, uris: list[str]) -> None:
        """Hang like a read that never returns when one of ``uris`` is a hanging object; die
        like a reader killed by the OOM killer when one is a killing object."""
        if any(part in uri for uri in uris for part in self.kill_reader_on):
            os.kill(os.getpid(), signal.SIGKILL)
        if any(part in uri for uri in uris for part in self.hang_read_on):
            time.sleep(HANG_S)

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
    poison = {name: _substrings(env) for name, env in (
        ("kill_decoder_on", KILL_DECODER_ON_ENV), ("hang_decode_on", HANG_DECODE_ON_ENV),
        ("hang_read_on", HANG_READ_ON_ENV), ("kill_reader_on", KILL_READER_ON_ENV),
        ("kill_decode_worker_on", KILL_DECODE_WORKER_ON_ENV))}
    counted = bool(marker_dir and (actor or decode))
    if not counted and not any(poison.values()):
        return None
    return FaultHooks(marker_dir=marker_dir or "",
                      kill_actor_after_batches=int(actor) if counted and actor else None,
                      kill_decode_after_batches=int(decode) if counted and decode else None,
                      **poison)


def _substrings(env: str) -> tuple[str, ...]:
    """The non-empty comma-separated parts of an environment variable."""
    return tuple(part for part in os.environ.get(env, "").split(",") if part)


def driver_kill_after() -> int | None:
    """Staged batches after which the driver dies (read once, when a run starts)."""
    value = os.environ.get(KILL_DRIVER_ENV)
    return int(value) if value else None


def on_driver_flush(batches_staged: int, kill_after: int | None) -> None:
    """Die like a killed driver once ``kill_after`` batches are durably staged."""
    if kill_after is not None and batches_staged >= kill_after:
        os._exit(DRIVER_CRASH_EXIT_CODE)


# Where the driver can be killed, in the order a run passes them (tests draw from these):
# lease taken; one listed object; the plan's files written but plan.json not yet; the plan
# saved; one result batch back from the engine, not yet staged; one staging part durable;
# one score file published at commit; all score files published; the `latest` snapshot
# written, the record naming it not yet; the run record written, its staging not yet removed.
DRIVER_POINTS = ("lease", "listing", "plan", "planned", "batch", "staged", "score_file",
                 "committed", "snapshot", "record")
_driver_passes: dict[str, int] = {}


def driver_point(point: str) -> None:
    """SIGKILL this process on its N-th pass of ``point`` when KILL_DRIVER_AT is ``point:N``
    (or pause there when PAUSE_DRIVER_AT is):
    a real SIGKILL (no finally blocks, no lease release, no atexit), like the OOM killer or a
    node going away."""
    killed, paused = os.environ.get(KILL_DRIVER_AT_ENV), os.environ.get(PAUSE_DRIVER_AT_ENV)
    if not any(wanted and wanted.partition(":")[0] == point for wanted in (killed, paused)):
        return
    _driver_passes[point] = _driver_passes.get(point, 0) + 1
    if killed and _reached(killed, point):
        os.kill(os.getpid(), signal.SIGKILL)
    if paused and _reached(paused, point):
        open(os.path.join(os.environ[MARKER_DIR_ENV], f"paused-at-{point}"), "w").close()
        time.sleep(HANG_S)


def _reached(wanted: str, point: str) -> bool:
    name, _, count = wanted.partition(":")
    return name == point and _driver_passes[point] >= int(count or 1)
