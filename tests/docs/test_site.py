"""The documentation site: it builds with ``mkdocs build --strict`` (a broken link, anchor,
image or nav entry fails), the README's links land on real pages and headings, every nav entry
is a page, and the generated CLI reference is what the typer application says now."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT

DOCS = ROOT / "docs"
CLI_PAGE = DOCS / "reference" / "cli.md"
# Pages other branches are adding: their nav entries are in mkdocs.yml already, so the strict
# build reports a missing nav page as info only and this list says which may be missing.
RESERVED_PAGES = {"guide/alerts.md", "design/reliability-processes.md", "design/reliability-inputs.md"}
# The same command as `make docs` runs, writing elsewhere.
CLI_DOCS_COMMAND = [sys.executable, "-m", "typer", "vip2scan.jobs.cli", "utils", "docs",
                    "--name", "vip2scan", "--title", "Command-line reference"]
LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    ran = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
         "--site-dir", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-4000:]
    return out


def html_of(site: Path, page: str) -> str:
    """The built HTML of a docs page given by its path under docs/ (use_directory_urls)."""
    stem = page.removesuffix(".md")
    return (site / ("index.html" if stem == "index" else f"{stem}/index.html")).read_text()


def test_the_site_builds_strictly_offline_with_the_screenshots_shown(site) -> None:
    analysts = html_of(site, "guide/analysts.md")
    for shot in ("explorer-overview", "explorer-table", "explorer-image"):
        assert f'src="../../screenshots/{shot}.png"' in analysts, shot
        assert (site / "screenshots" / f"{shot}.png").stat().st_size > 10_000
    assert 'src="../../images/explorer-defect-1.png"' in html_of(site, "guide/embedded-model.md")
    home = html_of(site, "index.md")
    assert "fonts.googleapis.com" not in home and "fonts.gstatic.com" not in home
    # The reader recipes and the quickstart are on their pages, as the tests that run them expect.
    assert "read_parquet" in analysts and "source .venv/bin/activate" in home


def test_the_readmes_links_land_on_pages_and_headings_that_exist(site) -> None:
    targets = [t for t in LINK.findall((ROOT / "README.md").read_text()) if not t.startswith(("http", "#"))]
    assert any(t.startswith("docs/guide/") for t in targets)
    for target in targets:
        path, _, anchor = target.partition("#")
        assert (ROOT / path).exists(), target
        if anchor:
            assert f'id="{anchor}"' in html_of(site, path.removeprefix("docs/")), target


def nav_pages(entries) -> list[str]:
    pages = []
    for entry in entries:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        pages += nav_pages(value) if isinstance(value, list) else [value]
    return pages


def test_every_nav_entry_is_a_page_or_one_being_added() -> None:
    nav = nav_pages(yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"])
    assert len(nav) == len(set(nav))
    missing = {page for page in nav if not (DOCS / page).exists()}
    assert missing <= RESERVED_PAGES, f"nav entries without a page: {sorted(missing - RESERVED_PAGES)}"
    assert RESERVED_PAGES <= set(nav)


def test_the_cli_reference_is_what_the_application_says_now(tmp_path) -> None:
    fresh = tmp_path / "cli.md"
    ran = subprocess.run([*CLI_DOCS_COMMAND, "--output", str(fresh)], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert "## `vip2scan scan`" in fresh.read_text()
    assert CLI_PAGE.read_text() == fresh.read_text(), (
        "docs/reference/cli.md is stale: run `make docs` to regenerate it from the typer app")
