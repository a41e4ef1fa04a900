"""The null detector (`--checkpoint null[:S]`): the real detector's contract at no cost, routed
by name through the scan's one loader, and never mistaken for a real model."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pyarrow.dataset as pads
import pytest
import torch

from vip2scan.model.null import build_null_detector, null_image_size
from vip2scan.pipeline import ScanOptions, read_map, scan
from vip2scan.model.factory import ModelSpec, load_detector, model_facts


def test_contract_of_the_real_detector():
    det = build_null_detector(48)
    assert det.model_id == "null-48" and det.image_size == 48 and not det.training
    assert det.config is None and det.device == torch.device("cpu")
    images = torch.randint(0, 256, (5, 3, 48, 48), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    score, amap = det(images)
    assert score.shape == (5,) and score.dtype == torch.float32
    assert amap.shape == (5, 48, 48) and amap.dtype == torch.float32
    assert 0 <= float(score.min()) and float(score.max()) < 1 and len(set(score.tolist())) == 5
    assert 0 <= float(amap.min()) and float(amap.max()) <= 1
    again, _ = det(images[2:3])  # deterministic and batch-independent
    assert again.item() == score[2].item()
    with pytest.raises(TypeError):
        det(images.float())
    with pytest.raises(ValueError):
        det(images.permute(0, 2, 3, 1))


def test_scores_spread_evenly():
    """A threshold t marks about 1 - t of a lake: what map-store benchmarks need."""
    images = torch.randint(0, 256, (2000, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    score, _ = build_null_detector(8)(images)
    assert 0.005 <= float((score >= 0.99).float().mean()) <= 0.02
    assert 0.45 <= float((score >= 0.5).float().mean()) <= 0.55


def test_names_route_only_null():
    assert null_image_size("null") == 224 and null_image_size("null:64") == 64
    assert null_image_size("null:64", {"image_size": 32, "backbone": None}) == 32
    for other in ("nullish", "s3://b/null", "./null", "null:", "null:x", "ckpt"):
        assert null_image_size(other) is None
    with pytest.raises(ValueError, match="no backbone"):
        null_image_size("null:64", {"backbone": "ViT-B-16"})
    facts = model_facts(ModelSpec("null:64"))
    assert (facts.model_id, facts.image_size, facts.image_threshold) == ("null-64", 64, None)
    assert load_detector(ModelSpec("null", image_size=32)).model_id == "null-32"


def test_driver_facts_do_not_import_torch():
    """A scan's driver plans without torch (seconds of start-up): so does the null name."""
    code = ("import sys; from vip2scan.model.factory import ModelSpec, model_facts; "
            "assert model_facts(ModelSpec('null:64')).model_id == 'null-64'; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_local_scan_with_null_model(tmp_path):
    from vip2scan.model.data.synthetic import write_lake

    lake, out = str(tmp_path / "lake"), str(tmp_path / "out")
    write_lake(lake, 24, size=32, seed=0, nested=True)
    summary = scan(lake, out, "null:32", ScanOptions(engine="local", batch_size=8, map_size=16))
    assert summary.status == "complete" and summary.model_id == "null-32"
    assert summary.counts["scored"] == 24 and summary.counts["failed"] == 0
    rows = pads.dataset(os.path.join(out, "scores"), format="parquet", partitioning="hive").to_table().to_pylist()
    assert len(rows) == 24 and {r["model_id"] for r in rows} == {"null-32"}
    scores = np.array([r["image_score"] for r in rows])
    assert np.all((0 <= scores) & (scores < 1)) and len(np.unique(scores)) > 1
    amap = read_map(rows[0], out)  # written at 16 px, read back at the image's 32 px
    assert amap.shape == (32, 32) and 0 <= float(amap.min()) and float(amap.max()) <= 1
