"""Who holds a lease, and whether that process provably still exists; signals that unwind.

A lease names its holder by host, pid, the pid's start time and the kernel's pid namespace
and boot id. A scan on the same host (same boot, same pid namespace) can then tell for sure
that a holder is gone: its pid no longer exists, is a zombie, or now belongs to a process
started at another time (the pid was reused). A holder on another host can only expire.

:func:`signals_unwind` turns SIGTERM (a CronJob's deadline, ``timeout``, ``kill``) into an
exception in the main thread, like Ctrl-C's KeyboardInterrupt, so every ``finally`` block runs
and the lease is released instead of being left to expire.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
from typing import Any, Iterator


class Terminated(KeyboardInterrupt):
    """The process was asked to stop (SIGTERM); raised in the main thread so cleanup runs."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum
        self.exit_code = 128 + signum


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            return fh.read().strip()
    except OSError:
        return None


def _proc_stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat fields from the state on (field 3), None if there is no such pid."""
    text = _read(f"/proc/{pid}/stat")
    if text is None or ")" not in text:
        return None
    return text.rsplit(")", 1)[1].split()


def process_started(pid: int) -> str | None:
    """The process's start time as the kernel counts it (clock ticks since boot), or psutil's
    creation time where there is no /proc; None when unknown."""
    fields = _proc_stat(pid)
    if fields is not None and len(fields) > 19:
        return fields[19]  # field 22, starttime
    try:
        import psutil

        return f"{psutil.Process(pid).create_time():.3f}"
    except Exception:  # noqa: BLE001 - psutil missing, or no such process
        return None


def _namespace() -> str | None:
    """The kernel instance and pid namespace this process sees pids in."""
    boot = _read("/proc/sys/kernel/random/boot_id")
    try:
        pid_ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        pid_ns = None
    return f"{boot}/{pid_ns}" if boot and pid_ns else None


def this_process() -> dict[str, Any]:
    """The holder fields of a lease written by this process."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "pid_started": process_started(pid),
            "pid_namespace": _namespace()}


def holder_gone(content: dict[str, Any]) -> bool:
    """True only when the lease's holder provably no longer runs: same host, same kernel
    and pid namespace, and its pid is gone, a zombie, or reused by a later process."""
    me = this_process()
    if not me["pid_namespace"] or content.get("host") != me["host"] or \
            content.get("pid_namespace") != me["pid_namespace"]:
        return False
    try:
        pid = int(content.get("pid"))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    if pid == me["pid"]:
        return False  # ourselves: a lease of this very process is not a dead one
    fields = _proc_stat(pid)
    if fields is None:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False  # exists, owned by someone else
        return False
    if fields[0] in ("Z", "X"):
        return True  # exited, not yet reaped by its parent
    recorded = content.get("pid_started")
    return recorded is not None and str(recorded) != process_started(pid)


def describe_holder(content: dict[str, Any]) -> str:
    """'run R on host H pid P' for messages."""
    return (f"run {content.get('run_id') or '(starting)'} on host {content.get('host', '?')} "
            f"pid {content.get('pid', '?')}")


@contextlib.contextmanager
def signals_unwind() -> Iterator[None]:
    """While inside, SIGTERM raises :class:`Terminated` in the main thread (SIGINT already
    raises KeyboardInterrupt), so the caller's ``finally`` releases what it holds. A second
    SIGTERM while unwinding is ignored: the release must not be cut short. Only installed
    in the main thread and only over the default handler (an application's own wins)."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated(signum)

    signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
