"""The Ray Data part of a scan: remaining work -> read+decode -> infer -> write maps -> driver.

    read_parquet(remaining work)            manifest rows, map_index fixed
    .repartition(rows per block = batch)    small blocks so decode tasks run in parallel
    .map_batches(read_and_decode)           CPU tasks: bytes -> uint8 pixels | error row
    .map_batches(InferActor, ActorPool)     one actor per GPU (or CPU actors)
    .map_batches(write_maps_batch)          CPU tasks: Zarr chunks; maps dropped here
    .iter_batches()  (driver)               small rows -> staging parts (exactly-once record)

Everything is streamed with Ray Data's backpressure; no stage holds the lake.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import pyarrow as pa

from .decode import DecodeSettings, read_and_decode
from .infer import InferActor, InferSettings
from .sinks import MapWriterSettings, write_maps_batch
from .storage import Location

log = logging.getLogger(__name__)


@dataclass
class EngineConfig:
    """Sizing of the Ray Data stages (mirrors the CLI's flags; defaults suit one node)."""

    batch_size: int = 16
    actors: tuple[int, int] | None = None  # (min, max); None: #GPUs, else 1 CPU actor
    gpus_per_actor: float | None = None  # None: 1 when the cluster has GPUs, else CPU actors
    cpus_per_actor: float = 1.0
    torch_threads: int | None = None  # CPU actors: None = cluster CPUs // max actors
    decode_cpus: float = 0.5  # per decode task; decode is I/O + PIL, mostly GIL-free
    write_cpus: float = 0.25  # per map-writer task (I/O bound)
    max_tasks_in_flight_per_actor: int = 2
    device: str | None = None
    amp: str | None = "auto"
    ray_address: str | None = None
    ray_init_kwargs: dict[str, Any] = field(default_factory=dict)
    # Fault tolerance, set deliberately rather than left to Ray Data's defaults (which retry
    # crashed tasks and restart crashed actors forever, so a poison input loops the run):
    task_max_retries: int = 3  # a decode / map-writer task whose worker process died
    actor_max_restarts: int = 3  # an inference actor whose process died (OOM, segfault, kill)
    actor_max_task_retries: int = 3  # the batches it held, resubmitted to the restarted actor


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
            ray.init(address=self.address, **kwargs)
            self.started = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self.started:
            import ray

            ray.shutdown()


def actor_pool(config: EngineConfig) -> tuple[int, int, float, float, int | None]:
    """(min actors, max actors, GPUs per actor, CPUs per actor, torch threads) for this cluster."""
    import ray

    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    cpus = max(1, int(resources.get("CPU", os.cpu_count() or 1)))
    per_gpu = config.gpus_per_actor if config.gpus_per_actor is not None else (1.0 if gpus else 0.0)
    if per_gpu > 0 and gpus:
        default = (1, max(1, int(gpus / per_gpu)))
    else:
        per_gpu = 0.0
        default = (1, 1)
    low, high = config.actors or default
    low, high = max(1, int(low)), max(1, int(high), int(low))
    threads = config.torch_threads
    if threads is None and per_gpu == 0:
        threads = max(1, cpus // high)
    return low, high, per_gpu, config.cpus_per_actor, threads


def build_dataset(work: Location, work_path: str, config: EngineConfig,
                  decode: DecodeSettings, infer: InferSettings, maps: MapWriterSettings):
    """The lazy Ray Data pipeline over the remaining work list."""
    low, high, gpus, cpus, threads = actor_pool(config)
    with warnings.catch_warnings():
        # max_retries / max_restarts / max_task_retries have no named map_batches parameter
        # yet (Ray 2.60 deprecates passing them as **ray_remote_args, without a replacement);
        # they are set on purpose, see EngineConfig.
        warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated")
        return _build_dataset(work, work_path, config, decode, infer, maps,
                              low, high, gpus, cpus, threads)


def _build_dataset(work: Location, work_path: str, config: EngineConfig, decode: DecodeSettings,
                   infer: InferSettings, maps: MapWriterSettings, low: int, high: int,
                   gpus: float, cpus: float, threads: int | None):
    import ray
    from ray.data import ActorPoolStrategy

    infer = InferSettings(**{**infer.__dict__, "torch_threads": threads,
                             "device": config.device or infer.device})
    filesystem = None if work.is_local else work.pyarrow_filesystem()
    ds = ray.data.read_parquet(work.fs_path(work_path), filesystem=filesystem,
                               partitioning=None, include_paths=False)
    # The work list arrives as one or a few big blocks of URIs; cut it into blocks of about
    # one batch so that decode tasks spread over the cluster (streaming, no shuffle).
    ds = ds.repartition(target_num_rows_per_block=config.batch_size)
    ds = ds.map_batches(read_and_decode, fn_kwargs={"settings": decode},
                        batch_size=config.batch_size, batch_format="numpy",
                        num_cpus=config.decode_cpus, udf_modifying_row_count=False,
                        max_retries=config.task_max_retries)
    ds = ds.map_batches(
        InferActor, fn_constructor_kwargs={"settings": infer},
        batch_size=config.batch_size, batch_format="numpy",
        compute=ActorPoolStrategy(min_size=low, max_size=high,
                                  max_tasks_in_flight_per_actor=config.max_tasks_in_flight_per_actor),
        num_gpus=gpus if gpus > 0 else None, num_cpus=cpus, udf_modifying_row_count=False,
        max_restarts=config.actor_max_restarts, max_task_retries=config.actor_max_task_retries,
    )
    ds = ds.map_batches(write_maps_batch, fn_kwargs={"settings": maps},
                        batch_size=config.batch_size, batch_format="numpy",
                        num_cpus=config.write_cpus, udf_modifying_row_count=False,
                        max_retries=config.task_max_retries)
    return ds


def iter_results(ds: Any, batch_size: int) -> Iterator[pa.Table]:
    """Rows (no pixels, no maps) as pyarrow tables, as the pipeline produces them."""
    for batch in ds.iter_batches(batch_size=batch_size, batch_format="pyarrow",
                                 prefetch_batches=1):
        yield batch


def run_engine(work: Location, work_path: str, config: EngineConfig, decode: DecodeSettings,
               infer: InferSettings, maps: MapWriterSettings,
               consume: Callable[[pa.Table], None]) -> None:
    """Run the pipeline, handing each result batch to ``consume`` (which stages it)."""
    with RaySession(config.ray_address, config.ray_init_kwargs):
        import ray

        context = ray.data.DataContext.get_current()
        # The caller draws progress from the rows it stages; Ray's bars would interleave.
        # An actor whose __init__ fails (a checkpoint the driver could load but the worker
        # cannot) fails the run at once: the error is deterministic, and the driver already
        # proved the checkpoint loads, so retrying would only repeat it.
        settings = {"enable_progress_bars": False, "enable_operator_progress_bars": False,
                    "actor_init_retry_on_errors": False, "max_consecutive_actor_init_deaths": 0}
        saved = {name: getattr(context, name) for name in settings if hasattr(context, name)}
        for name in saved:
            setattr(context, name, settings[name])
        try:
            ds = build_dataset(work, work_path, config, decode, infer, maps)
            for table in iter_results(ds, config.batch_size):
                consume(table)
        finally:
            for name, value in saved.items():
                setattr(context, name, value)
