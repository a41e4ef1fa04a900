"""Run records: ``runs/<run_id>.json``, written last by the commit, read by everything else.

Only records with ``status == 'complete'`` count as runs: the diff of the next scan, the output
readers and verify all start from :func:`committed_records`. A record read back from OUT is
trusted only if it names itself and only paths inside OUT (:func:`trustworthy_record`).
"""

from __future__ import annotations

import json
from typing import Any

from ..storage.location import Location
from .paths import RUNS, is_run_id, record_file, run_id_of_record, safe_relative_path
from .schema import STATUS_COMPLETE


def read_json(out: Location, *parts: str) -> dict[str, Any] | None:
    """A JSON object under OUT; None when missing, unreadable or not an object."""
    try:
        content = json.loads(out.read_bytes(*parts))
    except (FileNotFoundError, ValueError):
        return None
    return content if isinstance(content, dict) else None


def write_json(out: Location, content: dict[str, Any], *parts: str) -> None:
    out.write_bytes(json.dumps(content, indent=2, sort_keys=True, default=str).encode(), *parts)


def trustworthy_record(record: dict[str, Any], file_name: str) -> bool:
    """A record that names itself (``runs/<run_id>.json``) and only paths inside OUT.

    Readers join a record's run_id, files, map store and snapshot files to OUT to read, write (reports) or
    delete; a doctored record must not steer them outside OUT, so such records are ignored
    (``verify`` reports them).
    """
    run_id = record.get("run_id")
    if not is_run_id(run_id) or file_name != record_file(run_id):
        return False
    latest = record.get("latest") if isinstance(record.get("latest"), dict) else {}
    try:
        for name in [*(record.get("files") or []), record.get("map_store"),
                     record.get("vanished_file"), *(latest.get("files") or [])]:
            if name is not None:
                safe_relative_path(name)
    except (ValueError, TypeError):
        return False
    return True


def list_records(out: Location) -> list[dict[str, Any]]:
    """All readable, trustworthy run records, oldest first."""
    records = []
    for name in out.ls_names(RUNS):
        if run_id_of_record(name) is not None:
            record = read_json(out, RUNS, name)
            if record and trustworthy_record(record, name):
                records.append(record)
    return sorted(records, key=lambda r: (str(r.get("started_at", "")), str(r["run_id"])))


def committed_records(out: Location) -> list[dict[str, Any]]:
    """The records of complete runs, oldest first."""
    return [r for r in list_records(out) if r.get("status") == STATUS_COMPLETE]
