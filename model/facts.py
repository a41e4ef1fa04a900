"""What a scan needs to know about a checkpoint, read without torch or the weights.

A scan's driver needs the model id, the input size and the calibrated thresholds before it
plans a run, and it should refuse a broken checkpoint before it takes the output lock. It
does not need the model: building the detector in the driver cost ~4 s of a 2-core
machine's start-up with the tiny backbone (imports of torch and open_clip), and for
ViT-L/14 it would download the 1.7 GB backbone to a head node that never runs it. So the
driver reads ``config.json`` and the safetensors *header* (a few KiB, fetched with one
range read on S3) and checks that they agree; the inference actors load and verify the
weights (and fail the run in one line if they cannot).

Only our checkpoint directories are read this way; released ``.pth`` files, OpenCLIP names
and config overrides still need the full load (:meth:`vip2scan.model.detector.Detector.from_checkpoint`).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

import fsspec

from .config import is_unit_number
from .errors import ModelError
from .files import join_uri

WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "config.json"
FORMAT_NAME = "vip2scan-checkpoint"
FORMAT_VERSION = 1

# A safetensors header holds one small JSON entry per tensor; ours has a few dozen. Anything
# near this bound is not one of our files, and reading it could exhaust the driver.
MAX_HEADER_BYTES = 16 * 1024 * 1024


class CheckpointFactsError(ModelError, ValueError):
    """A checkpoint directory whose config or weights header is missing, damaged or mixed."""


@dataclass(frozen=True)
class CheckpointFacts:
    model_id: str
    backbone: str
    image_size: int
    image_threshold: float | None
    pixel_threshold: float | None
    tensors: int  # entries in the weights header


def is_checkpoint_dir(uri: str, storage_options: dict | None = None) -> bool:
    fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    return fs.isdir(path) and fs.exists(join_uri(path, CONFIG_FILE))


def safetensors_header(uri: str, storage_options: dict | None = None) -> dict:
    """The JSON header of a safetensors file, checked against the file's size (no tensors read).

    Layout: 8-byte little-endian header length N, N bytes of JSON, then the tensor bytes;
    every tensor's ``data_offsets`` must lie inside those bytes and together cover them.
    """
    fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    size = int(fs.size(path))
    with fs.open(path, "rb", block_size=64 * 1024) as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise CheckpointFactsError(f"{uri}: too short for a safetensors file ({size} bytes)")
        (length,) = struct.unpack("<Q", prefix)
        if length > min(MAX_HEADER_BYTES, size - 8):
            raise CheckpointFactsError(f"{uri}: safetensors header length {length} does not fit "
                                       f"a {size}-byte file")
        raw = f.read(length)
    try:
        header = json.loads(raw)
    except ValueError as exc:
        raise CheckpointFactsError(f"{uri}: safetensors header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise CheckpointFactsError(f"{uri}: safetensors header is not a JSON object")
    data_bytes = size - 8 - length
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2
                and 0 <= offsets[0] <= offsets[1] <= data_bytes):
            raise CheckpointFactsError(f"{uri}: tensor {name!r} lies outside the file "
                                       "(truncated or damaged)")
        end = max(end, offsets[1])
    if end != data_bytes:
        raise CheckpointFactsError(f"{uri}: {data_bytes - end} bytes after the last tensor "
                                   "(damaged or not written by safetensors)")
    return header


def read_checkpoint_facts(uri: str, storage_options: dict | None = None) -> CheckpointFacts:
    """Model id, input size and thresholds of a checkpoint directory; raises
    :class:`CheckpointFactsError` when config.json and the weights header disagree or are
    damaged."""
    base = uri.rstrip("/")
    fs, path = fsspec.core.url_to_fs(join_uri(base, CONFIG_FILE), **(storage_options or {}))
    try:
        with fs.open(path, "rb") as f:
            meta = json.loads(f.read())
    except FileNotFoundError:
        raise CheckpointFactsError(f"{uri}: no {CONFIG_FILE}: not a vip2scan checkpoint") from None
    except ValueError as exc:
        raise CheckpointFactsError(f"{uri}: {CONFIG_FILE} is not JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise CheckpointFactsError(f"{uri}: {CONFIG_FILE} is not a {FORMAT_NAME} file")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointFactsError(f"{uri}: format version {meta['format_version']} is newer "
                                   "than this code")
    model_id = meta.get("model_id")
    if not isinstance(model_id, str) or not model_id:
        raise CheckpointFactsError(f"{uri}: {CONFIG_FILE} has no model_id")
    header = safetensors_header(join_uri(base, WEIGHTS_FILE), storage_options)
    saved = (header.get("__metadata__") or {})
    if saved.get("format") != FORMAT_NAME or saved.get("model_id") != model_id:
        raise CheckpointFactsError(
            f"{uri}: {WEIGHTS_FILE} belongs to model {saved.get('model_id')!r}, {CONFIG_FILE} "
            f"to {model_id!r} (files edited or mixed)")
    try:
        image_size = int(meta["image_size"])
        backbone = str(meta["backbone"])
    except (KeyError, TypeError, ValueError):
        raise CheckpointFactsError(f"{uri}: {CONFIG_FILE} lacks backbone / image_size") from None

    def threshold(name: str) -> float | None:
        value = meta.get(name)
        if value is not None and not is_unit_number(value):
            raise CheckpointFactsError(f"{uri}: {CONFIG_FILE} has {name} {value!r}, not a number "
                                       "from 0 to 1 (rerun `vip2scan eval --calibrate`)")
        return None if value is None else float(value)

    return CheckpointFacts(model_id=model_id, backbone=backbone, image_size=image_size,
                           image_threshold=threshold("image_threshold"),
                           pixel_threshold=threshold("pixel_threshold"),
                           tensors=sum(1 for k in header if k != "__metadata__"))
