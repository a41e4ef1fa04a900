"""The plan of a run: its frozen work list, saved so an interrupted run resumes identically.

A new run lists and diffs (diff.py), then saves its work list (``todo.parquet``, with
``map_index`` fixed per row), the URIs that vanished and its map store before ``plan.json``,
whose presence means the plan is complete. A rerun after a crash finds the plan and resumes
under the same run_id: the work left is the todo list minus the rows already staged. Staging
that cannot be resumed (another source or model, a crash before the plan was saved, a run
committed before its staging was removed) is cleaned up.

A run resumes only under the same source and model: a scan of a parent or sub-prefix finds
the interrupted run of another prefix, logs that it discards it and starts its own. Nothing is
lost but time: the discarded run committed nothing, so its objects are still new to the next
scan of either prefix (scan state is per object and model, see diff.py).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Iterator

from .. import faults
from ..output.calibration import Thresholds
from ..output.map_format import choose_maps_per_shard, unit_rows
from ..output.map_store import create_map_store
from ..output.paths import (PLAN_FILE, STAGING, TODO_FILE, VANISHED_FILE, is_run_id, is_scan_date,
                     maps_store_name, parts_dir, record_name, scores_partition, staging_dir,
                     staging_file)
from ..output.records import read_json, write_json
from ..output.schema import ALREADY_STAGED, SCORES_SCHEMA, STATUS_COMPLETE
from ..output.views import duckdb_connect, register_parquet, sql_str
from ..selection.diff import list_and_diff
from ..specs import MapSpec, SelectionSpec
from ..storage.location import Location
from .staging import staged_part_names

log = logging.getLogger(__name__)


@dataclass
class Plan:
    """The frozen work of one run, persisted so an interrupted run resumes identically.

    It embeds the specs it freezes: ``map_spec`` with ``maps_per_shard`` resolved (plans written
    before sharding have one object per map, so any unit lines up with them) and ``maps``
    'none' when the run has no store, and the resolved ``thresholds``.
    """

    run_id: str
    source: str
    model_id: str
    started_at: str
    scan_date: str
    counts: dict[str, int]
    n_todo: int
    map_store: str | None
    map_spec: MapSpec
    thresholds: Thresholds
    attempts: int = 1
    config: dict[str, Any] = field(default_factory=dict)
    skipped_by_suffix: dict[str, int] = field(default_factory=dict)  # not scanned: no image suffix
    warnings: list[str] = field(default_factory=list)  # about the selection, e.g. it is empty
    unit_rows: int = 0  # rows per work unit, whole shards (0: the attempt's batch size)

    def work_unit_rows(self, batch_size: int) -> int:
        return self.unit_rows or max(1, int(batch_size))

    @property
    def todo_file(self) -> str:
        return staging_file(self.run_id, TODO_FILE)

    def save(self, out: Location) -> None:
        write_json(out, asdict(self), staging_file(self.run_id, PLAN_FILE))

    @classmethod
    def load(cls, out: Location, run_id: str) -> "Plan | None":
        content = read_json(out, staging_file(run_id, PLAN_FILE))
        if not content:
            return None
        content = nested_plan(content)
        known = {f for f in cls.__dataclass_fields__}
        try:
            values = {k: v for k, v in content.items() if k in known}
            values["map_spec"] = MapSpec(**values["map_spec"])
            values["thresholds"] = Thresholds(**values["thresholds"])
            return cls(**values)
        except (TypeError, KeyError, ValueError):  # an incomplete or foreign plan: not resumable
            return None


# How plans saved before the specs named the map and threshold fields (flat), so a run
# interrupted across an upgrade still resumes.
_FLAT_MAP_FIELDS = {"maps_mode": "maps", "map_size": "map_size", "map_dtype": "map_dtype",
                    "maps_per_shard": "maps_per_shard"}
_FLAT_THRESHOLD_FIELDS = ("image_threshold", "pixel_threshold", "threshold_source",
                          "image_thresholds")


def nested_plan(content: dict[str, Any]) -> dict[str, Any]:
    """A saved plan with its map and threshold fields nested as the specs hold them."""
    if "map_spec" in content or "map_size" not in content:
        return content
    content = dict(content)
    content["map_spec"] = {new: content.pop(old) for old, new in _FLAT_MAP_FIELDS.items()
                           if old in content}
    content["thresholds"] = {name: content.pop(name) for name in _FLAT_THRESHOLD_FIELDS
                             if name in content}
    return content


@dataclass(frozen=True)
class ModelPlan:
    """What a run scores with: the model's id and input size, and the resolved thresholds."""

    model_id: str
    image_size: int
    thresholds: Thresholds


def create_plan(out: Location, src: Location, selection_spec: SelectionSpec,
                manifest: Location | None, model: ModelPlan, *, run_id: str, now: dt.datetime,
                map_spec: MapSpec, batch_size: int, config: dict[str, Any], workdir: str) -> Plan:
    """List, diff and save the plan of a new run (plan.json last: its presence means the
    todo list, the vanished list and the map store are all in place)."""
    diff = list_and_diff(src, out, selection_spec, manifest, model.model_id, run_id, workdir)
    upload_file(out, diff.todo_path, staging_file(run_id, TODO_FILE))
    upload_file(out, diff.vanished_path, staging_file(run_id, VANISHED_FILE))
    n_todo = diff.counts.to_scan
    per_shard = choose_maps_per_shard(map_spec.map_size, map_spec.map_dtype, n_todo,
                                      map_spec.maps_per_shard) if map_spec.enabled else 1
    frozen = replace(map_spec, maps_per_shard=per_shard)
    store = None
    if map_spec.enabled and n_todo > 0:
        store = create_map_store(out, run_id, n_todo, frozen, {
            "model_id": model.model_id, "image_size": model.image_size,
            "source": src.display()}, image_uris=planned_uris(diff.todo_path))
    plan = Plan(run_id=run_id, source=src.uri, model_id=model.model_id,
                started_at=now.isoformat(), scan_date=now.strftime("%Y-%m-%d"),
                counts=diff.counts.as_dict(), n_todo=n_todo, map_store=store, map_spec=frozen,
                thresholds=model.thresholds, config=config,
                skipped_by_suffix=diff.skipped_by_suffix, warnings=diff.warnings,
                unit_rows=unit_rows(per_shard, batch_size))
    faults.driver_point("plan")
    plan.save(out)
    return plan


def planned_uris(todo_path: str) -> list[str]:
    """The todo list's image_uri in map_index order (the map store's ``image_uri`` array)."""
    import pyarrow.parquet as pq

    todo = pq.read_table(todo_path, columns=["image_uri", "map_index"]).sort_by("map_index")
    return todo.column("image_uri").to_pylist()


def upload_file(out: Location, local_path: str, relpath: str) -> None:
    with open(local_path, "rb") as fh:
        out.write_bytes(fh.read(), relpath)


def remove_run_leftovers(out: Location, run_id: str, scan_date: str | None) -> None:
    """Delete an abandoned run's staging, Zarr store and any half-committed score files.

    Names come from OUT's own listing and plan files; anything that is not a plain run id or
    date is refused so that a doctored plan cannot point the deletion outside OUT.
    """
    if not is_run_id(run_id):
        return
    # Outputs first, the staging folder last: a cleanup interrupted halfway leaves the staging
    # behind, so the next scan (or verify --fix) still finds and finishes it.
    if is_scan_date(scan_date):
        partition = scores_partition(str(scan_date))
        for name in out.ls_names(partition):
            if name.startswith(f"{run_id}-"):
                out.remove(partition, name)
    out.remove(maps_store_name(run_id), recursive=True)
    out.remove(staging_dir(run_id), recursive=True)


def staged_runs(out: Location) -> Iterator[tuple[str, Plan | None, bool]]:
    """(run_id, its plan or None, committed?) for every run with a staging folder, read-only.

    The plan is None when missing or not written by us for that folder (never resumed)."""
    for run_id in out.ls_names(STAGING):
        plan = Plan.load(out, run_id)
        if plan is not None and (plan.run_id != run_id or not is_scan_date(plan.scan_date)):
            plan = None
        record = read_json(out, record_name(run_id))
        yield run_id, plan, bool(record and record.get("status") == STATUS_COMPLETE)


def resumes(plan: Plan | None, source_uri: str, model_id: str) -> bool:
    """Whether a scan of this source + model resumes ``plan``."""
    return plan is not None and plan.source == source_uri and plan.model_id == model_id


def find_resumable(out: Location, source_uri: str, model_id: str) -> tuple[Plan | None, list[str]]:
    """The interrupted run of this source + model to resume, and what was cleaned up.

    Staging of committed runs (crash after the record) and of runs that cannot be resumed
    (another source or model, or a crash before the plan was saved) is removed.
    """
    resumable: Plan | None = None
    removed: list[str] = []
    for run_id, plan, committed in staged_runs(out):
        if committed:
            out.remove(staging_dir(run_id), recursive=True)
            removed.append(run_id)
        elif resumes(plan, source_uri, model_id) and resumable is None:
            resumable = plan
        else:
            if plan:
                log.warning("discarding interrupted run %s of %s (model %s): %s; the objects "
                            "it staged count as new again", run_id, plan.source, plan.model_id,
                            "another run of it is resumed" if resumes(plan, source_uri, model_id)
                            else "this scan is of another source or model")
            raw = read_json(out, staging_file(run_id, PLAN_FILE)) or {}
            scan_date = plan.scan_date if plan else raw.get("scan_date")
            remove_run_leftovers(out, run_id, str(scan_date) if scan_date else None)
            removed.append(run_id)
    return resumable, removed


@dataclass(frozen=True)
class Remaining:
    """The work a run has left, from its todo list and the parts it has staged."""

    path: str  # local Parquet: the todo rows of units not yet staged in full, in map_index order
    left: int  # rows left
    staged: int  # distinct URIs staged
    staged_rows: int  # rows staged (more than ``staged`` only if an object was staged twice)


def remaining_work(out: Location, plan: Plan, workdir: str) -> Remaining:
    """The todo rows not yet staged, written to ``workdir``."""
    con = duckdb_connect(workdir)
    todo_local = os.path.join(workdir, TODO_FILE)
    if out.is_local:
        todo_local = out.fs_path(plan.todo_file)
    else:
        with open(todo_local, "wb") as fh:
            fh.write(out.read_bytes(plan.todo_file))
    parts = [f"{parts_dir(plan.run_id)}/{n}" for n in staged_part_names(out, plan.run_id)]
    register_parquet(con, "staged", out, parts, ["image_uri"], SCORES_SCHEMA)
    staged, staged_rows = (int(v) for v in con.execute(
        "SELECT count(DISTINCT image_uri), count(*) FROM staged").fetchone())
    remaining_path = os.path.join(workdir, "remaining.parquet")
    todo = f"read_parquet({sql_str(todo_local)})"
    units = int(plan.unit_rows or 0)
    if units > 1:
        # Work units are whole shards of the map store: a unit with any row left is redone
        # whole, so its shards are rewritten whole; its rows staged before are marked, and the
        # driver does not stage them twice.
        query = f"""
            SELECT t.*, s.image_uri IS NOT NULL AS {ALREADY_STAGED}
            FROM {todo} t LEFT JOIN (SELECT DISTINCT image_uri FROM staged) s USING (image_uri)
            WHERE t.map_index // {units} IN (
                SELECT map_index // {units} FROM {todo} ANTI JOIN staged USING (image_uri))
            ORDER BY map_index"""
    else:
        query = f"SELECT t.* FROM {todo} t ANTI JOIN staged s USING (image_uri) ORDER BY map_index"
    con.execute(f"COPY ({query}) TO {sql_str(remaining_path)} (FORMAT parquet, ROW_GROUP_SIZE 4096)")
    restaged = f" WHERE NOT {ALREADY_STAGED}" if units > 1 else ""
    left = int(con.execute(f"SELECT count(*) FROM read_parquet({sql_str(remaining_path)}){restaged}"
                           ).fetchone()[0])
    con.close()
    return Remaining(remaining_path, left, staged, staged_rows)
