"""The demo, run as a user runs it: the installed script in a subprocess, offline."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from tests.helpers.cli_runner import VENV_BIN, VIP2SCAN

OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "RAY_ADDRESS": None}
REPO_ROOT = Path(__file__).resolve().parents[2]


def without_venv_on_path() -> dict[str, str]:
    """The environment of `make demo` in a fresh shell: the venv is not activated."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if p and Path(p).resolve() != VENV_BIN.resolve())
    return env


def printed_commands(stdout: str) -> list[str]:
    """The lines the demo tells a user to paste: under `next:` and under `try`."""
    commands, block = [], None
    for line in stdout.splitlines():
        if line.startswith("next:") or line.startswith("  try"):
            block = "    " if line.startswith("  try") else "  "
        elif block and line.startswith(block) and not line.startswith(block + " "):
            commands.append(line.strip())
        else:
            block = None
        if line.strip().startswith("(or put vip2scan on PATH first: source "):
            activate = line.strip().removeprefix("(or put vip2scan on PATH first: ").rstrip(")")
            commands.append(f"{activate} && vip2scan --version")
    return commands


@pytest.mark.slow
def test_demo_leaves_parquet_zarr_and_a_report_and_says_where(cli_subprocess, tmp_path) -> None:
    root = tmp_path / "demo"
    env = without_venv_on_path()
    # Run as `make demo` runs it: from the repo root, by the script's path, venv not activated.
    # Fewer images than the default only to keep the suite short; the flow is the same.
    ran = subprocess.run([VIP2SCAN, "demo", "--dir", str(root), "--images", "60"], cwd=REPO_ROOT,
                         env=env, capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stderr[-3000:]
    out = root / "out"
    assert list((out / "scores").glob("scan_date=*/*.parquet"))
    stores = list((out / "maps").glob("*.zarr"))
    assert len(stores) == 1 and (stores[0] / "zarr.json").exists()
    reports = list((out / "reports").glob("*/report.html"))
    assert len(reports) == 1 and str(reports[0]) in ran.stdout
    assert (out / "reports" / "explorer" / "index.html").exists()
    # Every command it prints works pasted as is into a shell in the same directory.
    commands = printed_commands(ran.stdout)
    assert sum(" query " in c for c in commands) == 2 and sum(" scan " in c for c in commands) == 1, \
        ran.stdout
    assert any(" report " in c for c in commands), ran.stdout
    for command in commands:
        pasted = subprocess.run(["bash", "-c", command], cwd=REPO_ROOT, env=env,
                                capture_output=True, text=True, timeout=300)
        assert pasted.returncode == 0, (command, pasted.stderr[-2000:])
    assert "the same model id each time" in ran.stdout
    # The embedded model finds the generated defects, and the demo says how well.
    measured = dict(re.findall(r"(image AUROC|pixel AUROC|AUPRO) ([0-9.]+)", ran.stdout))
    assert float(measured["image AUROC"]) >= 0.85, ran.stdout
    assert float(measured["pixel AUROC"]) >= 0.9, ran.stdout

    # The printed next step works: query the demo's output from another process.
    query = cli_subprocess("query", str(out), "SELECT status, count(*) AS n FROM latest GROUP BY 1 ORDER BY 1",
                           "--format", "json")
    assert query.exit_code == 0, query.stderr
    counts = {row["status"]: row["n"] for row in map(json.loads, query.stdout.splitlines())}
    assert counts == {"error": 4, "ok": 60}


def test_demo_refuses_to_wipe_a_directory_it_did_not_make(cli, tmp_path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    ran = cli("demo", "--dir", str(tmp_path), "--images", "8")
    assert ran.exit_code == 2 and "not made by the demo" in ran.stderr
    assert (tmp_path / "precious.txt").read_text() == "keep me"
