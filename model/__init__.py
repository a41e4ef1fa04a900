"""ViP2-CLIP on an OpenCLIP backbone: torch only, no Ray, no CLI.

Public API::

    DetectorConfig, resolve_config          configs as data
    Detector                                 from_config / from_checkpoint / __call__ / save_checkpoint
    resize_to_model, to_batch                CPU preprocessing (uint8)
    make_optimizer                           optimiser groups (train_step.train_step: one step)
    load_released_pth, convert_openai_weights, CheckpointError
"""

import importlib
from typing import Any

# Names resolve lazily (PEP 562) so that light modules such as ``preprocess`` or
# ``synthetic`` can be imported by CPU decode workers without paying for torch and
# open_clip (seconds and hundreds of MB per worker process).
_EXPORTS = {
    "CheckpointError": "checkpoint",
    "convert_openai_weights": "checkpoint",
    "load_released_pth": "checkpoint",
    "DetectorConfig": "config",
    "resolve_config": "config",
    "Detector": "detector",
    "resize_to_model": "preprocess",
    "to_batch": "preprocess",
    # train_step itself is not re-exported: the submodule of the same name would shadow
    # it as soon as anything imports vip2scan.model.train_step.
    "make_optimizer": "train_step",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
