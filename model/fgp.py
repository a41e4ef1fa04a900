"""FGP, Fine-Grained Perception: the two text embeddings attend over one layer's patch
tokens; the (L2-normalised) result replaces the text embeddings for that layer.

One module is shared by all layers. Names follow the released ``Zero_try`` keys.
Heads: 8 of 96 at width 768; generically ``width // 96`` (vip2-tiny, width 192: 2 heads),
configurable. Attention uses scale 1 (the paper writes 1/sqrt(C); the released
checkpoints were trained without it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError


class FineGrainedPerception(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ConfigError(f"heads {heads} must divide width {width}")
        self.width, self.heads = width, heads
        # 1x1 Conv1d (weight [C, C, 1]) to match the released checkpoints' layout.
        self.q_proj_pre = nn.Conv1d(width, width, 1)
        self.k_proj_pre_1 = nn.Conv1d(width, width, 1)
        self.v_proj_pre_1 = nn.Conv1d(width, width, 1)
        self.proj_post_t = nn.Conv1d(width, width, 1)

    @staticmethod
    def _conv(conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
        """[N, L, C] -> [N, L, C] through a 1x1 Conv1d, computed as the equivalent linear map
        (same numbers, no layout transposes; much cheaper backward on CPU than a conv)."""
        return F.linear(x, conv.weight.squeeze(-1), conv.bias)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        n, length, c = x.shape
        return x.reshape(n, length, self.heads, c // self.heads).transpose(1, 2)  # [N, h, L, d]

    def forward(self, text: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        """text [N, 2, C] and patches [N, L, C] (both L2-normalised) -> new text [N, 2, C], L2-normalised."""
        q = self._split(self._conv(self.q_proj_pre, text))
        k = self._split(self._conv(self.k_proj_pre_1, patches))
        v = self._split(self._conv(self.v_proj_pre_1, patches))
        attn = torch.softmax(q @ k.transpose(-2, -1), dim=-1)  # unscaled, [N, h, 2, L]
        out = (attn @ v).transpose(1, 2).reshape(text.shape[0], text.shape[1], self.width)
        out = self._conv(self.proj_post_t, out)
        return F.normalize(out, dim=-1)
