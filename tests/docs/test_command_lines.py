"""Every ``vip2scan ...`` command line in a code block of the README or a docs page (and every
container's ``args`` in a YAML example) parses with the real CLI (flags, choices, argument
counts), so a renamed flag breaks the suite, not the reader; the configuration page's example
file loads through the real config loader. The generated CLI reference is left out: its usage
lines are templates."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer
import yaml

from tests.helpers import ROOT
from vip2scan.jobs.cli import app
from vip2scan.jobs.config import catalog_of, config_to_defaults, parse_only

PAGES = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").rglob("*.md") if p.name != "cli.md")]
FENCE = re.compile(r"^```(?:bash|sh|console|shell)?\n(.*?)^```", re.S | re.M)
YAML_FENCE = re.compile(r"^```yaml\n(.*?)^```", re.S | re.M)
ASSIGNMENT = re.compile(r'^(\w+)="([^"]*)"$')


def command_lines(page: Path) -> list[list[str]]:
    found = []
    for block in FENCE.findall(page.read_text()):
        variables: dict[str, str] = {}  # W="--backbone ..." then `vip2scan train ... $W`
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if assigned := ASSIGNMENT.match(line):
                variables[assigned[1]] = assigned[2]
            for name, value in variables.items():
                line = line.replace(f"${name}", value)
            if line.startswith("vip2scan "):
                found.append(shlex.split(line)[1:])
    for block in YAML_FENCE.findall(page.read_text()):
        found += [containers["args"] for containers in yaml_containers(yaml.safe_load(block))]
    return found


def yaml_containers(node) -> list[dict]:
    if isinstance(node, dict):
        here = [node] if "args" in node and "name" in node else []
        return here + [c for value in node.values() for c in yaml_containers(value)]
    if isinstance(node, list):
        return [c for item in node for c in yaml_containers(item)]
    return []


ROOT_COMMAND = typer.main.get_command(app)  # built once: parse_command_line builds it per call


def parse_command_line(argv: list[str]):
    return parse_only(ROOT_COMMAND, argv)


LINES = [(str(page.relative_to(ROOT)), argv) for page in PAGES for argv in command_lines(page)]


def test_the_docs_show_command_lines_on_the_pages_readers_start_from() -> None:
    pages = {page for page, _ in LINES}
    assert {"README.md", "docs/guide/scanning.md", "docs/guide/every-night.md", "docs/guide/analysts.md",
            "docs/guide/training.md", "docs/guide/cluster.md"} <= pages
    assert len(LINES) >= 30
    assert ["scan", "s3://lake/images", "--out", "s3://lake/vip2scan-out", "--wait"] in [a for _, a in LINES]


@pytest.mark.parametrize("page,argv", LINES, ids=[f"{p}:{' '.join(a[:2])}" for p, a in LINES])
def test_command_line_parses_with_the_real_cli(page: str, argv: list[str]) -> None:
    if argv[0] == "submit":  # `submit [options] -- COMMAND ...`: both halves must parse
        assert parse_command_line(argv).command.name == "submit"
        argv = argv[argv.index("--") + 1:]
    ctx = parse_command_line(argv)
    assert ctx.command.name == (argv[1] if argv[0] == "jobs" else argv[0])


def test_the_documented_config_file_fills_each_commands_options() -> None:
    import tomllib

    page = (ROOT / "docs" / "reference" / "configuration.md").read_text()
    (example,) = re.findall(r"^```toml\n(.*?)^```", page, re.S | re.M)
    data = tomllib.loads(example)
    root = ROOT_COMMAND
    catalog = catalog_of(root)
    sections = [name for name, value in data.items() if isinstance(value, dict) and name in root.commands]
    assert sections == ["scan", "report"]
    filled = {name: config_to_defaults(data, root.commands[name], name, catalog) for name in sections}
    assert filled["scan"]["checkpoint"] == data["scan"]["checkpoint"] and filled["scan"]["out"] == data["out"]
    assert filled["scan"]["storage_option"] == ["endpoint_url=http://minio:9000"]
    assert filled["report"]["top"] == 24
