"""Detector: frozen OpenCLIP backbone + trainable ICA/FGP head + UTPA scoring.

    det = Detector.from_config(DetectorConfig())            # seeded, untrained head
    det = Detector.from_checkpoint("s3://bucket/ckpt")      # ours, or a released .pth
    score, amap = det(images_uint8)                          # [N], [N, S, S] in [0, 1]

No file I/O here: reading and writing checkpoints is model/checkpoint.py's job;
:meth:`Detector.from_checkpoint` only assembles what it read.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import scoring
from .backbone import CLIP_MEAN, CLIP_STD, Backbone, build_backbone, tokenizer_for
from .checkpoint import (CheckpointContent, CheckpointError, compute_model_id, read_checkpoint,
                         read_released_pth, released_default_config, save_checkpoint)
from .config import DetectorConfig, resolve_config
from .contract import model_input
from .errors import ConfigError
from .fgp import FineGrainedPerception
from .prompts import ImageConditionedPrompts


class Detector(nn.Module):
    """ViP2-CLIP detector. Only ``ica`` and ``fgp`` hold trainable weights."""

    def __init__(self, config: DetectorConfig, backbone: Backbone, ica: ImageConditionedPrompts,
                 fgp: FineGrainedPerception, amp: str | None = "auto"):
        super().__init__()
        self.config = config
        self.backbone = backbone
        self.ica = ica
        self.fgp = fgp
        # bf16 autocast on CUDA by default ("auto"); None/"off" keeps float32 everywhere.
        self.amp = amp
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1) * 255.0, persistent=False)
        self._model_id: str | None = None

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_config(cls, config: DetectorConfig, device: str | torch.device = "cpu",
                    storage_options: dict | None = None, init_head: bool = True,
                    amp: str | None = "auto") -> "Detector":
        """Build backbone + a fresh head seeded from ``config.seed``.

        ``init_head=False`` is for loaders that overwrite the head right away (the init
        still runs, seeded, so buffers exist with the right shapes).
        """
        cfg = resolve_config(config)
        backbone, digest = build_backbone(cfg.backbone, cfg.blocks, cfg.weights, seed=cfg.seed,
                                          storage_options=storage_options)
        if cfg.weights is not None and digest is not None:
            if cfg.weights_digest and cfg.weights_digest != digest:
                raise CheckpointError(
                    f"backbone weights {cfg.weights!r} have digest {digest}, but the config records "
                    f"{cfg.weights_digest}: a different file than the one this model was built with")
            cfg = cfg.replace(weights_digest=digest)
        tok = tokenizer_for(cfg.backbone)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            ica = ImageConditionedPrompts.from_tokenizer(
                tok, backbone.embed_tokens, embed_dim=backbone.embed_dim, text_width=backbone.text_width,
                context_length=backbone.context_length, n_ctx=cfg.n_ctx, n_cls=cfg.n_cls,
                state_words=cfg.state_words)
            fgp = FineGrainedPerception(backbone.embed_dim, cfg.fgp_heads)
        det = cls(cfg, backbone, ica, fgp, amp=amp)
        det.refresh_model_id()
        return det.to(device)

    @classmethod
    def from_checkpoint(cls, uri: str, device: str | torch.device = "cpu", storage_options: dict | None = None,
                        config: DetectorConfig | None = None, overrides: dict | None = None,
                        amp: str | None = "auto") -> "Detector":
        """Our checkpoint dir (local, file://, s3://...) or a released ViP2-CLIP ``.pth``.

        The one way to build a detector from a checkpoint. ``overrides`` changes saved config
        fields on load (e.g. ``{"image_size": 336}`` or a local copy of the backbone weights) by
        the rule in :func:`vip2scan.model.checkpoint.apply_overrides`; ``config`` gives the
        backbone of a released file (default: ViT-L-14-336-quickgelu, OpenAI weights, 518 px).
        """
        content = read_checkpoint(uri, storage_options=storage_options, config=config, overrides=overrides)
        return cls.from_content(content, device=device, storage_options=storage_options, amp=amp)

    @classmethod
    def from_content(cls, content: CheckpointContent, device: str | torch.device = "cpu",
                     storage_options: dict | None = None, amp: str | None = "auto") -> "Detector":
        """Build the backbone for ``content.config`` and load the head tensors into it."""
        det = cls.from_config(content.config, device="cpu", storage_options=storage_options,
                              init_head=False, amp=amp)
        det.load_head(content.ica, content.fgp, where=content.where, unused=content.unused)
        if content.saved_model_id and det.model_id != content.saved_model_id:
            raise CheckpointError(f"{content.where!r}: model_id {det.model_id} does not match the saved "
                                  f"{content.saved_model_id} (files edited or mixed)")
        return det.to(device)

    def save_checkpoint(self, uri: str, storage_options: dict | None = None) -> str:
        """Write our format (dir with weights.safetensors + config.json). Returns the model_id."""
        self._model_id = save_checkpoint(self.config, self.head_state_dict(), uri, storage_options)
        return self._model_id

    def head_state_dict(self) -> dict[str, torch.Tensor]:
        """ICA + FGP tensors (parameters and buffers), keyed 'ica.*' / 'fgp.*', on CPU, contiguous."""
        return {f"{prefix}.{k}": v.detach().to("cpu").contiguous()
                for prefix, mod in (("ica", self.ica), ("fgp", self.fgp))
                for k, v in mod.state_dict().items()}

    def load_head(self, ica_sd: dict, fgp_sd: dict, where: str, unused: list[str] = ()) -> None:
        """Copy tensors into the head, refusing missing keys and shape mismatches (clear errors)."""
        unused = list(unused)
        for mod, sd, group in ((self.ica, ica_sd, "prompt_learner"), (self.fgp, fgp_sd, "Zero_try")):
            target = mod.state_dict()
            missing = [k for k in target if k not in sd]
            if missing:
                raise CheckpointError(f"{where}: missing key(s) in {group}: {missing}")
            fixed = {}
            for k, ref in target.items():
                t = sd[k]
                if not isinstance(t, torch.Tensor):
                    raise CheckpointError(f"{where}: {group}.{k} is not a tensor")
                if t.shape != ref.shape:
                    # Tolerate only singleton-dimension differences such as (1, n, D) vs (n, D).
                    if t.numel() == ref.numel() and [s for s in t.shape if s != 1] == [s for s in ref.shape if s != 1]:
                        t = t.reshape(ref.shape)
                    else:
                        raise CheckpointError(f"{where}: shape mismatch for {group}.{k}: file has "
                                              f"{tuple(t.shape)}, model expects {tuple(ref.shape)}")
                fixed[k] = t.to(ref.dtype)
            unused += [f"{group}.{k}" for k in sd if k not in target]
            mod.load_state_dict(fixed, strict=True)
        if unused:
            warnings.warn(f"{where}: ignoring unused checkpoint entries {sorted(unused)}", stacklevel=3)
        self.refresh_model_id()

    # ------------------------------------------------------------------ properties
    @property
    def model_id(self) -> str:
        if self._model_id is None:
            self.refresh_model_id()
        return self._model_id  # type: ignore[return-value]

    def refresh_model_id(self) -> str:
        """Recompute the id after the head or config changed (training, calibration)."""
        self._model_id = compute_model_id(self.config, self.head_state_dict())
        return self._model_id

    def set_thresholds(self, image_threshold: float | None = None, pixel_threshold: float | None = None) -> None:
        self.config = self.config.replace(image_threshold=image_threshold, pixel_threshold=pixel_threshold)
        self.refresh_model_id()

    @property
    def image_size(self) -> int:
        return int(self.config.image_size)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def head_parameters(self) -> dict[str, list[nn.Parameter]]:
        return {"ica": list(self.ica.parameters()), "fgp": list(self.fgp.parameters())}

    def _autocast(self):
        """"auto": bf16 autocast on CUDA only; "bf16"/"fp16": on any device; None/"off": float32.
        Scoring, maps and smoothing always run in float32 (see scoring.py)."""
        if self.amp in (None, "off", False) or (self.amp == "auto" and self.device.type != "cuda"):
            return contextlib.nullcontext()
        if self.amp not in ("auto", "bf16", "fp16"):
            raise ConfigError(f"amp must be 'auto', 'bf16', 'fp16' or None, got {self.amp!r}")
        dtype = torch.float16 if self.amp == "fp16" else torch.bfloat16
        return torch.autocast(self.device.type, dtype=dtype)

    # ---------------------------------------------------------------------- forward
    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [N, 3, H, W] (any device) -> CLIP-normalised float32 on this device."""
        x = model_input(images, self.device).float()
        return (x - self.mean) / self.std

    def forward_features(self, images: torch.Tensor) -> dict[str, Any]:
        """Frozen backbone (no grads): global [N, E], patches per block [N, L, E] (L2-normalised), grid."""
        x = self.normalize(images)
        with torch.no_grad(), self._autocast():
            glob, patches, grid = self.backbone.forward_image(x)
        patches = [F.normalize(p.float(), dim=-1) for p in patches]
        return {"global": glob.float(), "patches": patches, "grid": grid, "size": tuple(images.shape[-2:])}

    def forward_head(self, feats: dict[str, Any], with_maps: bool = True) -> dict[str, Any]:
        """ICA -> text tower -> FGP per layer -> UTPA. Grads flow into ICA/FGP (not the backbone).

        ``image_logits`` are always the reference ones (mean top-k cosine pair / 0.07, what the
        training CE uses); ``image_score`` follows ``config.score_variant``.
        """
        n = feats["global"].shape[0]
        with self._autocast():
            prompts, eot = self.ica(feats["global"])  # [N, 2, T, Dt]
            text = self.backbone.forward_text(prompts.flatten(0, 1), eot.repeat(n))
            text = F.normalize(text.float().view(n, 2, -1), dim=-1)
            layer_text = [self.fgp(text, p) for p in feats["patches"]]
        sims, probs, top_pairs, top_idx, maps = [], [], [], [], []
        for f, t in zip(feats["patches"], layer_text):
            s = scoring.patch_similarity(f, t.float())
            p = scoring.patch_probs(s)
            idx, pairs = scoring.topk_pairs(s, p, int(self.config.top_k))
            sims.append(s), probs.append(p), top_idx.append(idx), top_pairs.append(pairs)
            if with_maps:
                maps.append(scoring.upsample_probs(p, feats["grid"], feats["size"]))
        logits = scoring.image_logits_reference(top_pairs)
        if self.config.score_variant == "paper":
            score = scoring.image_score_paper(feats["patches"], layer_text, top_idx)
        else:
            score = torch.softmax(logits, dim=-1)[:, 1]
        return {"text": text, "layer_text": layer_text, "sims": sims, "probs": probs, "top_idx": top_idx,
                "image_logits": logits, "image_score": score, "layer_maps": maps}

    def forward_train(self, images: torch.Tensor) -> dict[str, Any]:
        """What the losses need: per-layer probability maps [N, 2, H, W] at input size, image logits [N, 2]."""
        return self.forward_head(self.forward_features(images), with_maps=True)

    def anomaly_map(self, layer_maps: list[torch.Tensor]) -> torch.Tensor:
        """Mean over layers of ((1-p_n)+p_a)/2, Gaussian-smoothed (float32) -> [N, H, W] in [0, 1]."""
        amap = scoring.combine_layer_maps([m.float() for m in layer_maps])
        return scoring.gaussian_blur(amap, float(self.config.sigma)).clamp_(0.0, 1.0)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 [N, 3, S, S] -> (image_score [N] float32, anomaly_map [N, S, S] float32 in [0, 1])."""
        with torch.inference_mode():
            out = self.forward_head(self.forward_features(images), with_maps=True)
            return out["image_score"].float(), self.anomaly_map(out["layer_maps"])

    def train(self, mode: bool = True) -> "Detector":
        super().train(mode)
        self.backbone.eval()  # frozen, always in eval mode
        return self


def load_released_pth(uri: str, config: DetectorConfig | None = None, device: str | torch.device = "cpu",
                      storage_options: dict | None = None) -> Detector:
    """A released ViP2-CLIP ``.pth`` as a Detector; the backbone comes from ``config``
    (default: ViT-L-14-336-quickgelu with OpenAI weights at 518 px)."""
    content = read_released_pth(uri, config=config or released_default_config(),
                                storage_options=storage_options)
    return Detector.from_content(content, device=device, storage_options=storage_options)
