"""DetectorConfig: everything that defines a detector's numbers, as JSON-able data.

Defaults that depend on the backbone (blocks, top-k, sigma, FGP heads) are left as
``None`` by the user and filled by :func:`resolve_config`, which reads the OpenCLIP
model config. A checkpoint always stores the resolved form, so a saved model never
changes meaning when a default rule changes.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

# Where the embedded configs (vip2-tiny) live; registered with open_clip on import.
CONFIG_DIR = Path(__file__).parent / "configs"

# Reference numbers the spec's scaling rules are anchored to (ViT-L/14 at 518 px).
REF_SIZE = 518
REF_PATCHES = 37 * 37
REF_TOP_K = 50
REF_SIGMA = 8.0
REF_HEAD_DIM = 96  # FGP uses 8 heads of 96 at width 768
TEMPERATURE = 0.07

SCORE_VARIANTS = ("reference", "paper")

_registered = False


def register_embedded_configs() -> None:
    """Make open_clip know our embedded model configs (idempotent)."""
    global _registered
    if _registered:
        return
    import open_clip

    open_clip.add_model_config(CONFIG_DIR)
    _registered = True


def backbone_config(name: str) -> dict:
    """The OpenCLIP model config for ``name``; raises ValueError for an unknown name."""
    register_embedded_configs()
    import open_clip

    cfg = open_clip.get_model_config(name)
    if cfg is None:
        known = ", ".join(n for n in open_clip.list_models() if n.startswith(("ViT", "vip2")))
        raise ConfigError(f"unknown backbone {name!r}: not an OpenCLIP model config (known ViTs: {known})")
    vision = cfg.get("vision_cfg", {})
    if vision.get("timm_model_name") or "layers" not in vision or not isinstance(vision["layers"], int):
        raise ConfigError(f"backbone {name!r} is not an OpenCLIP ViT config (vision_cfg needs integer 'layers')")
    return cfg


def default_blocks(depth: int) -> tuple[int, ...]:
    """1-based blocks ceil(depth * i / 4), i = 1..4 (24 -> 6,12,18,24; 6 -> 2,3,5,6)."""
    return tuple(math.ceil(depth * i / 4) for i in range(1, 5))


def grid_size(image_size: int, patch_size: int) -> int:
    return image_size // patch_size


def default_top_k(image_size: int, patch_size: int) -> int:
    """k = round(50 * patches / 1369), at least 1."""
    patches = grid_size(image_size, patch_size) ** 2
    return max(1, int(round(REF_TOP_K * patches / REF_PATCHES)))


def default_sigma(image_size: int) -> float:
    """sigma = 8 * size / 518 (pixels of the anomaly map)."""
    return REF_SIGMA * image_size / REF_SIZE


def default_fgp_heads(width: int) -> int:
    """8 heads at 768 (head dim 96); generically width // 96, reduced until it divides width.

    vip2-tiny has embed_dim 192 -> 2 heads of 96.
    """
    heads = max(1, width // REF_HEAD_DIM)
    while width % heads:
        heads -= 1
    return heads


def is_unit_number(value: Any) -> bool:
    """Whether ``value`` is a finite number in [0, 1], as scores and their thresholds are."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and 0.0 <= value <= 1.0)


@dataclass
class DetectorConfig:
    """What a detector computes. ``None`` fields get the spec's defaults in resolve_config."""

    backbone: str = "vip2-tiny"
    weights: str | None = None  # None: seeded random; OpenCLIP tag; or path/URI
    weights_digest: str | None = None  # "sha256:<hex>" of the weight file
    image_size: int = 224
    blocks: tuple[int, ...] | None = None  # 1-based transformer blocks
    n_ctx: int = 7
    n_cls: int = 3
    state_words: tuple[str, str] = ("good", "damaged")
    top_k: int | None = None
    sigma: float | None = None
    score_variant: str = "reference"
    image_threshold: float | None = None
    pixel_threshold: float | None = None
    seed: int = 0
    fgp_heads: int | None = None
    # Filled by resolve_config from the backbone (not user settings).
    embed_dim: int | None = None
    depth: int | None = None
    patch_size: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.blocks is not None:
            self.blocks = tuple(int(b) for b in self.blocks)
        self.state_words = tuple(self.state_words)  # type: ignore[assignment]
        if len(self.state_words) != 2:
            raise ConfigError(f"state_words must be (normal, abnormal), got {self.state_words!r}")
        if self.score_variant not in SCORE_VARIANTS:
            raise ConfigError(f"score_variant must be one of {SCORE_VARIANTS}, got {self.score_variant!r}")
        if self.n_ctx < 0 or self.n_cls < 1:
            raise ConfigError("n_ctx must be >= 0 and n_cls >= 1")
        for name in ("image_threshold", "pixel_threshold"):
            value = getattr(self, name)
            # A NaN threshold flags nothing and makes every later record unserialisable as JSON.
            if value is not None and not is_unit_number(value):
                raise ConfigError(f"{name} must be a number from 0 to 1, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["blocks"] = list(self.blocks) if self.blocks is not None else None
        d["state_words"] = list(self.state_words)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DetectorConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names - {"model_id", "format", "format_version"})
        if unknown:
            raise ConfigError(f"unknown DetectorConfig fields: {unknown}")
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def replace(self, **changes: Any) -> "DetectorConfig":
        return dataclasses.replace(self, **changes)


def resolve_config(cfg: DetectorConfig) -> DetectorConfig:
    """Fill backbone-dependent defaults; validate the rest. Returns a new config."""
    oc = backbone_config(cfg.backbone)
    vision = oc["vision_cfg"]
    depth = int(vision["layers"])
    patch = int(vision["patch_size"])
    embed_dim = int(oc["embed_dim"])
    if cfg.image_size % patch:
        raise ConfigError(f"image_size {cfg.image_size} is not a multiple of the patch size {patch}")
    blocks = cfg.blocks or default_blocks(depth)
    if any(b < 1 or b > depth for b in blocks):
        raise ConfigError(f"blocks {blocks} outside 1..{depth} for {cfg.backbone}")
    heads = cfg.fgp_heads or default_fgp_heads(embed_dim)
    if embed_dim % heads:
        raise ConfigError(f"fgp_heads {heads} does not divide embed_dim {embed_dim}")
    ctx_len = int(oc.get("text_cfg", {}).get("context_length", 77))
    if 1 + cfg.n_ctx + 1 + cfg.n_cls + 1 > ctx_len:
        raise ConfigError(f"n_ctx + n_cls too large for context length {ctx_len}")
    top_k = cfg.top_k or default_top_k(cfg.image_size, patch)
    sigma = cfg.sigma if cfg.sigma is not None else default_sigma(cfg.image_size)
    return cfg.replace(
        blocks=tuple(blocks), top_k=int(top_k), sigma=float(sigma), fgp_heads=int(heads),
        embed_dim=embed_dim, depth=depth, patch_size=patch,
    )
