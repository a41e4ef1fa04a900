"""Focal and dice on hand-computed cases; total loss composition."""

import math

import torch

from vip2scan.model.losses import dice_loss, focal_loss, vip2_loss


def test_focal_hand_computed():
    # Two pixels: normal pixel with p_normal 0.8, abnormal pixel with p_abnormal 0.4.
    probs = torch.tensor([[[[0.8, 0.6]], [[0.2, 0.4]]]])  # [1, 2, 1, 2]
    mask = torch.tensor([[[0.0, 1.0]]])
    eps = 1e-5

    def term(p_true, p_other):
        pt = (1 - eps) * p_true + eps * p_other + eps
        return -((1 - pt) ** 2) * math.log(pt)

    expected = (term(0.8, 0.2) + term(0.4, 0.6)) / 2
    assert math.isclose(float(focal_loss(probs, mask)), expected, rel_tol=1e-6)
    # mask binarised at 0.5
    assert math.isclose(float(focal_loss(probs, torch.tensor([[[0.3, 0.7]]]))), expected, rel_tol=1e-6)


def test_dice_hand_computed():
    pred = torch.tensor([[[0.5, 1.0], [0.0, 0.25]], [[0.0, 0.0], [0.0, 0.0]]])
    target = torch.tensor([[[1.0, 1.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    d1 = 1 - (2 * 1.5 + 1) / (1.75 + 2 + 1)   # sample 1
    d2 = 1 - (0 + 1) / (0 + 0 + 1)             # sample 2: empty and empty -> 0
    assert math.isclose(float(dice_loss(pred, target)), (d1 + d2) / 2, rel_tol=1e-6)


def test_total_loss_composition():
    torch.manual_seed(0)
    p = torch.softmax(torch.randn(2, 2, 4, 4), dim=1)
    q = torch.softmax(torch.randn(2, 2, 4, 4), dim=1)
    mask = (torch.rand(2, 4, 4) > 0.7).float()
    logits = torch.randn(2, 2)
    label = torch.tensor([0, 1])
    out = vip2_loss([p, q], logits, mask, label)
    expected = sum(focal_loss(m, mask) + dice_loss(m[:, 1], mask) + dice_loss(m[:, 0], 1 - mask) for m in (p, q))
    expected = expected + torch.nn.functional.cross_entropy(logits, label)
    torch.testing.assert_close(out["loss"], expected)
    torch.testing.assert_close(out["loss"], out["focal"] + out["dice"] + out["image_ce"])
