"""Where a training run keeps its checkpoints, and how a ``latest`` pointer is followed.

    OUT/epoch_NNN/      one checkpoint directory per epoch (config.json written last)
    OUT/latest          {"checkpoint": "epoch_NNN", "epoch": N}, written after the epoch
    OUT/best/           a copy of the best epoch by validation AUROC
    OUT/_ray/           Ray Train's own state

No torch here: a scan's CLI resolves ``--checkpoint OUT`` to the epoch ``latest`` names
without importing the model.
"""

from __future__ import annotations

import json

import fsspec

from ..facts import CONFIG_FILE, is_checkpoint_dir
from ..files import join_uri, read_text, write_bytes

LATEST_FILE = "latest"
BEST_DIR = "best"
RAY_DIR = "_ray"
TRAIN_STATE_FILE = "train_state.pt"
TRAIN_INFO_FILE = "train_info.json"


def epoch_dir_name(epoch: int) -> str:
    return f"epoch_{epoch:03d}"


def write_latest(out: str, epoch: int, storage_options: dict | None = None) -> None:
    """Point OUT/latest at epoch_NNN. Written after the epoch directory is complete."""
    pointer = {"checkpoint": epoch_dir_name(epoch), "epoch": epoch}
    write_bytes(join_uri(out, LATEST_FILE), (json.dumps(pointer) + "\n").encode(), storage_options)


def read_latest_epoch(out: str, storage_options: dict | None = None) -> int | None:
    text = read_text(join_uri(out, LATEST_FILE), storage_options)
    return int(json.loads(text)["epoch"]) if text else None


def resolve_checkpoint(uri: str, storage_options: dict | None = None) -> str:
    """A checkpoint dir as is; a training output root -> the epoch its ``latest`` names."""
    if is_checkpoint_dir(uri, storage_options):
        return uri
    text = read_text(join_uri(uri, LATEST_FILE), storage_options) if not uri.endswith(".pth") else None
    if text:
        return join_uri(uri, json.loads(text)["checkpoint"])
    return uri  # a released .pth, or let the loader say what is wrong


def copy_dir(src: str, dst: str, storage_options: dict | None = None) -> None:
    """Copy the files of one checkpoint dir (flat) to another, config.json last."""
    fs, src_path = fsspec.core.url_to_fs(src, **(storage_options or {}))
    _, dst_path = fsspec.core.url_to_fs(dst, **(storage_options or {}))
    fs.makedirs(dst_path, exist_ok=True)
    names = sorted((p.rsplit("/", 1)[-1] for p in fs.ls(src_path, detail=False)),
                   key=lambda n: n == CONFIG_FILE)  # a dir with config.json is complete
    for name in names:
        fs.pipe_file(join_uri(dst_path, name), fs.cat_file(join_uri(src_path, name)))
