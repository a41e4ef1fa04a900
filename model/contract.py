"""The image input contract of every detector: uint8 [N, 3, H, W], on the model's device.

The decoder (images.py, ``to_batch``) produces it; :class:`~vip2scan.model.detector.Detector` and
the null detector (null.py) accept it through :func:`model_input`, so both refuse the same
inputs with the same words.
"""

from __future__ import annotations

import torch


def model_input(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``images`` checked against the contract and copied to ``device`` (non-blocking, still uint8)."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images [N, 3, H, W], got {tuple(images.shape)}")
    if images.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images, got {images.dtype}")
    return images.to(device, non_blocking=True)
