"""The model layer's errors: one root, :class:`ModelError`, under :class:`vip2scan.errors.Vip2scanError`.

What a user can get wrong about a model (its settings, a checkpoint or weight file, a dataset,
an image) raises a subclass; the CLI prints its one line and exits 1. Each also keeps
``ValueError`` as a base, so callers (and Python users) that catch ``ValueError`` still do.

This module imports nothing but the root, so that every module of model/ may use it: the
leaf ``weights.py`` and the torch-free decoder that the decode sandbox loads included.

    ModelError
      ConfigError            a model setting that does not fit (unknown backbone, sizes that do not divide)
      DatasetError           a dataset or manifest that cannot be read as labelled images
      CheckpointError        (weights.py) a checkpoint or weight file unsafe to load or not fitting the model
      CheckpointFactsError   (facts.py) a checkpoint directory whose config or header is missing or damaged
      DecodeError            (images.py) bytes that are not a usable image
"""

from __future__ import annotations

from vip2scan.errors import Vip2scanError


class ModelError(Vip2scanError):
    """Root of the model layer's errors; the message is one line."""


class ConfigError(ModelError, ValueError):
    """A model setting whose value does not fit: an unknown backbone, an image size that is not a
    multiple of the patch size, an override that does not apply to this model."""


class DatasetError(ModelError, ValueError):
    """A dataset, manifest or label that cannot be read as labelled images."""
