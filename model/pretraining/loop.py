"""Pretraining loop of the embedded backbone: AdamW, warmup + cosine, one process, CPU or GPU.

    settings = PretrainSettings(steps=1200, batch_size=32)
    clip, log = pretrain(settings, on_step=print)

Deterministic for a given (settings, torch version, thread count): the data is a pure
function of (seed, step) and the model is initialised from ``seed``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..backbone import CLIP_MEAN, CLIP_STD, Backbone, create_clip, tokenizer_for
from ..config import default_blocks
from ..data.splits import TRAIN_CATEGORIES, TRAIN_DEFECTS
from .batches import batch_stream
from .captions import STATE_PROMPTS
from .objectives import contrastive_loss, dense_loss, patch_coverage

EMBEDDED_BACKBONE = "vip2-synth"


@dataclass
class PretrainSettings:
    """Everything that defines a pretraining run (JSON-able: it goes into the provenance)."""

    backbone: str = EMBEDDED_BACKBONE
    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: int = 60
    dense_weight: float = 1.0
    defect_rate: float = 0.5
    seed: int = 2026
    categories: tuple[str, ...] = field(default_factory=lambda: TRAIN_CATEGORIES)
    defects: tuple[str, ...] = field(default_factory=lambda: TRAIN_DEFECTS)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["categories"], d["defects"] = list(self.categories), list(self.defects)
        return d


def lr_at(step: int, settings: PretrainSettings) -> float:
    """Linear warmup, then cosine decay to zero."""
    if step < settings.warmup:
        return settings.lr * (step + 1) / settings.warmup
    progress = (step - settings.warmup) / max(1, settings.steps - settings.warmup)
    return settings.lr * 0.5 * (1 + math.cos(math.pi * progress))


class TextEncoder:
    """Captions -> L2-normalised text features through a Backbone's text tower."""

    def __init__(self, backbone: Backbone, tokenizer):
        self.backbone, self.tokenizer = backbone, tokenizer

    def __call__(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts)[:, :self.backbone.context_length].long()
        embedded = self.backbone.embed_tokens(tokens)
        return F.normalize(self.backbone.forward_text(embedded, tokens.argmax(-1)), dim=-1)


def pretrain(settings: PretrainSettings, device: str = "cpu",
             on_step: Callable[[dict], None] | None = None) -> tuple[nn.Module, list[dict]]:
    """Train an OpenCLIP model from random init; returns (the model, per-step log)."""
    clip, _ = create_clip(settings.backbone, None, seed=settings.seed)
    clip.to(device)
    size = int(clip.visual.image_size[0] if isinstance(clip.visual.image_size, tuple) else clip.visual.image_size)
    blocks = default_blocks(len(clip.visual.transformer.resblocks))
    backbone = Backbone(clip, blocks)  # shares clip's modules: training it trains clip
    clip.requires_grad_(True)
    encode_text = TextEncoder(backbone, tokenizer_for(settings.backbone))
    mean = torch.tensor(CLIP_MEAN, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(CLIP_STD, device=device).view(1, 3, 1, 1) * 255

    decay = [p for n, p in clip.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in clip.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": settings.weight_decay},
                                   {"params": rest, "weight_decay": 0.0}], lr=settings.lr)
    log: list[dict] = []
    started = time.monotonic()
    stream = batch_stream(settings.seed, range(settings.steps), settings.batch_size, size,
                          settings.categories, settings.defects, settings.defect_rate)
    for step, batch in enumerate(stream):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, settings)
        images = (batch.images.to(device).float() - mean) / std
        global_features, patch_tokens, grid = backbone.forward_image(images)
        unique = sorted(set(batch.captions))
        caption_index = torch.tensor([unique.index(c) for c in batch.captions], device=device)
        texts = encode_text(unique + list(STATE_PROMPTS))
        contrastive = contrastive_loss(global_features, texts[:len(unique)], caption_index, clip.logit_scale)
        dense = dense_loss(patch_tokens, texts[len(unique):], patch_coverage(batch.masks.to(device), grid))
        loss = contrastive + settings.dense_weight * dense
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(clip.parameters(), 1.0)
        optimizer.step()
        entry = {"step": step, "loss": loss.item(), "contrastive": contrastive.item(), "dense": dense.item(),
                 "lr": optimizer.param_groups[0]["lr"], "seconds": time.monotonic() - started}
        log.append(entry)
        if on_step is not None:
            on_step(entry)
    clip.eval().requires_grad_(False)
    return clip, log
