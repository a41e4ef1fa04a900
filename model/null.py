"""The null detector: the real detector's interface and output shapes at almost no cost.

    vip2scan scan SRC --out OUT --checkpoint null:64     # or `null` (224 px)
    det = build_null_detector(64)                        # .model_id == "null-64"
    score, amap = det(images_uint8)                      # [N], [N, S, S] float32 in [0, 1]

It measures the data plane's ceiling (`vip2scan bench --model null`): what listing, reading,
decoding, moving rows, writing maps and committing cost when the model costs nothing. It is
never a default and never a model: its id says so (``null-<size>``) and its scores mean
nothing. Scores are spread evenly over [0, 1) (a Weyl sequence of the image's pixel sum), so a
threshold t marks about 1 - t of a lake anomalous, which map-store benchmarks need; the map is
the image's grey level averaged over an 8 x 8 grid and upsampled: smooth, like the real
(blurred) maps, so writing and compressing it costs what a real map does (a map of raw
pixels compresses ~4x faster than a smooth one with Zarr's default zstd).

Parsing a checkpoint name is torch-free (a scan's driver plans without importing torch, ~3 s
on 2 cores); the module class is defined on first use (:func:`build_null_detector`).
"""

from __future__ import annotations

import functools
import re
from typing import Any, Mapping

from vip2scan.errors import InvalidSetting

NULL_NAME = re.compile(r"null(?::(\d+))?")
DEFAULT_NULL_SIZE = 224  # `null` alone: the tiny backbone's native size
# frac(pixel sum * golden ratio): an equidistributed sequence over integer sums.
GOLDEN = 0.6180339887498949
MAP_GRID = 8  # cells per side of the map's averaging grid


def null_image_size(checkpoint: str, overrides: Mapping[str, Any] | None = None) -> int | None:
    """The input size a ``null`` / ``null:<size>`` checkpoint name asks for (an ``image_size``
    override wins); None when ``checkpoint`` names something else."""
    match = NULL_NAME.fullmatch(checkpoint.strip())
    if match is None:
        return None
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    extra = sorted(set(overrides) - {"image_size"})
    if extra:
        raise InvalidSetting(extra[0], "the null detector has no backbone or weights: "
                                       f"{extra} do not apply")
    size = int(overrides.get("image_size") or match.group(1) or DEFAULT_NULL_SIZE)
    if size < 1:
        raise InvalidSetting("image_size", f"null detector image size must be positive, got {size}")
    return size


def null_model_id(image_size: int) -> str:
    """Not a content hash like real ids: a name no real model can have."""
    return f"null-{int(image_size)}"


def build_null_detector(image_size: int, device: Any = "cpu") -> Any:
    """A :class:`NullDetector` of ``image_size`` on ``device``, in eval mode."""
    return _null_detector_class()(image_size).to(device).eval()


@functools.cache
def _null_detector_class() -> type:
    import torch
    import torch.nn.functional as F
    from torch import nn

    from .contract import model_input

    class NullDetector(nn.Module):
        """Detector.forward's contract (uint8 [N, 3, S, S] in, float32 score [N] and map
        [N, S, S] in [0, 1] out, on this module's device) with no parameters."""

        amp = None  # never autocast: nothing to autocast

        def __init__(self, image_size: int):
            super().__init__()
            self.image_size = int(image_size)
            self.model_id = null_model_id(self.image_size)
            self.config = None  # no saved thresholds: a scan uses its own or 0.5
            # Carries the device through .to(), as Detector's normalisation buffers do.
            self.register_buffer("anchor", torch.zeros(()), persistent=False)

        @property
        def device(self) -> torch.device:
            return self.anchor.device

        def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            with torch.inference_mode():
                x = model_input(images, self.device)
                grey = x.sum(dim=1, dtype=torch.int32)  # [N, S, S], 0..765
                totals = grey.sum(dim=(1, 2), dtype=torch.int64).double()
                score = torch.frac(totals * GOLDEN).float()
                size = tuple(x.shape[-2:])
                cells = F.adaptive_avg_pool2d(grey[:, None].float().div_(765.0), MAP_GRID)
                amap = F.interpolate(cells, size=size, mode="bilinear", align_corners=False)[:, 0]
                return score, amap.clamp_(0.0, 1.0)

    NullDetector.__module__ = __name__  # pickles by name, through __getattr__ below
    return NullDetector


def __getattr__(name: str) -> Any:
    # PEP 562: `from vip2scan.model.null import NullDetector` defines the class (imports torch).
    if name == "NullDetector":
        return _null_detector_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
