"""Fixtures of the quality tests: the shared local Ray, usable from this folder too."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def ray_ready(ray_local):
    return ray_local
