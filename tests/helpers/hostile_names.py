"""Object keys that attack the terminal and the shell a person pastes into, in a tiny scanned
lake, and a bash that runs a printed command line with ``vip2scan`` replaced by a recorder."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.helpers.hostile_files import small_png

# Each would run `touch PWNED` in the pasting shell, or drive the terminal, if printed raw.
SHELL_KEYS = ("x'; touch PWNED; echo '.png", "$(touch PWNED).png", "`touch PWNED`.png")
TERMINAL_KEYS = ("osc\x1b]52;c;SGVsbG8=\x07.png", "cr\rfake.png", "csi\x1b[31mred.png",
                 "rlo\u202egnp.png")
LINK_KEY = "a#b?c%3C.png"  # a fragment, a query and an escape if put in a link raw
HOSTILE_KEYS = (*SHELL_KEYS, *TERMINAL_KEYS, LINK_KEY)
HOSTILE_OUT = "out'; touch PWNED; echo '"  # OUT's name reaches the printed commands too
RAW_CONTROLS = ("\x1b", "\r", "\x07", "\u202e")


@dataclass
class HostileLake:
    lake: Path
    out: Path
    summary: object  # the scan's RunSummary


def scan_hostile_lake(base: Path, checkpoint: str) -> HostileLake:
    """Every hostile key as a small PNG, scored once with the in-process engine."""
    from vip2scan.pipeline import ScanOptions, scan

    lake, out = base / "lake", base / HOSTILE_OUT
    lake.mkdir(parents=True)
    for i, key in enumerate(HOSTILE_KEYS):
        (lake / key).write_bytes(small_png(i, side=16))
    summary = scan(str(lake), str(out), checkpoint, ScanOptions(engine="local", map_size=16))
    assert summary.counts["scored"] == len(HOSTILE_KEYS), summary.counts
    return HostileLake(lake, out, summary)


def words_bash_reads(line: str, cwd: Path) -> list[str]:
    """The arguments bash hands to ``vip2scan`` for a pasted ``line`` (run in ``cwd``, which
    the caller checks stays empty); the line must first pass ``bash -n``."""
    script = 'vip2scan() { printf "%s\\0" "$@"; }\n' + line + "\n"
    checked = subprocess.run(["bash", "-n", "-c", script], capture_output=True, text=True)
    assert checked.returncode == 0, (line, checked.stderr)
    ran = subprocess.run(["bash", "-c", script], cwd=cwd, capture_output=True, timeout=30,
                         env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"})
    assert ran.returncode == 0, (line, ran.stderr)
    return ran.stdout.decode().split("\0")[:-1]
