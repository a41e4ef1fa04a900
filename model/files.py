"""Small fsspec helpers shared by model/: tell a URI from a path, join a URI, read or write a whole file.

Torch-free and a leaf, so the torch-free readers (checkpoint facts, dataset readers, the
training-run layout) and the weight loaders use the same few lines.
"""

from __future__ import annotations

import fsspec


def is_uri(text: str) -> bool:
    """Whether ``text`` names its protocol (``s3://b/k``, ``gs://b``, ``file:///x``) rather than
    being a plain path (``/abs``, ``rel/path``, ``C:\\x``). The one test every layer uses; what a
    ``file://`` URI means (local, for most callers) is the caller's to decide."""
    return "://" in text


def join_uri(base: str, *parts: str) -> str:
    """``base/part/...`` for local paths and URIs alike (no normalisation beyond slashes)."""
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


def read_bytes(uri: str, storage_options: dict | None = None) -> bytes:
    with fsspec.open(uri, "rb", **(storage_options or {})) as f:
        return f.read()


def write_bytes(uri: str, data: bytes, storage_options: dict | None = None) -> None:
    """Write ``data`` to ``uri``, creating its parent folder where the filesystem has folders."""
    fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    parent = path.rsplit("/", 1)[0]
    if parent and parent != path:
        fs.makedirs(parent, exist_ok=True)
    with fs.open(path, "wb") as f:
        f.write(data)


def read_text(uri: str, storage_options: dict | None = None) -> str | None:
    """The file's text, or None when it does not exist."""
    fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    if not fs.exists(path):
        return None
    with fs.open(path, "rb") as f:
        return f.read().decode()
