"""ViP2-CLIP training losses (reference settings): focal + two dice terms per layer,
plus cross-entropy on the image logits (lambda = 1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

FOCAL_SMOOTH = 1e-5


def focal_loss(probs: torch.Tensor, mask: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Focal loss on two-channel probability maps.

    probs [N, 2, H, W] (normal, abnormal); mask [N, H, W] binarised at 0.5.
    One-hot labels clamped to [1e-5, 1 - 1e-5]; p_t = sum(label * p) + 1e-5;
    loss = -(1 - p_t)^gamma log p_t, mean over all pixels.
    """
    target = (mask > 0.5).long()
    onehot = F.one_hot(target, num_classes=2).permute(0, 3, 1, 2).to(probs.dtype)
    onehot = onehot.clamp(FOCAL_SMOOTH, 1.0 - FOCAL_SMOOTH)
    pt = (onehot * probs).sum(dim=1) + FOCAL_SMOOTH
    return (-((1.0 - pt) ** gamma) * pt.log()).mean()


def dice_loss(pred: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - (2|X.Y| + 1) / (|X| + |Y| + 1) per sample, averaged over the batch. [N, H, W] each."""
    n = pred.shape[0]
    x, y = pred.reshape(n, -1), target.reshape(n, -1).to(pred.dtype)
    dice = (2.0 * (x * y).sum(1) + smooth) / (x.sum(1) + y.sum(1) + smooth)
    return 1.0 - dice.sum() / n


def vip2_loss(layer_maps: list[torch.Tensor], image_logits: torch.Tensor, mask: torch.Tensor,
              label: torch.Tensor) -> dict[str, torch.Tensor]:
    """Total = sum_l [focal(p_l) + dice(p_a, m) + dice(p_n, 1 - m)] + CE(image logits, label).

    layer_maps: per layer [N, 2, H, W] probabilities at mask size; mask [N, H, W]; label [N].
    """
    m = (mask > 0.5).to(layer_maps[0].dtype)
    focal = sum(focal_loss(p, m) for p in layer_maps)
    dice = sum(dice_loss(p[:, 1], m) + dice_loss(p[:, 0], 1.0 - m) for p in layer_maps)
    ce = F.cross_entropy(image_logits.float(), label.long().to(image_logits.device))
    return {"loss": focal + dice + ce, "focal": focal, "dice": dice, "image_ce": ce}
