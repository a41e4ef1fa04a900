"""One scan in a child process, for the lease tests: argv = lake out checkpoint options-json.

Like the CLI it prints one ``error:`` line and exits 1 when the scan fails, and exits 130 / 143
when interrupted by SIGINT / SIGTERM. On success it prints the summary as JSON, with
``acquire_wait_s``: how long the scan waited for OUT's lease.

Environment (all optional):
  LEASE_CHILD_READY / LEASE_CHILD_GO: touch READY, then wait for GO to exist, right before
      taking the lease, so racers reach the lease together;
  LEASE_CHILD_READ_PAUSE_S / LEASE_CHILD_READ_MARK: after the first read of the lease, touch
      READ_MARK and pause that long (a slow racer: it decides on what it read, then acts late);
  LEASE_CHILD_PROGRESS: after each staged batch, append the rows done to this file, then
      pause LEASE_CHILD_BATCH_PAUSE_S seconds (a scan slow enough to stop mid-run).
"""

from __future__ import annotations

import json
import os
import sys
import time

from vip2scan.jobs.errors import report_runtime_error
from vip2scan.pipeline import ScanOptions, scan
from vip2scan.pipeline.run import lock

_acquire = lock.Lease.acquire
_read_lease_versioned = lock.read_lease_versioned
waited: list[float] = []
reads: list[int] = []


def slow_first_read(out):
    """The real read of the lease; the first one is followed by a pause."""
    seen = _read_lease_versioned(out)
    if not reads:
        reads.append(1)
        open(os.environ["LEASE_CHILD_READ_MARK"], "w").close()
        time.sleep(float(os.environ["LEASE_CHILD_READ_PAUSE_S"]))
    return seen


def acquire_at_barrier(self, *args, **kwargs):
    """The real acquire, after the barrier; times how long it waited."""
    ready, go = os.environ.get("LEASE_CHILD_READY"), os.environ.get("LEASE_CHILD_GO")
    if ready and go:
        open(ready, "w").close()
        while not os.path.exists(go):
            time.sleep(0.005)
    t0 = time.monotonic()
    try:
        return _acquire(self, *args, **kwargs)
    finally:
        waited.append(time.monotonic() - t0)


def slow_progress(done: int, total: int) -> None:
    with open(os.environ["LEASE_CHILD_PROGRESS"], "a") as fh:
        fh.write(f"{done}\n")
    time.sleep(float(os.environ.get("LEASE_CHILD_BATCH_PAUSE_S", "0.5")))


def main() -> int:
    lake, out, checkpoint, options = sys.argv[1:5]
    opts = ScanOptions(**json.loads(options))
    if os.environ.get("LEASE_CHILD_PROGRESS"):
        opts.progress = slow_progress
    lock.Lease.acquire = acquire_at_barrier
    if os.environ.get("LEASE_CHILD_READ_PAUSE_S"):
        lock.read_lease_versioned = slow_first_read
    try:
        summary = scan(lake, out, checkpoint, opts)
    except KeyboardInterrupt as exc:  # SIGINT, or SIGTERM as holder.Terminated
        sys.stderr.write("interrupted\n")
        return getattr(exc, "exit_code", 130)
    except Exception as exc:  # noqa: BLE001 - one line, like the CLI
        report_runtime_error(exc, debug=False)
        return 1
    print(json.dumps({**summary.to_dict(), "acquire_wait_s": sum(waited)}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
