"""One attempt at a run's remaining work: stream it through an engine, stage every row.

    remaining work (Parquet, uploaded to the run's staging) -> engine (the stages)
    -> StagedResults: counters, a stop on rejected credentials, progress
    -> StagingWriter: durable parts (the exactly-once record a resume starts from)

:class:`RunStats` holds a scan's running counters for every phase, so no phase mutates
another's variables.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .. import faults
from ..engines import EngineChoice, EngineConfig, StageSettings
from ..engines import local as local_engine
from ..engines import ray as ray_engine
from ..errors import CREDENTIALS_REJECTED, ScanError, engine_failure_line, one_line
from ..options import ScanOptions
from ..output.paths import WORK_FILE, staging_file
from ..output.schema import ALREADY_STAGED, scores_table
from ..stages.decode import DecodeSettings
from ..storage.accounting import IoCounts, take_io
from ..storage.retries import check_retry_budget, take_retries
from .lock import Lease, LeaseLost
from .plan import Plan, Remaining, upload_file
from .staging import StagingWriter, death_log, earlier_deaths
from vip2scan.model.factory import ModelSpec

from ..stages.infer import InferSettings
from ..stages.write_maps import MapWriterSettings
from ..storage.location import Location

Engine = Callable[[Location, str, EngineConfig, StageSettings, Callable[[pa.Table], None]], None]
ENGINES: dict[str, Engine] = {"ray": ray_engine.run, "local": local_engine.run}

# read/decode/infer/write/actor_init are summed worker seconds (they overlap in a streaming
# run); list_diff, engine, first_rows and commit are driver wall seconds.
STAGES = ("list_diff", "read", "decode", "infer", "write", "commit", "engine", "actor_init",
          "first_rows")
# Per-row shares of worker seconds that the stages report, and the stage each adds to.
WORKER_SECONDS = (("read_s", "read"), ("decode_s", "decode"), ("infer_s", "infer"),
                  ("write_s", "write"), ("actor_init_s", "actor_init"))


def _column_sum(table: pa.Table, name: str) -> float:
    if name not in table.column_names:
        return 0.0
    return float(np.nansum(table.column(name).to_numpy(zero_copy_only=False)))


@dataclass
class RunStats:
    """A scan's running counters: seconds per stage and what this attempt read and staged."""

    started: float = field(default_factory=time.perf_counter)
    stage_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    objects_read: int = 0
    bytes_read: int = 0
    rows_staged: int = 0
    inference_started: bool = False
    retries: int = 0  # storage retries of this run, every process's (retries.py)
    # storage requests and bytes of this run, every process's (accounting.py)
    requests: IoCounts = field(default_factory=IoCounts)

    def __post_init__(self) -> None:
        take_retries()  # what this process retried before the run is not the run's
        take_io()  # ... nor the requests it sent

    def add(self, stage: str, seconds: float) -> None:
        self.stage_s[stage] = self.stage_s.get(stage, 0.0) + float(seconds)

    @contextlib.contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - t0)

    def add_batch(self, table: pa.Table) -> None:
        """Count a result batch: its workers' seconds and the objects it read."""
        for column, stage in WORKER_SECONDS:
            self.add(stage, _column_sum(table, column))
        self.objects_read += table.num_rows
        self.bytes_read += int(_column_sum(table, "read_bytes"))
        self.retries += int(round(_column_sum(table, "retries")))
        self.requests += IoCounts.from_table(table)

    def wall_s(self) -> float:
        return time.perf_counter() - self.started

    def io(self) -> dict[str, Any]:
        """Counts for the run record and summary; it takes the driver's own (listing, staging,
        commit) so far, so a later call also has what the driver did since."""
        self.retries += take_retries()
        self.requests += take_io()
        return {"objects_read": self.objects_read, "bytes_read": self.bytes_read,
                "rows_staged": self.rows_staged, "retries": self.retries,
                **self.requests.record()}


def credentials_refused(table: pa.Table) -> tuple[str, str] | None:
    """(image_uri, error) of the first row whose read was refused for the credentials."""
    if "error" not in table.column_names:
        return None
    for uri, error in zip(table.column("image_uri").to_pylist(), table.column("error").to_pylist()):
        if error and str(error).startswith(CREDENTIALS_REJECTED):
            return uri, str(error)
    return None


class StagedResults:
    """The engine's ``consume``: each result batch becomes score rows, staged durably."""

    def __init__(self, out: Location, plan: Plan, opts: ScanOptions, lease: Lease,
                 stats: RunStats, done: int):
        self.plan, self.lease, self.stats = plan, lease, stats
        self.progress = opts.progress
        self.done = done  # rows staged so far, by earlier attempts too
        self.kill_after = faults.driver_kill_after()
        self.engine_started = time.perf_counter()
        self.writer = StagingWriter(out, plan.run_id, flush_rows=opts.run_spec.stage_rows,
                                    flush_s=opts.run_spec.stage_seconds, on_flush=self._flushed,
                                    fence=lambda: lease.fence(f"staging rows of run {plan.run_id}"))

    def _flushed(self, rows: int, batches: int) -> None:
        self.stats.rows_staged = rows
        faults.on_driver_flush(batches, self.kill_after)
        faults.driver_point("staged")

    def __call__(self, table: pa.Table) -> None:
        faults.driver_point("batch")
        self.lease.check()
        if not self.stats.stage_s.get("first_rows"):
            # Engine start to the first rows back: cluster/actor start-up and the first batch.
            self.stats.stage_s["first_rows"] = time.perf_counter() - self.engine_started
        self.stats.add_batch(table)
        check_retry_budget(self.plan.run_id, self.stats.retries, self.plan.n_todo, self.done)
        refused = credentials_refused(table)
        if refused:
            # Not recorded: these rows say nothing about the objects, and a rerun with
            # valid credentials resumes this run and scans them.
            raise ScanError(one_line(
                f"stopping run {self.plan.run_id}: the source rejected the credentials reading "
                f"{refused[0]} ({refused[1]}); {self.done} rows are staged, rerun with valid "
                "credentials to resume"))
        if ALREADY_STAGED in table.column_names:
            # A redone unit (its shards rewritten whole) repeats rows an earlier attempt staged.
            table = table.filter(pc.invert(pc.fill_null(table.column(ALREADY_STAGED), False)))
        now = dt.datetime.now(dt.timezone.utc)
        self.writer.add(scores_table(table, run_id=self.plan.run_id, model_id=self.plan.model_id,
                                     scanned_at=now, map_store=self.plan.map_store))
        self.done += table.num_rows
        if self.progress is not None:
            self.progress(self.done, self.plan.n_todo)


class ScanInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) stopped a run that a rerun of the same command resumes."""

    def __init__(self, run_id: str, staged: int, total: int, cause: KeyboardInterrupt):
        self.run_id, self.staged, self.total = run_id, staged, total
        # SIGTERM arrives as holder.Terminated (a KeyboardInterrupt with its own exit code).
        self.exit_code = int(getattr(cause, "exit_code", 130))
        said = "interrupted" if type(cause) is KeyboardInterrupt else (str(cause) or "interrupted")
        super().__init__(f"{said}: run {run_id} has {staged} rows staged; "
                         "rerun the same command to resume it")


def ray_log_path(run_id: str) -> str:
    """The local file that receives Ray's own notices for this run.

    Local, not in OUT: the driver's stderr can only be sent to a local file, and a run's
    staging folder is deleted when it commits. ``VIP2SCAN_LOG_DIR`` moves it.
    """
    folder = os.environ.get("VIP2SCAN_LOG_DIR") or os.path.join(tempfile.gettempdir(), "vip2scan-logs")
    return os.path.join(folder, f"{run_id}-ray.log")


def stage_settings(out: Location, plan: Plan, model_spec: ModelSpec, image_size: int,
                   opts: ScanOptions) -> StageSettings:
    """Each stage's settings, derived from the scan's specs and the plan's frozen ones."""
    fault_hooks = faults.from_env()
    decode = DecodeSettings(image_size=image_size, limit_spec=opts.limit_spec,
                            storage_options=opts.storage_for("source") or None,
                            wrapper=opts.fs_wrapper, faults=fault_hooks,
                            deaths=death_log(out, plan.run_id),
                            # A run's first attempt has no earlier deaths: no LIST to find none.
                            suspects=earlier_deaths(out, plan.run_id) if plan.attempts > 1 else None)
    infer = InferSettings(model_spec=model_spec, map_spec=plan.map_spec,
                          thresholds=plan.thresholds, engine_spec=opts.engine_spec,
                          checkpoint_storage_options=opts.storage_for("checkpoint") or None,
                          expected_model_id=plan.model_id, faults=fault_hooks)
    maps = MapWriterSettings(out_uri=out.uri, store_name=plan.map_store, map_spec=plan.map_spec,
                             storage_options=dict(out.storage_options) or None,
                             wrapper=opts.fs_wrapper)
    return StageSettings(decode=decode, infer=infer, maps=maps)


def run_attempt(out: Location, plan: Plan, remaining: Remaining, model_spec: ModelSpec,
                image_size: int, opts: ScanOptions, lease: Lease, stats: RunStats,
                engine: EngineChoice, log_file: str | None = None) -> None:
    """Stream the remaining work through ``engine`` and stage every result row durably."""
    work_path = staging_file(plan.run_id, WORK_FILE)
    lease.fence(f"staging the work list of run {plan.run_id}")
    upload_file(out, remaining.path, work_path)
    stages = stage_settings(out, plan, model_spec, image_size, opts)
    results = StagedResults(out, plan, opts, lease, stats, done=remaining.staged)
    try:
        config = EngineConfig(opts.engine_spec, plan.work_unit_rows(opts.engine_spec.batch_size),
                              notify=opts.notify, log_file=log_file)
        ENGINES[engine.name](out, work_path, config, stages, results)
        results.writer.flush()
    except KeyboardInterrupt:
        # Rows already scored are kept: a part is one atomic write, so this is safe even if
        # the interrupt came during a flush (the same part is written again).
        with contextlib.suppress(Exception):
            results.writer.flush()
        raise
    except (LeaseLost, ScanError):
        raise
    except Exception as exc:  # noqa: BLE001 - Ray wraps worker errors; keep one clear line
        raise ScanError(engine_failure_line(plan.run_id, exc, out.display())) from exc
    finally:
        stats.add("engine", time.perf_counter() - results.engine_started)
        stats.add("write", results.writer.write_s)
        stats.rows_staged = results.writer.rows_staged
