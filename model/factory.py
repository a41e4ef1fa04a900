"""The one factory: a :class:`ModelSpec` -> a detector, and its facts without building it.

    spec = ModelSpec("s3://models/ckpt", image_size=336)    # checkpoint + config overrides
    detector = load_detector(spec, device="cuda", storage_options={...})
    facts = model_facts(spec, storage_options={...})        # id, input size, saved thresholds

Every caller that scores (the scan's inference actor, eval, the bench) builds through
:func:`load_detector`, so one spec gives one detector everywhere. Reserved checkpoint names are
resolved here and nowhere else:

- ``null`` / ``null:<size>``: the null detector (:mod:`vip2scan.model.null`), the real interface
  at almost no cost, for measuring the data plane;
- ``embedded``: the small backbone + head trained here on generated images and shipped in the
  package (:mod:`vip2scan.model.embedded`);
- anything else: our checkpoint directory or a released ``.pth`` file, through
  :meth:`vip2scan.model.detector.Detector.from_checkpoint` and the override rule in
  :mod:`vip2scan.model.checkpoint`.

This module imports no torch: a scan's driver learns the facts of a checkpoint directory from its
``config.json`` and weights header (:mod:`vip2scan.model.facts`) without loading the model.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from vip2scan.errors import InvalidSetting
from vip2scan.settings import one_of, text, whole

# Autocast on CUDA: "auto" is bf16 on CUDA and float32 elsewhere (Detector._autocast).
AMP_MODES = ("auto", "bf16", "fp16", "off")
MAX_IMAGE_SIZE = 4096


@dataclass(frozen=True)
class ModelSpec:
    """Which detector to score with: a checkpoint and overrides of its saved config.

    ``checkpoint``: our checkpoint directory, a training run's epoch, a released ``.pth`` or a
    reserved name (``embedded``, ``null[:<size>]``); None until a scan is given one. ``backbone``, ``weights``
    and ``image_size`` override the saved config (unset: the checkpoint's); ``amp`` is the
    precision on CUDA.
    """

    checkpoint: str | None = None
    backbone: str | None = None
    weights: str | None = None
    image_size: int | None = None
    amp: str = "auto"

    def __post_init__(self) -> None:
        text("checkpoint", self.checkpoint)
        text("backbone", self.backbone)
        text("weights", self.weights)
        object.__setattr__(self, "image_size",
                           whole("image_size", self.image_size, 1, MAX_IMAGE_SIZE, optional=True))
        one_of("amp", self.amp, AMP_MODES)

    def with_checkpoint(self, checkpoint: str) -> "ModelSpec":
        return replace(self, checkpoint=checkpoint)

    def overrides(self) -> dict[str, Any]:
        """The config fields this spec overrides (unset ones keep the checkpoint's)."""
        chosen = {"backbone": self.backbone, "weights": self.weights, "image_size": self.image_size}
        return {k: v for k, v in chosen.items() if v is not None}

    def require_checkpoint(self) -> str:
        """The checkpoint to load: reserved names other than ``null`` resolved to locations."""
        from .embedded import EmbeddedMissing, embedded_checkpoint, is_embedded

        if not self.checkpoint:
            raise InvalidSetting("checkpoint", "no checkpoint given")
        if is_embedded(self.checkpoint):
            try:
                return embedded_checkpoint()
            except EmbeddedMissing as e:
                raise InvalidSetting("checkpoint", str(e)) from e
        return self.checkpoint


@dataclass(frozen=True)
class ModelFacts:
    """What a scan plans with: the model's id, input size and saved thresholds."""

    model_id: str
    image_size: int
    image_threshold: float | None = None  # calibrated values saved in the checkpoint
    pixel_threshold: float | None = None


def load_detector(spec: ModelSpec, device: Any = "cpu", storage_options: dict | None = None) -> Any:
    """The spec's detector on ``device``, in eval mode."""
    from .null import build_null_detector, null_image_size

    checkpoint = spec.require_checkpoint()
    null_size = null_image_size(checkpoint, spec.overrides())
    if null_size is not None:
        return build_null_detector(null_size, device)
    from .detector import Detector

    detector = Detector.from_checkpoint(checkpoint, device=device, storage_options=storage_options,
                                        overrides=spec.overrides(), amp=spec.amp)
    return detector.eval()


def model_facts(spec: ModelSpec, storage_options: dict | None = None) -> ModelFacts:
    """The facts of ``spec``'s model, cheaply where possible.

    A reserved name says it all; a checkpoint directory used as saved is read without torch (its
    config and weights header, checked against each other): the actors load and verify the
    weights. Anything else (a released .pth, config overrides that change the model id) is loaded
    in full here, which also proves that it loads.
    """
    from .facts import is_checkpoint_dir, read_checkpoint_facts
    from .null import null_image_size, null_model_id

    checkpoint = spec.require_checkpoint()
    null_size = null_image_size(checkpoint, spec.overrides())
    if null_size is not None:
        return ModelFacts(null_model_id(null_size), null_size)
    if not spec.overrides() and is_checkpoint_dir(checkpoint, storage_options):
        facts = read_checkpoint_facts(checkpoint, storage_options)
        return ModelFacts(facts.model_id, facts.image_size, facts.image_threshold,
                          facts.pixel_threshold)
    detector = load_detector(spec, "cpu", storage_options)
    config = detector.config
    facts = ModelFacts(str(detector.model_id), int(detector.image_size),
                       getattr(config, "image_threshold", None),
                       getattr(config, "pixel_threshold", None))
    del detector
    return facts
