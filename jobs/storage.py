"""The ``--storage-option`` flag and whole-object reads and writes by URI, shared by the commands.

A command parses its flags with :func:`vip2scan.jobs.config.storage_options_from_flags` and reads
or writes single objects (an image for a thumbnail, a PNG, a query result) through these helpers,
so that storage options reach remote URIs and never a local path.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from vip2scan.model.files import is_uri

StorageOption = Annotated[
    Optional[list[str]],
    typer.Option("--storage-option", "-s", metavar="KEY=VALUE",
                 help="fsspec option for the URIs this command reads and writes, "
                      "e.g. endpoint_url=http://127.0.0.1:9000 (repeatable)."),
]


def options_for(uri: str, storage_options: dict) -> dict:
    """Storage options apply to remote URIs; local files take none."""
    return storage_options if is_uri(uri) and not uri.startswith("file://") else {}


def read_object(uri: str, storage_options: dict) -> Optional[bytes]:
    """The object's bytes; None when it is gone."""
    import fsspec

    try:
        with fsspec.open(uri, "rb", **options_for(uri, storage_options)) as f:
            return f.read()
    except FileNotFoundError:
        return None


def write_object(data: bytes, to: str, storage_options: dict) -> None:
    """Write a whole object (path or URI)."""
    import fsspec

    with fsspec.open(to, "wb", **options_for(to, storage_options)) as f:
        f.write(data)
