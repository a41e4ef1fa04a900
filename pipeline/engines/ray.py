"""The Ray Data part of a scan: remaining work -> read+decode -> infer + write maps -> driver.

    work list, read in map_index ranges     one row per work unit (whole map shards,
                                            stages/units.py), map_index fixed
    .repartition(1 row per block)           so decode tasks spread, one unit each
    .map_batches(decode_unit_batch)         CPU tasks: bytes -> uint8 pixels | error row
    .map_batches(InferActor, ActorPool)     one actor per GPU (or CPU actors); each scores a
                                            unit, writes its shards to Zarr, drops the maps
    .iter_batches()  (driver)               small rows -> staging parts (exactly-once record)

A unit travels as one row, so no block boundary Ray Data chooses can split a shard between
two writers: each shard is written whole, once, by the actor that scored its unit.

Everything is streamed with Ray Data's backpressure under a fixed object-store budget
(object_store_budget), so no stage holds the lake and memory does not grow with it.

Why the maps are written inside the actor rather than by a stage of their own: a map is
128 KiB of float16 per image, so a separate stage moved every map through the object store
and paid a task per batch (measured on 2 cores: ~5 ms of CPU per image, about an eighth of
the model's own cost). Each actor accepts two concurrent calls and runs the model under a
lock, so the Zarr write of one batch overlaps the inference of the next.
"""

from __future__ import annotations

import contextlib
import glob
import os
import signal
import sys
import threading
import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..specs import EngineSpec
from ..stages.decode import read_and_decode
from ..stages.infer import InferActor
from ..stages.units import decode_units, pack_work_units
from ..storage.location import Location
from ..storage.redaction import redact
from ..storage.retries import with_retries
from . import EngineConfig, StageSettings

# Backpressure: decoded batches that may wait per inference actor, and a floor for small ones.
DECODED_BATCHES_PER_ACTOR = 16
MIN_OBJECT_STORE_BUDGET = 128 * 2**20

# max_retries / max_restarts / max_task_retries have no named map_batches parameter yet (Ray
# 2.60 deprecates passing them as **ray_remote_args, without a replacement); they are set on
# purpose, see EngineConfig.
RETRY_ARGS_WARNING = ".*ray_remote_args.* is deprecated"


@dataclass
class RaySession:
    """ray.init only when Ray is not running; shut down only a Ray we started."""

    address: str | None = None
    init_kwargs: dict[str, Any] = field(default_factory=dict)
    started: bool = False

    def __enter__(self) -> "RaySession":
        import ray

        if not ray.is_initialized():
            kwargs = {"include_dashboard": False, "log_to_driver": False,
                      "configure_logging": False, **self.init_kwargs}
            # ray.init installs its own SIGTERM handler (sys.exit), which would bypass the
            # scan's orderly stop (the "interrupted: ..." line, exit 143): keep ours.
            on_sigterm = signal.getsignal(signal.SIGTERM)
            ray.init(address=self.address, **kwargs)
            if threading.current_thread() is threading.main_thread() and on_sigterm is not None:
                signal.signal(signal.SIGTERM, on_sigterm)
            self.started = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self.started:
            import ray

            # ray.shutdown resets SIGTERM (and SIGINT) to the default action in the kernel
            # while Python still reports our handler, so a SIGTERM during the commit killed
            # the scan with its lease held: set ours again, for real.
            held = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
            try:
                ray.shutdown()
            finally:
                if threading.current_thread() is threading.main_thread():
                    for signum, handler in held.items():
                        if handler is not None:
                            signal.signal(signum, handler)


def actor_pool(spec: EngineSpec, resources: dict[str, float] | None = None,
               ) -> tuple[int, int, float, float, int | None]:
    """(min actors, max actors, GPUs per actor, CPUs per actor, torch threads) for this cluster
    (or for ``resources``, e.g. the ones a local Ray is about to find)."""
    if resources is None:
        import ray

        resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    cpus = max(1, int(resources.get("CPU", os.cpu_count() or 1)))
    per_gpu = spec.gpus_per_actor if spec.gpus_per_actor is not None else (1.0 if gpus else 0.0)
    if per_gpu > 0 and gpus:
        default = (1, max(1, int(gpus / per_gpu)))
    else:
        per_gpu = 0.0
        default = (1, 1)
    low, high = spec.actors or default
    low, high = max(1, int(low)), max(1, int(high), int(low))
    threads = spec.torch_threads
    if threads is None and per_gpu == 0:
        threads = max(1, cpus // high)
    return low, high, per_gpu, spec.cpus_per_actor, threads


def object_store_budget(config: EngineConfig, image_size: int) -> int:
    """Bytes of the object store the scan's blocks may occupy (Ray Data backpressures above).

    Left to its default, Ray Data lets decode run as far ahead as a share of the whole object
    store allows: on 2 cores, 760 MB of decoded pixels queued before the model at 20,000
    images, 300 MB at 2,000, so memory grew with the lake. A fixed number of decoded batches
    per inference actor keeps the model fed (a batch decodes far faster than it infers) and
    keeps memory flat however large the lake.
    """
    spec = config.engine_spec
    if spec.object_store_budget_mb:
        return int(spec.object_store_budget_mb * 2**20)
    _, high, _, _, _ = actor_pool(spec)
    batch_bytes = max(spec.batch_size, config.unit_rows) * image_size * image_size * 3
    return max(MIN_OBJECT_STORE_BUDGET, DECODED_BATCHES_PER_ACTOR * high * batch_bytes)


def read_work_units(batch: dict[str, np.ndarray], work: Location, work_path: str,
                    unit_rows: int) -> dict[str, np.ndarray]:
    """The work units whose map_index lies in [batch["lo"], batch["hi"]), one row each."""
    lo, hi = int(batch["lo"][0]), int(batch["hi"][0])

    def read() -> pa.Table:
        with work.fs.open(work.fs_path(work_path), "rb") as handle:
            # Row-group statistics skip the groups outside the range (the list is sorted).
            return pq.read_table(handle, filters=[("map_index", ">=", lo), ("map_index", "<", hi)])

    table = with_retries(read, fs=work.fs)  # repeated only where the client does not retry
    return pack_work_units(table.sort_by("map_index"), unit_rows)


def unit_ranges(work: Location, work_path: str, unit_rows: int) -> list[tuple[int, int]]:
    """[lo, hi) map_index ranges, aligned to units, one per row group of the work list."""
    def starts() -> list[int]:
        with work.fs.open(work.fs_path(work_path), "rb") as handle:
            meta = pq.ParquetFile(handle).metadata
        column = meta.schema.names.index("map_index")
        found = []
        for g in range(meta.num_row_groups):
            stats = meta.row_group(g).column(column).statistics
            if meta.row_group(g).num_rows and stats is not None and stats.has_min_max:
                found.append(int(stats.min) // unit_rows * unit_rows)
        return found

    bounds = sorted(set(with_retries(starts, fs=work.fs)))
    return [(lo, hi) for lo, hi in zip(bounds, bounds[1:] + [2**62])]


def work_list_dataset(work: Location, work_path: str, unit_rows: int, max_retries: int = 3):
    """The remaining-work Parquet file as a Dataset of work units: one read task per range.

    Not ``ray.data.read_parquet``: for one small file, Ray 2.60's reader runs a listing task
    and provisions 32 footer-reader actors first, ~5 s before the first row on 2 cores. The
    work list is one file the driver just wrote (row groups of 4,096 rows, sorted by
    map_index), so its footer is read here and unit-aligned ranges are spread over plain tasks.
    """
    import ray

    ranges = unit_ranges(work, work_path, unit_rows)
    ds = ray.data.from_items([{"lo": lo, "hi": hi} for lo, hi in ranges] or [{"lo": 0, "hi": 0}],
                             override_num_blocks=max(1, len(ranges)))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=RETRY_ARGS_WARNING)
        return ds.map_batches(read_work_units,
                              fn_kwargs={"work": work, "work_path": work_path,
                                         "unit_rows": unit_rows},
                              batch_size=1, batch_format="numpy", num_cpus=0.25,
                              udf_modifying_row_count=True, max_retries=max_retries)


def decode_unit_batch(batch: dict[str, np.ndarray], settings: Any, unit_rows: int
                      ) -> dict[str, np.ndarray]:
    """Ray task form of units.decode_units with the one read+decode stage."""
    return decode_units(batch, lambda rows: read_and_decode(rows, settings), unit_rows)


def build_dataset(work: Location, work_path: str, config: EngineConfig, stages: StageSettings):
    """The lazy Ray Data pipeline over the remaining work list."""
    from ray.data import ActorPoolStrategy

    spec = config.engine_spec
    low, high, gpus, cpus, threads = actor_pool(spec)
    infer = replace(stages.infer, engine_spec=replace(spec, torch_threads=threads))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=RETRY_ARGS_WARNING)
        units = config.unit_rows
        ds = work_list_dataset(work, work_path, units, spec.task_max_retries)
        # A read task yields the units of a whole row group; one unit per block lets the
        # decode tasks spread over the cluster (streaming, no shuffle).
        ds = ds.repartition(target_num_rows_per_block=1)
        ds = ds.map_batches(decode_unit_batch,
                            fn_kwargs={"settings": stages.decode, "unit_rows": units},
                            batch_size=1, batch_format="numpy",
                            num_cpus=spec.decode_cpus, udf_modifying_row_count=False,
                            max_retries=spec.task_max_retries)
        # An actor task's output block is released only when the task ends, so actor tasks of
        # one unit each let rows reach the driver (and be staged) as they are scored.
        calls = max(1, int(spec.concurrent_calls_per_actor))
        return ds.map_batches(
            InferActor, fn_constructor_kwargs={"settings": infer, "maps": stages.maps},
            batch_size=1, batch_format="numpy",
            compute=ActorPoolStrategy(
                min_size=low, max_size=high,
                max_tasks_in_flight_per_actor=max(calls, spec.max_tasks_in_flight_per_actor),
                # True threads: InferActor serialises the model itself and writes outside the lock.
                max_concurrent_calls_per_actor=calls, enable_true_multi_threading=calls > 1),
            num_gpus=gpus if gpus > 0 else None, num_cpus=cpus, udf_modifying_row_count=True,
            max_restarts=spec.actor_max_restarts, max_task_retries=spec.actor_max_task_retries,
        )


def iter_results(ds: Any, batch_size: int) -> Iterator[pa.Table]:
    """Rows (no pixels, no maps) as pyarrow tables, as the pipeline produces them."""
    for batch in ds.iter_batches(batch_size=batch_size, batch_format="pyarrow",
                                 prefetch_batches=1):
        yield batch


@contextlib.contextmanager
def stderr_to_file(path: str | None) -> Iterator[None]:
    """Send this process's stderr to ``path`` while Ray runs in it.

    Ray's notices come from Python loggers (token auth, Ray Data's plan and progress notes),
    from its C++ core worker in this process (glog, straight to fd 2) and from the processes
    a local Ray starts (they inherit fd 2); none can be silenced one by one, so fd 2 itself
    (and ``sys.stderr``) point at the log until the session is shut down. The CLI writes its
    own lines through a handle it opened before.
    """
    if path is None:
        yield
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    saved_fd, saved_stream = os.dup(2), sys.stderr
    log_stream = os.fdopen(os.dup(target), "a", buffering=1, encoding="utf-8", errors="replace")
    os.dup2(target, 2)
    os.close(target)
    sys.stderr = log_stream
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            log_stream.flush()
        sys.stderr = saved_stream
        os.dup2(saved_fd, 2)
        os.close(saved_fd)
        log_stream.close()


def local_gpus() -> int:
    """GPUs a local Ray will find, without starting it (CUDA_VISIBLE_DEVICES, else devices)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() not in ("", "-1")])
    return len(glob.glob("/dev/nvidia[0-9]*"))


def actors_text(count: int) -> str:
    return f"{count} inference actor{'s' if count != 1 else ''}"


def starting_line(spec: EngineSpec, connected: bool) -> str:
    """What the person waiting sees while the cluster and actors start."""
    if connected:
        _, high, _, _, _ = actor_pool(spec)
        address = spec.ray_address or os.environ.get("RAY_ADDRESS")
        where = redact(address) if address else "already running in this process"
        return f"starting {actors_text(high)} on Ray ({where})..."
    resources = {"GPU": float(spec.ray_init_kwargs.get("num_gpus", local_gpus())),
                 "CPU": float(spec.ray_init_kwargs.get("num_cpus", os.cpu_count() or 1))}
    _, high, _, _, _ = actor_pool(spec, resources)
    return f"starting Ray (local) and {actors_text(high)}..."


def run(work: Location, work_path: str, config: EngineConfig, stages: StageSettings,
        consume: Callable[[pa.Table], None]) -> None:
    """Run the pipeline, handing each result batch to ``consume`` (which stages it)."""
    with stderr_to_file(config.log_file):
        run_logged(work, work_path, config, stages, consume)


def run_logged(work: Location, work_path: str, config: EngineConfig, stages: StageSettings,
               consume: Callable[[pa.Table], None]) -> None:
    import ray

    spec = config.engine_spec
    notify = config.notify or (lambda line: None)
    # A local Ray takes most of the start-up: say so before it starts; a cluster given by
    # address is joined first, so the line can count its actors exactly.
    joining = ray.is_initialized() or bool(spec.ray_address or os.environ.get("RAY_ADDRESS"))
    if not joining:
        notify(starting_line(spec, connected=False))
    with RaySession(spec.ray_address, spec.ray_init_kwargs):
        if joining:
            notify(starting_line(spec, connected=True))
        context = ray.data.DataContext.get_current()
        # The caller draws progress from the rows it stages; Ray's bars would interleave.
        # An actor whose __init__ fails (weights the driver's header check passed but the
        # worker cannot load, a checkpoint changed since planning) fails the run at once: the
        # error is deterministic, so retrying would only repeat it.
        settings = {"enable_progress_bars": False, "enable_operator_progress_bars": False,
                    "actor_init_retry_on_errors": False, "max_consecutive_actor_init_deaths": 0,
                    # The one-unit split after a work-list read yields ~100 tiny blocks; with
                    # Ray's default of 2 unconsumed blocks per task it yields one per
                    # scheduling round (~0.1 s on 2 cores) while holding a CPU, so the first
                    # decode waited 12 s at 4,000 images. Each block is a few KB; decode and
                    # actor tasks yield one block each, so only that split runs ahead.
                    "_max_num_blocks_in_streaming_gen_buffer": None}
        saved = {name: getattr(context, name) for name in settings if hasattr(context, name)}
        for name in saved:
            setattr(context, name, settings[name])
        options = context.execution_options
        saved_limits = options.resource_limits
        options.resource_limits = saved_limits.copy(
            object_store_memory=object_store_budget(config, stages.decode.image_size))
        try:
            ds = build_dataset(work, work_path, config, stages)
            for table in iter_results(ds, spec.batch_size):
                consume(table)
        finally:
            options.resource_limits = saved_limits
            for name, value in saved.items():
                setattr(context, name, value)
