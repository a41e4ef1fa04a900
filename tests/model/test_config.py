import math

import pytest

from vip2scan.model.config import (DetectorConfig, default_blocks, default_fgp_heads, default_sigma,
                                   default_top_k, resolve_config)


@pytest.mark.parametrize("depth,blocks", [(24, (6, 12, 18, 24)), (12, (3, 6, 9, 12)), (6, (2, 3, 5, 6)),
                                          (4, (1, 2, 3, 4))])
def test_block_rule(depth, blocks):
    assert default_blocks(depth) == blocks


def test_topk_sigma_rules():
    assert default_top_k(518, 14) == 50  # 37 x 37 patches
    assert default_top_k(224, 16) == round(50 * 196 / 1369) == 7
    assert default_top_k(32, 16) == 1  # at least one
    assert math.isclose(default_sigma(518), 8.0)
    assert math.isclose(default_sigma(224), 8 * 224 / 518)


def test_fgp_heads_rule():
    assert default_fgp_heads(768) == 8
    assert default_fgp_heads(192) == 2
    assert default_fgp_heads(1024) == 8  # 10 does not divide 1024 -> largest divisor below
    assert default_fgp_heads(64) == 1


def test_resolve_tiny_and_vitl():
    cfg = resolve_config(DetectorConfig())
    assert (cfg.blocks, cfg.top_k, cfg.fgp_heads, cfg.embed_dim, cfg.depth, cfg.patch_size) == \
        ((2, 3, 5, 6), 7, 2, 192, 6, 16)
    big = resolve_config(DetectorConfig(backbone="ViT-L-14-336-quickgelu", image_size=518))
    assert (big.blocks, big.top_k, big.sigma, big.fgp_heads, big.embed_dim) == ((6, 12, 18, 24), 50, 8.0, 8, 768)


def test_config_round_trip_json():
    cfg = resolve_config(DetectorConfig(score_variant="paper", image_threshold=0.3))
    assert DetectorConfig.from_dict(cfg.to_dict()) == cfg


def test_unknown_backbone_refused():
    with pytest.raises(ValueError, match="unknown backbone 'no-such-net'"):
        resolve_config(DetectorConfig(backbone="no-such-net"))


def test_bad_values_refused():
    with pytest.raises(ValueError):
        DetectorConfig(score_variant="best")
    with pytest.raises(ValueError, match="multiple of the patch size"):
        resolve_config(DetectorConfig(image_size=225))
    with pytest.raises(ValueError, match="unknown DetectorConfig fields"):
        DetectorConfig.from_dict({"backbone": "vip2-tiny", "colour": 1})
