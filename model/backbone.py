"""Frozen OpenCLIP backbone: multi-block patch tokens, the ViP2 global feature, and a
text tower that takes prompt *embeddings* instead of token ids.

We run our own forward over open_clip's modules (conv1, class_embedding,
positional_embedding, ln_pre, transformer.resblocks, ln_post, proj) because ViP2-CLIP
needs things the stock forward does not give: bilinear (not bicubic) positional
interpolation per call, tokens after several blocks through ln_post + proj, and a
global feature that skips ln_post.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .config import backbone_config, register_embedded_configs
from .errors import ConfigError
from .embedded import resolve_weights
from .files import is_uri
from .weights import CheckpointError, clean_state_dict, load_state_dict_file, sha256_uri

log = logging.getLogger(__name__)

# CLIP normalisation (OpenAI's dataset statistics), applied on the detector's device.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _project(x: torch.Tensor, proj: Any) -> torch.Tensor:
    """Apply an OpenCLIP projection that may be a matrix, a Linear, or absent."""
    if proj is None:
        return x
    if isinstance(proj, torch.Tensor):
        return x @ proj.to(x.dtype)
    return proj(x)


def interpolate_pos_embed(pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """[1 + G*G, W] -> [1 + gh*gw, W]: grid part bilinear (align_corners=False), class row kept.

    Returns a new tensor; the parameter is never modified.
    """
    n_grid = pos.shape[0] - 1
    side = int(round(n_grid ** 0.5))
    if side * side != n_grid:
        raise ConfigError(f"positional embedding grid of {n_grid} positions is not square")
    if (side, side) == tuple(grid):
        return pos
    cls_pos, grid_pos = pos[:1], pos[1:]
    grid_pos = grid_pos.reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
    grid_pos = F.interpolate(grid_pos, size=tuple(grid), mode="bilinear", align_corners=False)
    grid_pos = grid_pos.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1).to(pos.dtype)
    return torch.cat([cls_pos, grid_pos], dim=0)


def _run_blocks(transformer: nn.Module, x: torch.Tensor, attn_mask: torch.Tensor | None,
                take: set[int]) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Run open_clip resblocks on NLD input; return final NLD output and {block(1-based): NLD}.

    open_clip 3.x Transformers are batch_first by default, older ones were LND: honour
    whatever this instance says.
    """
    batch_first = getattr(transformer, "batch_first", False)
    if not batch_first:
        x = x.transpose(0, 1)
    taken: dict[int, torch.Tensor] = {}
    for i, blk in enumerate(transformer.resblocks, start=1):
        x = blk(x, attn_mask=attn_mask)
        if i in take:
            taken[i] = x if batch_first else x.transpose(0, 1)
    if not batch_first:
        x = x.transpose(0, 1)
    return x, taken


class Backbone(nn.Module):
    """Frozen CLIP towers. ``clip`` is an OpenCLIP ``CLIP`` (or ``CustomTextCLIP``) model."""

    def __init__(self, clip: nn.Module, blocks: tuple[int, ...]):
        super().__init__()
        self.visual = clip.visual
        if not hasattr(self.visual, "conv1"):
            raise ConfigError("backbone has no ViT patch embedding (conv1): only OpenCLIP ViTs are supported")
        text = getattr(clip, "text", None)
        src = text if text is not None and hasattr(text, "token_embedding") else clip
        if not hasattr(src, "token_embedding"):
            raise ConfigError("backbone text tower has no token_embedding (HF text towers are not supported)")
        self.token_embedding = src.token_embedding
        self.text_pos = src.positional_embedding
        self.text_transformer = src.transformer
        self.ln_final = src.ln_final
        self.text_projection = src.text_projection
        self.register_buffer("attn_mask", src.attn_mask.clone(), persistent=False)
        self.blocks = tuple(int(b) for b in blocks)
        self.depth = len(self.visual.transformer.resblocks)
        if max(self.blocks) > self.depth:
            raise ConfigError(f"blocks {self.blocks} exceed depth {self.depth}")
        ps = self.visual.conv1.kernel_size
        self.patch_size = int(ps[0] if isinstance(ps, tuple) else ps)
        self.context_length = int(self.text_pos.shape[0])
        self.text_width = int(self.token_embedding.weight.shape[1])
        self.embed_dim = int(_project(torch.zeros(1, self.visual.ln_post.normalized_shape[0]),
                                      self.visual.proj).shape[-1])
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "Backbone":
        # Frozen: stays in eval mode whatever the parent does (no dropout / patch dropout).
        return super().train(False)

    # ---------------------------------------------------------------- vision
    def forward_image(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], tuple[int, int]]:
        """x: normalised float [N,3,H,W] -> (global [N,E] L2-normalised,
        patch tokens per block [N,L,E] (ln_post + proj, class token dropped), grid (gh, gw))."""
        v = self.visual
        x = v.conv1(x.to(v.conv1.weight.dtype))  # [N, W, gh, gw]
        grid = (int(x.shape[2]), int(x.shape[3]))
        x = x.flatten(2).transpose(1, 2)  # [N, L, W]
        cls = v.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        x = x + interpolate_pos_embed(v.positional_embedding, grid).to(x.dtype)
        x = v.ln_pre(x)
        final, taken = _run_blocks(v.transformer, x, None, set(self.blocks))
        patches = [_project(v.ln_post(taken[b][:, 1:]), v.proj) for b in self.blocks]
        # ViP2 quirk (reference behaviour): the global feature skips ln_post.
        glob = F.normalize(_project(final[:, 0], v.proj).float(), dim=-1)
        return glob, patches, grid

    # ------------------------------------------------------------------ text
    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids [B, T] -> token embeddings [B, T, Dt] (used to build the fixed prompt parts)."""
        return self.token_embedding(tokens)

    def forward_text(self, prompts: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
        """prompts [B, T, Dt] (embeddings), eot [B] positions -> text features [B, E] (not normalised)."""
        x = prompts + self.text_pos.to(prompts.dtype)
        x, _ = _run_blocks(self.text_transformer, x, self.attn_mask, set())
        x = self.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), eot.to(x.device)]
        return _project(x, self.text_projection)


class _DropRandomInitWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()


@contextlib.contextmanager
def _seeded(seed: int):
    """Seed torch's global RNG for open_clip's init without disturbing the caller's RNG.

    Also drops open_clip's "initialized randomly" warning: random init is what we asked for.
    """
    root, flt = logging.getLogger(), _DropRandomInitWarning()
    root.addFilter(flt)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield
    finally:
        root.removeFilter(flt)


def _is_uri_or_path(weights: str) -> bool:
    """A file location (anything else is taken as an OpenCLIP pretrained tag such as 'openai')."""
    import os

    return is_uri(weights) or weights.startswith(("/", ".", "~")) or os.path.exists(weights) or \
        weights.endswith((".safetensors", ".pt", ".pth", ".bin", ".ckpt"))


def create_clip(name: str, weights: str | None = None, seed: int = 0,
                storage_options: dict | None = None) -> tuple[nn.Module, str | None]:
    """Build OpenCLIP model ``name`` and load weights. Returns (model, weight digest or None).

    weights: None -> random init from ``seed``; an OpenCLIP pretrained tag (needs internet);
    or a path/URI to a safetensors / ``weights_only`` torch state dict.
    """
    register_embedded_configs()
    backbone_config(name)  # clear error for unknown names
    import open_clip

    weights = resolve_weights(weights)
    digest: str | None = None
    if weights is None or _is_uri_or_path(weights):
        with _seeded(seed):
            model = open_clip.create_model(name, pretrained=None)
        if weights is not None:
            sd, digest = load_state_dict_file(weights, storage_options=storage_options)
            sd = clean_state_dict(sd)
            own = model.state_dict()
            bad = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in sd.items()
                   if k in own and tuple(v.shape) != tuple(own[k].shape)]
            if bad:
                raise CheckpointError(f"backbone weights {weights!r} do not match OpenCLIP config {name!r}: "
                                      f"shape mismatch {bad[:5]}")
            missing, unexpected = model.load_state_dict(sd, strict=False)
            missing = [k for k in missing if k not in ("logit_bias",)]
            if missing or unexpected:
                raise CheckpointError(
                    f"backbone weights {weights!r} do not match OpenCLIP config {name!r}: "
                    f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                    f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
    else:
        try:
            model = open_clip.create_model(name, pretrained=weights, require_pretrained=True)
        except Exception as e:  # noqa: BLE001 - unknown tag, no internet, hub errors
            raise CheckpointError(
                f"could not get OpenCLIP pretrained weights {weights!r} for {name!r} ({type(e).__name__}: {e}). "
                "Without internet, download them elsewhere and pass weights=<path or URI of a safetensors "
                "file> (an OpenAI .pt must first go through convert_openai_weights)") from e
        digest = _pretrained_digest(name, weights)
    model.eval().requires_grad_(False)
    return model, digest


def _pretrained_digest(name: str, tag: str) -> str | None:
    """sha256 of the cached file behind an OpenCLIP pretrained tag, when it can be found."""
    try:
        from open_clip.pretrained import download_pretrained, get_pretrained_cfg

        path = download_pretrained(get_pretrained_cfg(name, tag))
        return sha256_uri(path) if path else None
    except Exception as e:  # noqa: BLE001 - the digest is informative, not required
        log.warning("could not compute a digest for %s/%s: %s", name, tag, e)
        return None


def build_backbone(name: str, blocks: tuple[int, ...], weights: str | None = None, seed: int = 0,
                   storage_options: dict | None = None) -> tuple[Backbone, str | None]:
    """The frozen Backbone for an OpenCLIP config name, plus the weight digest."""
    clip, digest = create_clip(name, weights, seed=seed, storage_options=storage_options)
    return Backbone(clip, blocks), digest


def tokenizer_for(name: str):
    """open_clip's tokenizer for a model config (SimpleTokenizer for CLIP configs)."""
    register_embedded_configs()
    import open_clip

    return open_clip.get_tokenizer(name)
