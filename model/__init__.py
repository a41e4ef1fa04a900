"""ViP2-CLIP on an OpenCLIP backbone: torch only, no Ray, no CLI.

Public API::

    DetectorConfig, resolve_config          configs as data
    Detector                                 from_config / from_checkpoint / __call__ / save_checkpoint
    load_released_pth, convert_openai_weights
    ModelError, CheckpointError               the layer's error root (vip2scan.model.errors) and a subclass
    decode_image, resize_to_model, to_batch  the one decoder and CPU preprocessing (uint8)
    make_optimizer                           optimiser groups (training.step.train_step: one step)
"""

import importlib
from typing import Any

# Names resolve lazily (PEP 562) so that light modules such as ``images`` or
# ``data.synthetic`` can be imported by CPU decode workers without paying for torch and
# open_clip (seconds and hundreds of MB per worker process).
_EXPORTS = {
    "ModelError": "errors",
    "CheckpointError": "weights",
    "convert_openai_weights": "weights",
    "load_released_pth": "detector",
    "DetectorConfig": "config",
    "resolve_config": "config",
    "Detector": "detector",
    "decode_image": "images",
    "resize_to_model": "images",
    "to_batch": "images",
    "make_optimizer": "training.step",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
