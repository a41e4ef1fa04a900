"""CPU-side preprocessing: decoded image -> uint8 at the model size (the detector normalises)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:  # torch is imported lazily: decode workers use resize_to_model only
    import torch


def resize_to_model(image: Image.Image, size: int) -> np.ndarray:
    """Straight bicubic resize to size x size (no crop, no aspect preservation): uint8 [size, size, 3] HWC."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.BICUBIC)
    return np.asarray(image, dtype=np.uint8).copy()


def to_batch(images: list[np.ndarray] | np.ndarray) -> "torch.Tensor":
    """HWC uint8 images (list or [N, H, W, 3]) -> uint8 tensor [N, 3, H, W]."""
    import torch

    arr = np.stack(images) if isinstance(images, list) else np.asarray(images)
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).contiguous()
