"""UTPA: top-k selection and image score, anomaly map combination, scipy-equal smoothing."""

import numpy as np
import pytest
import scipy.ndimage
import torch
import torch.nn.functional as F

from vip2scan.model import scoring


def test_topk_selection_and_reference_image_score():
    # One image, 5 patches, 2 layers, k = 2. Cosine pairs chosen by hand.
    s1 = torch.tensor([[[0.2, 0.1], [0.1, 0.3], [0.3, 0.3], [0.0, 0.2], [0.25, 0.2]]])
    s2 = torch.tensor([[[0.1, 0.4], [0.2, 0.2], [0.3, 0.0], [0.1, 0.1], [0.0, 0.1]]])
    pairs, idxs = [], []
    for s in (s1, s2):
        p = scoring.patch_probs(s)
        idx, pr = scoring.topk_pairs(s, p, 2)
        idxs.append(sorted(idx[0].tolist())), pairs.append(pr)
    # abnormal prob is increasing in (s_a - s_n): layer 1 -> patches 3 (0.2) and 1 (0.2); layer 2 -> 0 and 4
    assert idxs == [[1, 3], [0, 4]]
    logits = scoring.image_logits_reference(pairs)
    mean = np.mean([[0.1, 0.3], [0.0, 0.2], [0.1, 0.4], [0.0, 0.1]], axis=0) / 0.07
    torch.testing.assert_close(logits[0], torch.tensor(mean, dtype=torch.float32))
    score = torch.softmax(logits, -1)[0, 1]
    expected = np.exp(mean[1]) / np.exp(mean).sum()
    assert abs(float(score) - expected) < 1e-6


def test_patch_probs_temperature():
    s = torch.tensor([[[0.25, 0.32]]])
    p = scoring.patch_probs(s)
    assert abs(float(p[0, 0, 1]) - 1 / (1 + np.exp(-(0.07 / 0.07)))) < 1e-6


def test_paper_variant_by_hand():
    torch.manual_seed(0)
    f = F.normalize(torch.randn(1, 6, 8), dim=-1)
    t = F.normalize(torch.randn(1, 2, 8), dim=-1)
    idx = torch.tensor([[1, 4]])
    score = scoring.image_score_paper([f, f], [t, t], [idx, idx])
    m = F.normalize(f[0, [1, 4]].mean(0), dim=-1)
    expected = torch.softmax((t[0] @ m) / 0.07, -1)[1]
    torch.testing.assert_close(score[0], expected)


def test_upsample_is_bilinear_align_corners_false():
    p = torch.rand(2, 6, 2)
    up = scoring.upsample_probs(p, (2, 3), (8, 12))
    ref = F.interpolate(p.transpose(1, 2).reshape(2, 2, 2, 3), size=(8, 12), mode="bilinear", align_corners=False)
    torch.testing.assert_close(up, ref, rtol=0, atol=0)
    # patch order is row-major over the grid
    torch.testing.assert_close(scoring.upsample_probs(p, (2, 3), (2, 3))[0, 1, 1, 0], p[0, 3, 1])


@pytest.mark.parametrize("shape,sigma", [((1, 37, 37), 8 * 37 / 518), ((2, 64, 48), 3.4594594594594597),
                                         ((1, 5, 7), 3.0), ((1, 518, 518), 8.0), ((1, 9, 9), 0.7)])
def test_gaussian_equals_scipy(shape, sigma):
    x = np.random.default_rng(0).random(shape).astype(np.float32)
    ours = scoring.gaussian_blur(torch.from_numpy(x), sigma).numpy()
    ref = np.stack([scipy.ndimage.gaussian_filter(xi, sigma, mode="reflect", truncate=4.0) for xi in x])
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)
    # Not the 'mirror' padding torch calls "reflect": that would differ at the borders.
    mirror = np.stack([scipy.ndimage.gaussian_filter(xi, sigma, mode="mirror", truncate=4.0) for xi in x])
    assert np.abs(ours - mirror).max() > 1e-4


def test_anomaly_map_combination_then_smoothing(tiny):
    torch.manual_seed(0)
    # Deliberately not complementary (p_n + p_a != 1) so the formula itself is tested.
    layers = [torch.rand(2, 2, 32, 32) for _ in range(4)]
    amap = tiny.anomaly_map(layers)
    comb = np.mean([((1 - m[:, 0]) + m[:, 1]).numpy() / 2 for m in layers], axis=0)
    ref = np.stack([scipy.ndimage.gaussian_filter(c, tiny.config.sigma, mode="reflect", truncate=4.0) for c in comb])
    np.testing.assert_allclose(amap.numpy(), np.clip(ref, 0, 1), atol=1e-5, rtol=0)
    torch.testing.assert_close(scoring.combine_layer_maps(layers), torch.from_numpy(comb.astype(np.float32)))
