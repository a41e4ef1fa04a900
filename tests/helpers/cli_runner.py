"""Run the CLI as a user does: in-process through typer's CliRunner, or the installed
`vip2scan` script in a real subprocess. Shared by the CLI, reliability and scenario tests."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from typer.testing import CliRunner

from vip2scan.jobs.cli import app

VENV_BIN = Path(sys.executable).parent
VIP2SCAN = str(VENV_BIN / "vip2scan")


@dataclass
class Ran:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def error_lines(self) -> list[str]:
        """stderr lines the CLI itself wrote (library warnings and Ray logs aside)."""
        return [line for line in self.stderr.splitlines() if line.startswith(("error:", "usage error:"))]


def invoke(*args: str, env: dict | None = None) -> Ran:
    """Run the CLI in-process through typer's CliRunner (what a shell user sees)."""
    result = CliRunner().invoke(app, list(args), env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Ran(result.exit_code, result.stdout, result.stderr)


def run_cli(*args: str, env: dict | None = None, timeout: float = 600) -> Ran:
    """Run the installed `vip2scan` script in a real subprocess (env values of None are removed)."""
    full_env = {**os.environ, **{k: v for k, v in (env or {}).items() if v is not None}}
    for name in [k for k, v in (env or {}).items() if v is None]:
        full_env.pop(name, None)
    full_env["PATH"] = f"{VENV_BIN}{os.pathsep}{full_env.get('PATH', '')}"
    proc = subprocess.run([VIP2SCAN, *args], capture_output=True, text=True, env=full_env, timeout=timeout)
    return Ran(proc.returncode, proc.stdout, proc.stderr)
