"""Detector end to end on the tiny backbone: shapes, determinism, preprocessing.

Speed is measured by `vip2scan bench` (its bare-model probe), not asserted here: CPU or wall
time on a shared machine makes a flaky test."""

import numpy as np
import pytest
import torch
from PIL import Image

from vip2scan.model import Detector, DetectorConfig, resize_to_model, to_batch
from vip2scan.model import scoring


def test_outputs(tiny, images):
    score, amap = tiny(images)
    assert score.shape == (4,) and score.dtype == torch.float32
    assert amap.shape == (4, 224, 224) and amap.dtype == torch.float32
    assert float(amap.min()) >= 0 and float(amap.max()) <= 1
    assert not score.requires_grad and not amap.requires_grad
    assert tiny.image_size == 224 and tiny.device == torch.device("cpu")


def test_forward_composes_the_parts(tiny, images):
    """Image score = softmax of the mean top-k pair / 0.07; map = smoothed layer mean."""
    with torch.no_grad():
        out = tiny.forward_train(images)
    score, amap = tiny(images)
    pairs = [torch.gather(s, 1, i.unsqueeze(-1).expand(-1, -1, 2)) for s, i in zip(out["sims"], out["top_idx"])]
    expected = torch.softmax(torch.cat(pairs, 1).mean(1) / 0.07, -1)[:, 1]
    torch.testing.assert_close(score, expected)
    assert all(i.shape == (4, tiny.config.top_k) for i in out["top_idx"])
    assert all(m.shape == (4, 2, 224, 224) for m in out["layer_maps"])
    ref_map = scoring.gaussian_blur(scoring.combine_layer_maps(out["layer_maps"]), tiny.config.sigma)
    torch.testing.assert_close(amap, ref_map.clamp(0, 1))
    for t in out["layer_text"]:
        torch.testing.assert_close(t.norm(dim=-1), torch.ones(4, 2))


def test_requires_uint8_nchw(tiny, images):
    with pytest.raises(TypeError):
        tiny(images.float())
    with pytest.raises(ValueError):
        tiny(images.permute(0, 2, 3, 1))


def test_batch_independence(tiny, images):
    s_all, m_all = tiny(images)
    s_one, m_one = tiny(images[2:3])
    torch.testing.assert_close(s_one, s_all[2:3], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(m_one, m_all[2:3], rtol=1e-5, atol=1e-5)


def test_seed_determinism_and_model_id(tiny, images):
    x = images[:2]
    ref_s, ref_m = tiny(x)
    again = Detector.from_config(DetectorConfig())
    other = Detector.from_config(DetectorConfig(seed=1))
    assert again.model_id == tiny.model_id and other.model_id != tiny.model_id
    torch.testing.assert_close(again(x)[1], ref_m, rtol=0, atol=0)
    paper = Detector.from_config(DetectorConfig(score_variant="paper"))
    assert paper.model_id != tiny.model_id
    ps, pm = paper(x)
    torch.testing.assert_close(pm, ref_m)  # same maps, different image score rule
    assert ps.shape == (2,) and not torch.allclose(ps, ref_s)


def test_thresholds_change_model_id(fresh_tiny):
    before = fresh_tiny.model_id
    fresh_tiny.set_thresholds(0.5, 0.6)
    assert fresh_tiny.model_id != before and fresh_tiny.config.pixel_threshold == 0.6


def test_resize_to_model_bicubic_straight():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (90, 160, 3), dtype=np.uint8))
    out = resize_to_model(img, 64)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.asarray(img.resize((64, 64), Image.BICUBIC)))
    grey = resize_to_model(img.convert("L"), 32)
    assert grey.shape == (32, 32, 3)
    batch = to_batch([out, out])
    assert batch.shape == (2, 3, 64, 64) and batch.dtype == torch.uint8
    assert torch.equal(batch[0].permute(1, 2, 0), torch.from_numpy(out))


def test_autocast_bf16_path(tiny, images):
    """The bf16 autocast path (default on CUDA) runs here on CPU: float32 outputs, close to fp32."""
    ref_s, ref_m = tiny(images[:2])
    tiny.amp = "bf16"
    try:
        s, m = tiny(images[:2])
    finally:
        tiny.amp = "auto"
    assert s.dtype == torch.float32 and m.dtype == torch.float32
    assert (s - ref_s).abs().max() < 0.05 and (m - ref_m).abs().max() < 0.05


@pytest.mark.parametrize("bad, error, words", [
    (torch.zeros(2, 3, 16, 16, dtype=torch.float32), TypeError, "expected uint8 images"),
    (torch.zeros(2, 1, 16, 16, dtype=torch.uint8), ValueError, r"expected images \[N, 3, H, W\]"),
    (torch.zeros(3, 16, 16, dtype=torch.uint8), ValueError, r"expected images \[N, 3, H, W\]"),
])
def test_detector_and_null_detector_refuse_the_same_inputs_alike(tiny, bad, error, words):
    """One input contract (model/contract.py) for both detectors."""
    from vip2scan.model.null import build_null_detector

    for detector in (tiny, build_null_detector(16)):
        with pytest.raises(error, match=words):
            detector(bad)
