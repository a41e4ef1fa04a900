"""`vip2scan train` on Ray Train: 2 CPU workers (gloo), a checkpoint per epoch, and rank 0
killed during epoch 2 (test hook), after which Ray Train restarts the worker group and it
resumes from epoch_001. One Ray Train run covers both (about 40-70 s on 2 shared cores;
each extra run costs ~30 s of Ray start-up)."""

from __future__ import annotations

import os

import pytest

from vip2scan.jobs.train import FAULT_ENV, FAULT_MARKER
from vip2scan.model.training import checkpoints
from vip2scan.model.training import loop

pytestmark = pytest.mark.slow
IMAGE_SIZE = 112  # as in conftest.py


def test_two_workers_killed_in_epoch_2_resume_from_epoch_1_and_finish(
        cli, tree, tmp_path, ray_local, reference_run, monkeypatch):
    out = str(tmp_path / "ckpt")
    monkeypatch.setenv(FAULT_ENV, "2")
    # Half a CPU each: the placement group fits even if another test's actor holds a CPU.
    result = cli("train", tree, "--out", out, "--workers", "2", "--epochs", "2", "--image-size", IMAGE_SIZE,
                 "--cpus-per-worker", "0.5", "--max-failures", "2")
    assert result.exit_code == 0, result.output

    # Two checkpoints in our format, the pointer, and Ray Train's state beside them.
    assert {"epoch_001", "epoch_002", "latest", "_ray"} <= set(os.listdir(out))
    assert checkpoints.read_latest_epoch(out) == 2
    assert {"epoch_001", "epoch_002"} <= set(os.listdir(f"{out}/_ray"))

    # The hook killed rank 0 once, and the restarted workers loaded epoch_001.
    assert os.path.exists(f"{out}/_ray/{FAULT_MARKER}")
    info = loop.load_train_info(f"{out}/epoch_002")
    assert info["resumed_from"] == 1
    history = {h["epoch"]: h for h in info["history"]}
    assert sorted(history) == [1, 2] and history[1]["resumed_from"] is None
    assert {h["world_size"] for h in history.values()} == {2}

    # The loss goes down, and matches the single-process run step for step: each worker
    # takes half of every global batch of 8 and gradients are averaged; after the restart
    # weights, Adam state and data order came back from epoch_001.
    assert history[2]["loss"] < history[1]["loss"]
    for epoch, h in history.items():
        assert h["loss"] == pytest.approx(reference_run["epochs"][epoch]["loss"], abs=1e-4)
