"""The tests' side of headless Chromium: the browser itself (``Browser``, driven over the DevTools
protocol) lives in :mod:`vip2scan.jobs.bench.browser`, shared with ``vip2scan bench``; here are
the parts that belong to pytest: skip or fail when it is missing, and where screenshots go."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vip2scan.jobs.bench.browser import INSTALL_HINT, Browser, find_browser

__all__ = ["Browser", "artifacts_dir", "find_browser", "require_browser"]


def require_browser() -> str:
    """The browser's path; skip (fail under CI=true) with the install command when missing."""
    path = find_browser()
    if path is None:
        message = f"no headless Chromium on PATH: {INSTALL_HINT}"
        if os.environ.get("CI") == "true":
            pytest.fail(message + " (CI=true: the browser tests must run)")
        pytest.skip(message)
    return path


def artifacts_dir(default: Path) -> Path:
    """Where screenshots go: $VIP2SCAN_TEST_ARTIFACTS, else ``default`` (a tmp folder)."""
    folder = Path(os.environ.get("VIP2SCAN_TEST_ARTIFACTS") or default)
    folder.mkdir(parents=True, exist_ok=True)
    return folder
