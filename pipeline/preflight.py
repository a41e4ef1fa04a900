"""Fail-fast checks before a scan does any work: source, OUT and manifest reachable."""

from __future__ import annotations

import os

from .errors import ScanError, one_line
from .layout import PROBE, probe_name
from .storage import Location


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
    if not location.fs.exists(bucket):
        raise ScanError(f"{role} bucket {location.protocol}://{bucket} does not exist "
                        "(or is not visible with these credentials)")


def check_out(out: Location, writable: bool) -> None:
    probe = probe_name()
    try:
        if not out.is_local:
            _require_bucket(out, "output")
        if writable:
            out.write_bytes(b"probe", probe)
            out.remove(probe)
            out.remove(PROBE, recursive=True)
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
