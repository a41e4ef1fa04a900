"""UTPA scoring: patch/prompt alignment per layer, top-k image score, anomaly maps, and a
torch Gaussian filter with exactly scipy.ndimage.gaussian_filter's numbers
(mode='reflect', truncate=4.0).

Everything here runs in float32, also under autocast: probabilities and smoothing
are where reduced precision would visibly move scores.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .config import TEMPERATURE


def _no_autocast(device: torch.device):
    return torch.autocast(device_type=device.type, enabled=False)


def patch_similarity(patches: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Cosine similarity s [N, L, 2] of L2-normalised patches [N, L, C] with text [N, 2, C]."""
    return patches.float() @ text.float().transpose(1, 2)


def patch_probs(sim: torch.Tensor) -> torch.Tensor:
    """p = softmax(s / 0.07) over (normal, abnormal): [N, L, 2]."""
    return torch.softmax(sim / TEMPERATURE, dim=-1)


def upsample_probs(p: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """[N, L, 2] on the patch grid -> [N, 2, H, W], bilinear (align_corners=False)."""
    n = p.shape[0]
    maps = p.transpose(1, 2).reshape(n, 2, grid[0], grid[1])
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)


def topk_pairs(sim: torch.Tensor, p: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k patches with the highest abnormal probability: (indices [N, k], cosine pairs [N, k, 2])."""
    k = min(k, sim.shape[1])
    idx = p[..., 1].topk(k, dim=1).indices
    return idx, torch.gather(sim, 1, idx.unsqueeze(-1).expand(-1, -1, 2))


def image_logits_reference(top_pairs: list[torch.Tensor]) -> torch.Tensor:
    """Reference behaviour: concat top-k pairs of all layers, mean over patches, / 0.07 -> [N, 2]."""
    return torch.cat(top_pairs, dim=1).mean(dim=1) / TEMPERATURE


def image_score_paper(patches: list[torch.Tensor], texts: list[torch.Tensor],
                      top_idx: list[torch.Tensor]) -> torch.Tensor:
    """Paper variant (Eq. 8): per layer, mean of the top-k patch features (re-normalised), softmax
    against that layer's prompts; abnormal probabilities averaged over layers -> [N]."""
    scores = []
    for f, t, idx in zip(patches, texts, top_idx):
        sel = torch.gather(f.float(), 1, idx.unsqueeze(-1).expand(-1, -1, f.shape[-1]))
        mean = F.normalize(sel.mean(dim=1), dim=-1)  # [N, C]
        logits = (mean.unsqueeze(1) @ t.float().transpose(1, 2)).squeeze(1) / TEMPERATURE
        scores.append(torch.softmax(logits, dim=-1)[:, 1])
    return torch.stack(scores, dim=0).mean(dim=0)


def combine_layer_maps(layer_maps: list[torch.Tensor]) -> torch.Tensor:
    """Mean over layers of ((1 - p_normal) + p_abnormal) / 2; inputs [N, 2, H, W] -> [N, H, W]."""
    per_layer = [((1.0 - m[:, 0]) + m[:, 1]) / 2.0 for m in layer_maps]
    return torch.stack(per_layer, dim=0).mean(dim=0)


# ----------------------------------------------------------------- Gaussian filter
def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """scipy's kernel: radius int(truncate * sigma + 0.5), exp(-x^2 / 2 sigma^2), normalised (float64)."""
    radius = int(truncate * float(sigma) + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    w = torch.exp(-0.5 * (x / float(sigma)) ** 2)
    return w / w.sum()


def reflect_indices(n: int, radius: int, device: torch.device | None = None) -> torch.Tensor:
    """Indices of scipy 'reflect' padding (d c b a | a b c d | d c b a), any radius (period 2n)."""
    i = torch.arange(-radius, n + radius, device=device)
    j = torch.remainder(i, 2 * n)
    return torch.where(j >= n, 2 * n - 1 - j, j)


def _filter_last_dim(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    radius = (kernel.numel() - 1) // 2
    n = x.shape[-1]
    xp = x.index_select(-1, reflect_indices(n, radius, x.device))
    lead = xp.shape[:-1]
    out = F.conv1d(xp.reshape(-1, 1, xp.shape[-1]), kernel.view(1, 1, -1))
    return out.reshape(*lead, n)


def gaussian_blur(x: torch.Tensor, sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """Separable Gaussian over the last two dims of [..., H, W], float32, equal to
    ``scipy.ndimage.gaussian_filter(x, sigma, mode='reflect', truncate=4.0)`` per 2-D slice."""
    if sigma is None or sigma <= 0 or not math.isfinite(sigma):
        return x.float()
    with _no_autocast(x.device):
        k = gaussian_kernel1d(sigma, truncate).to(device=x.device, dtype=torch.float32)
        y = _filter_last_dim(x.float(), k)
        y = _filter_last_dim(y.transpose(-1, -2), k).transpose(-1, -2)
    return y.contiguous()
