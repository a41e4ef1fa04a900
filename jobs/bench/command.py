"""`vip2scan bench`: the pipeline against the bare model, on one machine, in one run.

    vip2scan bench [--backbone vip2-tiny] [--image-size N] [--images 2000] [--source local|s3|both]
                   [--device cpu|cuda] [--batch-size B] [--scale] [--engine ray|local] [--json OUT]
                   [--model detector|embedded|null]
                   [--map-store N]   map-store requests per 1,000 images (mapstore.py)
    vip2scan bench --plan N [--nights H] [--json OUT]   planning and `latest` at N objects (plan.py)
    vip2scan bench --analyst N [--nights H] [--json OUT]   explore, report, calibrate, verify (analyst.py)

Measures bare-model images/s and ms/image; full-scan images/s per source (a local
directory; S3 via moto on 127.0.0.1, started here unless --s3-endpoint is given); efficiency =
pipeline / bare; the scan's stage breakdown; peak RSS of the driver and Ray workers (with
--scale at 2,000 and 20,000 images); an unchanged-lake rescan as a fraction of the full scan;
and the environment. Prints a table and writes one JSON object. With ``--model null`` the
scans use the null detector instead: the data plane's ceiling (see ceiling.py).

Also runnable without the rest of the CLI (the GPU machine has no Ray):
``python -m vip2scan.jobs.bench --engine local ...``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from vip2scan.errors import InvalidSetting
from vip2scan.jobs.errors import flag_of
from vip2scan.pipeline.specs import EngineSpec, MapSpec, default_of

from .lakes import default_workdir
from .report import format_table
from .runner import DEFAULT_SCALE_IMAGES, BenchParams, run_bench

EXAMPLE = "Example: vip2scan bench --images 2000 --source both --json bench.json"


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
        help="Images per inference batch (bare model and pipeline).")] = default_of(EngineSpec, "batch_size"),
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
    large_photos: Annotated[int, typer.Option(
        min=0, help="Also time decoding N generated 5 MP JPEGs (exact vs fast path).")] = 0,
    model: Annotated[str, typer.Option(
        help="detector (random weights of --backbone), embedded (the shipped checkpoint, "
             "--checkpoint embedded: vip2-synth at 112 px) or null: the data plane's ceiling with a "
             "stand-in of ~zero cost (64 px unless --image-size; CPU ms/image by role).")] = "detector",
    plan_objects: Annotated[Optional[int], typer.Option(
        "--plan", min=1, metavar="N", help="Instead: time planning (--dry-run, a manifest of N "
        "objects) and `SELECT ... FROM latest` after --nights nights of history.")] = None,
    analyst_objects: Annotated[Optional[int], typer.Option(
        "--analyst", min=1, metavar="N", help="Instead: time explore, report, calibrate and "
        "verify, each in a fresh process, after --nights nights of history of N objects.")] = None,
    nights: Annotated[Optional[int], typer.Option(
        min=1, help="With --plan or --analyst: nights of history (1 % of the objects change "
                    "each; default 3 with --plan, 30 with --analyst).")] = None,
    map_store: Annotated[int, typer.Option(
        min=0, metavar="N", help="Also count the map store's PUTs/GETs/bytes per 1,000 images "
                                 "for each --maps mode and shard size (N synthetic maps).")] = 0,
    map_store_size: Annotated[int, typer.Option(
        metavar="PX", help="Map size for --map-store.")] = default_of(MapSpec, "map_size"),
) -> None:
    """Measure the scan pipeline against the bare model (throughput, stages, memory, rescan)."""
    if plan_objects is not None and analyst_objects is not None:
        raise typer.BadParameter("give --plan or --analyst, not both", param_hint="'--analyst'")
    if plan_objects is not None:  # a bench of its own: planning and `latest` (plan.py)
        from .plan import run_plan_bench, write_plan_result

        write_plan_result(run_plan_bench(plan_objects, nights or 3, workdir or default_workdir(),
                                         keep_outputs), json_out)
        return
    if analyst_objects is not None:  # the analyst's commands at N objects (analyst.py)
        from .analyst import run_analyst_bench, write_analyst_result

        write_analyst_result(run_analyst_bench(analyst_objects, nights or 30,
                                               workdir or default_workdir(), keep_outputs), json_out)
        return
    if source not in ("local", "s3", "both"):
        raise typer.BadParameter("choose local, s3 or both", param_hint="'--source'")
    if engine not in ("ray", "local"):  # the bench measures one engine, never "auto"
        raise typer.BadParameter("choose ray or local", param_hint="'--engine'")
    if model not in ("detector", "embedded", "null"):
        raise typer.BadParameter("choose detector, embedded or null", param_hint="'--model'")
    if model == "embedded":
        from vip2scan.model.pretraining.loop import EMBEDDED_BACKBONE

        backbone = EMBEDDED_BACKBONE
    knobs = {"engine": engine, "batch_size": batch_size, "device": device,
             "channels_last": channels_last, "compile": compile_model,
             "actors": None if actors is None else (actors, actors),
             "cpus_per_actor": cpus_per_actor, "decode_cpus": decode_cpus,
             "torch_threads": torch_threads, "max_tasks_in_flight_per_actor": max_tasks_in_flight}
    try:  # validated as the scan's flags are: the same spec, the same message (the bench also
        # runs as its own program, without the CLI's error table)
        engine_spec = EngineSpec(**{k: v for k, v in knobs.items() if v is not None})
    except InvalidSetting as exc:
        raise typer.BadParameter(exc.problem, param_hint=repr(flag_of(exc.setting))) from None
    params = BenchParams(
        backbone=backbone, image_size=image_size, images=images,
        sources=("local", "s3") if source == "both" else (source,), engine_spec=engine_spec,
        scale_images=(_parse_sizes(scale_images) if scale_images else DEFAULT_SCALE_IMAGES)
        if scale else None, workdir=workdir or default_workdir(), s3_endpoint=s3_endpoint,
        keep_outputs=keep_outputs, bare_seconds=bare_seconds, large_photos=large_photos,
        model=model)
    result = run_bench(params)
    if map_store:
        from .mapstore import run_map_store_bench

        try:
            map_spec = MapSpec(map_size=map_store_size)
        except InvalidSetting as exc:
            raise typer.BadParameter(exc.problem, param_hint=repr("--map-store-size")) from None
        result["map_store"] = run_map_store_bench(map_store, map_spec.map_size)
    text = json.dumps(result, indent=2, default=str)
    if json_out == "-":
        typer.echo(text)
    else:
        typer.echo(format_table(result))
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
