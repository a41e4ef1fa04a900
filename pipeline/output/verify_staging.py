"""verify's staging checks: staging data older than the lock expiry (an abandoned run's
staging folder, half-written temp files), and ``--fix``, which removes it under OUT's lease."""

from __future__ import annotations

import datetime as dt
import os
import time
from dataclasses import dataclass

from ..run.lock import Lease, lease_expired, read_lease
from ..storage.location import Location
from .paths import (PLAN_FILE, PROBE, RUNS, SCORES, STAGING, TEMP_SUFFIXES, is_run_id,
                    maps_store_name, partition_date, record_name, run_id_of_score_file,
                    staging_dir, staging_file)
from .records import read_json
from .schema import STATUS_COMPLETE

DEFAULT_EXPIRY_S = 300.0  # ScanOptions.lock_ttl_s's default: a lease older than this is dead


@dataclass
class Leftover:
    run_id: str | None  # None: a temp file not tied to a run
    path: str  # relative to OUT
    age_s: float
    committed: bool


def seconds_since_written(loc: Location, rel: str, now: float) -> float:
    """Seconds since anything under ``rel`` (a file or a folder) was last written."""
    path = loc.fs_path(rel)
    newest = 0.0
    if loc.is_local:
        entries = [path] if os.path.isfile(path) else \
            [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs] or [path]
        for entry in entries:
            try:
                newest = max(newest, os.stat(entry, follow_symlinks=False).st_mtime)
            except OSError:
                continue
    else:
        loc.fs.invalidate_cache()
        for info in loc.fs.find(path, detail=True, withdirs=False).values():
            stamp = info.get("LastModified") or info.get("mtime") or info.get("last_modified")
            if isinstance(stamp, dt.datetime):
                stamp = stamp.timestamp()
            if isinstance(stamp, (int, float)):
                newest = max(newest, float(stamp))
    return now - newest if newest else float("inf")


def staging_leftovers(loc: Location, only: str | None,
                      expiry_s: float | None) -> list[Leftover]:
    """Staging folders and temp files older than the lock expiry (the live run's excluded)."""
    lease = read_lease(loc)
    live = lease.get("run_id") if lease and not lease_expired(lease) else None
    ttl = float(expiry_s if expiry_s is not None else
                (lease or {}).get("ttl_s") or DEFAULT_EXPIRY_S)
    now = time.time()
    found: list[Leftover] = []
    for rid in loc.ls_names(STAGING):
        if rid == live or only not in (None, rid):
            continue
        age = seconds_since_written(loc, staging_dir(rid), now)
        if age > ttl:
            committed = (read_json(loc, record_name(rid)) or {}).get("status") == STATUS_COMPLETE
            found.append(Leftover(rid, staging_dir(rid), age, committed))
    temp_dirs = [f"{SCORES}/{p}" for p in loc.ls_names(SCORES)] + [RUNS]
    for folder in temp_dirs:
        for name in loc.ls_names(folder):
            if name.endswith(TEMP_SUFFIXES) and \
                    (age := seconds_since_written(loc, f"{folder}/{name}", now)) > ttl:
                found.append(Leftover(None, f"{folder}/{name}", age, False))
    if only is None and loc.exists(PROBE) and (age := seconds_since_written(loc, PROBE, now)) > ttl:
        found.append(Leftover(None, PROBE, age, False))
    return found


def fix_staging(loc: Location, only: str | None, expiry_s: float | None) -> list[str]:
    """Remove abandoned staging data under OUT's lease; returns what was removed."""
    lease = Lease(loc, ttl_s=float(expiry_s or DEFAULT_EXPIRY_S))
    lease.acquire(wait=False)  # OutputLocked while a scan holds it: verify says so
    removed: list[str] = []
    try:
        for left in staging_leftovers(loc, only, expiry_s):
            rid = left.run_id
            if rid is not None and not left.committed and is_run_id(rid):
                # Outputs first and the staging folder last, so an interrupted fix leaves the
                # staging behind and the next verify still sees (and finishes) the leftover.
                scan_date = (read_json(loc, staging_file(rid, PLAN_FILE)) or {}).get("scan_date")
                for partition in loc.ls_names(SCORES):
                    if scan_date in (None, partition_date(partition)):
                        for name in loc.ls_names(SCORES, partition):
                            if run_id_of_score_file(name) is not None and name.startswith(f"{rid}-"):
                                loc.remove(SCORES, partition, name)
                                removed.append(f"{SCORES}/{partition}/{name}")
                if loc.exists(maps_store_name(rid)):
                    loc.remove(maps_store_name(rid), recursive=True)
                    removed.append(maps_store_name(rid))
            if rid is None or is_run_id(rid):
                loc.remove(left.path, recursive=not left.path.endswith(TEMP_SUFFIXES))
                removed.append(left.path)
    finally:
        lease.release()
    return removed
