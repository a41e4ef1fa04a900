"""`vip2scan bench`: the pipeline against the bare model, on one machine, in one run.

    vip2scan bench [--backbone vip2-tiny] [--image-size N] [--images 2000] [--source local|s3|both]
                   [--device cpu|cuda] [--batch-size B] [--scale] [--engine ray|local] [--json OUT]

Measures (issue 6): bare-model images/s and ms/image; full-scan images/s per source (a local
directory; S3 via moto on 127.0.0.1, started here unless --s3-endpoint is given); efficiency =
pipeline / bare; the scan's stage breakdown; peak RSS of the driver and Ray workers (with
--scale at 2,000 and 20,000 images); an unchanged-lake rescan as a fraction of the full scan;
and the environment. Prints a table and writes one JSON object.

Also runnable without the rest of the CLI (the GPU machine has no Ray):
``python -m vip2scan.jobs.bench --engine local ...``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Iterator, Optional

import typer

from vip2scan.jobs import bench_report, bench_setup

EXAMPLE = "Example: vip2scan bench --images 2000 --source both --json bench.json"
DEFAULT_SCALE_IMAGES = (2_000, 20_000)


@dataclass
class BenchParams:
    backbone: str
    image_size: int | None
    images: int
    sources: tuple[str, ...]
    device: str | None
    batch_size: int
    engine: str
    scale_images: tuple[int, ...] | None
    workdir: Path
    s3_endpoint: str | None
    channels_last: bool = False
    compile_model: bool = False
    keep_outputs: bool = False
    bare_seconds: float = 3.0  # per bare-model window (two windows: before and after the scans)
    # Pipeline sizing knobs, passed to ScanOptions as given (None: the pipeline's default).
    actors: tuple[int, int] | None = None
    cpus_per_actor: float | None = None
    decode_cpus: float | None = None
    torch_threads: int | None = None
    max_tasks_in_flight: int | None = None


def _log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- Ray

@contextlib.contextmanager
def ray_running(engine: str) -> Iterator[float | None]:
    """Start a local Ray once for every scan of the bench (a nightly scan joins a running
    cluster, so cluster start-up is reported apart, not charged to the pipeline)."""
    if engine != "ray":
        yield None
        return
    import ray

    started = not ray.is_initialized()
    t0 = time.perf_counter()
    if started:
        # Ray starts its workers at nice 15, the driver (where the bare model is measured)
        # stays at 0: on a machine with any other load the comparison would then measure
        # the scheduler, not the pipeline. Same priority for both unless the caller says so.
        os.environ.setdefault("RAY_worker_niceness", "0")
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    try:
        yield time.perf_counter() - t0
    finally:
        if started:
            ray.shutdown()


# --------------------------------------------------------------------------- measurements

def measure_bare(params: BenchParams, checkpoint: str, device: str) -> dict[str, Any]:
    from vip2scan.pipeline.benchmark import measure_bare_model
    from vip2scan.pipeline.infer import ModelSpec, load_detector

    detector = load_detector(ModelSpec(checkpoint), device=device)
    try:
        result = measure_bare_model(detector, params.batch_size, device=device,
                                    threads=params.torch_threads, channels_last=params.channels_last,
                                    compile_model=params.compile_model, min_seconds=params.bare_seconds)
    finally:
        del detector
        gc.collect()
    return result.to_dict()


def scan_options(params: BenchParams, device: str, storage_options: dict) -> Any:
    from vip2scan.pipeline import ScanOptions

    knobs = {"actors": params.actors, "cpus_per_actor": params.cpus_per_actor,
             "decode_cpus": params.decode_cpus, "torch_threads": params.torch_threads,
             "max_tasks_in_flight_per_actor": params.max_tasks_in_flight}
    # The pipeline's actor runs the model as the bare measurement does.
    return ScanOptions(batch_size=params.batch_size, device=device, storage_options=dict(storage_options),
                       engine=params.engine, channels_last=params.channels_last,
                       compile=params.compile_model,
                       **{k: v for k, v in knobs.items() if v is not None})


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
    from vip2scan.pipeline.benchmark import ProcessSampler

    gc.collect()
    store_cpu_before = _cpu_of(exclude_pids)
    clock = ProgressClock()
    options = dataclasses.replace(options, progress=clock)
    with ProcessSampler(exclude_pids=exclude_pids, include_descendants=engine == "ray") as sampler:
        clock.start = t0 = time.perf_counter()
        summary = scan(source, out, checkpoint, options)
        end = time.perf_counter()
    images = int(summary.counts.get("scored", 0)) + int(summary.counts.get("failed", 0))
    processes = sampler.figures.to_dict()
    # The object store (moto) shares the machine's cores: its CPU is shown, apart.
    processes["object_store_cpu_s"] = _cpu_of(exclude_pids) - store_cpu_before if exclude_pids else None
    return summary, end - t0, processes, clock.figures(images, end)


def _cpu_of(pids: set[int]) -> float:
    import psutil

    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
    return total


def measure_source(source_uri: str, out_uri: str, checkpoint: str, options: Any,
                   exclude_pids: set[int], engine: str) -> dict[str, Any]:
    """Full scan, then a rescan of the unchanged lake into the same OUT."""
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
                     "run_id": summary.run_id, "counts": summary.counts, "io": summary.io},
        "stage_breakdown": bench_report.stage_breakdown(summary.stage_s, wall, images),
        "memory": processes,
        "incremental": {"wall_s": rescan_wall, "fraction_of_full_scan": rescan_wall / wall if wall else None,
                        "inference_started": rescan.inference_started, "counts": rescan.counts,
                        "stage_s": rescan.stage_s},
    }


def measure_scale(params: BenchParams, sources: bench_setup.Sources, checkpoint: str, device: str,
                  done: dict[int, dict]) -> dict[str, Any]:
    """Peak RSS of a full scan at each lake size (``done`` holds sizes already measured)."""
    kind = "local" if "local" in params.sources else params.sources[0]
    points = []
    for images in params.scale_images or ():
        memory = done.get(images) if kind == params.sources[0] else None
        if memory is None:
            uri, storage_options = sources.lake(kind, images)
            options = scan_options(params, device, storage_options)
            _log(f"scale point: full scan of {images} images from {kind}")
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
    """Everything issue 6 asks for, as one JSON-able dict."""
    import torch

    from vip2scan.model.config import backbone_config
    from vip2scan.pipeline.benchmark import environment

    device = params.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if params.image_size is None:
        params.image_size = int(backbone_config(params.backbone)["vision_cfg"]["image_size"])
    params.workdir.mkdir(parents=True, exist_ok=True)
    env = environment(device, params.backbone, params.image_size, params.batch_size, params.engine)
    settings = {"images": params.images, "sources": list(params.sources), "engine": params.engine,
                "scale_images": list(params.scale_images or []) or None,
                "channels_last": params.channels_last, "compile": params.compile_model,
                "knobs": {"actors": params.actors, "cpus_per_actor": params.cpus_per_actor,
                          "decode_cpus": params.decode_cpus, "torch_threads": params.torch_threads,
                          "max_tasks_in_flight_per_actor": params.max_tasks_in_flight}}
    result = bench_report.empty_result(env, settings)

    _log(f"lake of {params.images} images at {params.image_size} px in {params.workdir}")
    bench_setup.ensure_local_lake(params.workdir, params.images, params.image_size)
    checkpoint = bench_setup.ensure_checkpoint(params.workdir, params.backbone, params.image_size)
    _log(f"bare model on {device}, batch {params.batch_size}")
    bare_windows = [measure_bare(params, checkpoint, device)]

    sources = bench_setup.Sources(params.workdir, params.image_size, params.s3_endpoint, params.keep_outputs)
    memory_by_size: dict[int, dict] = {}
    try:
        with ray_running(params.engine) as ray_start_s:
            env["ray_start_s"] = ray_start_s
            for kind in params.sources:
                uri, storage_options = sources.lake(kind, params.images)
                options = scan_options(params, device, storage_options)
                _log(f"pipeline ({params.engine}) from {kind}: full scan, then unchanged rescan")
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
    _log("bare model again, after the scans")
    bare_windows.append(measure_bare(params, checkpoint, device))
    bench_report.set_bare_model(result, bare_windows)
    result["targets"] = bench_report.evaluate_targets(result)
    return result


# --------------------------------------------------------------------------- CLI

def _parse_sizes(value: Optional[str]) -> tuple[int, ...]:
    try:
        sizes = tuple(int(v) for v in (value or "").split(",") if v.strip())
    except ValueError:
        raise typer.BadParameter(f"expected N,N,..., got {value!r}", param_hint="'--scale-images'") from None
    if len(sizes) < 2 or min(sizes) < 1:
        raise typer.BadParameter("give at least two positive sizes", param_hint="'--scale-images'")
    return sizes


def bench(
    backbone: Annotated[str, typer.Option(help="OpenCLIP backbone (random weights).")] = "vip2-tiny",
    image_size: Annotated[Optional[int], typer.Option(
        help="Model input size (default: the backbone's native size).")] = None,
    images: Annotated[int, typer.Option(min=1, help="Images in the generated lake.")] = 2000,
    source: Annotated[str, typer.Option(
        help="local, s3 (moto on 127.0.0.1 unless --s3-endpoint) or both.")] = "both",
    device: Annotated[Optional[str], typer.Option(help="cpu or cuda (default: cuda when available).")] = None,
    batch_size: Annotated[int, typer.Option(
        min=1, help="Images per inference batch (bare model and pipeline; the scan's default).")] = 32,
    scale: Annotated[bool, typer.Option(
        "--scale", help="Also measure peak RSS at 2,000 and 20,000 images.")] = False,
    scale_images: Annotated[Optional[str], typer.Option(
        help="Lake sizes for --scale (default 2000,20000).")] = None,
    engine: Annotated[str, typer.Option(help="ray (Ray Data) or local (threads, no Ray).")] = "ray",
    json_out: Annotated[Optional[str], typer.Option(
        "--json", help="Write the JSON object here ('-': stdout).")] = None,
    workdir: Annotated[Optional[Path], typer.Option(
        help="Lake cache and outputs (default ~/.cache/vip2scan/bench).")] = None,
    s3_endpoint: Annotated[Optional[str], typer.Option(
        help="Existing S3 endpoint (credentials from AWS_* env).")] = None,
    channels_last: Annotated[bool, typer.Option(
        "--channels-last", help="Model input in channels_last layout (bare model and pipeline).")] = False,
    compile_model: Annotated[bool, typer.Option(
        "--compile", help="Model through torch.compile (bare model and pipeline).")] = False,
    keep_outputs: Annotated[bool, typer.Option("--keep-outputs", help="Keep the scans' OUT folders.")] = False,
    bare_seconds: Annotated[float, typer.Option(min=0.1, help="Seconds per bare-model window.")] = 3.0,
    actors: Annotated[Optional[int], typer.Option(help="Pipeline knob: inference actors.")] = None,
    cpus_per_actor: Annotated[Optional[float], typer.Option(
        help="Pipeline knob: CPUs each actor reserves.")] = None,
    decode_cpus: Annotated[Optional[float], typer.Option(help="Pipeline knob: CPUs per decode task.")] = None,
    torch_threads: Annotated[Optional[int], typer.Option(help="Torch threads (bare model and actors).")] = None,
    max_tasks_in_flight: Annotated[Optional[int], typer.Option(
        help="Pipeline knob: batches queued per actor.")] = None,
) -> None:
    """Measure the scan pipeline against the bare model (throughput, stages, memory, rescan)."""
    if source not in ("local", "s3", "both"):
        raise typer.BadParameter("choose local, s3 or both", param_hint="'--source'")
    if engine not in ("ray", "local"):
        raise typer.BadParameter("choose ray or local", param_hint="'--engine'")
    if device is not None and device.split(":")[0] not in ("cpu", "cuda"):
        raise typer.BadParameter("choose cpu or cuda", param_hint="'--device'")
    params = BenchParams(
        backbone=backbone, image_size=image_size, images=images,
        sources=("local", "s3") if source == "both" else (source,), device=device, batch_size=batch_size,
        engine=engine, scale_images=(_parse_sizes(scale_images) if scale_images else DEFAULT_SCALE_IMAGES)
        if scale else None, workdir=workdir or bench_setup.default_workdir(), s3_endpoint=s3_endpoint,
        channels_last=channels_last, compile_model=compile_model, keep_outputs=keep_outputs,
        bare_seconds=bare_seconds,
        actors=None if actors is None else (actors, actors), cpus_per_actor=cpus_per_actor,
        decode_cpus=decode_cpus, torch_threads=torch_threads, max_tasks_in_flight=max_tasks_in_flight)
    result = run_bench(params)
    text = json.dumps(result, indent=2, default=str)
    if json_out == "-":
        typer.echo(text)
    else:
        typer.echo(bench_report.format_table(result))
        if json_out:
            Path(json_out).parent.mkdir(parents=True, exist_ok=True)
            Path(json_out).write_text(text + "\n")


def register(app: typer.Typer) -> None:
    app.command("bench", epilog=EXAMPLE)(bench)


def main() -> None:
    """Stand-alone entry point: ``python -m vip2scan.jobs.bench [OPTIONS]`` (no other command
    modules are imported, so it runs where Ray or moto are missing)."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    register(app)  # a single command: typer runs it without a subcommand name
    app()


if __name__ == "__main__":
    main()
