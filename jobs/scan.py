"""`vip2scan scan SOURCE --out OUT --checkpoint CKPT`: flags -> ScanOptions -> pipeline.scan."""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from vip2scan.jobs.calibrate import threshold_lines
from vip2scan.jobs.config import ConfigOption, storage_options_from_flags
from vip2scan.jobs.errors import EXIT_PARTIAL, BadParameter, UsageError
from vip2scan.jobs.progress import ProgressBar, Terminal
from vip2scan.jobs.query import StorageOption
from vip2scan.errors import InvalidSetting
from vip2scan.pipeline.options import ScanOptions
from vip2scan.pipeline.specs import EngineSpec, LimitSpec, MapSpec, default_of

if TYPE_CHECKING:
    from vip2scan.pipeline import RunSummary

EXAMPLE = (
    "Example: vip2scan scan s3://lake/line3/ --out s3://bucket/vip2scan --checkpoint s3://bucket/ckpt/best "
    "-s endpoint_url=http://127.0.0.1:9000 --batch-size 16"
)

MISSING_CHECKPOINT = (
    "missing --checkpoint (or VIP2SCAN_CHECKPOINT, or `checkpoint` in --config). Get one by: "
    "training (vip2scan train DATA --out CKPT), converting a released ViP2-CLIP .pth "
    "(vip2scan convert model.pth CKPT), or running the demo (vip2scan demo; it writes demo-out/checkpoint)"
)



# Storage option names safe to echo back in the suggested follow-up commands.
_PUBLIC_STORAGE_OPTIONS = ("endpoint_url", "region_name", "anon", "use_ssl", "requester_pays")


def parse_actors(value: Optional[str]) -> Optional[tuple[int, int]]:
    """'4' -> (4, 4); '1..4' -> (1, 4); None -> pipeline default (EngineSpec checks the range)."""
    if value is None:
        return None
    low, sep, high = value.partition("..")
    try:
        return (int(low), int(high)) if sep else (int(low), int(low))
    except ValueError:
        raise BadParameter(f"expected N or MIN..MAX, got {value!r}", param_hint="'--actors'") from None


def print_todo(reason: str, image_uri: str) -> None:
    """One line per object a dry run would score: the reason, then the URI (cut -c11-)."""
    typer.echo(f"{reason:<9} {image_uri}")


def follow_up_commands(summary: RunSummary, out: str, storage_options: dict) -> list[str]:
    """Ready-to-paste query and report lines for this run (secrets never included)."""
    flags = "".join(f" -s {shlex.quote(f'{k}={v}')}" for k, v in storage_options.items()
                    if k in _PUBLIC_STORAGE_OPTIONS)
    sql = f"SELECT status, is_anomalous, count(*) AS n FROM scores WHERE run_id = '{summary.run_id}' GROUP BY ALL"
    return [
        f"vip2scan query {shlex.quote(out)} \"{sql}\"{flags}",  # run ids are [0-9A-Za-z-]: safe in "..."
        f"vip2scan report {shlex.quote(out)} --run {summary.run_id}{flags}",
    ]


def engine_lines(summary: RunSummary) -> list[str]:
    """Which engine scored and why, where Ray's own notices went, and a pending run."""
    lines = [f"  engine {summary.engine} ({summary.engine_reason})"] if summary.engine else []
    if summary.engine_log:
        lines.append(f"  ray log: {summary.engine_log}")
    pending = summary.pending
    if pending is not None:
        lines.append(f"  pending: run {pending.run_id} was interrupted with {pending.staged} of "
                     f"{pending.total} rows staged; the next scan resumes it before anything new")
    return lines


def format_summary(summary: RunSummary, out: str, storage_options: dict) -> str:
    """Counts, failures, speed, where the outputs are, and what to run next."""
    counts = dict(summary.counts or {})
    shown = ", ".join(f"{k} {v}" for k, v in counts.items())
    rate = f", {summary.images_per_s:.1f} images/s" if summary.images_per_s else ""
    title = f"run {summary.run_id}: {summary.status}" if summary.run_id else summary.status.replace("_", " ")
    lines = [f"{title} in {summary.wall_s:.1f} s{rate}", f"  {shown}"]
    if summary.model_id:
        lines.append(f"  model {summary.model_id}")
    lines += engine_lines(summary)
    from vip2scan.pipeline.storage.accounting import IoCounts, cost_line

    requests = IoCounts.from_record(summary.io or {})
    if requests.total_requests():  # S3 only: local files are not counted (accounting.py)
        lines.append("  " + cost_line(requests, int((summary.io or {}).get("objects_read", 0))))
    if counts.get("scored") or summary.run_id is None:  # quiet nights: no rows, no threshold
        lines += [f"  {line}" for line in threshold_lines(
            summary.image_threshold, summary.threshold_source, summary.image_thresholds, out,
            summary.threshold_note)]
    skipped = summary.skipped_by_suffix
    if skipped:
        shown_skipped = ", ".join(f"{k} {n}" for k, n in skipped.items())
        lines.append(f"  not scanned, no image suffix: {shown_skipped} (add formats with --suffixes)")
    lines += [f"  warning: {w}" for w in summary.warnings]
    failed = int(counts.get("failed", 0) or 0)
    if failed:
        lines.append(f"  {failed} image(s) could not be scored (status='error' rows, with the reason)")
    for label, where in (("scores", summary.scores_uri), ("maps", summary.maps_uri), ("record", summary.record_uri)):
        if where:
            lines.append(f"  {label}: {where}")
    vanished = int(counts.get("vanished", 0) or 0)
    if summary.record_uri and not counts.get("scored") and not failed and vanished:
        # A night that only lost objects did change something: say what it found.
        lines.append(f"  no images to score; {vanished} vanished since the last run "
                     "(gone from the latest view)")
    elif summary.record_uri and not counts.get("scored") and not failed:
        lines.append("  nothing new or changed since the last run: no inference ran")
    elif summary.record_uri:  # a dry run writes no record: nothing to query yet
        lines.append("next:")
        lines += [f"  {cmd}" for cmd in follow_up_commands(summary, out, storage_options)]
    return "\n".join(lines)


def scan(
    source: Annotated[str, typer.Argument(
        metavar="SOURCE", help="Image lake: s3://bucket/prefix, file:///dir or a path.")],
    out: Annotated[str, typer.Option(metavar="OUT", help="Where scores/, maps/, runs/ go (path or URI).")],
    checkpoint: Annotated[Optional[str], typer.Option(
        envvar="VIP2SCAN_CHECKPOINT", metavar="CKPT", show_envvar=True,
        help="Our checkpoint, a training output (its latest epoch) or a released .pth.")] = None,
    backbone: Annotated[Optional[str], typer.Option(
        metavar="NAME", help="Override the checkpoint's OpenCLIP backbone.")] = None,
    weights: Annotated[Optional[str], typer.Option(
        metavar="FILE|TAG", help="Backbone weights: safetensors file or OpenCLIP tag.")] = None,
    image_size: Annotated[Optional[int], typer.Option(metavar="PX", help="Model input size.")] = None,
    batch_size: Annotated[int, typer.Option(
        metavar="N", help="Images per inference batch.")] = default_of(EngineSpec, "batch_size"),
    actors: Annotated[Optional[str], typer.Option(
        metavar="N|MIN..MAX", help="Inference actors (default: one per GPU, else one).")] = None,
    gpus_per_actor: Annotated[Optional[float], typer.Option(
        metavar="N", help="GPUs each actor reserves (0: CPU).")] = None,
    compile_model: Annotated[bool, typer.Option(
        "--compile", help="torch.compile the model (GPU; costs a warm-up).")] = False,
    channels_last: Annotated[bool, typer.Option(
        "--channels-last", help="Feed the model channels_last input.")] = False,
    map_size: Annotated[int, typer.Option(
        metavar="PX", help="Stored anomaly-map size (square).")] = default_of(MapSpec, "map_size"),
    maps: Annotated[str, typer.Option(
        metavar="all|anomalous|none", help="Which rows get an anomaly map in Zarr: all, only "
                                            "those at or above the threshold, or none.")] = \
        default_of(MapSpec, "maps"),
    no_maps: Annotated[bool, typer.Option("--no-maps", hidden=True, help="Same as --maps none.")] = False,
    map_dtype: Annotated[str, typer.Option(
        metavar="float16|uint8", help="Stored map values (uint8: quantised, error <= 1/508).")] = \
        default_of(MapSpec, "map_dtype"),
    maps_per_shard: Annotated[Optional[int], typer.Option(
        metavar="K", help="Maps per Zarr shard object (default: about 4 MB of maps).")] = None,
    image_threshold: Annotated[Optional[float], typer.Option(
        "--image-threshold", "--threshold",
        metavar="T", help="Image threshold (default: the checkpoint's labelled one, else "
                          "OUT's `vip2scan calibrate`, else 0.5).")] = None,
    pixel_threshold: Annotated[Optional[float], typer.Option(
        metavar="T", help="Pixel threshold (default: calibrated, else 0.5).")] = None,
    full: Annotated[bool, typer.Option("--full", help="Rescan everything, not only new or changed.")] = False,
    limit: Annotated[Optional[int], typer.Option(metavar="N", help="Scan at most N objects.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List and diff only; print the counts.")] = False,
    list_todo: Annotated[bool, typer.Option(
        "--list", help="With --dry-run: print each object to score and why.")] = False,
    retry_errors: Annotated[bool, typer.Option(
        "--retry-errors", help="Also rescan objects whose last row was an error.")] = False,
    manifest: Annotated[Optional[str], typer.Option(
        metavar="FILE", help="Parquet/CSV of image_uri (e.g. S3 Inventory) instead of a listing.")] = None,
    include: Annotated[Optional[list[str]], typer.Option(
        metavar="GLOB", help="Keys to scan, relative to SOURCE, any case; * also matches / "
                             "(repeatable).")] = None,
    exclude: Annotated[Optional[list[str]], typer.Option(
        metavar="GLOB", help="Keys to skip (repeatable).")] = None,
    suffixes: Annotated[Optional[list[str]], typer.Option(
        metavar="LIST", help="More suffixes to scan, e.g. .jfif,.gif (repeatable).")] = None,
    storage_option: StorageOption = None,
    engine: Annotated[str, typer.Option(
        metavar="auto|ray|local", help="ray, local (threads in this process) or auto: local "
                                        "below 300 images to score and no Ray cluster given.")] = \
        default_of(EngineSpec, "engine"),
    ray_address: Annotated[Optional[str], typer.Option(
        metavar="ADDR", help="Ray cluster to run on (default: $RAY_ADDRESS, else a local Ray).")] = None,
    wait: Annotated[bool, typer.Option(
        "--wait", help="If another scan holds OUT's lock, wait for it.")] = False,
    max_image_pixels: Annotated[int, typer.Option(
        metavar="N", help="Larger images become error rows (decompression-bomb guard).")] = \
        default_of(LimitSpec, "max_image_pixels"),
    strict: Annotated[bool, typer.Option("--strict", help="Exit 3 when some images became error rows.")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
    config: ConfigOption = None,
) -> None:
    """Score every new or changed image under SOURCE into Parquet rows and Zarr anomaly maps."""
    if not checkpoint:
        raise UsageError(MISSING_CHECKPOINT)
    if list_todo and not dry_run:
        raise BadParameter("--list only goes with --dry-run", param_hint="'--list'")
    # The flags' defaults are the specs' own; every value is validated by its spec, the same
    # way for a flag, a config file key and a Python caller.
    chosen = dict(
        backbone=backbone, weights=weights, image_size=image_size, batch_size=batch_size,
        actors=parse_actors(actors), gpus_per_actor=gpus_per_actor, compile=compile_model or None,
        channels_last=channels_last or None, map_size=map_size,
        maps="none" if no_maps else parse_maps_mode(maps), map_dtype=map_dtype,
        maps_per_shard=maps_per_shard, image_threshold=image_threshold,
        pixel_threshold=pixel_threshold, full=full or None, limit=limit, dry_run=dry_run or None,
        retry_errors=retry_errors or None, manifest=manifest, include=tuple(include or ()) or None,
        exclude=tuple(exclude or ()) or None, suffixes=tuple(suffixes or ()) or None,
        ray_address=ray_address, wait=wait or None, max_image_pixels=max_image_pixels,
        engine=engine)
    storage_options = storage_options_from_flags(storage_option)
    try:  # usage errors first, before the storage and the model are touched
        options = ScanOptions(**{k: v for k, v in chosen.items() if v is not None},
                              storage_options=storage_options)
    except InvalidSetting as exc:
        raise BadParameter(exc.problem, param_hint=f"'--{exc.setting.replace('_', '-')}'") from None
    from vip2scan.model.training.checkpoints import resolve_checkpoint
    from vip2scan.pipeline import ScanInterrupted
    from vip2scan.pipeline import scan as run_scan

    # A training run's output root means its latest epoch: resolved once, here, so every
    # actor of the run loads the same epoch even if training writes a newer one meanwhile.
    checkpoint = resolve_checkpoint(checkpoint, storage_options or None)
    terminal = Terminal()
    bar = ProgressBar(progress and not dry_run, terminal)
    options = options.replace(progress=bar, notify=terminal.say,
                              list_todo=print_todo if list_todo else None)
    try:
        summary = run_scan(source, out, checkpoint, options)
    except ScanInterrupted as exc:
        bar.close(keep=False)
        terminal.say(str(exc))  # the one line, then the exit code a shell expects
        raise typer.Exit(exc.exit_code) from None
    finally:
        bar.close()
        terminal.close()
    typer.echo(format_summary(summary, out, storage_options))
    if strict and int((summary.counts or {}).get("failed", 0) or 0) > 0:
        raise typer.Exit(EXIT_PARTIAL)


def parse_maps_mode(value: str | None) -> str | None:
    """``--maps``; a config file's ``maps = true/false`` (the old switch) means all/none."""
    if value is None:
        return None
    text = str(value).strip().lower()
    return {"true": "all", "false": "none"}.get(text, text)


def register(app: typer.Typer) -> None:
    app.command("scan", epilog=EXAMPLE)(scan)
