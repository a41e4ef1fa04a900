"""An explicit listing (``--manifest``: Parquet/CSV, e.g. an S3 Inventory export) into our
Parquet manifest, a batch at a time with Arrow compute.

A nightly manifest holds the whole lake (tens of millions of rows), so nothing here runs per
object in Python in the common case: URIs are resolved, made relative to the source, judged by
the selection (keyfilter.py) and converted to MANIFEST_SCHEMA as whole arrays. The rare entries
whose canonical form is not plain (``S3://``, ``file://a/../b``, non-ASCII keys, columns of odd
types) go through the per-object functions, so every row comes out as it always did.
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vip2scan.model.files import is_uri

from .. import faults
from ..errors import ScanError
from ..output.schema import MANIFEST_SCHEMA, utc_timestamp
from ..storage.location import Location, normalise_uri, split_protocol
from .keyfilter import EXCLUDED, KEEP, key_verdicts
from .listing import ListingTally, ManifestWriter, ObjectFilter

BATCH_ROWS = 65_536
UTC_US = MANIFEST_SCHEMA.field("mtime").type
# A lowercase scheme that normalise_uri keeps as it is ('S3://', 's3a://', 'file://' it rewrites).
_PLAIN_SCHEME = r"^[a-z][a-z0-9+.\-]*://"
_REWRITTEN_SCHEME = r"^(?:file|local|s3a)://"
# What os.path.abspath would rewrite in an absolute path: '//', '.' or '..' parts, a final '/'.
_NOT_ABSPATH = r"//|/\.\.?(?:/|$)|/$"


def _resolve_uri(value: str, source: Location) -> str:
    """Manifest entries may be absolute URIs, absolute paths, or keys relative to the source."""
    if is_uri(value) or os.path.isabs(value):
        return normalise_uri(value)
    return source.join(value)


def _manifest_batches(manifest: Location, batch_rows: int) -> Iterable[pa.RecordBatch]:
    import pyarrow.csv as pacsv
    import pyarrow.dataset as pads

    lowered = manifest.uri.lower()
    filesystem = manifest.pyarrow_filesystem()
    if lowered.endswith((".csv", ".csv.gz", ".tsv")):
        fmt: Any = pads.CsvFileFormat(
            parse_options=pacsv.ParseOptions(delimiter="\t" if lowered.endswith(".tsv") else ","),
            convert_options=pacsv.ConvertOptions(
                column_types={"image_uri": pa.string(), "etag": pa.string()}),
        )
    else:
        # Inventories come in row groups of a million rows or more: without pre-buffering,
        # read-ahead and threads only about one row group is decoded at a time (10 M rows:
        # 440 MiB peak instead of 790 MiB, for half a second more).
        fmt = pads.ParquetFileFormat(
            default_fragment_scan_options=pads.ParquetFragmentScanOptions(pre_buffer=False))
    dataset = pads.dataset(manifest.path, filesystem=filesystem, format=fmt)
    if "image_uri" not in dataset.schema.names:
        raise ValueError(f"manifest {manifest.display()} has no 'image_uri' column")
    columns = [c for c in MANIFEST_SCHEMA.names if c in dataset.schema.names]
    yield from dataset.to_batches(columns=columns, batch_size=batch_rows, batch_readahead=0,
                                  fragment_readahead=1, use_threads=False)


def _np(mask: pa.Array) -> np.ndarray:
    return mask.to_numpy(zero_copy_only=False)


def _patch(values: pa.Array, slow: np.ndarray, inputs: pa.Array,
           per_object: Callable[[Any], str]) -> pa.Array:
    """``values`` with the rows marked ``slow`` replaced by ``per_object`` of ``inputs``."""
    if not slow.any():
        return values
    fixed = [per_object(v) for v in inputs.filter(pa.array(slow)).to_pylist()]
    return pc.replace_with_mask(values, pa.array(slow), pa.array(fixed, pa.string()))


def _where(mask: np.ndarray, compute: Callable[[pa.Array], pa.Array], values: pa.Array
           ) -> np.ndarray:
    """A boolean test computed only on the rows of ``mask`` (False elsewhere)."""
    out = np.zeros(len(values), bool)
    if mask.all():
        out[:] = _np(compute(values))
    elif mask.any():
        out[mask] = _np(compute(values.filter(pa.array(mask))))
    return out


def resolve_uris(values: pa.Array, source: Location) -> pa.Array:
    """``_resolve_uri`` of each value (strings, no nulls, none empty)."""
    has_scheme = _np(pc.match_substring(values, "://"))
    absolute = _np(pc.starts_with(values, "/"))
    relative = ~has_scheme & ~absolute
    # An entry whose canonical form is itself: a plain URI, or a clean absolute file path.
    # Most entries start with the source's own canonical URI: their scheme is known plain.
    root = source.uri.rstrip("/") + "/"
    under = np.zeros(len(values), bool)
    if re.match(_PLAIN_SCHEME, root) and not re.match(_REWRITTEN_SCHEME, root):
        under = _np(pc.starts_with(values, root))
    plain = under & ~_np(pc.ends_with(values, "/"))
    plain |= _where(has_scheme & ~under, lambda v: pc.and_(
        pc.match_substring_regex(v, _PLAIN_SCHEME),
        pc.invert(pc.or_(pc.match_substring_regex(v, _REWRITTEN_SCHEME), pc.ends_with(v, "/")))),
        values)
    plain |= _where(has_scheme & ~plain, lambda v: pc.and_(
        pc.starts_with(v, "file:///"),
        pc.invert(pc.match_substring_regex(pc.utf8_slice_codeunits(v, 7), _NOT_ABSPATH))),
        values)
    plain_path = _where(absolute & ~has_scheme, lambda v: pc.invert(
        pc.match_substring_regex(v, _NOT_ABSPATH)), values)
    resolved = values
    if plain_path.any():
        resolved = pc.if_else(pa.array(plain_path),
                              pc.binary_join_element_wise("file://", values, ""), resolved)
    if relative.any():
        joined = pc.binary_join_element_wise(root, pc.utf8_rtrim(values, "/"), "")
        resolved = pc.if_else(pa.array(relative), joined, resolved)
    slow = ~(relative | plain | plain_path)
    return _patch(resolved, slow, values, lambda v: _resolve_uri(v, source))


def relative_keys(uris: pa.Array, root: str) -> pa.Array:
    """Each URI's key below ``root`` (ending in '/'), or for one outside it, its path without
    the protocol (what the selection has always judged for such entries)."""
    under = _np(pc.starts_with(uris, root))
    keys = pc.utf8_slice_codeunits(uris, len(root))
    if under.all():
        return keys
    keys = pc.if_else(pa.array(under), keys,
                      pc.replace_substring_regex(uris, "(?s)^.*?://", "", max_replacements=1))
    # Canonical URIs give what split_protocol gives; the rest (not expected: file paths are
    # already absolute) ask split_protocol itself.
    plain = _where(~under, lambda u: pc.and_(
        pc.match_substring_regex(u, _PLAIN_SCHEME),
        pc.invert(pc.match_substring_regex(u, r"^(?:file|local)://"))), uris)
    return _patch(keys, ~under & ~plain, uris, lambda u: split_protocol(u)[1])


def _uri_strings(column: pa.Array) -> pa.Array:
    """The image_uri column as strings, null where an entry is empty (and so skipped)."""
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type) or (
            pa.types.is_dictionary(column.type) and pa.types.is_string(column.type.value_type)):
        strings = column.cast(pa.string())
        return pc.if_else(pc.equal(strings, ""), pa.scalar(None, pa.string()), strings)
    return pa.array([str(v) if v else None for v in column.to_pylist()], pa.string())


def _sizes(column: pa.Array | None, n: int) -> pa.Array:
    if column is None or pa.types.is_null(column.type):
        return pa.nulls(n, pa.int64())
    if pa.types.is_integer(column.type):
        return column.cast(pa.int64())
    return pa.array([None if v is None else int(v) for v in column.to_pylist()], pa.int64())


def _etags(column: pa.Array | None, n: int) -> pa.Array:
    """Quotes stripped (S3 gives '"abc"'), '' as null."""
    if column is None or pa.types.is_null(column.type):
        return pa.nulls(n, pa.string())
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        strings = column.cast(pa.string())
        return pc.if_else(pc.equal(strings, ""), pa.scalar(None, pa.string()),
                          pc.utf8_trim(strings, '"'))
    return pa.array([s.strip('"') if s else None
                     for s in (None if v is None else str(v) for v in column.to_pylist())],
                    pa.string())


def _mtimes(column: pa.Array | None, n: int) -> pa.Array:
    if column is None or pa.types.is_null(column.type):
        return pa.nulls(n, UTC_US)
    if pa.types.is_timestamp(column.type):
        if column.type.unit != "ns":
            return column.cast(pa.timestamp("us", column.type.tz)).cast(UTC_US)
        # Nanoseconds floor to the microsecond, as pandas' Timestamps did on the per-row path.
        nanos = column.cast(pa.int64())
        micros = np.floor_divide(_np(nanos.fill_null(0)), 1000)
        return pa.array(micros, pa.int64(), mask=_np(nanos.is_null())).cast(UTC_US)
    return pa.array([utc_timestamp(v) for v in column.to_pylist()], UTC_US)


def _per_row_table(uris: pa.Array, columns: dict[str, pa.Array | None]) -> pa.Table:
    """The kept rows converted one by one, as the manifest always was: used when a column's
    values do not convert as a whole, so that the error raised is the per-row one."""
    n = len(uris)
    sizes, etags, mtimes = (columns[c].to_pylist() if columns[c] is not None else [None] * n
                            for c in ("size_bytes", "etag", "mtime"))
    buffer: dict[str, list] = {name: [] for name in MANIFEST_SCHEMA.names}
    for uri, size, etag, mtime in zip(uris.to_pylist(), sizes, etags, mtimes):
        etag = None if etag is None else str(etag)
        buffer["image_uri"].append(uri)
        buffer["size_bytes"].append(None if size is None else int(size))
        buffer["etag"].append(etag.strip('"') if etag else None)
        buffer["mtime"].append(utc_timestamp(mtime))
    return pa.table(buffer, schema=MANIFEST_SCHEMA)


def _kept_table(uris: pa.Array, columns: dict[str, pa.Array | None]) -> pa.Table:
    n = len(uris)
    try:
        return pa.table({"image_uri": uris, "size_bytes": _sizes(columns["size_bytes"], n),
                         "etag": _etags(columns["etag"], n),
                         "mtime": _mtimes(columns["mtime"], n)}, schema=MANIFEST_SCHEMA)
    except Exception:  # noqa: BLE001 - a bad value: raise what the per-row path raises
        return _per_row_table(uris, columns)


def _pass_listing_point(kept: int) -> None:
    """The fault point 'listing' once per kept object, as when rows were added one by one."""
    if os.environ.get(faults.KILL_DRIVER_AT_ENV, "").partition(":")[0] == "listing":
        for _ in range(kept):
            faults.driver_point("listing")


def check_scope(uris: pa.Array, source_root: str, out_root: str | None, any_source: bool) -> None:
    """Refuse entries inside OUT (the tool's own pictures would be scored) and, unless the
    manifest may span sources, entries outside SOURCE (a file:// entry in an S3 scan would be
    read from this machine's disk, and explore would copy it into OUT)."""
    if out_root is not None:
        inside = uris.filter(pc.starts_with(uris, out_root))
        if len(inside):
            raise ScanError(f"{len(inside)} manifest entr{'y lies' if len(inside) == 1 else 'ies lie'}"
                            f" inside OUT {out_root} (first: {inside[0].as_py()}): OUT holds the "
                            "tool's own outputs; drop them from the manifest")
    if not any_source:
        outside = uris.filter(pc.invert(pc.starts_with(uris, source_root)))
        if len(outside):
            raise ScanError(f"{len(outside)} manifest entr{'y lies' if len(outside) == 1 else 'ies lie'}"
                            f" outside SOURCE {source_root} (first: {outside[0].as_py()}): pass "
                            "--manifest-any-source to scan entries anywhere (OUT stays excluded)")


def read_manifest(manifest: Location, source: Location, manifest_path: str,
                  object_filter: ObjectFilter, batch_rows: int = BATCH_ROWS,
                  out: Location | None = None, any_source: bool = False) -> ListingTally:
    """Stream an explicit listing (Parquet/CSV with image_uri [+ size_bytes, etag, mtime])
    through the filter into our Parquet manifest. Entries may be absolute URIs, absolute
    paths or keys relative to the source; empty ones are ignored. Entries inside ``out``, and
    unless ``any_source`` entries outside ``source``, are refused (:func:`check_scope`)."""
    root = source.uri.rstrip("/") + "/"
    out_root = out.uri.rstrip("/") + "/" if out is not None else None
    tally = ListingTally()
    with ManifestWriter(manifest_path) as writer:
        for batch in _manifest_batches(manifest, batch_rows):
            raw = _uri_strings(batch.column("image_uri"))
            present = pc.is_valid(raw)
            if not pc.all(present).as_py():
                batch, raw = batch.filter(present), raw.filter(present)
            if not len(raw):
                continue
            uris = resolve_uris(raw, source)
            check_scope(uris, root, out_root, any_source)
            codes, skipped = key_verdicts(object_filter, relative_keys(uris, root))
            keep = codes == KEEP
            kept = int(keep.sum())
            tally.add_batch(kept, int((codes == EXCLUDED).sum()), skipped)
            if not kept:
                continue
            _pass_listing_point(kept)
            mask = pa.array(keep)
            columns = {name: batch.column(name).filter(mask) if name in batch.schema.names
                       else None for name in ("size_bytes", "etag", "mtime")}
            writer.write_table(_kept_table(uris.filter(mask), columns))
    pa.default_memory_pool().release_unused()  # the diff's DuckDB comes next, in this process
    return tally
