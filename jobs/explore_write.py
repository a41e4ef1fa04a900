"""Incremental writes of the explorer's folder: a file is written only when its bytes changed,
files no longer referenced are deleted, and a build whose inputs did not change (same run
records, same options, same page code) writes nothing at all. What was written last time is
in ``manifest.json`` in the folder (content hashes, and the pictures' rendering info)."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Optional

MANIFEST = "manifest.json"
FORMAT = 2  # bump when the data files' layout changes: the next build rewrites them


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


def fingerprint(records: list[dict], options: dict[str, Any], code: bytes) -> str:
    """The inputs of a build: equal fingerprints, equal files."""
    text = json.dumps({"records": records, "options": options, "format": FORMAT}, sort_keys=True, default=str)
    return digest(text.encode() + code)


class FolderWriter:
    """Writes the explorer's files through ``fs`` under ``folder``, skipping unchanged ones."""

    def __init__(self, fs: Any, folder: str) -> None:
        self.fs, self.folder = fs, folder.rstrip("/")
        self.previous = self.read_manifest() or {}
        self.present = self.listing()
        # A folder without a manifest (written before manifests): its files are all stale.
        self.old_files: dict[str, str] = dict(self.previous.get("files") or {}) if self.previous \
            else {name: "" for name in self.present}
        self.files: dict[str, str] = {}
        self.written = self.deleted = 0

    def read_manifest(self) -> Optional[dict]:
        try:
            return json.loads(self.fs.cat(f"{self.folder}/{MANIFEST}"))
        except (FileNotFoundError, ValueError):
            return None

    def listing(self) -> set[str]:
        if not self.fs.exists(self.folder):
            return set()
        prefix = self.folder + "/"
        return {p.removeprefix(prefix) for p in self.fs.find(self.folder)}

    def unchanged(self, print_: str) -> bool:
        """True when the last build had these inputs and its files are all still there."""
        return (self.previous.get("fingerprint") == print_
                and set(self.old_files) <= self.present)

    def has(self, name: str) -> bool:
        """A file of the last build that is still there (a picture to reuse, not redo)."""
        return name in self.old_files and name in self.present

    def keep(self, name: str) -> None:
        self.files[name] = self.old_files[name]

    def write(self, name: str, data: bytes) -> None:
        sha = digest(data)
        self.files[name] = sha
        if self.old_files.get(name) == sha and name in self.present:
            return
        self.fs.makedirs(f"{self.folder}/{name}".rsplit("/", 1)[0], exist_ok=True)
        self.fs.pipe(f"{self.folder}/{name}", data)
        self.written += 1

    def finish(self, extra: dict[str, Any]) -> None:
        """Delete what the last build wrote and this one did not; record this build."""
        for name in sorted(set(self.old_files) - set(self.files)):
            if name in self.present:
                self.fs.rm(f"{self.folder}/{name}")
                self.deleted += 1
        manifest = {**extra, "files": dict(sorted(self.files.items()))}
        if manifest != self.previous:
            self.fs.pipe(f"{self.folder}/{MANIFEST}", json.dumps(manifest, indent=1, sort_keys=True).encode())
            self.written += 1
