"""Poison files: an object whose read or decode kills the process holding it, or whose decode
or read hangs, becomes one error row with the reason; the night goes on and commits everything
else, on both engines, and later nights neither rescore it nor lose it (--retry-errors
retries it).

The poison is real: pipeline/faults.py SIGKILLs the process reading or decoding a named
object, or sleeps for a day inside its decode or read, on every attempt, as a real poison
file would. (Before the reader process, a read that killed its process killed the driver on
the local engine, every night, and failed the Ray run after four task deaths, naming nothing.)
"""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.helpers import ROOT
from tests.helpers.cli_runner import invoke
from tests.helpers.hostile_files import small_png
from vip2scan.model.images import decode_image
from vip2scan.pipeline import ScanOptions, faults, scan
from vip2scan.pipeline.stages.sandbox import Sandbox

N_GOOD = 9
KILLER = "poison/killer.png"
HUNG_DECODE = "poison/hangs_decoding.png"
HUNG_READ = "poison/hangs_reading.png"
READ_KILLER = "poison/read_kills.png"
LIMIT_S = 3.0  # the per-object time limit in these tests (the default is 60 s decode, 120 s read)


def _lake(root, poison: tuple[str, ...]) -> None:
    """N_GOOD ordinary PNGs plus the named objects (valid PNGs too: only the hooks poison them)."""
    names = [f"line{i % 2}/img{i:02d}.png" for i in range(N_GOOD)] + list(poison)
    for i, name in enumerate(names):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(small_png(100 + i))


def _poison_env(monkeypatch, kill: str | None, hang_decode: str | None,
                hang_read: str | None = None, kill_reader: str | None = None) -> None:
    for env, value in ((faults.KILL_DECODER_ON_ENV, kill), (faults.HANG_DECODE_ON_ENV, hang_decode),
                       (faults.HANG_READ_ON_ENV, hang_read),
                       (faults.KILL_READER_ON_ENV, kill_reader)):
        if value:
            monkeypatch.setenv(env, value)
        else:
            monkeypatch.delenv(env, raising=False)


def _latest(out: str) -> dict[str, tuple[str, str]]:
    """image name -> (status, error) in the `latest` view, through the real `query` command."""
    ran = invoke("query", out, "SELECT image_uri, status, coalesce(error, '') AS error FROM latest",
                 "--format", "csv")
    assert ran.exit_code == 0, ran.stderr
    return {row["image_uri"].split("/lake/", 1)[1]: (row["status"], row["error"])
            for row in csv.DictReader(io.StringIO(ran.stdout))}


def _assert_verify_clean(out: str) -> None:
    ran = invoke("verify", out)
    assert ran.exit_code == 0, ran.stdout + ran.stderr


def _options(**kwargs) -> ScanOptions:
    kwargs.setdefault("engine", "ray")
    return ScanOptions(batch_size=4, map_size=16, stage_rows=4, decode_timeout_s=LIMIT_S,
                       read_timeout_s=LIMIT_S, **kwargs)


@pytest.mark.slow  # a night with decoders killed and hung
@pytest.mark.timeout(300)
def test_local_night_commits_everything_but_the_poison_files(tmp_path, monkeypatch, tiny_checkpoint):
    lake, out = tmp_path / "lake", str(tmp_path / "out")
    _lake(lake, (KILLER, HUNG_DECODE, HUNG_READ, READ_KILLER))
    _poison_env(monkeypatch, kill="killer.png", hang_decode="hangs_decoding",
                hang_read="hangs_reading", kill_reader="read_kills")

    night = scan(str(lake), out, tiny_checkpoint, _options(engine="local"))
    assert night.status == "complete"
    assert (night.counts["scored"], night.counts["failed"]) == (N_GOOD, 4)
    latest = _latest(out)
    assert latest[KILLER] == ("error", "decoder process died: SIGKILL")
    assert latest[READ_KILLER] == ("error", "reader process died: SIGKILL")
    assert latest[HUNG_DECODE] == ("error", f"decode timed out after {LIMIT_S:g} s")
    assert latest[HUNG_READ] == ("error", f"read timed out after {LIMIT_S:g} s")
    assert sorted(name for name, (status, _) in latest.items() if status == "ok") == \
        sorted(f"line{i % 2}/img{i:02d}.png" for i in range(N_GOOD))
    _assert_verify_clean(out)

    # The next night (poison still there) scores nothing again: error rows count as done.
    again = scan(str(lake), out, tiny_checkpoint, _options(engine="local"))
    assert again.counts["scored"] == again.counts["failed"] == 0 and not again.inference_started

    # Once the files are fixed, --retry-errors rescans exactly those four.
    _poison_env(monkeypatch, kill=None, hang_decode=None)
    fixed = scan(str(lake), out, tiny_checkpoint, _options(engine="local", retry_errors=True))
    assert (fixed.counts["retried"], fixed.counts["scored"], fixed.counts["failed"]) == (4, 4, 0)
    assert {status for status, _ in _latest(out).values()} == {"ok"}
    _assert_verify_clean(out)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_ray_night_commits_everything_but_the_poison_files(tmp_path, monkeypatch, ray_local,
                                                           tiny_checkpoint):
    """On Ray the poison never reaches Ray's own retries: the decode task survives (its
    reader process died), so no task is retried and no worker restart loop starts."""
    lake, out = tmp_path / "lake", str(tmp_path / "out")
    _lake(lake, (KILLER, HUNG_DECODE, READ_KILLER))
    _poison_env(monkeypatch, kill="killer.png", hang_decode="hangs_decoding",
                kill_reader="read_kills")

    night = scan(str(lake), out, tiny_checkpoint, _options(engine="ray", actors=(1, 1)))
    assert night.status == "complete"
    assert (night.counts["scored"], night.counts["failed"]) == (N_GOOD, 3)
    latest = _latest(out)
    assert latest[KILLER] == ("error", "decoder process died: SIGKILL")
    assert latest[READ_KILLER] == ("error", "reader process died: SIGKILL")
    assert latest[HUNG_DECODE] == ("error", f"decode timed out after {LIMIT_S:g} s")
    assert sum(status == "ok" for status, _ in latest.values()) == N_GOOD
    _assert_verify_clean(out)
    # The poison is still there: the next night reads nothing (no Ray, no retry loop).
    again = scan(str(lake), out, tiny_checkpoint, _options(engine="ray", actors=(1, 1)))
    assert again.counts["scored"] == again.counts["failed"] == 0 and not again.inference_started


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_poison_that_kills_the_decode_task_itself_is_retried_a_bounded_number_of_times(
        tmp_path, monkeypatch, ray_local, tiny_checkpoint):
    """Outside the sandbox (the task's own process dies, e.g. the OOM killer during a read)
    Ray retries the task task_max_retries times, then the run fails with one line; never a
    loop (Ray Data's own default is to retry a dead task forever)."""
    from vip2scan.pipeline import ScanError
    from vip2scan.pipeline.specs import EngineSpec

    lake, markers = tmp_path / "lake", tmp_path / "markers"
    markers.mkdir()
    _lake(lake, (KILLER,))
    monkeypatch.setenv(faults.MARKER_DIR_ENV, str(markers))
    monkeypatch.setenv(faults.KILL_DECODE_WORKER_ON_ENV, "killer.png")
    with pytest.raises(ScanError) as raised:
        scan(str(lake), str(tmp_path / "out"), tiny_checkpoint, _options(engine="ray", actors=(1, 1)))
    assert "\n" not in str(raised.value) and "rerun" in str(raised.value)
    kills = (markers / "decode-worker.kills").read_text().split()
    assert len(kills) == EngineSpec().task_max_retries + 1


def test_the_sandbox_decodes_the_very_pixels_the_decoder_gives(tmp_path):
    """Same bytes in, same pixels, size and errors out as decode_image in this process."""
    sandbox = Sandbox()
    try:
        for seed, side in ((1, 24), (2, 224), (3, 300)):
            blob = small_png(seed, side)
            expected, width, height = decode_image(blob, 64)
            got = np.zeros((64, 64, 3), np.uint8)
            assert sandbox.decode(blob, got, 10**9, LIMIT_S) == (width, height)
            assert np.array_equal(got, expected)
        with pytest.raises(Exception, match="not a recognised image format"):
            sandbox.decode(b"not an image", got, 10**9, LIMIT_S)
        with pytest.raises(Exception, match="image too large"):
            sandbox.decode(small_png(4, 100), got, 99, LIMIT_S)  # 100x100 over a 99-pixel limit
    finally:
        sandbox.close()


# A child that answers every request with a reply the protocol does not allow (an error text
# of 2 GiB): what a decoder returning the wrong number of pixel bytes leaves in the pipe.
GARBLED_CHILD = """
import os, struct, sys
os.write(1, b"R")
while True:
    head = sys.stdin.buffer.read(21)
    if len(head) < 21:
        break
    sys.stdin.buffer.read(struct.unpack("<IQBQ", head)[3])
    os.write(1, struct.pack("<BII", 1, 2**31, 0) + b"x")
"""


@pytest.mark.timeout(120)
def test_a_garbled_reply_fails_the_batch_instead_of_hanging_it():
    """Never read a length the protocol cannot carry: a desynchronised pipe once left a
    decode thread waiting forever for 2 GiB of 'error text'."""
    from vip2scan.pipeline.errors import DecoderFailed

    sandbox = Sandbox([sys.executable, "-c", GARBLED_CHILD])
    with pytest.raises(DecoderFailed, match="protocol error"):
        sandbox.decode(small_png(1), np.zeros((8, 8, 3), np.uint8), 10**9, LIMIT_S)
    assert sandbox.proc is None  # closed: its next answer could not be trusted either


CHILD_OF_A_DYING_PARENT = """
import numpy as np, os, sys
from tests.helpers.hostile_files import small_png
from vip2scan.pipeline.stages.sandbox import Sandbox
sandbox = Sandbox()
sandbox.decode(small_png(1), np.zeros((8, 8, 3), np.uint8), 10**9, 60)
print(sandbox.proc.pid, flush=True)
os.kill(os.getpid(), 9)
"""


def test_a_decoder_whose_parent_dies_exits_too():
    """A killed decode worker (or driver) leaves no orphan decoder behind."""
    ran = subprocess.run([sys.executable, "-c", CHILD_OF_A_DYING_PARENT], capture_output=True,
                         text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    child = int(ran.stdout.split()[0])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _alive(child):
        time.sleep(0.1)
    assert not _alive(child)


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie awaiting its reaper counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_decoder_that_cannot_start_fails_the_batch_not_its_objects(monkeypatch, tmp_path):
    """A broken worker environment is not a poison file: it must not turn a night's objects
    into error rows (which later nights would skip), it fails the task (and the run) instead."""
    from vip2scan.pipeline.errors import SandboxUnavailable
    from vip2scan.pipeline.stages import sandbox as sandbox_module
    from vip2scan.pipeline.stages.decode import DecodeSettings, ReadDecode

    image = tmp_path / "img.png"
    image.write_bytes(small_png(5))
    monkeypatch.setattr(sandbox_module, "POOL", sandbox_module.SandboxPool())
    monkeypatch.setattr(sandbox_module.sys, "executable", "/bin/false")
    monkeypatch.setattr("vip2scan.pipeline.stages.decode.POOL", sandbox_module.POOL)
    with pytest.raises(SandboxUnavailable, match="did not start.*exit 1"):
        ReadDecode(DecodeSettings(image_size=32))({"image_uri": np.array([f"file://{image}"])})
