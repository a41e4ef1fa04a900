"""Fixtures for the pipeline tests: one tiny checkpoint per session, Ray-visible helpers."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import pipeline_testkit  # noqa: E402


@pytest.fixture(scope="session")
def checkpoint(tiny_checkpoint) -> str:
    """The session's shared vip2-tiny checkpoint (tests/conftest.py)."""
    return tiny_checkpoint


@pytest.fixture(scope="session")
def ray_ready(ray_local):
    """The shared local Ray, able to unpickle helpers defined in this test folder."""
    import ray.cloudpickle

    # Ray workers cannot import modules from the tests folder: ship them by value.
    ray.cloudpickle.register_pickle_by_value(pipeline_testkit)
    return ray_local
