"""The two pretraining objectives of the embedded backbone.

``contrastive_loss``: CLIP's symmetric image-text loss, over the batch's *distinct*
captions (generated captions repeat within a batch, so an image's positive is its caption
and every image with that caption is a positive of the caption).

``dense_loss``: the auxiliary objective that makes patch tokens see local defects. Each
patch token of the tapped blocks (after ln_post + proj, as ViP2 reads them) is compared
with the two state prompts; softmax(cos / 0.07) over (good, damaged) is trained with a
soft cross-entropy against how much of the patch the generator's exact mask covers
(saturating at ``FULL_COVERAGE``: a 1-pixel scratch across a patch is as much a defect as a
stain filling it), plus a dice term per image, like ViP2's own focal + dice head losses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

TEMPERATURE = 0.07
POSITIVE_WEIGHT = 4.0  # defect patches are rare: weigh them up in the cross-entropy
FULL_COVERAGE = 0.1  # a patch 10 % covered by a defect is wholly "damaged"


def contrastive_loss(image_features: torch.Tensor, text_features: torch.Tensor, caption_index: torch.Tensor,
                     logit_scale: torch.Tensor) -> torch.Tensor:
    """image_features [B, E], text_features [U, E] (both L2-normalised), caption_index [B] in 0..U-1."""
    logits = logit_scale.exp().clamp(max=100) * image_features @ text_features.t()  # [B, U]
    image_to_text = F.cross_entropy(logits, caption_index)
    positives = F.one_hot(caption_index, text_features.shape[0]).t().float()  # [U, B]
    log_p = F.log_softmax(logits.t(), dim=1)
    text_to_image = -((positives * log_p).sum(1) / positives.sum(1)).mean()
    return (image_to_text + text_to_image) / 2


def patch_coverage(masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """masks [B, H, W] in {0, 1} -> damaged-ness of each patch in [0, 1], [B, gh * gw]: the
    fraction of the patch on a defect, divided by FULL_COVERAGE and clipped at 1."""
    fraction = F.adaptive_avg_pool2d(masks.unsqueeze(1), grid).flatten(1)
    return (fraction / FULL_COVERAGE).clamp(max=1.0)


def attended_text(state_text: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
    """What ViP2's FGP computes at its warm start (identity projections, attention at CLIP's
    temperature): each state prompt replaced by the mean of the patches it attends to.
    state_text [2, E], patches [B, L, E], both L2-normalised -> [B, 2, E] L2-normalised."""
    attention = torch.softmax(state_text @ patches.transpose(1, 2) / TEMPERATURE, dim=-1)  # [B, 2, L]
    return F.normalize(attention @ patches, dim=-1)


def _state_loss(logits: torch.Tensor, coverage: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Soft CE (weighted) + dice of (good, damaged) logits [B, L, 2] against coverage [B, L]."""
    log_p = F.log_softmax(logits, dim=-1)
    ce = -((1 - coverage) * log_p[..., 0] + coverage * log_p[..., 1])
    ce = (weight * ce).sum() / weight.sum()
    p_damaged = log_p[..., 1].exp()
    dice = 1 - (2 * (p_damaged * coverage).sum(1) + 1) / (p_damaged.sum(1) + coverage.sum(1) + 1)
    return ce + dice.mean()


def dense_loss(patch_tokens: list[torch.Tensor], state_text: torch.Tensor, coverage: torch.Tensor
               ) -> torch.Tensor:
    """patch_tokens: per block [B, L, E] (not normalised); state_text [2, E] L2-normalised
    (good, damaged); coverage [B, L].

    Per block, two readings of the same question: patches against the prompts themselves, and
    against the prompts after FGP's warm-start attention (:func:`attended_text`), the path
    ViP2's head reads them by. Mean over blocks and readings of soft CE + dice."""
    losses = []
    weight = 1.0 + POSITIVE_WEIGHT * (coverage > 0).float()
    for tokens in patch_tokens:
        patches = F.normalize(tokens, dim=-1)
        direct = patches @ state_text.t() / TEMPERATURE  # [B, L, 2]
        attended = patches @ attended_text(state_text, patches).transpose(1, 2) / TEMPERATURE
        losses += [_state_loss(direct, coverage, weight), _state_loss(attended, coverage, weight)]
    return torch.stack(losses).mean()
