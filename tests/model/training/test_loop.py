"""The training loop without Ray: sharding, checkpoint layout, --workers 0, --resume."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from vip2scan.model import files
from vip2scan.model import images
from vip2scan.model.training import checkpoints
from vip2scan.model.training import loop

IMAGE_SIZE = 112  # as in conftest.py


def test_shards_are_equal_in_length_cover_everything_and_repeat_per_epoch():
    for n, world in [(16, 2), (17, 2), (5, 4), (3, 1)]:
        shards = [loop.shard_indices(n, epoch=2, seed=111, rank=r, world_size=world) for r in range(world)]
        assert len({len(s) for s in shards}) == 1  # same number of steps on every rank
        assert set().union(*shards) == set(range(n))
        assert sum(len(s) for s in shards) - n < world  # padding only to the next multiple
        assert shards == [loop.shard_indices(n, 2, 111, r, world) for r in range(world)]
    assert loop.shard_indices(16, 1, 111, 0, 1) != loop.shard_indices(16, 2, 111, 0, 1)


def test_mask_is_resized_bilinear_then_binarised_like_the_reference(tmp_path):
    mask = np.zeros((8, 8), np.uint8)
    mask[2:5, 3:7] = 1  # any non-zero value is a defect in the reference
    path = str(tmp_path / "m.png")
    Image.fromarray(mask).save(path)
    got = images.load_mask(path, 16)
    expected = np.asarray(Image.fromarray(mask * 255).resize((16, 16), Image.BILINEAR), np.float32) / 255 > 0.5
    assert got.dtype == bool and got.shape == (16, 16)
    np.testing.assert_array_equal(got, expected)
    assert not images.load_mask(None, 16).any()


def test_latest_pointer_and_checkpoint_resolution(tmp_path):
    from vip2scan.model.config import DetectorConfig
    from vip2scan.model.detector import Detector

    out = str(tmp_path / "run")
    assert checkpoints.read_latest_epoch(out) is None
    Detector.from_config(DetectorConfig(image_size=IMAGE_SIZE)).save_checkpoint(f"{out}/epoch_007")
    checkpoints.write_latest(out, 7)
    assert checkpoints.read_latest_epoch(out) == 7
    assert json.loads(open(f"{out}/latest").read())["checkpoint"] == "epoch_007"
    assert checkpoints.resolve_checkpoint(out) == f"{out}/epoch_007"
    assert checkpoints.resolve_checkpoint(f"{out}/epoch_007") == f"{out}/epoch_007"


def test_reference_run_writes_a_checkpoint_per_epoch_and_the_loss_goes_down(reference_run):
    from vip2scan.model.detector import Detector

    out, epochs = reference_run["out"], reference_run["epochs"]
    assert sorted(epochs) == [1, 2]
    assert epochs[2]["loss"] < epochs[1]["loss"]
    for e in (1, 2):
        names = set(os.listdir(f"{out}/epoch_{e:03d}"))
        assert {"weights.safetensors", "config.json", "train_state.pt", "train_info.json"} <= names
    assert checkpoints.read_latest_epoch(out) == 2
    info = loop.load_train_info(f"{out}/epoch_002")
    assert [h["epoch"] for h in info["history"]] == [1, 2]
    det = Detector.from_checkpoint(checkpoints.resolve_checkpoint(out))
    assert det.image_size == IMAGE_SIZE


@pytest.mark.slow  # three training runs
def test_workers_0_cli_with_val_then_resume_matches_an_uninterrupted_run(cli, tree, tmp_path, reference_run):
    out = str(tmp_path / "ckpt")
    result = cli("train", tree, "--out", out, "--workers", "0", "--epochs", "1",
                 "--image-size", IMAGE_SIZE, "--val", tree)
    assert result.exit_code == 0, result.output
    assert "epoch 1  loss" in result.output and "val image AUROC" in result.output
    assert sorted(os.listdir(out)) == ["best", "epoch_001", "latest"]
    assert json.loads(open(f"{out}/best/config.json").read())["format"] == "vip2scan-checkpoint"
    assert np.isfinite(loop.load_train_info(f"{out}/epoch_001")["val_score"])

    again = cli("train", tree, "--out", out, "--workers", "0", "--epochs", "2")
    assert again.exit_code == 2 and "--resume" in again.output  # never silently overwrites

    resumed = cli("train", tree, "--out", out, "--workers", "0", "--epochs", "2", "--resume")
    assert resumed.exit_code == 0, resumed.output
    info = loop.load_train_info(f"{out}/epoch_002")
    assert info["resumed_from"] == 1 and [h["epoch"] for h in info["history"]] == [1, 2]
    # Same data order, weights and Adam state after the restart: the same numbers.
    ref = reference_run["epochs"]
    for h in info["history"]:
        assert h["loss"] == pytest.approx(ref[h["epoch"]]["loss"], abs=1e-5)

    nothing = cli("train", tree, "--out", out, "--workers", "0", "--epochs", "2", "--resume")
    assert nothing.exit_code == 0 and "nothing to do" in nothing.output


@pytest.mark.slow  # training and calibration on moto S3
def test_train_and_calibrate_on_object_storage(cli, s3_server, s3_bucket):
    """Data, checkpoints and metrics all on (moto) S3, credentials via --storage-option."""
    from vip2scan.model.detector import Detector
    from vip2scan.model.data.synthetic import write_mvtec_tree

    so = s3_server.storage_options
    flags = [x for k, v in so.items() for x in ("-s", f"{k}={v}")]
    data, out = f"s3://{s3_bucket}/data", f"s3://{s3_bucket}/ckpt"
    write_mvtec_tree(data, categories=("disc",), n_good=2, n_defect=1, size=128, seed=1, storage_options=so)
    result = cli("train", data, "--out", out, "--workers", "0", "--epochs", "1", "--image-size", IMAGE_SIZE, *flags)
    assert result.exit_code == 0, result.output
    assert checkpoints.read_latest_epoch(out, so) == 1
    result = cli("eval", data, "--checkpoint", out, "--calibrate", "--json", f"s3://{s3_bucket}/m.json", *flags)
    assert result.exit_code == 0, result.output
    metrics = json.loads(files.read_text(f"s3://{s3_bucket}/m.json", so))
    assert metrics["checkpoint"] == f"{out}/epoch_001"
    det = Detector.from_checkpoint(f"{out}/epoch_001", storage_options=so)
    assert det.config.image_threshold == pytest.approx(metrics["image_threshold"])
