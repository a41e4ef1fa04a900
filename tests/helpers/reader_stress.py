"""Readers run over and over against one S3 OUT, each under a time limit, to count hangs (issue
27: `verify` over Arrow's datasets on a Python filesystem deadlocked about one run in thirty).

The stress test (tests/pipeline/output/test_reader_stress.py) uses :func:`build_out` and
:func:`stress`. Run as a script, it measures the hang rate of the old reader path (fsspec under
``pyarrow.fs.PyFileSystem``, patched in here only) against the native one, counted the same way:

    nice -n 19 .venv/bin/python -m tests.helpers.reader_stress --runs 100 --timeout 30

Readers run in child processes (in process there, as a command would), watched from outside:
a child that hangs is killed and counted, and a new one takes the runs left (:func:`stress`).
"""

from __future__ import annotations

import argparse
import json
import os
import select
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from tests.helpers.hand_made_runs import Night
from vip2scan.pipeline.output.paths import STAGING
from vip2scan.pipeline.storage.location import Location

LATEST_SQL = "SELECT count(*), sum(size_bytes) FROM latest"


def build_out(out: Location, nights: int = 10, objects: int = 120) -> None:
    """Commit ``nights`` runs of a changing lake of about ``objects`` objects: every object on
    night 0, then a fifth rewritten, a few new and a few gone each night (~170 objects seen)."""
    night = Night(out)
    names = [f"line{i % 4}/img_{i:04d}.png" for i in range(objects)]
    night.commit(0, "m1", {n: 100 + i for i, n in enumerate(names)})
    for day in range(1, nights):
        gone = names[day * 2: day * 2 + 2]
        new = [f"line{day % 4}/new_{day:02d}_{k}.png" for k in range(5)]
        rewritten = names[day * 2 + 2:: 5]
        names = [n for n in names if n not in gone] + new
        night.commit(day, "m1", {n: 1000 * day + k for k, n in enumerate(rewritten + new)},
                     vanished=gone)
    # A scan removes its staging once committed; left here, verify flags it after 300 s.
    out.remove(STAGING, recursive=True)


def verify_once(out: Location) -> Any:
    from vip2scan.pipeline.output.verify import verify

    report = verify(out.uri, out.storage_options)
    assert report.ok, [p.line() for p in report.problems]
    return report.rows_checked


def latest_once(out: Location) -> Any:
    from vip2scan.pipeline.output.views import Outputs

    con = Outputs(out.uri, out.storage_options).connect("500MB")
    try:
        return con.execute(LATEST_SQL).fetchall()[0]
    finally:
        con.close()


@dataclass
class Tally:
    runs: int = 0
    hangs: dict[str, int] = field(default_factory=lambda: {"verify": 0, "latest": 0})
    errors: list[str] = field(default_factory=list)
    children: int = 0
    wall_s: float = 0.0


def stress(out: Location, runs: int, timeout: float, mode: str = "native") -> Tally:
    """``runs`` runs of verify and of the latest query in turns, in child processes, each read
    under ``timeout`` seconds. A hung reader can hold the interpreter lock (issue 27: a DuckDB
    thread holding it waits on Arrow, whose I/O thread waits for it), so no timer inside the
    process could fire: the parent watches each child's progress lines instead, kills a child
    that goes quiet, counts the hang, and starts a new child for the runs left."""
    tally, t0 = Tally(), time.monotonic()
    while tally.runs < runs:
        tally.children += 1
        child = subprocess.Popen(
            [sys.executable, "-m", "tests.helpers.reader_stress", "--child", "--mode", mode,
             "--out", out.uri, "--options", json.dumps(dict(out.storage_options)),
             "--runs", str(runs - tally.runs)], stdout=subprocess.PIPE, text=True, bufsize=1)
        try:
            _watch(child, tally, timeout)
        finally:
            if child.poll() is None:
                child.kill()  # ours, by pid: a reader that hung
            child.wait(10)
            assert child.stdout is not None
            child.stdout.close()
    tally.wall_s = time.monotonic() - t0
    return tally


def _watch(child: subprocess.Popen, tally: Tally, timeout: float) -> None:
    """Read a child's progress lines until it ends; a read that says nothing for ``timeout``
    seconds is a hang (the child's start-up gets the same time again)."""
    assert child.stdout is not None
    current, limit = None, timeout * 2
    while True:
        ready, _, _ = select.select([child.stdout], [], [], limit)
        if not ready:
            tally.hangs[current or "verify"] += 1
            tally.runs += 1
            return
        line = child.stdout.readline()
        if not line:
            return
        event = json.loads(line)
        limit = timeout
        if "start" in event:
            current = event["start"]
        elif "error" in event:
            tally.errors.append(event["error"])
        if event.get("done"):
            tally.runs += 1


def _child_runs(out: Location, runs: int) -> None:
    """The child's loop: a line before each read and one after each run, flushed."""
    def say(**event: Any) -> None:
        sys.stdout.write(json.dumps(event) + "\n")
        sys.stdout.flush()

    for _ in range(runs):
        for name, fn in (("verify", verify_once), ("latest", latest_once)):
            say(start=name)
            try:
                fn(out)
            except Exception as exc:  # noqa: BLE001 - reported to the parent, not raised
                say(error=f"{name}: {type(exc).__name__}: {exc}"[:300])
        say(done=True)


def use_old_path() -> None:
    """The reader path before issue 27 (measurement only): fsspec under PyFileSystem."""
    import pyarrow.fs as pafs

    from vip2scan.pipeline.storage.arrow_fs import RetryingFSSpecHandler

    def old(self: Location) -> Any:
        if self.is_local:
            return pafs.LocalFileSystem()
        return pafs.PyFileSystem(RetryingFSSpecHandler(self.fs))

    Location.pyarrow_filesystem = old  # type: ignore[method-assign]


def _child(args: argparse.Namespace) -> None:
    if args.mode == "old":
        use_old_path()
    _child_runs(Location.of(args.out, json.loads(args.options)), args.runs)
    sys.stdout.flush()
    os._exit(0)  # no interpreter teardown: a pool thread left over must not hold the exit


def _measure(out: Location, mode: str, runs: int, timeout: float) -> dict:
    tally = stress(out, runs, timeout, mode)
    return {"mode": mode, "runs": tally.runs, "hangs": tally.hangs,
            "n_errors": len(tally.errors), "errors": tally.errors[:3],
            "children": tally.children, "wall_s": round(tally.wall_s, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--modes", default="old,native")
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--mode", default="native")
    parser.add_argument("--out")
    parser.add_argument("--options", default="{}")
    args = parser.parse_args()
    if args.child:
        _child(args)
        return
    from tests.helpers.local_servers import free_port

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                               str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(150):
            try:
                urllib.request.urlopen(endpoint + "/moto-api/", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        options = {"endpoint_url": endpoint, "key": "testing", "secret": "testing"}
        Location.of("s3://stress", options).fs.mkdir("stress")
        out = Location.of("s3://stress/out", options)
        build_out(out)
        for mode in args.modes.split(","):
            print(json.dumps(_measure(out, mode, args.runs, args.timeout)), flush=True)
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
