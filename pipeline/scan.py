"""scan(): one incremental, exactly-once scan of an image lake into OUT.

    fail-fast checks -> lease -> resume or (list -> diff -> plan) -> engine
    -> staging parts -> commit (score files, the run record last) -> release lease

An empty diff ends before Ray is touched. A crash at any point leaves either a committed run
or a staging area that the next scan of the same source + model resumes under the same run_id.
Each phase is one function below; attempt.py streams the work, commit.py publishes it.
"""

from __future__ import annotations

import datetime as dt
import gc
import logging
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Any

from .attempt import ENGINES, RunStats, run_attempt
from .commit import commit_parts, publish_record, publish_vanished, run_record
from .diff import Selection, list_and_diff
from .errors import ScanError, one_line
from .layout import new_run_id, record_name, scores_partition
from .listing import ObjectFilter, suffix_list
from .lock import Lease, OutputLocked
from .options import ScanOptions
from .plan import ModelPlan, Plan, Remaining, create_plan, find_resumable, remaining_work
from .preflight import check_manifest, check_out, check_source
from .redaction import redact
from .schema import STATUS_COMPLETE
from .stages.infer import ModelSpec, model_facts, resolve_thresholds
from .storage import Location

log = logging.getLogger(__name__)

__all__ = ["ScanOptions", "RunSummary", "ScanError", "OutputLocked", "scan"]


@dataclass
class RunSummary:
    """What a scan did. ``counts``: listed, new, changed, unchanged, vanished, scored, failed
    (+ retried, deferred, to_scan). ``stage_s``: list_diff, read, decode, infer, write, commit,
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
    io: dict[str, int] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    removed_runs: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Target:
    """What a scan reads, where it writes, which model it scores with."""

    src: Location
    out: Location
    spec: ModelSpec
    selection: Selection


def resolve_target(source: str, out: str, checkpoint: str, opts: ScanOptions) -> Target:
    manifest = None
    if opts.manifest:
        manifest = Location.of(opts.manifest, opts.storage_for("source"), opts.fs_wrapper)
    selection = Selection(
        ObjectFilter(suffix_list(opts.suffixes), tuple(opts.include), tuple(opts.exclude)),
        manifest=manifest, full=opts.full, retry_errors=opts.retry_errors, limit=opts.limit)
    return Target(src=Location.of(source, opts.storage_for("source"), opts.fs_wrapper),
                  out=Location.of(out, opts.storage_for("out"), opts.fs_wrapper),
                  spec=ModelSpec(checkpoint, opts.storage_for("checkpoint"), opts.backbone,
                                 opts.weights, opts.image_size),
                  selection=selection)


def learn_model(spec: ModelSpec, opts: ScanOptions) -> ModelPlan:
    """The model's id, input size and thresholds; fails fast on a broken checkpoint (before
    anything is locked or written)."""
    try:
        facts = model_facts(spec)
    except Exception as exc:  # noqa: BLE001
        raise ScanError(one_line(f"cannot load checkpoint {redact(spec.checkpoint)}", exc)) from None
    gc.collect()
    image_t, pixel_t = resolve_thresholds(facts, opts.threshold, opts.pixel_threshold)
    return ModelPlan(facts.model_id, facts.image_size, image_t, pixel_t)


def scan(source: str, out: str, checkpoint: str, options: ScanOptions | None = None) -> RunSummary:
    """Scan the images under ``source`` into ``out`` with the detector at ``checkpoint``.

    Only objects new or changed since the previous complete runs of this source and model are
    scanned (all with ``full``). Returns a :class:`RunSummary`; raises :class:`ScanError` (one
    line, no secrets) when it cannot start or finish, :class:`OutputLocked` when another scan
    holds OUT.
    """
    opts = options or ScanOptions()
    if opts.engine not in ENGINES:
        raise ScanError(f"unknown engine {opts.engine!r}: expected 'ray' or 'local'")
    stats = RunStats()
    target = resolve_target(source, out, checkpoint, opts)
    # Fail fast: nothing is listed, locked or written before source, OUT and model are fine.
    if target.selection.manifest is not None:
        check_manifest(target.selection.manifest)
    else:
        check_source(target.src)
    check_out(target.out, writable=not opts.dry_run)
    model = learn_model(target.spec, opts)
    if opts.dry_run:
        return dry_run(target, model, stats)
    lease = Lease(target.out, ttl_s=opts.lock_ttl_s, heartbeat_s=opts.heartbeat_s)
    lease.acquire(opts.wait)
    try:
        return scan_locked(target, opts, model, lease, stats)
    finally:
        lease.release()


def dry_run(target: Target, model: ModelPlan, stats: RunStats) -> RunSummary:
    """List and diff only: the counts a scan would start from."""
    with tempfile.TemporaryDirectory(prefix="vip2scan-") as workdir, stats.timed("list_diff"):
        diff = list_and_diff(target.src, target.out, target.selection, model.model_id,
                             "dry-run", workdir)
    return RunSummary(run_id=None, status="dry_run",
                      counts={**diff.counts.as_dict(), "scored": 0, "failed": 0},
                      wall_s=stats.wall_s(), images_per_s=0.0, out=target.out.display(),
                      scores_uri=None, maps_uri=None, record_uri=None, model_id=model.model_id,
                      stage_s=stats.stage_s)


def scan_locked(target: Target, opts: ScanOptions, model: ModelPlan, lease: Lease,
                stats: RunStats) -> RunSummary:
    out = target.out
    with tempfile.TemporaryDirectory(prefix="vip2scan-") as workdir:
        with stats.timed("list_diff"):
            plan, removed = find_resumable(out, target.src.uri, model.model_id)
            resumed = plan is not None
            plan = resume_plan(out, plan, lease) if plan is not None else \
                start_plan(target, opts, model, lease, workdir)
            remaining = remaining_work(out, plan, workdir)
        if remaining.left > 0:
            stats.inference_started = True
            run_attempt(out, plan, remaining, target.spec, model.image_size, opts, lease, stats)
        staged = all_staged(out, plan, workdir)
        summary = commit_run(target, plan, model, staged, opts, lease, stats)
    summary.resumed, summary.removed_runs = resumed, removed
    return summary


def start_plan(target: Target, opts: ScanOptions, model: ModelPlan, lease: Lease,
               workdir: str) -> Plan:
    now = dt.datetime.now(dt.timezone.utc)
    run_id = new_run_id(now)
    lease.set_run_id(run_id)
    return create_plan(target.out, target.src, target.selection, model, run_id=run_id, now=now,
                       map_size=opts.map_size, write_maps=opts.write_maps, config=opts.public(),
                       workdir=workdir)


def resume_plan(out: Location, plan: Plan, lease: Lease) -> Plan:
    plan.attempts += 1
    plan.save(out)
    lease.set_run_id(plan.run_id)
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
        lease.check()
        result = commit_parts(out, plan.run_id, plan.scan_date, opts.max_rows_per_file,
                              dedupe=staged.staged_rows != staged.staged)
        counts = {**plan.counts, "scored": result.ok, "failed": result.failed}
        vanished_file = publish_vanished(out, plan.run_id) if counts.get("vanished", 0) else None
        wall_s = stats.wall_s()
        images_per_s = stats.rows_staged / wall_s if wall_s > 0 else 0.0
        finished = dt.datetime.now(dt.timezone.utc)
    publish_record(out, run_record(
        plan, out, result, checkpoint=target.spec.checkpoint, finished_at=finished.isoformat(),
        counts=counts, image_size=model.image_size, vanished_file=vanished_file, wall_s=wall_s,
        images_per_s=images_per_s, stage_s=stats.stage_s, io_counts=stats.io(),
        inference_started=stats.inference_started))
    return RunSummary(
        run_id=plan.run_id, status=STATUS_COMPLETE, counts=counts, wall_s=wall_s,
        images_per_s=images_per_s, out=out.display(),
        scores_uri=out.join(scores_partition(plan.scan_date)),
        maps_uri=out.join(plan.map_store) if plan.map_store else None,
        record_uri=out.join(record_name(plan.run_id)), model_id=plan.model_id,
        scan_date=plan.scan_date, inference_started=stats.inference_started,
        stage_s=dict(stats.stage_s), io=stats.io(), files=result.files)
