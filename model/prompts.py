"""ICA, the Image-Conditioned Adapter: learnable normal/abnormal prompts whose shared
class tokens are shifted by a meta-net of the image's global feature.

Token layout (context length T, usually 77), per prompt::

    [SOS] [ctx x n_ctx] [state word] [cls x n_cls] [EOT] [pad ...]

The fixed parts (SOS, state word, EOT + padding) are token embeddings of the sentence
"X X ... X <word> X ... X", stored as buffers so a checkpoint reproduces them exactly
(the released checkpoints carry "damaged" in *both* prompts; see the spec).
Parameter and buffer names follow the released checkpoints' ``prompt_learner`` keys.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .errors import ConfigError


def prompt_sentence(n_ctx: int, word: str, n_cls: int) -> str:
    """'X X X X X X X good X X X' for n_ctx 7, n_cls 3 (no full stop)."""
    return " ".join(["X"] * n_ctx + [word] + ["X"] * n_cls)


class MetaNet(nn.Module):
    """n_cls independent Linear(E -> E/2) -> ReLU -> Linear(E/2 -> Dt) on (global + bias)."""

    def __init__(self, embed_dim: int, text_width: int, n_cls: int):
        super().__init__()
        hidden = max(1, embed_dim // 2)
        self.bias = nn.Parameter(torch.empty(1, embed_dim))
        self.fc = nn.ModuleList(
            nn.Sequential(nn.Linear(embed_dim, hidden), nn.ReLU(inplace=False), nn.Linear(hidden, text_width))
            for _ in range(n_cls))
        nn.init.normal_(self.bias, std=0.02)

    def forward(self, g: torch.Tensor) -> torch.Tensor:
        """g [N, E] -> offsets a [N, n_cls, Dt]."""
        x = g + self.bias.to(g.dtype)
        return torch.stack([fc(x) for fc in self.fc], dim=1)


class ImageConditionedPrompts(nn.Module):
    """Builds the two prompt embedding sequences per image: [N, 2, T, Dt] and their EOT positions."""

    def __init__(self, embed_dim: int, text_width: int, context_length: int, n_ctx: int = 7, n_cls: int = 3,
                 middle_len: int = 1):
        super().__init__()
        self.n_ctx, self.n_cls, self.middle_len = n_ctx, n_cls, middle_len
        self.context_length = context_length
        suffix = context_length - 1 - n_ctx - middle_len - n_cls
        if suffix < 1:
            raise ConfigError("prompt does not fit the context length")
        self.ctx_pos = nn.Parameter(torch.empty(n_ctx, text_width))
        self.ctx_neg = nn.Parameter(torch.empty(n_ctx, text_width))
        self.cls_ctx = nn.Parameter(torch.empty(n_cls, text_width))
        for p in (self.ctx_pos, self.ctx_neg, self.cls_ctx):
            nn.init.normal_(p, std=0.02)
        self.cls_prompter = MetaNet(embed_dim, text_width, n_cls)
        for side in ("pos", "neg"):
            self.register_buffer(f"token_prefix_{side}", torch.zeros(1, 1, text_width))
            self.register_buffer(f"token_middle_{side}", torch.zeros(1, middle_len, text_width))
            self.register_buffer(f"token_suffix_{side}", torch.zeros(1, suffix, text_width))
            self.register_buffer(f"tokenized_prompts_{side}", torch.zeros(1, context_length, dtype=torch.long))

    @classmethod
    def from_tokenizer(cls, tokenizer: Callable, embed_tokens: Callable[[torch.Tensor], torch.Tensor],
                       embed_dim: int, text_width: int, context_length: int, n_ctx: int, n_cls: int,
                       state_words: tuple[str, str]) -> "ImageConditionedPrompts":
        """Fresh (trainable) prompts; fixed parts from the tokenised sentences of ``state_words``
        (normal, abnormal)."""
        toks = {side: tokenizer([prompt_sentence(n_ctx, w, n_cls)])[:, :context_length].long()
                for side, w in zip(("pos", "neg"), state_words)}
        middle = {side: int(t.argmax(-1)) - 1 - n_ctx - n_cls for side, t in toks.items()}
        if middle["pos"] != middle["neg"] or middle["pos"] < 1:
            raise ConfigError(f"state words {state_words} must tokenise to the same number (>=1) of tokens")
        m = cls(embed_dim, text_width, context_length, n_ctx, n_cls, middle_len=middle["pos"])
        with torch.no_grad():
            for side, t in toks.items():
                emb = embed_tokens(t).float()  # [1, T, Dt]
                getattr(m, f"token_prefix_{side}").copy_(emb[:, :1])
                getattr(m, f"token_middle_{side}").copy_(emb[:, 1 + n_ctx:1 + n_ctx + m.middle_len])
                getattr(m, f"token_suffix_{side}").copy_(emb[:, 1 + n_ctx + m.middle_len + n_cls:])
                getattr(m, f"tokenized_prompts_{side}").copy_(t)
        return m

    @property
    def eot_index(self) -> torch.Tensor:
        """[2] EOT positions (argmax of the token ids) for (normal, abnormal)."""
        return torch.cat([self.tokenized_prompts_pos.argmax(-1), self.tokenized_prompts_neg.argmax(-1)])

    def forward(self, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """g [N, E] global feature -> (prompts [N, 2, T, Dt], eot [2])."""
        n = g.shape[0]
        z = self.cls_ctx.unsqueeze(0) + self.cls_prompter(g).to(self.cls_ctx.dtype)  # [N, n_cls, Dt]

        def build(side: str, ctx: torch.Tensor) -> torch.Tensor:
            parts = [getattr(self, f"token_prefix_{side}"), ctx.unsqueeze(0),
                     getattr(self, f"token_middle_{side}")]
            parts = [p.expand(n, -1, -1) for p in parts]
            return torch.cat(parts + [z, getattr(self, f"token_suffix_{side}").expand(n, -1, -1)], dim=1)

        prompts = torch.stack([build("pos", self.ctx_pos), build("neg", self.ctx_neg)], dim=1)
        return prompts, self.eot_index
