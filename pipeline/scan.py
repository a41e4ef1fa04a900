"""scan(): one incremental, exactly-once scan of an image lake into OUT.

    fail-fast checks -> lease -> resume or (list -> diff -> plan) -> Ray Data engine
    -> staging parts -> commit (scores/, runs/<run_id>.json last) -> release lease

An empty diff ends before Ray is touched. A crash at any point leaves either a committed run
or a staging area that the next scan of the same source + model resumes under the same run_id.
"""

from __future__ import annotations

import datetime as dt
import gc
import logging
import os
import platform
import socket
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from . import faults
from .decode import (CREDENTIALS_REJECTED, DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_MAX_OBJECT_BYTES,
                     DecodeSettings)
from .engine import EngineConfig, run_engine
from .failures import engine_failure_line
from .infer import InferSettings, ModelSpec, model_facts, resolve_thresholds
from .listing import ObjectFilter, list_prefix, read_manifest, suffix_list
from .lock import Lease, LeaseLost, OutputLocked
from .preflight import ScanError, check_manifest, check_out, check_source, one_line
from .sinks import (MapWriterSettings, StagingWriter, commit_parts, create_map_store,
                    scores_partition, scores_table)
from .state import (RECORD_VERSION, STATUS_COMPLETE, Plan, diff_listing, find_resumable,
                    new_run_id, previous_runs, record_name, remaining_work, upload_file,
                    vanished_name, write_json)
from .storage import FilesystemWrapper, Location, public_options, redact, with_retries

log = logging.getLogger(__name__)

FAULT_KILL_ENV = "VIP2SCAN_FAULT_KILL_DRIVER_AFTER_BATCHES"
ProgressCallback = Callable[[int, int], None]

__all__ = ["ScanOptions", "RunSummary", "ScanError", "OutputLocked", "scan"]


@dataclass
class ScanOptions:
    """Options of a scan (they mirror the CLI flags). ``storage_options`` is never recorded."""

    # model
    backbone: str | None = None  # override the checkpoint's backbone
    weights: str | None = None  # override its backbone weights (tag, path or URI)
    image_size: int | None = None  # override its input size
    threshold: float | None = None  # image threshold; default: checkpoint's, else 0.5
    pixel_threshold: float | None = None  # pixel threshold; default: checkpoint's, else 0.5
    # compute
    batch_size: int = 32  # CPU (2 cores, vip2-tiny): 36 img/s end to end vs 33 at 16
    actors: tuple[int, int] | None = None  # (min, max) inference actors
    gpus_per_actor: float | None = None  # None: 1 per actor when the cluster has GPUs
    cpus_per_actor: float = 1.0
    torch_threads: int | None = None  # CPU actors; None: cluster CPUs // max actors
    decode_cpus: float = 0.5
    device: str | None = None  # None: cuda when the actor sees a GPU, else cpu
    amp: str | None = "auto"  # autocast on CUDA: "auto" (bf16), "fp16", "off"
    channels_last: bool = False  # model input layout (only the patch embedding cares)
    compile: bool = False  # torch.compile the detector in each actor (worth it on GPUs)
    max_tasks_in_flight_per_actor: int = 3
    # outputs
    map_size: int = 256
    write_maps: bool = True
    # selection
    full: bool = False
    limit: int | None = None
    dry_run: bool = False
    retry_errors: bool = False
    manifest: str | None = None
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    suffixes: tuple[str, ...] | None = None
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    max_object_bytes: int = DEFAULT_MAX_OBJECT_BYTES  # larger objects become error rows, unread
    # storage (options apply to source, OUT and checkpoint unless the specific ones are given)
    storage_options: dict[str, Any] = field(default_factory=dict, repr=False)
    source_storage_options: dict[str, Any] | None = field(default=None, repr=False)
    out_storage_options: dict[str, Any] | None = field(default=None, repr=False)
    checkpoint_storage_options: dict[str, Any] | None = field(default=None, repr=False)
    fs_wrapper: FilesystemWrapper | None = field(default=None, repr=False)
    # engine: "ray" (Ray Data, the product) or "local" (the same stages on threads in this
    # process, for machines without Ray; see local_engine.py)
    engine: str = "ray"
    # Ray
    ray_address: str | None = None
    ray_init_kwargs: dict[str, Any] = field(default_factory=dict, repr=False)
    # lease on OUT
    wait: bool | float = False  # False: refuse when locked; True: wait; seconds: wait that long
    lock_ttl_s: float = 300.0
    heartbeat_s: float | None = None
    # staging / commit
    stage_rows: int = 2048  # rows per durable staging part (resume granularity)
    stage_seconds: float = 30.0
    max_rows_per_file: int = 1_000_000
    # progress(done_rows, total_rows), called from the driver as rows are staged
    progress: ProgressCallback | None = field(default=None, repr=False, compare=False)

    def public(self) -> dict[str, Any]:
        """The options as recorded in the run record: no credentials, no callables."""
        hidden = {"storage_options", "source_storage_options", "out_storage_options",
                  "checkpoint_storage_options", "fs_wrapper", "progress", "ray_init_kwargs"}
        clean = {k: v for k, v in asdict(self).items() if k not in hidden}
        for key in ("weights", "manifest", "ray_address"):
            if isinstance(clean.get(key), str):
                clean[key] = redact(clean[key])
        clean["storage_options"] = public_options(self.storage_options)
        return clean


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


# --------------------------------------------------------------------------- helpers

class _Clock:
    def __init__(self) -> None:
        self.stage_s: dict[str, float] = {k: 0.0 for k in
                                          ("list_diff", "read", "decode", "infer", "write",
                                           "commit", "engine", "actor_init", "first_rows")}

    def add(self, name: str, seconds: float) -> None:
        self.stage_s[name] = self.stage_s.get(name, 0.0) + float(seconds)


def _sum(table: pa.Table, name: str) -> float:
    if name not in table.column_names:
        return 0.0
    return float(np.nansum(table.column(name).to_numpy(zero_copy_only=False)))


def _credentials_refused(table: pa.Table) -> tuple[str, str] | None:
    """(image_uri, error) of the first row whose read was refused for the credentials."""
    if "error" not in table.column_names:
        return None
    for uri, error in zip(table.column("image_uri").to_pylist(), table.column("error").to_pylist()):
        if error and str(error).startswith(CREDENTIALS_REJECTED):
            return uri, str(error)
    return None


def _fault_kill_after() -> int | None:
    value = os.environ.get(FAULT_KILL_ENV)
    return int(value) if value else None


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in ("vip2scan", "torch", "ray", "pyarrow", "zarr"):
        try:
            module = __import__(name)
            versions[name] = str(getattr(module, "__version__", "?"))
        except Exception:  # noqa: BLE001
            pass
    return versions


def _model_facts(spec: ModelSpec, opts: ScanOptions) -> tuple[str, int, float, float]:
    """Learn the model's id, input size and thresholds; fail fast on a checkpoint that is
    broken (before anything is locked or written)."""
    try:
        facts = model_facts(spec)
    except Exception as exc:  # noqa: BLE001
        raise ScanError(one_line(f"cannot load checkpoint {redact(spec.checkpoint)}", exc)) from None
    gc.collect()
    image_t, pixel_t = resolve_thresholds(facts, opts.threshold, opts.pixel_threshold)
    return facts.model_id, facts.image_size, image_t, pixel_t


def _list_and_diff(src: Location, out: Location, opts: ScanOptions, model_id: str,
                   run_id: str, workdir: str):
    object_filter = ObjectFilter(suffix_list(opts.suffixes), tuple(opts.include),
                                 tuple(opts.exclude))
    manifest_path = os.path.join(workdir, "listing.parquet")
    try:
        if opts.manifest:
            manifest = Location.of(opts.manifest, _opts(opts, "source"), opts.fs_wrapper)
            read_manifest(manifest, src, manifest_path, object_filter)
        else:
            # A listing that fails midway on a transient error starts over (it rewrites the
            # manifest from scratch, so a repeat is harmless).
            with_retries(list_prefix, src, manifest_path, object_filter)
    except ScanError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise ScanError(one_line(f"cannot list {src.display()}", exc)) from None
    previous = previous_runs(out, src.uri, model_id)
    return diff_listing(manifest_path, out, previous, workdir, object_filter, src.uri, run_id,
                        full=opts.full, retry_errors=opts.retry_errors, limit=opts.limit)


def _opts(opts: ScanOptions, which: str) -> dict[str, Any]:
    specific = getattr(opts, f"{which}_storage_options")
    return dict(opts.storage_options if specific is None else specific)


# --------------------------------------------------------------------------- scan

def scan(source: str, out: str, checkpoint: str, options: ScanOptions | None = None) -> RunSummary:
    """Scan the images under ``source`` into ``out`` with the detector at ``checkpoint``.

    Only objects new or changed since the previous complete runs of this source and model are
    scanned (all with ``full``). Returns a :class:`RunSummary`; raises :class:`ScanError` (one
    line, no secrets) when it cannot start or finish, :class:`OutputLocked` when another scan
    holds OUT.
    """
    opts = options or ScanOptions()
    if opts.engine not in ("ray", "local"):
        raise ScanError(f"unknown engine {opts.engine!r}: expected 'ray' or 'local'")
    t_start = time.perf_counter()
    clock = _Clock()
    src = Location.of(source, _opts(opts, "source"), opts.fs_wrapper)
    out_loc = Location.of(out, _opts(opts, "out"), opts.fs_wrapper)
    spec = ModelSpec(checkpoint, _opts(opts, "checkpoint"), opts.backbone, opts.weights,
                     opts.image_size)

    # Fail fast: nothing is listed, locked or written before source, OUT and model are fine.
    if opts.manifest:
        check_manifest(Location.of(opts.manifest, _opts(opts, "source"), opts.fs_wrapper))
    else:
        check_source(src)
    check_out(out_loc, writable=not opts.dry_run)
    model_id, image_size, image_t, pixel_t = _model_facts(spec, opts)

    if opts.dry_run:
        with tempfile.TemporaryDirectory(prefix="vip2scan-") as workdir:
            t0 = time.perf_counter()
            diff = _list_and_diff(src, out_loc, opts, model_id, "dry-run", workdir)
            clock.add("list_diff", time.perf_counter() - t0)
        counts = {**diff.counts.as_dict(), "scored": 0, "failed": 0}
        return RunSummary(run_id=None, status="dry_run", counts=counts,
                          wall_s=time.perf_counter() - t_start, images_per_s=0.0,
                          out=out_loc.display(), scores_uri=None, maps_uri=None, record_uri=None,
                          model_id=model_id, stage_s=clock.stage_s)

    lease = Lease(out_loc, ttl_s=opts.lock_ttl_s, heartbeat_s=opts.heartbeat_s)
    lease.acquire(opts.wait)
    try:
        return _scan_locked(src, out_loc, spec, opts, lease, clock, t_start,
                            model_id, image_size, image_t, pixel_t)
    finally:
        lease.release()


def _scan_locked(src: Location, out: Location, spec: ModelSpec, opts: ScanOptions, lease: Lease,
                 clock: _Clock, t_start: float, model_id: str, image_size: int,
                 image_t: float, pixel_t: float) -> RunSummary:
    with tempfile.TemporaryDirectory(prefix="vip2scan-") as workdir:
        t0 = time.perf_counter()
        plan, removed = find_resumable(out, src.uri, model_id)
        resumed = plan is not None
        if plan is None:
            now = dt.datetime.now(dt.timezone.utc)
            run_id = new_run_id(now)
            lease.set_run_id(run_id)
            diff = _list_and_diff(src, out, opts, model_id, run_id, workdir)
            staging = f"_staging/{run_id}"
            # Order matters for resume: todo and store first, plan.json last (its presence
            # means the plan is complete).
            upload_file(out, diff.todo_path, f"{staging}/todo.parquet")
            upload_file(out, diff.vanished_path, f"{staging}/vanished.parquet")
            n_todo = diff.counts.to_scan
            store = None
            if opts.write_maps and n_todo > 0:
                store = create_map_store(out, run_id, n_todo, opts.map_size, {
                    "model_id": model_id, "image_size": image_size, "source": src.display(),
                    "dtype": "float16"})
            plan = Plan(run_id=run_id, source=src.uri, model_id=model_id,
                        started_at=now.isoformat(), scan_date=now.strftime("%Y-%m-%d"),
                        counts=diff.counts.as_dict(), n_todo=n_todo, map_store=store,
                        map_size=opts.map_size, image_threshold=image_t, pixel_threshold=pixel_t,
                        config=opts.public())
            plan.save(out)
        else:
            plan.attempts += 1
            plan.save(out)
            lease.set_run_id(plan.run_id)
            log.info("resuming interrupted run %s (attempt %d)", plan.run_id, plan.attempts)
        remaining_path, left, staged, _rows = remaining_work(out, plan, workdir)
        clock.add("list_diff", time.perf_counter() - t0)

        io = {"objects_read": 0, "bytes_read": 0, "rows_staged": 0}
        inference_started = False
        if left > 0:
            inference_started = True
            _run_pipeline(out, plan, remaining_path, left, staged, image_size, spec, opts,
                          lease, clock, io)
        _, left, staged, staged_rows = remaining_work(out, plan, workdir)
        if left:
            raise ScanError(f"run {plan.run_id} is incomplete ({left} objects unscored); "
                            "rerun to resume it")
        if staged_rows != staged:
            # Should not happen (each row is staged once); if an engine ever re-delivers a
            # batch, the commit keeps the first row per object so the run stays exactly-once.
            log.warning("run %s staged %d duplicate rows; dropping them at commit",
                        plan.run_id, staged_rows - staged)

        t0 = time.perf_counter()
        lease.check()
        result = commit_parts(out, plan.run_id, plan.scan_date, opts.max_rows_per_file,
                              dedupe=staged_rows != staged)
        counts = {**plan.counts, "scored": result.ok, "failed": result.failed}
        vanished_file = None
        if counts.get("vanished", 0):
            vanished_file = vanished_name(plan.run_id)
            out.write_bytes(out.read_bytes(plan.vanished_staged), vanished_file)
        wall_s = time.perf_counter() - t_start
        rows_this_attempt = io["rows_staged"]
        images_per_s = rows_this_attempt / wall_s if wall_s > 0 else 0.0
        finished = dt.datetime.now(dt.timezone.utc)
        clock.add("commit", time.perf_counter() - t0)
        record = {
            "record_version": RECORD_VERSION,
            "run_id": plan.run_id,
            "status": STATUS_COMPLETE,
            "source": plan.source,
            "out": out.display(),
            "model_id": plan.model_id,
            "checkpoint": redact(spec.checkpoint),
            "scan_date": plan.scan_date,
            "started_at": plan.started_at,
            "finished_at": finished.isoformat(),
            "attempts": plan.attempts,
            "counts": counts,
            "rows": result.rows,
            "wall_s": round(wall_s, 3),
            "images_per_s": round(images_per_s, 3),
            "stage_s": {k: round(v, 4) for k, v in clock.stage_s.items()},
            "io": io,
            "inference_started": inference_started,
            "files": result.files,
            "map_store": plan.map_store,
            "map_size": plan.map_size,
            "image_size": image_size,
            "image_threshold": plan.image_threshold,
            "pixel_threshold": plan.pixel_threshold,
            "vanished_file": vanished_file,
            "config": plan.config,
            "host": socket.gethostname(),
            "versions": _versions(),
        }
        # The record is written last: it is what makes the run visible as complete.
        write_json(out, record, record_name(plan.run_id))
        out.remove("_staging", plan.run_id, recursive=True)
    return RunSummary(
        run_id=plan.run_id, status=STATUS_COMPLETE, counts=counts, wall_s=wall_s,
        images_per_s=images_per_s, out=out.display(),
        scores_uri=out.join(scores_partition(plan.scan_date)),
        maps_uri=out.join(plan.map_store) if plan.map_store else None,
        record_uri=out.join(record_name(plan.run_id)), model_id=plan.model_id,
        scan_date=plan.scan_date, resumed=resumed, inference_started=inference_started,
        stage_s=dict(clock.stage_s), io=io, files=result.files, removed_runs=removed)


def _run_pipeline(out: Location, plan: Plan, remaining_path: str, left: int, staged: int,
                  image_size: int, spec: ModelSpec, opts: ScanOptions, lease: Lease,
                  clock: _Clock, io: dict[str, int]) -> None:
    """Stream the remaining work through Ray Data and stage every result row durably."""
    work_rel = f"_staging/{plan.run_id}/work.parquet"
    upload_file(out, remaining_path, work_rel)
    kill_after = _fault_kill_after()
    total = plan.n_todo
    done = staged

    def on_flush(rows: int, batches: int) -> None:
        io["rows_staged"] = rows
        if kill_after is not None and batches >= kill_after:
            # Fault injection for tests: die like a killed driver, right after a durable part.
            os._exit(86)

    writer = StagingWriter(out, plan.run_id, flush_rows=opts.stage_rows,
                           flush_s=opts.stage_seconds, on_flush=on_flush)

    engine_start = [0.0]

    def consume(table: pa.Table) -> None:
        nonlocal done
        lease.check()
        if not clock.stage_s.get("first_rows"):
            # Engine start to the first rows back: cluster/actor start-up and the first batch.
            clock.stage_s["first_rows"] = time.perf_counter() - engine_start[0]
        now = dt.datetime.now(dt.timezone.utc)
        for name, stage in (("read_s", "read"), ("decode_s", "decode"), ("infer_s", "infer"),
                            ("write_s", "write"), ("actor_init_s", "actor_init")):
            clock.add(stage, _sum(table, name))
        io["objects_read"] += table.num_rows
        io["bytes_read"] += int(_sum(table, "read_bytes"))
        refused = _credentials_refused(table)
        if refused:
            # Not recorded: these rows say nothing about the objects, and a rerun with
            # valid credentials resumes this run and scans them.
            raise ScanError(redact(" ".join(
                f"stopping run {plan.run_id}: the source rejected the credentials reading "
                f"{refused[0]} ({refused[1]}); {done} rows are staged, rerun with valid "
                "credentials to resume".split())))
        writer.add(scores_table(table, run_id=plan.run_id, model_id=plan.model_id,
                                scanned_at=now, map_store=plan.map_store))
        done += table.num_rows
        if opts.progress is not None:
            opts.progress(done, total)

    config = EngineConfig(
        batch_size=opts.batch_size, actors=opts.actors, gpus_per_actor=opts.gpus_per_actor,
        cpus_per_actor=opts.cpus_per_actor, torch_threads=opts.torch_threads,
        decode_cpus=opts.decode_cpus, max_tasks_in_flight_per_actor=opts.max_tasks_in_flight_per_actor,
        device=opts.device, amp=opts.amp, ray_address=opts.ray_address,
        ray_init_kwargs=opts.ray_init_kwargs)
    fault_hooks = faults.from_env()
    decode = DecodeSettings(image_size=image_size, max_image_pixels=opts.max_image_pixels,
                            storage_options=_opts(opts, "source") or None, wrapper=opts.fs_wrapper,
                            max_object_bytes=opts.max_object_bytes, faults=fault_hooks)
    infer = InferSettings(model=spec, map_size=plan.map_size, image_threshold=plan.image_threshold,
                          pixel_threshold=plan.pixel_threshold, device=opts.device, amp=opts.amp,
                          channels_last=opts.channels_last, compile=opts.compile,
                          batch_size=opts.batch_size,
                          expected_model_id=plan.model_id, faults=fault_hooks)
    maps = MapWriterSettings(out_uri=out.uri, store_name=plan.map_store,
                             storage_options=dict(out.storage_options) or None,
                             wrapper=opts.fs_wrapper)
    if opts.engine == "ray":
        runner = run_engine  # looked up at call time so a benchmark can substitute it
    elif opts.engine == "local":
        from .local_engine import run_local_engine as runner
    else:
        raise ScanError(f"unknown engine {opts.engine!r}: expected 'ray' or 'local'")
    t0 = engine_start[0] = time.perf_counter()
    try:
        runner(out, work_rel, config, decode, infer, maps, consume)
        writer.flush()
    except (LeaseLost, ScanError):
        raise
    except Exception as exc:  # noqa: BLE001 - Ray wraps worker errors; keep one clear line
        raise ScanError(engine_failure_line(plan.run_id, exc)) from exc
    finally:
        clock.add("engine", time.perf_counter() - t0)
        clock.add("write", writer.write_s)
        io["rows_staged"] = writer.rows_staged
