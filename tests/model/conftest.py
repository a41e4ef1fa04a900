"""Fixtures for model tests: one tiny detector per session (built in ~1 s), small images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vip2scan.model import Detector, DetectorConfig


@pytest.fixture(scope="session", autouse=True)
def _two_threads():
    # The machine has 2 cores shared by several helpers.
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny() -> Detector:
    """Seeded tiny detector; tests must not train or mutate it (use fresh_tiny for that)."""
    return Detector.from_config(DetectorConfig())


@pytest.fixture()
def fresh_tiny() -> Detector:
    return Detector.from_config(DetectorConfig())


@pytest.fixture(scope="session")
def images() -> torch.Tensor:
    """uint8 [4, 3, 224, 224]: smooth random images (not just noise) so maps vary."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, size=(4, 3, 14, 14)).astype(np.float32)
    x = torch.nn.functional.interpolate(torch.from_numpy(base), size=(224, 224), mode="bilinear",
                                        align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8)
