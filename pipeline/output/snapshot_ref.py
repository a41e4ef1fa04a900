"""Which ``latest`` snapshot readers use: the one the committed run records name.

A run's commit writes the snapshot (snapshot.py) and names it in its record's ``latest`` field;
the record is written last, so a snapshot is visible exactly when a committed record names it.
Readers (the diff, the ``latest`` view, verify) take the highest generation named by any
committed record, provided it covers every committed run: a run committed by a version
without snapshots (or before the first one) is covered only if a later rebuild listed it in
``legacy_runs``; otherwise readers fall back to the window over all runs and the next commit
rebuilds the snapshot. Kept apart from snapshot.py so that views.py can read snapshots
without importing the code that builds them (which needs views.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from .paths import safe_relative_path
from .schema import SCORES_SCHEMA

# A snapshot row: a scores row, its run's scan_date, and two flags (rows with neither are
# not kept). ``state``: the newest event of (image_uri, model_id) among that model's runs in
# run order is this row, not a vanished list (what the diff compares a listing against).
# ``shown``: the row the ``latest`` view shows for image_uri (newest of any model by
# scanned_at, unless a run started since found the object gone).
SNAPSHOT_SCHEMA = (SCORES_SCHEMA.append(pa.field("scan_date", pa.date32()))
                   .append(pa.field("state", pa.bool_()))
                   .append(pa.field("shown", pa.bool_())))
VIEW_COLUMNS = [*SCORES_SCHEMA.names, "scan_date"]  # what ``latest`` shows, as before


@dataclass(frozen=True)
class Snapshot:
    """A committed snapshot, as a run record's ``latest`` field describes it."""

    dir: str  # latest/<run_id of the run that built it>
    files: tuple[str, ...]  # relative to OUT, in image_uri order
    rows: int
    generation: int  # one more than the newest snapshot when it was built
    last_run: tuple[str, str]  # (started_at, run_id) of the newest run it includes
    max_scanned_at: str | None  # the newest scanned_at among the rows it was built from
    legacy_runs: tuple[str, ...] = ()  # included runs whose records name no snapshot
    built: str = ""  # 'incremental' or 'rebuilt'
    build_s: float = 0.0

    def to_record(self) -> dict[str, Any]:
        return {"dir": self.dir, "files": list(self.files), "rows": self.rows,
                "generation": self.generation, "last_started_at": self.last_run[0],
                "last_run_id": self.last_run[1], "max_scanned_at": self.max_scanned_at,
                "legacy_runs": list(self.legacy_runs), "built": self.built,
                "build_s": self.build_s}

    @staticmethod
    def from_record(value: Any) -> "Snapshot | None":
        """The snapshot a record's ``latest`` field names; None if absent or malformed."""
        if not isinstance(value, dict):
            return None
        try:
            files = tuple(safe_relative_path(f) for f in value["files"])
            return Snapshot(dir=safe_relative_path(value["dir"]), files=files,
                            rows=int(value["rows"]), generation=int(value["generation"]),
                            last_run=(str(value["last_started_at"]), str(value["last_run_id"])),
                            max_scanned_at=value.get("max_scanned_at"),
                            legacy_runs=tuple(str(r) for r in value.get("legacy_runs") or ()),
                            built=str(value.get("built") or ""),
                            build_s=float(value.get("build_s") or 0.0))
        except (KeyError, TypeError, ValueError):
            return None


def named_snapshots(records: list[dict[str, Any]]) -> list[Snapshot]:
    return [s for s in (Snapshot.from_record(r.get("latest")) for r in records) if s is not None]


def current_snapshot(records: list[dict[str, Any]]) -> Snapshot | None:
    """The snapshot readers use, given the committed records; None when there is none or it
    does not cover every committed run (readers then window over all runs)."""
    named = named_snapshots(records)
    if not named:
        return None
    best = max(named, key=lambda s: (s.generation, s.last_run))
    legacy = {r.get("run_id") for r in records if Snapshot.from_record(r.get("latest")) is None}
    return best if legacy <= set(best.legacy_runs) else None
