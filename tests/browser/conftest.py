"""Browser tests: the scans they start share the machine's two cores with everything else."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module", autouse=True)
def _two_threads():
    import torch

    torch.set_num_threads(2)
