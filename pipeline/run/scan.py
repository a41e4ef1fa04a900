"""scan(): one incremental, exactly-once scan of an image lake into OUT.

    fail-fast checks -> lease -> resume or (list -> diff -> plan) -> engine
    -> staging parts -> commit (score files, the run record last) -> release lease

An empty diff ends before Ray is touched. A crash at any point leaves either a committed run
or a staging area that the next scan of the same source + model resumes under the same run_id.
Each phase is one function below; attempt.py streams the work, staging.py keeps it durable,
publish.py commits it.
"""

from __future__ import annotations

import datetime as dt
import gc
import logging
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Any

from vip2scan.errors import InvalidSetting
from vip2scan.model.factory import ModelSpec, model_facts

from .. import faults
from ..engines import EngineChoice, choose_engine
from ..errors import ScanError, one_line, write_failure
from ..options import ScanOptions, TodoCallback
from ..output.alert_counts import alert_fields
from ..output.calibration import CalibrationError, resolve_thresholds
from ..output.paths import new_run_id, record_name, scores_partition
from ..output.schema import STATUS_COMPLETE
from ..output.snapshot import commit_snapshot
from ..selection.diff import iter_todo, list_and_diff
from ..specs import SelectionSpec
from ..storage.location import Location
from ..storage.redaction import redact
from .attempt import RunStats, ScanInterrupted, ray_log_path, run_attempt
from .holder import signals_unwind
from .lock import Lease, OutputLocked
from .plan import (ModelPlan, Plan, Remaining, create_plan, find_resumable, remaining_work,
                   resumes, staged_runs)
from .preflight import check_apart, check_manifest, check_out, check_source
from .publish import commit_parts, publish_record, publish_vanished, run_record

log = logging.getLogger(__name__)

__all__ = ["ScanOptions", "RunSummary", "PendingRun", "ScanError", "ScanInterrupted",
           "OutputLocked", "scan"]


@dataclass(frozen=True)
class PendingRun:
    """An interrupted run of this source and model: the next scan resumes it."""

    run_id: str
    staged: int  # rows already staged
    total: int  # rows of its plan


@dataclass
class RunSummary:
    """What a scan did. ``counts``: listed, new, changed, unchanged, vanished, scored, failed
    (+ retried, deferred, to_scan; skipped: no image suffix, excluded: by the globs; the
    selection is the listed objects). ``stage_s``: list_diff, read, decode, infer, write, commit,
    engine, actor_init, first_rows. read/decode/infer/write/actor_init are summed worker
    seconds (they overlap in a streaming run); list_diff, engine (the whole Ray Data run),
    first_rows (engine start to the first rows back) and commit are driver wall seconds."""

    run_id: str | None
    status: str  # 'complete' or 'dry_run'
    counts: dict[str, int]
    wall_s: float
    images_per_s: float
    out: str
    scores_uri: str | None
    maps_uri: str | None
    record_uri: str | None
    model_id: str = ""
    scan_date: str | None = None
    resumed: bool = False
    inference_started: bool = False
    stage_s: dict[str, float] = field(default_factory=dict)
    io: dict[str, Any] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    removed_runs: list[str] = field(default_factory=list)
    skipped_by_suffix: dict[str, int] = field(default_factory=dict)  # not scanned: no image suffix
    warnings: list[str] = field(default_factory=list)  # about the selection, e.g. it is empty
    # The image threshold the run scored with and where it came from (see calibration.py):
    # 'flag', 'labelled', 'label-free rate R [per GLOB]' or 'default (uncalibrated)'.
    image_threshold: float | None = None
    threshold_source: str = ""
    image_thresholds: dict[str, float] = field(default_factory=dict)  # URI prefix -> threshold
    threshold_note: str = ""  # why OUT's calibration did not apply, when it did not
    # The engine that scored this attempt ('' when nothing was left to score), why, and the
    # local file that got Ray's own notices (Ray engine only).
    engine: str = ""
    engine_reason: str = ""
    engine_log: str | None = None
    pending: PendingRun | None = None  # dry run: the interrupted run the next scan resumes
    # Anomaly-rate shifts against the groups' recent nights, and model/threshold changes
    # (pipeline/output/alerts.py); as in the run record.
    alerts: list[dict[str, Any]] = field(default_factory=list)
    alert_changes: list[dict[str, Any]] = field(default_factory=list)
    flagged: int | None = None  # ok rows at or above the image threshold (None: a dry run)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Target:
    """What a scan reads, where it writes, which model it scores with."""

    src: Location
    out: Location
    model_spec: ModelSpec
    manifest: Location | None  # the opened selection_spec.manifest, if any


def resolve_target(source: str, out: str, checkpoint: str, opts: ScanOptions) -> Target:
    manifest = opts.selection_spec.manifest
    return Target(src=Location.of(source, opts.storage_for("source"), opts.fs_wrapper),
                  out=Location.of(out, opts.storage_for("out"), opts.fs_wrapper),
                  model_spec=opts.model_spec.with_checkpoint(checkpoint),
                  manifest=Location.of(manifest, opts.storage_for("source"), opts.fs_wrapper)
                  if manifest else None)


def learn_model(model_spec: ModelSpec, opts: ScanOptions, out: Location | None = None) -> ModelPlan:
    """The model's id, input size and thresholds (with OUT's label-free calibration, if any);
    fails fast on a broken checkpoint or calibration file (before anything is locked or
    written)."""
    try:
        facts = model_facts(model_spec, opts.storage_for("checkpoint") or None)
    except InvalidSetting:
        raise
    except Exception as exc:  # noqa: BLE001
        raise ScanError(one_line(f"cannot load checkpoint {redact(model_spec.checkpoint or '')}",
                                 exc)) from None
    gc.collect()
    try:
        thresholds = resolve_thresholds(opts.threshold_spec, facts, out)
    except CalibrationError as exc:
        raise ScanError(str(exc)) from None
    return ModelPlan(facts.model_id, facts.image_size, thresholds)


def scan(source: str, out: str, checkpoint: str, options: ScanOptions | None = None) -> RunSummary:
    """Scan the images under ``source`` into ``out`` with the detector at ``checkpoint``.

    Only objects new or changed since the previous complete runs of this source and model are
    scanned (all with ``full``). Returns a :class:`RunSummary`; raises :class:`ScanError` (one
    line, no secrets) when it cannot start or finish, :class:`OutputLocked` when another scan
    holds OUT.
    """
    opts = options or ScanOptions()
    # SIGTERM unwinds like Ctrl-C from the first line to the last (one line, exit 143), so the
    # lease, once taken, is released on every way out but SIGKILL (and a SIGKILLed holder on
    # this host is taken over at once: lock.py).
    with signals_unwind():
        return scan_unwinding(source, out, checkpoint, opts)


def scan_unwinding(source: str, out: str, checkpoint: str, opts: ScanOptions) -> RunSummary:
    """:func:`scan`, with SIGTERM already turned into an exception."""
    stats = RunStats()
    target = resolve_target(source, out, checkpoint, opts)
    selection = opts.selection_spec
    # Fail fast: nothing is listed, locked or written before source, OUT and model are fine.
    check_apart(target.src, target.out, selection.object_filter(), target.manifest)
    if target.manifest is not None:
        check_manifest(target.manifest)
    else:
        check_source(target.src)
    check_out(target.out, writable=not opts.run_spec.dry_run)
    model = learn_model(target.model_spec, opts, target.out)
    if opts.run_spec.dry_run:
        return dry_run(target, selection, model, stats, opts.list_todo)
    lease = Lease(target.out, ttl_s=opts.run_spec.lock_ttl_s, heartbeat_s=opts.run_spec.heartbeat_s)
    try:
        lease.acquire(opts.run_spec.wait)
        faults.driver_point("lease")
        return scan_locked(target, opts, model, lease, stats)
    except OSError as exc:
        # A local OUT that is full, read-only or not ours to write: one line, exit 1.
        refused = write_failure(target.out.display(), exc)
        if refused is None:
            raise
        raise refused from exc
    finally:
        lease.release()


def dry_run(target: Target, selection: SelectionSpec, model: ModelPlan, stats: RunStats,
            list_todo: TodoCallback | None = None) -> RunSummary:
    """List and diff only: the counts a scan would start from (and, to ``list_todo``, the
    objects it would score)."""
    with tempfile.TemporaryDirectory(prefix="vip2scan-") as workdir, stats.timed("list_diff"):
        diff = list_and_diff(target.src, target.out, selection, target.manifest,
                             model.model_id, "dry-run", workdir)
        if list_todo is not None:
            for reason, image_uri in iter_todo(diff.todo_path):
                list_todo(reason, image_uri)
        pending = pending_run(target.out, target.src.uri, model.model_id, workdir)
    return RunSummary(pending=pending, run_id=None, status="dry_run",
                      counts={**diff.counts.as_dict(), "scored": 0, "failed": 0},
                      wall_s=stats.wall_s(), images_per_s=0.0, out=target.out.display(),
                      scores_uri=None, maps_uri=None, record_uri=None, model_id=model.model_id,
                      stage_s=stats.stage_s, skipped_by_suffix=diff.skipped_by_suffix,
                      warnings=diff.warnings,
                      image_threshold=model.thresholds.image_threshold,
                      threshold_source=model.thresholds.threshold_source,
                      image_thresholds=dict(model.thresholds.image_thresholds),
                      threshold_note=model.thresholds.note)


def pending_run(out: Location, source_uri: str, model_id: str, workdir: str) -> PendingRun | None:
    """The interrupted run the next scan of this source and model resumes, if any.

    Read-only, unlike plan.find_resumable (which also cleans up): a dry run changes nothing.
    """
    for run_id, plan, committed in staged_runs(out):
        if not committed and resumes(plan, source_uri, model_id):
            return PendingRun(run_id, remaining_work(out, plan, workdir).staged, plan.n_todo)
    return None


def scan_locked(target: Target, opts: ScanOptions, model: ModelPlan, lease: Lease,
                stats: RunStats) -> RunSummary:
    out = target.out
    notify = opts.notify or (lambda line: None)
    found: Plan | None = None  # the interrupted run this scan resumes
    plan: Plan | None = None
    remaining: Remaining | None = None
    with tempfile.TemporaryDirectory(prefix="vip2scan-") as workdir:
        try:
            with stats.timed("list_diff"):
                found, removed = find_resumable(out, target.src.uri, model.model_id)
                plan = resume_plan(out, found, lease) if found is not None else \
                    start_plan(target, opts, model, lease, workdir)
                remaining = remaining_work(out, plan, workdir)
            if found is not None:
                notify(f"resuming run {plan.run_id} ({remaining.staged} of {plan.n_todo} "
                       "rows already staged)")
            faults.driver_point("planned")
            engine, engine_log = None, None
            if remaining.left > 0:
                engine = choose_engine(opts.engine_spec.engine, remaining.left,
                                       opts.engine_spec.ray_address)
                engine_log = ray_log_path(plan.run_id) if engine.name == "ray" else None
                plan.config = {**plan.config, **engine_fields(opts, engine, engine_log)}
                stats.inference_started = True
                run_attempt(out, plan, remaining, target.model_spec, model.image_size, opts,
                            lease, stats, engine, engine_log)
            staged = all_staged(out, plan, workdir)
            summary = commit_run(target, plan, model, staged, opts, lease, stats)
        except KeyboardInterrupt as exc:
            plan = plan or found
            if plan is None or isinstance(exc, ScanInterrupted):
                raise  # no plan saved yet: the rerun starts afresh
            raise ScanInterrupted(plan.run_id, staged_so_far(out, plan, remaining, stats, workdir),
                                  plan.n_todo, exc) from None
    summary.resumed, summary.removed_runs = found is not None, removed
    if engine is not None:
        summary.engine, summary.engine_reason, summary.engine_log = engine.name, engine.reason, engine_log
    return summary


def engine_fields(opts: ScanOptions, engine: EngineChoice, log: str | None) -> dict[str, Any]:
    """What the run record's config says about the engine (``engine`` is the one that ran)."""
    return {"engine_requested": opts.engine_spec.engine, "engine": engine.name,
            "engine_reason": engine.reason, "engine_log": log}


def staged_so_far(out: Location, plan: Plan, remaining: Remaining | None, stats: RunStats,
                  workdir: str) -> int:
    """Rows of ``plan`` staged durably, for the line an interrupted scan prints."""
    if remaining is not None:
        return remaining.staged + stats.rows_staged
    try:  # interrupted while finding what was left: count the parts themselves
        return remaining_work(out, plan, workdir).staged
    except Exception:  # noqa: BLE001 - a count for a message, never a reason to fail
        return 0


def start_plan(target: Target, opts: ScanOptions, model: ModelPlan, lease: Lease,
               workdir: str) -> Plan:
    now = dt.datetime.now(dt.timezone.utc)
    run_id = new_run_id(now)
    lease.set_run_id(run_id)
    return create_plan(target.out, target.src, opts.selection_spec, target.manifest, model,
                       run_id=run_id, now=now, map_spec=opts.map_spec,
                       batch_size=opts.engine_spec.batch_size, config=opts.public(),
                       workdir=workdir)


def resume_plan(out: Location, plan: Plan, lease: Lease) -> Plan:
    lease.set_run_id(plan.run_id)  # fenced: only the lease's holder writes the run's plan
    plan.attempts += 1
    plan.save(out)
    log.info("resuming interrupted run %s (attempt %d)", plan.run_id, plan.attempts)
    return plan


def all_staged(out: Location, plan: Plan, workdir: str) -> Remaining:
    """What the run staged, once every object of its plan must be."""
    staged = remaining_work(out, plan, workdir)
    if staged.left:
        raise ScanError(f"run {plan.run_id} is incomplete ({staged.left} objects unscored); "
                        "rerun to resume it")
    if staged.staged_rows != staged.staged:
        # Should not happen (each row is staged once); if an engine ever re-delivers a
        # batch, the commit keeps the first row per object so the run stays exactly-once.
        log.warning("run %s staged %d duplicate rows; dropping them at commit",
                    plan.run_id, staged.staged_rows - staged.staged)
    return staged


def commit_run(target: Target, plan: Plan, model: ModelPlan, staged: Remaining,
               opts: ScanOptions, lease: Lease, stats: RunStats) -> RunSummary:
    """Compact the staged rows, then publish the run record (last) and summarise."""
    out = target.out
    with stats.timed("commit"):
        fence = lambda: lease.fence(f"committing run {plan.run_id}")  # noqa: E731
        result = commit_parts(out, plan.run_id, plan.scan_date, opts.run_spec.max_rows_per_file,
                              dedupe=staged.staged_rows != staged.staged, fence=fence)
        faults.driver_point("committed")
        counts = {**plan.counts, "scored": result.ok, "failed": result.failed}
        vanished_file = publish_vanished(out, plan.run_id) if counts.get("vanished", 0) else None
        latest = commit_snapshot(out, {"run_id": plan.run_id, "model_id": plan.model_id,
                                       "started_at": plan.started_at, "files": result.files,
                                       "vanished_file": vanished_file}, fence)
        alerting = alert_fields(out, {
            "run_id": plan.run_id, "source": plan.source, "model_id": plan.model_id,
            "scan_date": plan.scan_date, "files": result.files,
            "image_threshold": plan.thresholds.image_threshold,
            "image_thresholds": plan.thresholds.image_thresholds})
        wall_s = stats.wall_s()
        images_per_s = stats.rows_staged / wall_s if wall_s > 0 else 0.0
        finished = dt.datetime.now(dt.timezone.utc)
    lease.fence(f"publishing the record of run {plan.run_id}")  # the lease is re-read last
    publish_record(out, {**run_record(
        plan, out, result, checkpoint=target.model_spec.checkpoint or "",
        finished_at=finished.isoformat(),
        counts=counts, image_size=model.image_size, vanished_file=vanished_file, wall_s=wall_s,
        images_per_s=images_per_s, stage_s=stats.stage_s, io_counts=stats.io(),
        inference_started=stats.inference_started),
        "skipped_by_suffix": plan.skipped_by_suffix, "warnings": plan.warnings,
        "latest": latest, **alerting})
    return RunSummary(
        run_id=plan.run_id, status=STATUS_COMPLETE, counts=counts, wall_s=wall_s,
        images_per_s=images_per_s, out=out.display(),
        scores_uri=out.join(scores_partition(plan.scan_date)),
        maps_uri=out.join(plan.map_store) if plan.map_store else None,
        record_uri=out.join(record_name(plan.run_id)), model_id=plan.model_id,
        scan_date=plan.scan_date, flagged=result.flagged, inference_started=stats.inference_started,
        stage_s=dict(stats.stage_s), io=stats.io(), files=result.files,
        skipped_by_suffix=plan.skipped_by_suffix, warnings=plan.warnings,
        image_threshold=plan.thresholds.image_threshold,
        threshold_source=plan.thresholds.threshold_source,
        image_thresholds=dict(plan.thresholds.image_thresholds),
        threshold_note=model.thresholds.note
        if plan.thresholds.threshold_source == model.thresholds.threshold_source else "",
        alerts=alerting["alerts"], alert_changes=alerting["alert_changes"])
