"""One optimisation step of the ViP2-CLIP head (no Ray): used by the trainer and the demo."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..detector import Detector
from ..losses import vip2_loss


def make_optimizer(detector: Detector, lr_ica: float = 1e-3, lr_fgp: float = 1e-5,
                   betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.Adam:
    """Adam with two groups (reference: ICA 1e-3, FGP 1e-5). The backbone is never optimised."""
    groups = detector.head_parameters()
    return torch.optim.Adam([{"params": groups["ica"], "lr": lr_ica, "name": "ica"},
                             {"params": groups["fgp"], "lr": lr_fgp, "name": "fgp"}], betas=betas)


def train_step(detector: Detector, batch: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """batch = {"image": uint8 [N,3,S,S], "mask": float [N,S,S] in {0,1}, "label": long [N]} -> float losses."""
    detector.train()
    images = batch["image"]
    mask = batch["mask"].to(detector.device, dtype=torch.float32)
    if mask.dim() == 4:
        mask = mask[:, 0]
    if tuple(mask.shape[-2:]) != tuple(images.shape[-2:]):
        mask = F.interpolate(mask[:, None], size=tuple(images.shape[-2:]), mode="nearest")[:, 0]
    label = batch["label"].to(detector.device).long()
    optimizer.zero_grad(set_to_none=True)
    out = detector.forward_train(images)
    losses = vip2_loss(out["layer_maps"], out["image_logits"], mask, label)
    losses["loss"].backward()
    optimizer.step()
    detector._model_id = None  # head changed: recompute lazily
    return {k: float(v.detach()) for k, v in losses.items()}
