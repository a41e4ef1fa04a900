"""Checkpoint and weight-file I/O: our directory format, released ViP2-CLIP ``.pth`` files,
and safe loading of backbone state dicts from local paths or fsspec URIs.

Safety rule: nothing here unpickles arbitrary objects. Torch files go through
``torch.load(weights_only=True)``, which refuses any pickle that would need code
execution *before* running it; TorchScript archives (OpenAI CLIP ``.pt``) are refused
with a pointer to the explicit opt-in :func:`convert_openai_weights`.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import pickle
import warnings
import zipfile
from typing import TYPE_CHECKING, Any

import fsspec
import torch

# The file layout is defined with the torch-free reader a scan's driver uses.
from .checkpoint_facts import (CONFIG_FILE, FORMAT_NAME, FORMAT_VERSION, WEIGHTS_FILE,  # noqa: F401
                               is_checkpoint_dir)

if TYPE_CHECKING:
    from .config import DetectorConfig
    from .detector import Detector

log = logging.getLogger(__name__)

CONVERSION_HINT = (
    "convert it once with vip2scan.model.checkpoint.convert_openai_weights(src, dst) "
    "(explicit opt-in: it loads the TorchScript archive with torch.jit.load) and point "
    "the tool at the resulting .safetensors file")


class CheckpointError(ValueError):
    """A checkpoint or weight file that cannot be loaded safely or does not fit the model."""


# --------------------------------------------------------------------------- raw I/O
def read_bytes(uri: str, storage_options: dict | None = None) -> bytes:
    with fsspec.open(uri, "rb", **(storage_options or {})) as f:
        return f.read()


def write_bytes(uri: str, data: bytes, storage_options: dict | None = None) -> None:
    with fsspec.open(uri, "wb", **(storage_options or {})) as f:
        f.write(data)


def sha256_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def sha256_uri(uri: str, storage_options: dict | None = None) -> str:
    h = hashlib.sha256()
    with fsspec.open(uri, "rb", **(storage_options or {})) as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def sniff_format(data: bytes) -> str:
    """'safetensors' | 'torchscript' | 'torch' (zip or legacy pickle) | 'unknown'."""
    if data[:4] == b"PK\x03\x04":
        try:
            names = zipfile.ZipFile(io.BytesIO(data)).namelist()
        except zipfile.BadZipFile:
            return "unknown"
        # TorchScript archives carry compiled code and a constants table; plain torch.save does not.
        if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
            return "torchscript"
        return "torch"
    if len(data) >= 10 and data[8:9] == b"{":
        n = int.from_bytes(data[:8], "little")
        if 0 < n <= len(data) - 8:
            return "safetensors"
    if data[:1] == b"\x80":  # pickle protocol marker: legacy torch.save
        return "torch"
    return "unknown"


def safe_torch_load(data: bytes, what: str = "file") -> Any:
    """torch.load with weights_only=True; pickles that need code execution are refused unrun."""
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"refused to load {what}: it is a pickle that needs code execution to unpickle "
            f"(only tensors and plain containers are allowed; nothing was executed). Details: {e}") from e
    except RuntimeError as e:
        if "TorchScript" in str(e) or "torchscript" in str(e):
            raise CheckpointError(f"{what} is a TorchScript archive; {CONVERSION_HINT}") from e
        raise


def load_state_dict_bytes(data: bytes, what: str = "file") -> dict[str, torch.Tensor]:
    fmt = sniff_format(data)
    if fmt == "torchscript":
        raise CheckpointError(f"{what} is a TorchScript archive (e.g. an OpenAI CLIP .pt) and is not "
                              f"loaded by default; {CONVERSION_HINT}")
    if fmt == "safetensors":
        from safetensors.torch import load as st_load

        return st_load(data)
    if fmt == "torch":
        obj = safe_torch_load(data, what)
        if not isinstance(obj, dict):
            raise CheckpointError(f"{what} does not hold a state dict (got {type(obj).__name__})")
        return obj
    raise CheckpointError(f"{what}: unrecognised format (expected safetensors or a torch state dict)")


def load_state_dict_file(uri: str, storage_options: dict | None = None) -> tuple[dict, str]:
    """A state dict from a path/URI (safetensors or weights_only torch file) plus its sha256 digest."""
    data = read_bytes(uri, storage_options)
    return load_state_dict_bytes(data, what=repr(uri)), sha256_bytes(data)


# ------------------------------------------------------------------- conversion
def convert_openai_weights(src: str, dst: str, storage_options: dict | None = None) -> str:
    """Opt-in conversion of an OpenAI CLIP TorchScript ``.pt`` into an OpenCLIP safetensors file.

    This is the one place that calls ``torch.jit.load``; only use it on files you trust.
    OpenAI's parameter names already equal OpenCLIP's ``CLIP`` names; we strip a
    ``module.`` prefix and the metadata entries. Returns the digest of the written file.
    """
    from safetensors.torch import save as st_save

    data = read_bytes(src, storage_options)
    fmt = sniff_format(data)
    if fmt == "torchscript":
        sd = torch.jit.load(io.BytesIO(data), map_location="cpu").state_dict()
    else:  # already a state dict: convert the container only
        sd = load_state_dict_bytes(data, what=repr(src))
    from .backbone import _clean_state_dict

    sd = _clean_state_dict(dict(sd))
    tensors = {k: v.detach().contiguous().clone() for k, v in sd.items() if isinstance(v, torch.Tensor)}
    out = st_save(tensors, metadata={"source": "openai-torchscript", "format": "open_clip"})
    write_bytes(dst, out, storage_options)
    return sha256_bytes(out)


# --------------------------------------------------------------- our dir format
def _join(uri: str, name: str) -> str:
    return uri.rstrip("/") + "/" + name


def head_state_dict(detector: "Detector") -> dict[str, torch.Tensor]:
    """ICA + FGP tensors (parameters and buffers), keyed 'ica.*' / 'fgp.*', on CPU, contiguous."""
    out: dict[str, torch.Tensor] = {}
    for prefix, mod in (("ica", detector.ica), ("fgp", detector.fgp)):
        for k, v in mod.state_dict().items():
            out[f"{prefix}.{k}"] = v.detach().to("cpu").contiguous()
    return out


def compute_model_id(config: "DetectorConfig", head: dict[str, torch.Tensor]) -> str:
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


def save_checkpoint(detector: "Detector", uri: str, storage_options: dict | None = None) -> str:
    """Write ``uri/weights.safetensors`` then ``uri/config.json`` (last, so a complete dir has both)."""
    from safetensors.torch import save as st_save

    fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    fs.makedirs(path, exist_ok=True)
    head = head_state_dict(detector)
    model_id = compute_model_id(detector.config, head)
    with fs.open(_join(path, WEIGHTS_FILE), "wb") as f:
        f.write(st_save(head, metadata={"format": FORMAT_NAME, "model_id": model_id}))
    meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "model_id": model_id,
            **detector.config.to_dict()}
    with fs.open(_join(path, CONFIG_FILE), "wb") as f:
        f.write(json.dumps(meta, indent=2, sort_keys=True).encode())
    return model_id


def load_checkpoint(uri: str, device: str | torch.device = "cpu", storage_options: dict | None = None,
                    config: "DetectorConfig | None" = None, overrides: dict | None = None) -> "Detector":
    """Our checkpoint dir, or a released ViP2-CLIP ``.pth``.

    ``config``: for a released file, the backbone etc. (n_ctx/n_cls come from the file); for
    our dir, a complete replacement of the saved config (None fields re-derived).
    ``overrides``: config fields to change on load, e.g. ``{"weights": "/local/copy.safetensors"}``
    (the recorded digest is still checked) or ``{"score_variant": "paper"}``.
    The saved model_id is verified only when neither is given.
    """
    from safetensors.torch import load as st_load

    from .config import DetectorConfig
    from .detector import Detector

    if not is_checkpoint_dir(uri, storage_options):
        fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
        if fs.isdir(path):
            raise CheckpointError(f"{uri!r} is a directory without {CONFIG_FILE}: not a vip2scan checkpoint")
        if overrides:
            config = (config or released_default_config()).replace(**overrides)
        return load_released_pth(uri, config=config, device=device, storage_options=storage_options)

    meta = json.loads(read_bytes(_join(uri, CONFIG_FILE), storage_options))
    if meta.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{uri!r}: config.json is not a {FORMAT_NAME} file")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(f"{uri!r}: format version {meta['format_version']} is newer than this code")
    saved_id = meta.get("model_id")
    cfg = DetectorConfig.from_dict(meta)
    if config is not None:
        cfg = config
    if overrides:  # e.g. a local copy of the backbone weights
        cfg = DetectorConfig.from_dict({**cfg.to_dict(), **overrides})
    det = Detector.from_config(cfg, device="cpu", storage_options=storage_options, init_head=False)
    head = st_load(read_bytes(_join(uri, WEIGHTS_FILE), storage_options))
    _load_head(det, {k[4:]: v for k, v in head.items() if k.startswith("ica.")},
               {k[4:]: v for k, v in head.items() if k.startswith("fgp.")}, where=uri,
               unused=[k for k in head if not k.startswith(("ica.", "fgp."))])
    det.refresh_model_id()
    if saved_id and not overrides and config is None and det.model_id != saved_id:
        raise CheckpointError(f"{uri!r}: model_id {det.model_id} does not match the saved {saved_id} "
                              "(files edited or mixed)")
    return det.to(device)


# ----------------------------------------------------------- released .pth files
# Keys the reference saved but never uses.
_IGNORED_RELEASED = ("prompt_temp_l1", "patch_selecter")


def _load_head(det: "Detector", ica_sd: dict, fgp_sd: dict, where: str, unused: list[str] = ()) -> None:
    """Copy tensors into the head, refusing missing keys and shape mismatches (clear errors)."""
    unused = list(unused)
    for mod, sd, group in ((det.ica, ica_sd, "prompt_learner"), (det.fgp, fgp_sd, "Zero_try")):
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


def released_default_config() -> "DetectorConfig":
    """What the released checkpoints were trained with (needs OpenAI ViT-L/14-336 weights)."""
    from .config import DetectorConfig

    return DetectorConfig(backbone="ViT-L-14-336-quickgelu", weights="openai", image_size=518)


def load_released_pth(uri: str, config: "DetectorConfig | None" = None, device: str | torch.device = "cpu",
                      storage_options: dict | None = None) -> "Detector":
    """Load a released ViP2-CLIP ``.pth`` (top-level ``prompt_learner`` and ``Zero_try``).

    n_ctx and n_cls are read from the tensors; the backbone comes from ``config``
    (default: ViT-L-14-336-quickgelu with OpenAI weights at 518 px).
    """
    from .detector import Detector

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
    ica_sd, fgp_sd = dict(obj["prompt_learner"]), dict(obj["Zero_try"])
    other = [k for k in obj if k not in ("prompt_learner", "Zero_try")]
    for k in ("ctx_pos", "cls_ctx"):
        if k not in ica_sd:
            raise CheckpointError(f"{uri!r}: missing key(s) in prompt_learner: ['{k}']")
    cfg = config or released_default_config()
    n_ctx = int(ica_sd["ctx_pos"].shape[-2]) if ica_sd["ctx_pos"].dim() >= 2 else 1
    n_cls = int(ica_sd["cls_ctx"].shape[-2]) if ica_sd["cls_ctx"].dim() >= 2 else 1
    cfg = cfg.replace(n_ctx=n_ctx, n_cls=n_cls)
    det = Detector.from_config(cfg, device="cpu", storage_options=storage_options, init_head=False)
    # Unused entries the reference saved: ignored, with a warning.
    for k in list(fgp_sd):
        if k.split(".")[0] in _IGNORED_RELEASED:
            other.append(f"Zero_try.{k}")
            fgp_sd.pop(k)
    _load_head(det, ica_sd, fgp_sd, where=repr(uri), unused=other)
    det.refresh_model_id()
    return det.to(device)
