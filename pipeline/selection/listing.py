"""Listing: stream an object-store prefix (or a --manifest) into a Parquet manifest.

The manifest has one row per image object: ``image_uri``, ``size_bytes``, ``etag`` (nullable),
``mtime`` (nullable, timestamp[us, UTC]). Listing pages are written to Parquet as they arrive,
so the driver never holds the lake: memory is bounded by one page (S3) or one directory (local).
An explicit listing (``--manifest``) is read by manifest.py, a batch at a time.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from vip2scan.errors import InvalidSetting

from .. import faults
from ..output.schema import MANIFEST_SCHEMA, utc_timestamp
from ..storage.location import Location

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

PAGE_ROWS = 10_000


@dataclass(frozen=True)
class ObjectFilter:
    """Which keys are images to scan: include/exclude globs, then the suffix.

    Globs match the key relative to the source prefix (``line1/day02/img.png``), ignoring case
    like the suffixes do (``*.jpg`` keeps ``IMG_0001.JPG``); ``*`` also matches ``/``, so
    ``line1/*.png`` keeps ``line1/day02/img.png`` too. An object is kept when it matches any
    include glob (or there are none), matches no exclude glob and has one of the suffixes.
    """

    suffixes: tuple[str, ...] = IMAGE_SUFFIXES
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def verdict(self, relative_key: str) -> str:
        """'keep', 'excluded' (by the globs) or 'skipped' (selected, but not an image suffix)."""
        lowered = relative_key.lower()
        if self.include and not any(fnmatch.fnmatchcase(lowered, g.lower()) for g in self.include):
            return "excluded"
        if any(fnmatch.fnmatchcase(lowered, g.lower()) for g in self.exclude):
            return "excluded"
        if not lowered.endswith(tuple(s.lower() for s in self.suffixes)):
            return "skipped"
        return "keep"

    def matches(self, relative_key: str) -> bool:
        return self.verdict(relative_key) == "keep"


NO_SUFFIX = "(none)"
OTHER_SUFFIXES = "(other)"
SLASH_KEY = "(key ends in /)"
MAX_SUFFIX_KEYS = 30  # a lake of odd names must not grow the tally (it goes into the record)


def suffix_key(relative_key: str) -> str:
    """The tally key of a skipped object: its lowercased suffix, or '(none)'."""
    suffix = os.path.splitext(relative_key.rsplit("/", 1)[-1])[1].lower()
    return suffix if 1 < len(suffix) <= 12 else (NO_SUFFIX if not suffix else OTHER_SUFFIXES)


@dataclass
class ListingTally:
    """What the listing saw besides the objects it kept: skipped suffixes, glob exclusions."""

    seen: int = 0  # objects found (directory markers aside)
    kept: int = 0
    excluded: int = 0  # dropped by --include/--exclude
    skipped: dict[str, int] = field(default_factory=dict)  # suffix -> objects not scanned

    def keep(self, object_filter: ObjectFilter, relative_key: str) -> bool:
        """Count the object and say whether it is kept."""
        self.seen += 1
        verdict = object_filter.verdict(relative_key)
        if verdict == "keep":
            self.kept += 1
        elif verdict == "excluded":
            self.excluded += 1
        else:
            self.count_skipped(suffix_key(relative_key))
        return verdict == "keep"

    def count_skipped(self, key: str, n: int = 1) -> None:
        """Count ``n`` skipped objects of one tally key; past MAX_SUFFIX_KEYS keys, a key not
        seen yet counts as '(other)' (so keys are admitted in order of first appearance)."""
        if key not in self.skipped and len(self.skipped) >= MAX_SUFFIX_KEYS:
            key = OTHER_SUFFIXES
        self.skipped[key] = self.skipped.get(key, 0) + n

    def add_batch(self, kept: int, excluded: int, skipped: Mapping[str, int]) -> None:
        """Count a batch judged at once (keyfilter.key_verdicts); ``skipped`` in the order
        its keys first appeared."""
        self.kept += kept
        self.excluded += excluded
        self.seen += kept + excluded + sum(skipped.values())
        for key, n in skipped.items():
            self.count_skipped(key, n)

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())


class ManifestWriter:
    """Buffers manifest rows and writes them to a local Parquet file page by page."""

    def __init__(self, path: str, page_rows: int = PAGE_ROWS):
        self.path = path
        self.page_rows = page_rows
        self.rows = 0
        self._buffer: dict[str, list] = {name: [] for name in MANIFEST_SCHEMA.names}
        # No dictionaries: URIs and etags are unique, and trying them costs a third of
        # writing a 10 M-row manifest.
        self._writer = pq.ParquetWriter(path, MANIFEST_SCHEMA, use_dictionary=False)

    def add(self, image_uri: str, size_bytes: int | None, etag: str | None, mtime: Any) -> None:
        faults.driver_point("listing")
        self._buffer["image_uri"].append(image_uri)
        self._buffer["size_bytes"].append(None if size_bytes is None else int(size_bytes))
        self._buffer["etag"].append(etag.strip('"') if isinstance(etag, str) and etag else None)
        self._buffer["mtime"].append(utc_timestamp(mtime))
        if len(self._buffer["image_uri"]) >= self.page_rows:
            self.flush()

    def write_table(self, table: pa.Table) -> None:
        """Write rows already in MANIFEST_SCHEMA (after any buffered ones)."""
        self.flush()
        if table.num_rows:
            self._writer.write_table(table)
            self.rows += table.num_rows

    def flush(self) -> None:
        n = len(self._buffer["image_uri"])
        if n:
            self._writer.write_table(pa.table(self._buffer, schema=MANIFEST_SCHEMA))
            self.rows += n
            self._buffer = {name: [] for name in MANIFEST_SCHEMA.names}

    def close(self) -> int:
        self.flush()
        self._writer.close()
        return self.rows

    def __enter__(self) -> "ManifestWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- listing a prefix

def _iter_local(root: str) -> Iterator[tuple[str, int, None, float]]:
    """(path, size, etag, mtime) for files under root. Directory symlinks are not followed,
    so a symlink loop cannot make the listing run forever."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            try:
                st = os.stat(path)  # follows a file symlink; a dangling one is skipped
            except OSError:
                continue
            if os.path.isfile(path):
                yield path, st.st_size, None, st.st_mtime


def _iter_s3(fs: Any, root: str, page_rows: int) -> Iterator[list[dict]]:
    """Pages of S3 object infos under root, streamed from ListObjectsV2 (no delimiter)."""
    from fsspec.asyn import sync

    bucket, _, key = root.partition("/")
    prefix = f"{key.rstrip('/')}/" if key else ""

    # s3fs exposes listing only as an async generator; drive it on the fs's own loop and
    # hand back pages in chunks so the caller writes them before the next chunk is fetched.
    agen = fs._iterdir(bucket, delimiter="", prefix=prefix)

    async def next_chunk() -> list[dict] | None:
        chunk: list[dict] = []
        try:
            while len(chunk) < page_rows:
                chunk.append(await agen.__anext__())
        except StopAsyncIteration:
            return chunk or None
        return chunk

    while True:
        chunk = sync(fs.loop, next_chunk)
        if chunk is None:
            break
        yield chunk
        if len(chunk) < page_rows:
            break


def list_prefix(source: Location, manifest_path: str, object_filter: ObjectFilter,
                page_rows: int = PAGE_ROWS) -> ListingTally:
    """Stream the objects under ``source`` that pass the filter into a Parquet manifest;
    the tally counts them and the ones left out."""
    root = source.path.rstrip("/")
    tally = ListingTally()
    with ManifestWriter(manifest_path, page_rows) as writer:
        if source.is_local:
            for path, size, etag, mtime in _iter_local(root):
                rel = os.path.relpath(path, root).replace(os.sep, "/")
                if tally.keep(object_filter, rel):
                    writer.add(f"file://{path}", size, etag, mtime)
        elif source.protocol == "s3" and hasattr(source.fs, "_iterdir"):
            for page in _iter_s3(source.fs, root, page_rows):
                for info in page:
                    name = info["name"]
                    if info.get("type") != "file":
                        continue
                    if name.endswith("/"):
                        # An empty one is a folder marker; one with bytes ('dir.png/') is an
                        # object no reader fetches by that name: shown as skipped, not lost.
                        if info.get("size"):
                            tally.seen += 1
                            tally.count_skipped(SLASH_KEY)
                        continue
                    rel = name[len(root):].lstrip("/")
                    if tally.keep(object_filter, rel):
                        writer.add(f"s3://{name}", info.get("size"), info.get("ETag"),
                                   info.get("LastModified"))
        else:
            # Generic fsspec: walk is per directory, so memory is bounded by one directory.
            for dirpath, _dirs, files in source.fs.walk(root, detail=True):
                for name, info in sorted(files.items()):
                    path = info.get("name") or f"{dirpath.rstrip('/')}/{name}"
                    rel = path[len(root):].lstrip("/")
                    if not tally.keep(object_filter, rel):
                        continue
                    etag = info.get("ETag") or info.get("etag") or info.get("md5Hash")
                    mtime = (info.get("LastModified") or info.get("mtime")
                             or info.get("updated") or info.get("last_modified"))
                    writer.add(source.uri_of(path), info.get("size"), etag, mtime)
    return tally


def extra_suffixes(extra: str | Sequence[str] | None = None) -> tuple[str, ...]:
    """Suffixes beyond the defaults, normalised (``.jfif,.gif``, ``gif`` or a list of them);
    each must be one Pillow can open (raises InvalidSetting naming one it cannot)."""
    values = [extra] if isinstance(extra, str) else list(extra or ())
    added: list[str] = []
    for value in values:
        for item in str(value).split(","):
            item = item.strip().lower()
            if not item:
                continue
            suffix = item if item.startswith(".") else f".{item}"
            check_pillow_opens(suffix)
            if suffix not in IMAGE_SUFFIXES and suffix not in added:
                added.append(suffix)
    return tuple(added)


# Formats Pillow registers but that are no use to a scan: stubs (they identify a file but
# need an external handler to read it) and PostScript, which Pillow renders by running
# Ghostscript, an interpreter we do not hand untrusted files to.
REFUSED_FORMATS = ("EPS", "PS")


def check_pillow_opens(suffix: str) -> None:
    """Raise InvalidSetting unless Pillow has a decoder for files named ``*<suffix>``."""
    from PIL import Image, ImageFile

    Image.init()
    fmt = Image.registered_extensions().get(suffix)
    opener = Image.OPEN.get(fmt)[0] if fmt in Image.OPEN else None
    stub = isinstance(opener, type) and issubclass(opener, ImageFile.StubImageFile)
    if fmt in REFUSED_FORMATS:
        raise InvalidSetting("suffixes", f"cannot scan {suffix!r} files: Pillow renders them "
                                         "with Ghostscript, which is not run on a lake's files")
    if opener is None or stub:
        raise InvalidSetting("suffixes", f"cannot scan {suffix!r} files: this Pillow has no "
                                         "decoder for them")
