"""Fixtures for the pipeline tests: one tiny checkpoint per session, Ray-visible helpers."""

from __future__ import annotations

import pytest

from tests.helpers import lake_files


@pytest.fixture(scope="session")
def checkpoint(tiny_checkpoint) -> str:
    """The session's shared vip2-tiny checkpoint (tests/conftest.py)."""
    return tiny_checkpoint


@pytest.fixture(scope="session")
def ray_ready(ray_local):
    """The shared local Ray, able to unpickle the helpers of tests/helpers/lake_files.py."""
    import ray.cloudpickle

    # Ray workers cannot import modules from the tests folder: ship them by value.
    ray.cloudpickle.register_pickle_by_value(lake_files)
    return ray_local
