"""The embedded checkpoint: a small CLIP-style backbone trained here on generated images,
with a ViP2 head trained on top, shipped inside the package.

    vip2scan scan SRC --out OUT --checkpoint embedded

Files (package data, under ``model/embedded/``)::

    backbone.safetensors   the OpenCLIP ``vip2-synth`` state dict, float16
    head/                  our checkpoint directory (weights.safetensors + config.json); its
                           config names the backbone as ``embedded:backbone.safetensors``
    provenance.json        how the files were made (command, seeds, data, metrics, SHA256s)

Only this module knows where the files are: the factory resolves the checkpoint name
``embedded`` and the backbone resolves ``embedded:<file>`` weight references through it.
The recipe that rebuilds the files is :mod:`vip2scan.model.pretraining.recipe`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

EMBEDDED_NAME = "embedded"
WEIGHTS_PREFIX = "embedded:"
EMBEDDED_DIR = Path(__file__).parent / "embedded"
BACKBONE_FILE = "backbone.safetensors"
HEAD_DIR = "head"
PROVENANCE_FILE = "provenance.json"
# The files whose SHA256 the provenance records, relative to EMBEDDED_DIR.
SHIPPED_FILES = (BACKBONE_FILE, f"{HEAD_DIR}/weights.safetensors", f"{HEAD_DIR}/config.json")


class EmbeddedMissing(FileNotFoundError):
    """The package was installed without the embedded checkpoint's files."""


def is_embedded(checkpoint: str) -> bool:
    return checkpoint.strip() == EMBEDDED_NAME


def embedded_dir(root: Path | None = None) -> Path:
    """The directory holding the shipped files (``root`` overrides it, for rebuilds and tests)."""
    return Path(root) if root is not None else EMBEDDED_DIR


def embedded_checkpoint(root: Path | None = None) -> str:
    """Path of the embedded head checkpoint directory; a clear error when it is not installed."""
    head = embedded_dir(root) / HEAD_DIR
    if not (head / "config.json").is_file():
        raise EmbeddedMissing(f"the embedded checkpoint is not installed ({head} has no config.json): "
                              "rebuild it with `vip2scan train-embedded` or reinstall vip2scan")
    return str(head)


def resolve_weights(weights: str | None) -> str | None:
    """``embedded:<file>`` -> the shipped file's path; anything else unchanged."""
    if weights is None or not weights.startswith(WEIGHTS_PREFIX):
        return weights
    name = weights[len(WEIGHTS_PREFIX):]
    if "/" in name or name.startswith("."):
        raise EmbeddedMissing(f"{weights!r} does not name a file of the embedded checkpoint")
    path = EMBEDDED_DIR / name
    if not path.is_file():
        raise EmbeddedMissing(f"the embedded backbone {path} is not installed: rebuild it with "
                              "`vip2scan train-embedded` or reinstall vip2scan")
    return str(path)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_hashes(root: Path | None = None) -> dict[str, str]:
    """SHA256 of each shipped file, as the provenance records them."""
    base = embedded_dir(root)
    return {name: sha256_file(base / name) for name in SHIPPED_FILES}


def read_provenance(root: Path | None = None) -> dict:
    path = embedded_dir(root) / PROVENANCE_FILE
    if not path.is_file():
        raise EmbeddedMissing(f"{path} is missing")
    return json.loads(path.read_text())
