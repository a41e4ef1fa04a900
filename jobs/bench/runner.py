"""The bench's measurement plan: one run that yields the whole result dict.

Order matters for fairness: the bare model is measured before and after the scans (the
faster window is the yardstick); a local Ray is started once for every scan (a nightly scan
joins a running cluster, so start-up is reported apart); each source gets a full scan and
then a rescan of the unchanged lake into the same OUT; optional scale points re-scan larger
lakes for peak memory only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from vip2scan.pipeline.specs import EngineSpec

from .ceiling import NULL_IMAGE_SIZE, ceiling_section, ceiling_targets, measure_null_model, null_checkpoint
from .report import SOURCES, empty_result, evaluate_targets, set_bare_model, stage_breakdown
from .lakes import Sources, ensure_checkpoint, ensure_local_lake, log
from .photos import measure_large_photos
from .probes import ProcessSampler, cpu_seconds_of, environment, measure_bare_model

DEFAULT_SCALE_IMAGES = (2_000, 20_000)


@dataclass
class BenchParams:
    backbone: str
    image_size: int | None
    images: int
    sources: tuple[str, ...]
    # The scans' engine settings, built and validated like the scan's (EngineSpec); the bare
    # model runs with the same batch size, threads, layout and compile switch.
    engine_spec: EngineSpec
    scale_images: tuple[int, ...] | None
    workdir: Path
    s3_endpoint: str | None
    keep_outputs: bool = False
    bare_seconds: float = 3.0  # per bare-model window (two windows: before and after the scans)
    large_photos: int = 0  # 5 MP JPEGs for the decode section (0: skip it)
    # "detector": a random-weight checkpoint of the backbone; "embedded": the shipped checkpoint
    # (--checkpoint embedded); "null": the null detector, the data plane's ceiling (see
    # ceiling.py; its bare model is the null detector's own cost).
    model: str = "detector"

    @property
    def batch_size(self) -> int:
        return self.engine_spec.batch_size

    @property
    def engine(self) -> str:
        return self.engine_spec.engine


# --------------------------------------------------------------------------- Ray

@contextlib.contextmanager
def ray_running(engine: str) -> Iterator[float | None]:
    """Start a local Ray once for every scan of the bench (a nightly scan joins a running
    cluster, so cluster start-up is reported apart, not charged to the pipeline)."""
    if engine != "ray":
        yield None
        return
    from vip2scan.pipeline.engines.ray import RaySession

    # Ray starts its workers at nice 15, the driver (where the bare model is measured)
    # stays at 0: on a machine with any other load the comparison would then measure
    # the scheduler, not the pipeline. Same priority for both unless the caller says so.
    os.environ.setdefault("RAY_worker_niceness", "0")
    t0 = time.perf_counter()
    with RaySession(address="local", init_kwargs={"num_cpus": os.cpu_count()}):
        yield time.perf_counter() - t0


# --------------------------------------------------------------------------- measurements

def measure_bare(params: BenchParams, checkpoint: str, device: str) -> dict[str, Any]:
    """One bare-model window on the detector the scan's actors build from the same checkpoint
    (no overrides: the checkpoint was made at the bench's backbone and size)."""
    from vip2scan.model.factory import ModelSpec, load_detector

    detector = load_detector(ModelSpec(checkpoint), device)
    try:
        spec = params.engine_spec
        result = measure_bare_model(detector, spec.batch_size, device=device,
                                    threads=spec.torch_threads, channels_last=spec.channels_last,
                                    compile_model=spec.compile, min_seconds=params.bare_seconds)
    finally:
        del detector
        gc.collect()
    return result.to_dict()


def scan_options(params: BenchParams, device: str, storage_options: dict) -> Any:
    from vip2scan.pipeline import ScanOptions

    # The pipeline's actor runs the model as the bare measurement does.
    return ScanOptions(engine_spec=dataclasses.replace(params.engine_spec, device=device),
                       storage_options=dict(storage_options))


class ProgressClock:
    """Records when rows reach the driver (the scan's progress callback), to tell the
    steady-state rate apart from start-up: model loads, actor start, first batch."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.marks: list[tuple[float, int]] = []

    def __call__(self, done: int, total: int) -> None:
        self.marks.append((time.perf_counter(), done))

    def figures(self, images: int, end: float) -> dict[str, float | None]:
        """Rate from the first staged rows to the end of the scan (commit included). Not
        first-to-last mark: the last batches reach the driver in a burst and would flatter it."""
        if not self.marks:
            return {"first_rows_s": None, "steady_images_per_s": None}
        t_first, n_first = self.marks[0]
        steady = (images - n_first) / (end - t_first) if end > t_first and images > n_first else None
        return {"first_rows_s": t_first - self.start, "steady_images_per_s": steady}


def timed_scan(source: str, out: str, checkpoint: str, options: Any, exclude_pids: set[int],
               engine: str) -> tuple[Any, float, dict[str, Any], dict[str, float | None]]:
    """One scan with the process sampler running: (summary, wall s, memory + CPU, progress)."""
    from vip2scan.pipeline import scan

    gc.collect()
    store_cpu_before = cpu_seconds_of(exclude_pids)
    clock = ProgressClock()
    options = dataclasses.replace(options, progress=clock)
    with ProcessSampler(exclude_pids=exclude_pids, include_descendants=engine == "ray") as sampler:
        clock.start = t0 = time.perf_counter()
        summary = scan(source, out, checkpoint, options)
        end = time.perf_counter()
    images = int(summary.counts.get("scored", 0)) + int(summary.counts.get("failed", 0))
    processes = sampler.figures.to_dict()
    # The object store (moto) shares the machine's cores: its CPU is shown, apart.
    processes["object_store_cpu_s"] = cpu_seconds_of(exclude_pids) - store_cpu_before if exclude_pids else None
    return summary, end - t0, processes, clock.figures(images, end)


def measure_source(source_uri: str, out_uri: str, checkpoint: str, options: Any,
                   exclude_pids: set[int], engine: str) -> dict[str, Any]:
    """Full scan, then a rescan of the unchanged lake into the same OUT."""
    from vip2scan.pipeline.storage.accounting import per_thousand_images

    summary, wall, processes, progress = timed_scan(source_uri, out_uri, checkpoint, options, exclude_pids, engine)
    images = int(summary.counts.get("scored", 0)) + int(summary.counts.get("failed", 0))
    ips = images / wall if wall > 0 else None
    cpu_s = processes.pop("cpu_s")
    cpu_by_role = processes.pop("cpu_s_by_role")
    store_cpu_s = processes.pop("object_store_cpu_s")
    rescan, rescan_wall, _, _ = timed_scan(source_uri, out_uri, checkpoint, options, exclude_pids, engine)
    return {
        "pipeline": {"images": images, "failed": int(summary.counts.get("failed", 0)), "wall_s": wall,
                     "images_per_s": ips, "ms_per_image": None if not images else 1000.0 * wall / images,
                     # Start-up (model loads, actor start) apart: the rate once rows flow.
                     **progress,
                     # CPU time of driver + Ray processes: what the pipeline costs, whatever else runs.
                     "cpu_ms_per_image": None if not images or cpu_s is None else 1000.0 * cpu_s / images,
                     "cpu_ms_per_image_by_role": {role: 1000.0 * v / images for role, v in cpu_by_role.items()}
                     if images else None,
                     "object_store_cpu_ms_per_image": None if not images or store_cpu_s is None
                     else 1000.0 * store_cpu_s / images,
                     "run_id": summary.run_id, "counts": summary.counts, "io": summary.io,
                     # Requests by class and bytes per 1,000 images, with their list-price cost.
                     "storage": per_thousand_images(summary.io, images)},
        "stage_breakdown": stage_breakdown(summary.stage_s, wall, images),
        "memory": processes,
        "incremental": {"wall_s": rescan_wall, "fraction_of_full_scan": rescan_wall / wall if wall else None,
                        "inference_started": rescan.inference_started, "counts": rescan.counts,
                        "stage_s": rescan.stage_s, "io": rescan.io},
    }


def measure_scale(params: BenchParams, sources: Sources, checkpoint: str, device: str,
                  done: dict[int, dict]) -> dict[str, Any]:
    """Peak RSS of a full scan at each lake size (``done`` holds sizes already measured)."""
    kind = "local" if "local" in params.sources else params.sources[0]
    points = []
    for images in params.scale_images or ():
        memory = done.get(images) if kind == params.sources[0] else None
        if memory is None:
            uri, storage_options = sources.lake(kind, images)
            options = scan_options(params, device, storage_options)
            log(f"scale point: full scan of {images} images from {kind}")
            _, _, memory, _ = timed_scan(uri, sources.fresh_out(kind), checkpoint,
                                         options, sources.exclude_pids(), params.engine)
            for key in ("cpu_s", "cpu_s_by_role", "object_store_cpu_s"):
                memory.pop(key)
        points.append({"images": images, **memory})
    first, last = points[0], points[-1]
    return {"source": kind, "points": points,
            "max_growth": _max_growth(first, last, ("driver_peak_rss_mb", "workers_peak_rss_mb")),
            "max_private_growth": _max_growth(first, last, ("driver_peak_private_mb", "workers_peak_private_mb"))}


def _max_growth(first: dict, last: dict, keys: tuple[str, ...]) -> float | None:
    """The largest relative growth from the first to the last point over ``keys``."""
    ratios = [last[k] / first[k] - 1.0 for k in keys if first is not last and first.get(k) and last.get(k)]
    return max(ratios) if ratios else None


def run_bench(params: BenchParams) -> dict[str, Any]:
    """Every measurement of the bench, as one JSON-able dict (see report.empty_result)."""
    import torch

    from vip2scan.model.config import backbone_config
    from vip2scan.model.null import null_model_id

    spec = params.engine_spec
    device = spec.device or ("cuda" if torch.cuda.is_available() else "cpu")
    null = params.model == "null"
    if params.image_size is None:
        params.image_size = NULL_IMAGE_SIZE if null else \
            int(backbone_config(params.backbone)["vision_cfg"]["image_size"])
    params.workdir.mkdir(parents=True, exist_ok=True)
    env = environment(device, "null" if null else params.backbone, params.image_size, params.batch_size,
                      params.engine)
    settings = {"images": params.images, "sources": list(params.sources), "engine": params.engine,
                "model": params.model,
                "scale_images": list(params.scale_images or []) or None,
                "channels_last": spec.channels_last, "compile": spec.compile,
                "knobs": {"actors": spec.actors, "cpus_per_actor": spec.cpus_per_actor,
                          "decode_cpus": spec.decode_cpus, "torch_threads": spec.torch_threads,
                          "max_tasks_in_flight_per_actor": spec.max_tasks_in_flight_per_actor}}
    result = empty_result(env, settings)

    log(f"lake of {params.images} images at {params.image_size} px in {params.workdir}")
    ensure_local_lake(params.workdir, params.images, params.image_size)
    if null:
        checkpoint = null_checkpoint(params.image_size)
        log(f"null model on {device}, batch {params.batch_size}")
        null_model = measure_null_model(params.image_size, params.batch_size, device, params.bare_seconds)
        result["bare_model"] = {**null_model, "windows_images_per_s": [null_model["images_per_s"]]}
    else:
        checkpoint = "embedded" if params.model == "embedded" else \
            ensure_checkpoint(params.workdir, params.backbone, params.image_size)
        log(f"bare model on {device}, batch {params.batch_size}")
        bare_windows = [measure_bare(params, checkpoint, device)]

    sources = Sources(params.workdir, params.image_size, params.s3_endpoint, params.keep_outputs)
    memory_by_size: dict[int, dict] = {}
    try:
        with ray_running(params.engine) as ray_start_s:
            env["ray_start_s"] = ray_start_s
            for kind in params.sources:
                uri, storage_options = sources.lake(kind, params.images)
                options = scan_options(params, device, storage_options)
                log(f"pipeline ({params.engine}) from {kind}: full scan, then unchanged rescan")
                measured = measure_source(uri, sources.fresh_out(kind), checkpoint,
                                          options, sources.exclude_pids(), params.engine)
                for section, value in measured.items():
                    result[section][kind] = value  # efficiency is filled in with the bare model
                if kind == params.sources[0]:
                    memory_by_size[params.images] = measured["memory"]
            if params.scale_images:
                result["memory"]["scale"] = measure_scale(params, sources, checkpoint, device, memory_by_size)
    finally:
        sources.close()
    if params.large_photos:
        log(f"large-photo decode: {params.large_photos} generated 5 MP JPEGs")
        photo_checkpoint = ensure_checkpoint(params.workdir, params.backbone, params.image_size) \
            if null else checkpoint  # scores change with the decode rule only on a real model
        result["large_photos"] = measure_large_photos(params.large_photos, photo_checkpoint,
                                                      params.image_size, device)
    if null:
        # No efficiency: the pipeline against a model that costs nothing is the point itself.
        map_size = scan_options(params, device, {}).map_spec.map_size
        result["ceiling"] = {kind: ceiling_section(result["pipeline"][kind], result["stage_breakdown"][kind],
                                                   null_model, null_model_id(params.image_size), map_size)
                             for kind in SOURCES if result["pipeline"][kind] is not None}
        result["targets"] = ceiling_targets(result)
        return result
    log("bare model again, after the scans")
    bare_windows.append(measure_bare(params, checkpoint, device))
    set_bare_model(result, bare_windows)
    result["targets"] = evaluate_targets(result)
    return result
