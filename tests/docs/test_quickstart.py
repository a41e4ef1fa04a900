"""The README's quickstart, followed as a newcomer follows it: each marked block runs as written
in a fresh bash whose PATH is the system's (no venv active, no `vip2scan` on it), from a folder
that holds the `.venv` that `make` made. The venv is reused, not reinstalled: `make demo` and
`make test` are checked as targets, and the demo itself runs in tests/jobs/test_demo.py."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.helpers import ROOT
from vip2scan.model.data.synthetic import write_lake

README = ROOT / "README.md"
QUICKSTART = re.compile(r"<!-- quickstart:[^>]*-->\s*```bash\n(.*?)```", re.S)
BASH_BLOCK = re.compile(r"```bash\n(.*?)```", re.S)


def fresh_shell(home: Path) -> dict[str, str]:
    """A new terminal's environment: the system's PATH without any folder holding `vip2scan`."""
    system_path = [d for d in os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep)
                   if d and not (Path(d) / "vip2scan").exists()]
    return {"HOME": str(home), "PATH": os.pathsep.join(system_path), "LANG": "C.UTF-8",
            "TMPDIR": os.environ.get("TMPDIR", "/tmp"), "HF_HUB_OFFLINE": "1"}


def run_block(block: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-e", "-c", block], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_the_two_commands_are_make_targets_that_use_the_venv() -> None:
    two = BASH_BLOCK.search(README.read_text())[1]
    targets = [line.split()[1] for line in two.splitlines() if line.startswith("make ")]
    assert targets == ["demo", "test"]
    for target, runs in (("demo", ".venv/bin/vip2scan demo"), ("test", ".venv/bin/python -m pytest")):
        dry = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert dry.returncode == 0 and runs in dry.stdout, dry.stdout + dry.stderr


@pytest.mark.slow  # three CLI processes, one of them scanning with the embedded model (~20 s)
def test_the_readme_quickstart_runs_as_written_in_a_fresh_shell(tmp_path) -> None:
    blocks = QUICKSTART.findall(README.read_text())
    assert len(blocks) == 2 and all(b.startswith("source .venv/bin/activate\n") for b in blocks), blocks
    demo_next_step, own_folder = sorted(blocks, key=lambda b: "demo-out/" not in b)
    clone, home = tmp_path / "clone", tmp_path / "home"
    clone.mkdir()
    assert (ROOT / ".venv" / "bin" / "activate").exists(), "the quickstart needs the .venv that `make` creates"
    (clone / ".venv").symlink_to(ROOT / ".venv")
    env = fresh_shell(home)
    write_lake(str(home / "my-images"), 3, size=48, seed=3)

    ran = run_block(own_folder, clone, env)
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-3000:]
    assert "scored 3, failed 0" in ran.stdout, ran.stdout
    assert list((home / "vip2scan-out" / "reports").glob("*/report.html"))

    # The demo's output, stood in for by the OUT just written (the same layout).
    (clone / "demo-out").mkdir()
    (clone / "demo-out" / "out").symlink_to(home / "vip2scan-out")
    ran = run_block(demo_next_step, clone, env)
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-3000:]
    assert "(3 rows)" in ran.stdout and "image_score" in ran.stdout, ran.stdout


def test_the_docs_home_shows_the_same_quickstart_the_readme_runs() -> None:
    # The site's home repeats the first scan; it must stay the block this file runs.
    home = (ROOT / "docs" / "index.md").read_text()
    shown = [b for b in BASH_BLOCK.findall(home) if b.startswith("source .venv/bin/activate")]
    assert shown and all(b in QUICKSTART.findall(README.read_text()) for b in shown)
