"""A local OUT that is full, read-only or not ours to write: one line, exit 1, nothing
half-committed, and (once fixed) a rerun that resumes.

The faults are real, not simulated: OUT is a small tmpfs mounted for the test (full: a filler
file leaves a few pages free; read-only: the same tmpfs remounted ``ro``), and permission
denied comes from the kernel for a process without the rights (as root, the CLI runs
without the capabilities that let root write anywhere, through ``setpriv``: still root, so it
reaches the clone and its venv wherever they live). Mounting needs root (CAP_SYS_ADMIN); without it those
tests are skipped. The scans run the installed CLI in a subprocess with the local engine.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

import pytest
from tests.helpers.cli_runner import VIP2SCAN, Ran, run_cli
from tests.helpers.hostile_files import small_png

from vip2scan.pipeline import read_scores
from vip2scan.pipeline.output.verify import verify

pytestmark = pytest.mark.slow  # the installed CLI in subprocesses on a small tmpfs

NOBODY = 65534


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str, options: str = "") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` for the test (skips when mounting is not
    allowed)."""
    path.mkdir(parents=True, exist_ok=True)
    mount = ["mount", "-t", "tmpfs", "-o", f"size={size}{options}", "tmpfs", str(path)]
    try:
        subprocess.run(mount, check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        pytest.skip("mounting a small tmpfs needs root (CAP_SYS_ADMIN)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


def add_images(lake: Path, first: int, n: int) -> None:
    for i in range(first, first + n):
        (lake / f"d{i % 2}").mkdir(parents=True, exist_ok=True)
        (lake / f"d{i % 2}" / f"img{i:02d}.png").write_bytes(small_png(500 + i))


def scan_cli(lake: Path, out: Path, checkpoint: str) -> Ran:
    return run_cli("scan", str(lake), "--out", str(out), "--checkpoint", checkpoint,
                   "--engine", "local", "--map-size", "16", "--batch-size", "4", timeout=600)


def files_below(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()}


def fill_leaving(folder: Path, free_bytes: int) -> Path:
    """A filler file that leaves about ``free_bytes`` free on ``folder``'s filesystem."""
    stat = os.statvfs(folder)
    filler = folder / "filler.bin"
    with open(filler, "wb") as handle:
        handle.write(b"\0" * max(0, stat.f_bavail * stat.f_frsize - free_bytes))
    return filler


def records(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "runs").glob("*.json"))


def assert_one_line_exit_1(ran: Ran, *words: str) -> str:
    assert ran.exit_code == 1, (ran.stdout, ran.stderr)
    assert len(ran.error_lines) == 1, ran.stderr
    line = ran.error_lines[0]
    assert all(word in line for word in words), line
    assert "Traceback" not in ran.stderr and "UserCodeException" not in ran.stderr
    return line


def test_a_full_out_fails_in_one_line_and_resumes_once_space_is_freed(tmp_path, tiny_checkpoint):
    lake, out = tmp_path / "lake", tmp_path / "out"
    add_images(lake, 0, 6)
    with small_tmpfs(out, "4m"):
        assert scan_cli(lake, out, tiny_checkpoint).exit_code == 0
        before = records(out)
        add_images(lake, 6, 8)
        # A few pages left: enough to start (probe, lease, plan), not to finish the run.
        filler = fill_leaving(out, 24 * 1024)
        line = assert_one_line_exit_1(scan_cli(lake, out, tiny_checkpoint), "is full",
                                      "rerun to resume")
        print(line)
        assert records(out) == before  # the run was not committed, not even in part
        assert not [name for name in files_below(out) if "scan_date=" in name
                    and before[0][:-5] not in name], files_below(out)
        filler.unlink()  # space freed: the same command resumes and finishes the run
        again = scan_cli(lake, out, tiny_checkpoint)
        assert again.exit_code == 0, again.stderr
        rows = read_scores(str(out)).to_pylist()
        assert sorted(r["image_uri"] for r in rows) == sorted(
            f"file://{p}" for p in lake.rglob("*.png"))
        assert verify(str(out)).ok


def test_a_read_only_out_fails_in_one_line_and_is_left_untouched(tmp_path, tiny_checkpoint):
    lake, out = tmp_path / "lake", tmp_path / "out"
    add_images(lake, 0, 4)
    with small_tmpfs(out, "4m"):
        assert scan_cli(lake, out, tiny_checkpoint).exit_code == 0
        before = files_below(out)
        add_images(lake, 4, 4)
        subprocess.run(["mount", "-o", "remount,ro", str(out)], check=True, timeout=30)
        line = assert_one_line_exit_1(scan_cli(lake, out, tiny_checkpoint), "read-only")
        print(line)
        assert files_below(out) == before


def test_an_out_folder_not_ours_to_write_fails_in_one_line(tiny_checkpoint):
    """OUT is writable but its maps/ folder belongs to someone else: the run stops at the
    first write there, in one line, with its lease released and nothing committed."""
    base = Path(tempfile.mkdtemp(prefix="vip2scan-eacces-"))
    try:
        _scan_with_maps_not_ours(base, tiny_checkpoint)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _scan_with_maps_not_ours(base: Path, tiny_checkpoint: str) -> None:
    lake, out, checkpoint = base / "lake", base / "out", base / "ckpt"
    add_images(lake, 0, 4)
    shutil.copytree(tiny_checkpoint, checkpoint)
    (out / "maps").mkdir(parents=True)
    (out / "maps").chmod(0o555)
    command, env = [VIP2SCAN], dict(os.environ)
    if os.geteuid() == 0:
        # root writes anywhere: the scan runs without the capabilities that let it (not as
        # another user, who could not even enter a clone living in a 0700 folder).
        os.chown(out / "maps", NOBODY, NOBODY)
        command = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--",
                   VIP2SCAN]
    proc = subprocess.run([*command, "scan", str(lake), "--out", str(out), "--checkpoint",
                           str(checkpoint), "--engine", "local", "--map-size", "16"],
                          capture_output=True, text=True, env=env, timeout=600)
    ran = Ran(proc.returncode, proc.stdout, proc.stderr)
    line = assert_one_line_exit_1(ran, "permission denied")
    print(line)
    assert not (out / "_lock").exists()  # the lease was released on the way out
    assert not list((out / "runs").glob("*.json")) if (out / "runs").exists() else True
