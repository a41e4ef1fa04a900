"""The package layout and the dependency direction the architecture promises."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

import vip2scan

ROOT = pathlib.Path(__file__).resolve().parents[1]

FORBIDDEN = {
    # model/ is torch only; pipeline/ knows nothing of the CLI or of training.
    "model": {"ray", "typer", "vip2scan.pipeline", "vip2scan.jobs"},
    "pipeline": {"typer", "vip2scan.jobs", "ray.train"},
}


def _imports(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_dependency_direction(folder: str) -> None:
    offenders = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for name in _imports(path):
            for banned in FORBIDDEN[folder]:
                if name == banned or name.startswith(banned + "."):
                    offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    assert offenders == []


def test_subpackages_import_under_one_name() -> None:
    import vip2scan.jobs
    import vip2scan.model
    import vip2scan.pipeline

    assert pathlib.Path(vip2scan.model.__file__).parent == ROOT / "model"
    assert pathlib.Path(vip2scan.pipeline.__file__).parent == ROOT / "pipeline"
    assert pathlib.Path(vip2scan.jobs.__file__).parent == ROOT / "jobs"


def test_console_script_prints_version() -> None:
    exe = pathlib.Path(sys.executable).parent / "vip2scan"
    result = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert result.stdout.strip() == f"vip2scan {vip2scan.__version__}"
