"""Every path under OUT, in one place.

    OUT/
      scores/scan_date=YYYY-MM-DD/<run_id>-<k>.parquet   committed rows (a few large files a run)
      maps/<run_id>.zarr                                  Zarr v3 group, array ``maps`` [N, R, R]
      runs/<run_id>.json                                  the run record, written last
      runs/<run_id>.vanished.parquet                      URIs that disappeared since earlier runs
      latest/<run_id>/part-<k>.parquet                    the `latest` snapshot the run built at its
                                                          commit (its record names it: snapshot.py)
      reports/<run_id>/                                   written by ``vip2scan report``
      _staging/<run_id>/plan.json, todo.parquet, vanished.parquet, work.parquet, parts/
                                                          a run in progress (resumable)
      _lock                                               the lease of the scan writing OUT
      _lock.guard                                         a local OUT's lease is changed under its flock
      calibration.json                                    label-free thresholds per model
                                                          (``vip2scan calibrate``; read by scans)
      _probe/                                             the writability check before a scan

A run is complete exactly when its record exists. Names read back from OUT (a record's files,
a row's map_store, a run id from a listing) are joined to OUT to read, write or delete, so they
are checked here before use: a doctored record must not steer a reader outside OUT.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import secrets
import time

from vip2scan.model.files import is_uri

from ..storage.redaction import redact

SCORES = "scores"
MAPS = "maps"
RUNS = "runs"
REPORTS = "reports"
LATEST = "latest"
STAGING = "_staging"
LOCK = "_lock"
LOCK_GUARD = "_lock.guard"
PROBE = "_probe"
CALIBRATION = "calibration.json"

MAPS_ARRAY = "maps"  # the array inside a map store
PLAN_FILE = "plan.json"
TODO_FILE = "todo.parquet"
VANISHED_FILE = "vanished.parquet"
WORK_FILE = "work.parquet"
PARTS = "parts"

# Half-written files: Location.write_bytes' temp names and commit's in-progress score files.
WRITE_TEMP_SUFFIX = ".tmp"
COMMIT_TEMP_SUFFIX = ".inprogress"
TEMP_SUFFIXES = (COMMIT_TEMP_SUFFIX, WRITE_TEMP_SUFFIX)

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_SCORE_FILE = re.compile(r"^(?P<run>.+)-\d{5}\.parquet$")
_PARTITION_PREFIX = "scan_date="
_RECORD_SUFFIX = ".json"
_STORE_SUFFIX = ".zarr"


# --------------------------------------------------------------------------- names

def new_run_id(now: dt.datetime | None = None) -> str:
    """Sortable and unique: 20250102T030405123Z-1a2b3c (UTC, milliseconds, random suffix)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    return f"{now:%Y%m%dT%H%M%S}{now.microsecond // 1000:03d}Z-{secrets.token_hex(3)}"


def is_run_id(name: object) -> bool:
    """A plain run id (no separators, no '..'): safe to join to OUT."""
    return isinstance(name, str) and bool(_RUN_ID.match(name)) and ".." not in name


def is_scan_date(value: object) -> bool:
    return isinstance(value, str) and bool(_DATE.match(value))


def record_file(run_id: str) -> str:
    """The record's name inside ``runs/``."""
    return f"{run_id}{_RECORD_SUFFIX}"


def record_name(run_id: str) -> str:
    return f"{RUNS}/{record_file(run_id)}"


def run_id_of_record(file_name: str) -> str | None:
    """``<run_id>`` of ``<run_id>.json`` in ``runs/``; None for any other file there."""
    return file_name[: -len(_RECORD_SUFFIX)] if file_name.endswith(_RECORD_SUFFIX) else None


def vanished_name(run_id: str) -> str:
    return f"{RUNS}/{run_id}.vanished.parquet"


def snapshot_dir(run_id: str) -> str:
    """Where the run's commit writes the ``latest`` snapshot (read once its record names it)."""
    return f"{LATEST}/{run_id}"


def snapshot_file_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def scores_partition(scan_date: str) -> str:
    return f"{SCORES}/{_PARTITION_PREFIX}{scan_date}"


def partition_date(partition: str) -> str:
    """``YYYY-MM-DD`` of a partition folder name ``scan_date=YYYY-MM-DD``."""
    return partition.removeprefix(_PARTITION_PREFIX)


def score_file_name(run_id: str, index: int) -> str:
    """The ``index``-th committed score file of a run (deterministic: a repeated commit
    overwrites instead of duplicating)."""
    return f"{run_id}-{index:05d}.parquet"


def run_id_of_score_file(name: str) -> str | None:
    match = _SCORE_FILE.match(name)
    return match["run"] if match and not name.startswith(".") else None


def is_run_score_file(name: str, run_id: str) -> bool:
    return name.startswith(f"{run_id}-") and name.endswith(".parquet")


def in_progress_name(name: str) -> str:
    """A dot-name pyarrow datasets ignore; the commit renames it to ``name`` when whole."""
    return f".{name}{COMMIT_TEMP_SUFFIX}"


def maps_store_name(run_id: str) -> str:
    """The map store path relative to OUT, as written in the ``map_store`` column."""
    return f"{MAPS}/{run_id}{_STORE_SUFFIX}"


def run_id_of_store(name: str) -> str:
    """The run id of a store folder name ``<run_id>.zarr`` in ``maps/``."""
    return name[: -len(_STORE_SUFFIX)] if name.endswith(_STORE_SUFFIX) else name


def staging_dir(run_id: str) -> str:
    return f"{STAGING}/{run_id}"


def staging_file(run_id: str, name: str) -> str:
    """A file of a run in progress: PLAN_FILE, TODO_FILE, VANISHED_FILE or WORK_FILE."""
    return f"{staging_dir(run_id)}/{name}"


def parts_dir(run_id: str) -> str:
    return f"{staging_dir(run_id)}/{PARTS}"


def part_name(seq: int, token: str) -> str:
    return f"part-{seq:06d}-{token}.parquet"


def report_dir(run_id: str) -> str:
    return f"{REPORTS}/{run_id}"


def probe_name() -> str:
    return f"{PROBE}/{os.getpid()}-{time.time_ns()}"


# --------------------------------------------------------------------------- safe names

def safe_relative_path(path: str) -> str:
    """``path`` if it is a plain relative path below a root, else ValueError.

    Names read back from OUT (a record's ``files``, a row's ``map_store``, a run id) are joined
    to OUT to open or delete things; a doctored record must not point outside OUT, so absolute
    paths, URIs, backslashes and '.'/'..' segments are refused.
    """
    text = str(path)
    segments = text.split("/")
    if (not text or text.startswith("/") or is_uri(text) or "\\" in text or "\x00" in text
            or any(seg in ("", ".", "..") for seg in segments)):
        raise ValueError(f"unsafe path below the output root: {redact(text)!r}")
    return text
