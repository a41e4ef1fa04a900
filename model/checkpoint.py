"""Checkpoints: our directory format, released ViP2-CLIP ``.pth`` files, and the one rule for
changing a saved config on load.

    ckpt/config.json            format, model_id and the resolved DetectorConfig (written last)
    ckpt/weights.safetensors    the head only: 'ica.*' and 'fgp.*' tensors (the backbone is frozen
                                and comes from its OpenCLIP name and weight file)

:func:`read_checkpoint` turns either kind of file into a :class:`CheckpointContent` (the config to
build, the head tensors, what to verify); :meth:`vip2scan.model.detector.Detector.from_checkpoint`
assembles the detector from it. Every caller (the scan's inference actor, eval, convert, bench,
training resume) builds through that one method, so one checkpoint and one set of overrides
give one detector everywhere.

The override rule (:func:`apply_overrides`): fields named in the overrides win; the defaults that
depended on a changed field are derived again for its new value (top-k and sigma follow the
image size, blocks and FGP heads follow the backbone) unless the saved value differs from
what the default rule gave for the saved config, i.e. whoever trained the model pinned it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import fsspec
import torch

from .config import DetectorConfig, default_blocks, default_fgp_heads, default_sigma, default_top_k
from .errors import ConfigError
from .facts import CONFIG_FILE, FORMAT_NAME, FORMAT_VERSION, WEIGHTS_FILE, is_checkpoint_dir
from .files import join_uri, read_bytes
from .weights import CONVERSION_HINT, CheckpointError, safe_torch_load, sniff_format

# Keys the reference saved in its .pth but never uses.
IGNORED_RELEASED = ("prompt_temp_l1", "patch_selecter")
# Filled from the backbone by resolve_config; never user settings.
BACKBONE_FACTS = ("embed_dim", "depth", "patch_size")


@dataclass
class CheckpointContent:
    """What a detector is built from: its config and head tensors, and what to check after."""

    config: DetectorConfig
    ica: dict[str, torch.Tensor]
    fgp: dict[str, torch.Tensor]
    where: str
    unused: list[str] = field(default_factory=list)  # entries in the file the model does not use
    saved_model_id: str | None = None  # the built model must have this id (None: nothing to check)


def released_default_config() -> DetectorConfig:
    """What the released checkpoints were trained with (needs OpenAI ViT-L/14-336 weights)."""
    return DetectorConfig(backbone="ViT-L-14-336-quickgelu", weights="openai", image_size=518)


# ------------------------------------------------------------------------- the override rule
def _derived(saved: DetectorConfig, name: str) -> bool:
    """Whether ``saved.<name>`` is what the default rule gives for the saved config (or unset)."""
    value = getattr(saved, name)
    if value is None:
        return True
    if name == "top_k":
        return saved.patch_size is not None and value == default_top_k(saved.image_size, saved.patch_size)
    if name == "sigma":
        return abs(float(value) - default_sigma(saved.image_size)) < 1e-9
    if name == "blocks":
        return saved.depth is not None and tuple(value) == default_blocks(saved.depth)
    if name == "fgp_heads":
        return saved.embed_dim is not None and value == default_fgp_heads(saved.embed_dim)
    raise ValueError(f"{name} is not a derived field")


def apply_overrides(saved: DetectorConfig, overrides: Mapping[str, Any] | None) -> DetectorConfig:
    """``saved`` with ``overrides`` applied (None values ignored) and the dependent defaults
    derived again: see the module docstring. Returns an unresolved config when anything
    changed (resolve_config fills the rest when the detector is built)."""
    changes = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(DetectorConfig)})
    if unknown:
        raise ConfigError(f"unknown DetectorConfig fields in overrides: {unknown}")
    changed = {k for k, v in changes.items() if getattr(saved, k) != v}
    follow: set[str] = set()
    if "image_size" in changed:
        follow |= {"top_k", "sigma"}
    if "backbone" in changed:
        follow |= {"blocks", "fgp_heads", "top_k"}
        changes.update({name: None for name in BACKBONE_FACTS})
    for name in follow - set(changes):
        if _derived(saved, name):
            changes[name] = None
    return saved.replace(**changes) if changes else saved


# ------------------------------------------------------------------------------- model ids
def compute_model_id(config: DetectorConfig, head: Mapping[str, torch.Tensor]) -> str:
    """Stable id: sha256 over the resolved config and the head weights (16 hex chars).

    The weight *location* is replaced by its digest when one is known, so moving a
    backbone file (local -> S3) does not change the id; its content does.
    """
    d = config.to_dict()
    if d.get("weights_digest"):
        d["weights"] = None
    h = hashlib.sha256(json.dumps(d, sort_keys=True).encode())
    for k in sorted(head):
        t = head[k]
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------- our dir format
def save_checkpoint(config: DetectorConfig, head: Mapping[str, torch.Tensor], uri: str,
                    storage_options: dict | None = None) -> str:
    """Write ``uri/weights.safetensors`` then ``uri/config.json`` (last, so a complete dir has
    both). Returns the model_id."""
    from safetensors.torch import save as st_save

    fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    fs.makedirs(path, exist_ok=True)
    head = {k: v.detach().to("cpu").contiguous() for k, v in head.items()}
    model_id = compute_model_id(config, head)
    with fs.open(join_uri(path, WEIGHTS_FILE), "wb") as f:
        f.write(st_save(head, metadata={"format": FORMAT_NAME, "model_id": model_id}))
    meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "model_id": model_id,
            **config.to_dict()}
    with fs.open(join_uri(path, CONFIG_FILE), "wb") as f:
        f.write(json.dumps(meta, indent=2, sort_keys=True).encode())
    return model_id


def _saved_config(uri: str, storage_options: dict | None) -> tuple[DetectorConfig, str | None]:
    meta = json.loads(read_bytes(join_uri(uri, CONFIG_FILE), storage_options))
    if meta.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{uri!r}: config.json is not a {FORMAT_NAME} file")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(f"{uri!r}: format version {meta['format_version']} is newer than this code")
    return DetectorConfig.from_dict(meta), meta.get("model_id")


def _read_head(uri: str, storage_options: dict | None) -> dict[str, torch.Tensor]:
    from safetensors.torch import load as st_load

    return st_load(read_bytes(join_uri(uri, WEIGHTS_FILE), storage_options))


def read_checkpoint(uri: str, storage_options: dict | None = None, config: DetectorConfig | None = None,
                    overrides: Mapping[str, Any] | None = None) -> CheckpointContent:
    """Our checkpoint dir, or a released ViP2-CLIP ``.pth``, ready to build.

    ``config``: for a released file, the backbone etc. (n_ctx/n_cls come from the file); for
    our dir, a complete replacement of the saved config. ``overrides``: fields to change, by
    :func:`apply_overrides`. The saved model_id is checked only when neither is given.
    """
    if not is_checkpoint_dir(uri, storage_options):
        fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
        if fs.isdir(path):
            raise CheckpointError(f"{uri!r} is a directory without {CONFIG_FILE}: not a vip2scan checkpoint")
        return read_released_pth(uri, config=config, overrides=overrides, storage_options=storage_options)
    saved, saved_id = _saved_config(uri, storage_options)
    cfg = apply_overrides(config if config is not None else saved, overrides)
    head = _read_head(uri, storage_options)
    verify = config is None and not any(v is not None for v in (overrides or {}).values())
    return CheckpointContent(
        config=cfg, where=uri,
        ica={k[4:]: v for k, v in head.items() if k.startswith("ica.")},
        fgp={k[4:]: v for k, v in head.items() if k.startswith("fgp.")},
        unused=[k for k in head if not k.startswith(("ica.", "fgp."))],
        saved_model_id=saved_id if verify else None)


def save_thresholds(uri: str, image_threshold: float | None, pixel_threshold: float | None,
                    storage_options: dict | None = None) -> str:
    """Write calibrated thresholds into the checkpoint directory ``uri`` (its saved config, not
    any load-time overrides); returns the new model_id."""
    if not is_checkpoint_dir(uri, storage_options):
        raise CheckpointError(f"{uri} is not a vip2scan checkpoint directory: thresholds can only be "
                              "written into one (convert a released .pth with `vip2scan convert` first)")
    saved, _ = _saved_config(uri, storage_options)
    config = saved.replace(image_threshold=image_threshold, pixel_threshold=pixel_threshold)
    return save_checkpoint(config, _read_head(uri, storage_options), uri, storage_options)


# ---------------------------------------------------------------------- released .pth files
def read_released_pth(uri: str, config: DetectorConfig | None = None,
                      overrides: Mapping[str, Any] | None = None,
                      storage_options: dict | None = None) -> CheckpointContent:
    """A released ViP2-CLIP ``.pth`` (top-level ``prompt_learner`` and ``Zero_try``).

    n_ctx and n_cls are read from the tensors; the backbone comes from ``config``
    (default: ViT-L-14-336-quickgelu with OpenAI weights at 518 px) and ``overrides``.
    """
    data = read_bytes(uri, storage_options)
    fmt = sniff_format(data)
    if fmt == "torchscript":
        raise CheckpointError(f"{uri!r} is a TorchScript archive, not a ViP2-CLIP checkpoint; "
                              f"if it is OpenAI CLIP backbone weights, {CONVERSION_HINT}")
    if fmt == "safetensors":
        raise CheckpointError(f"{uri!r} is a bare safetensors file: expected a vip2scan checkpoint "
                              "directory or a released ViP2-CLIP .pth")
    if fmt != "torch":
        raise CheckpointError(f"{uri!r}: not a torch checkpoint")
    obj = safe_torch_load(data, what=repr(uri))
    if not isinstance(obj, dict) or "prompt_learner" not in obj or "Zero_try" not in obj:
        keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{uri!r}: expected top-level keys 'prompt_learner' and 'Zero_try', got {keys}")
    ica, fgp = dict(obj["prompt_learner"]), dict(obj["Zero_try"])
    unused = [k for k in obj if k not in ("prompt_learner", "Zero_try")]
    for k in ("ctx_pos", "cls_ctx"):
        if k not in ica:
            raise CheckpointError(f"{uri!r}: missing key(s) in prompt_learner: ['{k}']")
    n_ctx = int(ica["ctx_pos"].shape[-2]) if ica["ctx_pos"].dim() >= 2 else 1
    n_cls = int(ica["cls_ctx"].shape[-2]) if ica["cls_ctx"].dim() >= 2 else 1
    cfg = apply_overrides(config or released_default_config(), overrides).replace(n_ctx=n_ctx, n_cls=n_cls)
    for k in list(fgp):
        if k.split(".")[0] in IGNORED_RELEASED:
            unused.append(f"Zero_try.{k}")
            fgp.pop(k)
    return CheckpointContent(config=cfg, ica=ica, fgp=fgp, where=repr(uri), unused=unused)
