"""Reading weight files safely: safetensors, ``weights_only`` torch files, and the one explicit
conversion of an OpenAI TorchScript archive.

Safety rule: nothing here unpickles arbitrary objects. Torch files go through
``torch.load(weights_only=True)``, which refuses any pickle that would need code execution
*before* running it; TorchScript archives (OpenAI CLIP ``.pt``) are refused with a pointer to
the explicit opt-in :func:`convert_openai_weights`.

A leaf (only the file helpers of files.py below it), so the backbone, the checkpoint
format and the CLI's ``convert`` can all use it.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import zipfile
from typing import Any

import fsspec
import torch

from .errors import ModelError
from .files import read_bytes, write_bytes

CONVERSION_HINT = (
    "convert it once with vip2scan.model.weights.convert_openai_weights(src, dst) "
    "(explicit opt-in: it loads the TorchScript archive with torch.jit.load) and point "
    "the tool at the resulting .safetensors file")


class CheckpointError(ModelError, ValueError):
    """A checkpoint or weight file that cannot be loaded safely or does not fit the model."""


# --------------------------------------------------------------------------- raw I/O
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
    sd = clean_state_dict(dict(sd))
    tensors = {k: v.detach().contiguous().clone() for k, v in sd.items() if isinstance(v, torch.Tensor)}
    out = st_save(tensors, metadata={"source": "openai-torchscript", "format": "open_clip"})
    write_bytes(dst, out, storage_options)
    return sha256_bytes(out)


def clean_state_dict(sd: dict) -> dict:
    """Unwrap common containers and prefixes so an OpenCLIP state dict matches the model."""
    for key in ("state_dict", "model"):
        if key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    # Metadata entries OpenAI's files carry; not parameters.
    for k in ("input_resolution", "context_length", "vocab_size"):
        sd.pop(k, None)
    # The causal mask is a non-persistent buffer in OpenCLIP; TorchScript exports carry it.
    return {k: v for k, v in sd.items() if not k.endswith("attn_mask")}
