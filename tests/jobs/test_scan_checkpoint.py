"""Which checkpoint `vip2scan scan --checkpoint` resolves to."""

from __future__ import annotations

import shutil


def test_scan_of_a_training_output_uses_its_latest_epoch(cli, tmp_path, tiny_checkpoint) -> None:
    from vip2scan.model.facts import read_checkpoint_facts
    from vip2scan.model.config import DetectorConfig
    from vip2scan.model.detector import Detector
    from vip2scan.model.training.checkpoints import write_latest

    run = tmp_path / "train-out"
    Detector.from_config(DetectorConfig(seed=5)).save_checkpoint(str(run / "epoch_001"))
    shutil.copytree(tiny_checkpoint, run / "epoch_002")
    write_latest(str(run), 2)
    latest = read_checkpoint_facts(str(run / "epoch_002")).model_id
    assert latest != read_checkpoint_facts(str(run / "epoch_001")).model_id

    (tmp_path / "lake").mkdir()
    dry = cli("scan", str(tmp_path / "lake"), "--out", str(tmp_path / "out"), "--checkpoint", str(run),
              "--dry-run")
    assert dry.exit_code == 0, dry.stderr
    assert f"model {latest}" in dry.stdout
