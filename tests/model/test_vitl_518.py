"""ViT-L-14-336-quickgelu (the released checkpoints' backbone) with random weights at 518 px."""

import pytest
import torch

from vip2scan.model import Detector, DetectorConfig


@pytest.mark.slow
def test_vitl_336_quickgelu_at_518():
    det = Detector.from_config(DetectorConfig(backbone="ViT-L-14-336-quickgelu", image_size=518))
    cfg = det.config
    assert (cfg.blocks, cfg.top_k, cfg.sigma, cfg.fgp_heads, cfg.embed_dim) == ((6, 12, 18, 24), 50, 8.0, 8, 768)
    assert det.ica.ctx_pos.shape == (7, 768) and det.ica.eot_index.tolist() == [12, 12]
    assert det.ica.cls_prompter.fc[0][0].weight.shape == (384, 768)
    assert det.fgp.q_proj_pre.weight.shape == (768, 768, 1)
    n_head = sum(p.numel() for p in det.ica.parameters()) + sum(p.numel() for p in det.fgp.parameters())
    assert 3.5e6 < n_head < 4.5e6  # "about 4 M trainable parameters at ViT-L"
    x = torch.randint(0, 256, (1, 3, 518, 518), dtype=torch.uint8)
    with torch.inference_mode():
        feats = det.forward_features(x)
    assert feats["grid"] == (37, 37)
    assert [tuple(p.shape) for p in feats["patches"]] == [(1, 1369, 768)] * 4
    assert feats["global"].shape == (1, 768)
    score, amap = det(x)
    assert score.shape == (1,) and amap.shape == (1, 518, 518)
    assert torch.isfinite(amap).all() and 0 <= float(amap.min()) <= float(amap.max()) <= 1
