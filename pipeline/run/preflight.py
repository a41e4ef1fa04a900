"""Fail-fast checks before a scan does any work: source, OUT and manifest reachable, and
kept apart (an OUT inside the lake would be scanned as images the next night)."""

from __future__ import annotations

import os

from ..errors import ScanError, one_line
from ..output.paths import MAPS, PROBE, REPORTS, RUNS, SCORES, STAGING, probe_name
from ..selection.listing import ObjectFilter
from ..storage.location import Location, fs_kwargs


def check_source(src: Location) -> None:
    try:
        if src.is_local:
            if not os.path.isdir(src.path):
                raise ScanError(f"source {src.display()} is not a directory")
            return
        _require_bucket(src, "source")
    except ScanError:
        raise
    except PermissionError as exc:
        raise ScanError(one_line(f"access denied to source {src.display()}", exc)) from None
    except Exception as exc:  # noqa: BLE001
        raise ScanError(one_line(f"cannot reach source {src.display()}", exc)) from None


def _require_bucket(location: Location, role: str) -> None:
    bucket = location.path.split("/", 1)[0]
    if not location.bucket_exists():  # raises for a store that is down (not "no bucket")
        raise ScanError(f"{role} bucket {location.protocol}://{bucket} does not exist "
                        "(or is not visible with these credentials)")


def missing_dirs(path: str) -> list[str]:
    """``path`` and those of its parents that do not exist, deepest first."""
    missing = []
    while path and not os.path.exists(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return missing


def check_out(out: Location, writable: bool) -> None:
    """OUT is reachable and, if ``writable``, takes a write. A local OUT the probe had to
    create is removed again: a scan that then fails (a bad checkpoint) leaves no empty OUT."""
    probe = probe_name()
    created = missing_dirs(out.path) if out.is_local and writable else []
    try:
        if not out.is_local:
            _require_bucket(out, "output")
        if writable:
            out.write_bytes(b"probe", probe)
            out.remove(probe)
            if out.is_local:
                for folder in [out.fs_path(PROBE), *created]:
                    try:
                        os.rmdir(folder)  # only once empty: other scans may be probing
                    except OSError:
                        break
    except ScanError:
        raise
    except Exception as exc:  # noqa: BLE001 - access denied or unreachable: either way, unusable
        raise ScanError(one_line(f"output {out.display()} is not writable", exc)) from None


def check_manifest(manifest: Location) -> None:
    try:
        if not manifest.fs.exists(manifest.path):
            raise ScanError(f"manifest {manifest.display()} does not exist")
    except ScanError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise ScanError(one_line(f"cannot read manifest {manifest.display()}", exc)) from None


# ------------------------------------------------------------------ SOURCE, OUT and manifest apart

# Folders the scan writes under OUT, and its root: a probe key with an image suffix in each
# stands for "anything OUT will ever hold" (report thumbnails and histograms are PNGs).
_OUT_FOLDERS = (REPORTS, SCORES, MAPS, RUNS, STAGING, "")


def _store_root(location: Location) -> tuple[str, str | None, str]:
    """(protocol, endpoint, path) that tells whether two locations can nest; local paths are
    resolved through symlinks, so a linked OUT inside the lake is still caught."""
    if location.is_local:
        return "file", None, os.path.realpath(location.path)
    kwargs = fs_kwargs(location.protocol, location.storage_options)
    endpoint = kwargs.get("endpoint_url") or (kwargs.get("client_kwargs") or {}).get("endpoint_url")
    return location.protocol, endpoint, location.path.rstrip("/")


def relative_inside(inner: Location, outer: Location) -> str | None:
    """``inner``'s path relative to ``outer`` ('' when they are the same), or None when
    ``inner`` does not lie inside ``outer`` (another store, another protocol, or apart)."""
    inner_root, outer_root = _store_root(inner), _store_root(outer)
    if inner_root[:2] != outer_root[:2]:
        return None
    path, base = inner_root[2], outer_root[2]
    if path == base:
        return ""
    prefix = base if base.endswith("/") else base + "/"
    return path[len(prefix):] if path.startswith(prefix) else None


def _out_probe_keys(relative_out: str, suffixes: tuple[str, ...]) -> list[str]:
    """Keys, relative to SOURCE, standing for the files OUT holds, one per folder and suffix."""
    return ["/".join(part for part in (relative_out, folder, f"vip2scan-output{suffix}") if part)
            for folder in _OUT_FOLDERS for suffix in suffixes]


def check_apart(src: Location, out: Location, object_filter: ObjectFilter,
                manifest: Location | None = None) -> None:
    """Refuse an OUT the scan would read back as images, a SOURCE inside OUT and a manifest
    inside OUT, in one line each.

    OUT inside SOURCE is accepted only when the selection (an ``--exclude`` glob, or
    ``--include`` globs) keeps every image-like key under OUT out of the scan: else the next
    night scores the tool's own report thumbnails as new images. A SOURCE or a manifest inside
    OUT is always refused: OUT is the tool's own to write, and an exclusion only narrows what
    is read from SOURCE. Pure path arithmetic: runs before anything is listed or written.
    """
    if manifest is not None and relative_inside(manifest, out) is not None:
        raise ScanError(f"manifest {manifest.display()} lies inside OUT {out.display()}: "
                        "keep the listing outside the tool's output")
    relative_out = relative_inside(out, src)
    if relative_out is None:
        if relative_inside(src, out) is not None:
            raise ScanError(f"source {src.display()} lies inside OUT {out.display()}: "
                            "point OUT somewhere apart from the lake")
        return
    kept = [key for key in _out_probe_keys(relative_out, object_filter.suffixes)
            if object_filter.matches(key)]
    if kept:
        remedy = (f"move OUT out of the lake or add --exclude '{relative_out}/*'" if relative_out
                  else "use an OUT apart from the lake")
        raise ScanError(f"OUT {out.display()} lies inside source {src.display()}: the scan would "
                        f"read its own outputs (e.g. {kept[0]}) as images; {remedy}")
