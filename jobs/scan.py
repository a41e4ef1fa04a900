"""`vip2scan scan SOURCE --out OUT --checkpoint CKPT`: flags -> ScanOptions -> pipeline.scan."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from vip2scan.jobs.config import ConfigOption, storage_options_from_flags
from vip2scan.jobs.errors import EXIT_ALERT, EXIT_PARTIAL, BadParameter, UsageError, register_secret
from vip2scan.jobs.formatting import format_summary
from vip2scan.jobs.progress import ProgressBar, Terminal
from vip2scan.jobs.storage import StorageOption
from vip2scan.jobs.terminal import printable
from vip2scan.pipeline.options import ScanOptions
from vip2scan.pipeline.specs import EngineSpec, LimitSpec, MapSpec, default_of

EXAMPLE = (
    "Example: vip2scan scan s3://lake/line3/ --out s3://bucket/vip2scan --checkpoint s3://bucket/ckpt/best "
    "-s endpoint_url=http://127.0.0.1:9000 --batch-size 16"
)

MISSING_CHECKPOINT = (
    "missing --checkpoint (or VIP2SCAN_CHECKPOINT, or `checkpoint` in --config). Get one by: "
    "training (vip2scan train DATA --out CKPT), converting a released ViP2-CLIP .pth "
    "(vip2scan convert model.pth CKPT), or the small embedded model `vip2scan demo` scans with (--checkpoint embedded)"
)


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
    typer.echo(f"{reason:<9} {printable(image_uri)}")


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
    manifest_any_source: Annotated[bool, typer.Option(
        "--manifest-any-source", help="Accept --manifest entries outside SOURCE (entries inside "
                                      "OUT are always refused).")] = False,
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
    max_object_bytes: Annotated[int, typer.Option(
        metavar="BYTES", help="Objects larger than this (by the listing's size) become error "
                              "rows without being read.")] = \
        default_of(LimitSpec, "max_object_bytes"),
    strict: Annotated[bool, typer.Option("--strict", help="Exit 3 when some images became error rows.")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
    fail_on_alert: Annotated[bool, typer.Option(
        "--fail-on-alert", help="Exit 4 when the committed run raised an anomaly-rate alert "
                                "(see `vip2scan alerts`).")] = False,
    notify: Annotated[Optional[str], typer.Option(
        metavar="URL", callback=check_notify_url,
        help="POST the run's alerts as JSON to this http(s) URL after the commit (retried; "
             "a failure is one warning line).")] = None,
    notify_timeout: Annotated[float, typer.Option(
        metavar="S", min=0.1, hidden=True, help="Seconds --notify may take, all tries.")] = 20.0,
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
        retry_errors=retry_errors or None, manifest=manifest,
        manifest_any_source=manifest_any_source or None, include=tuple(include or ()) or None,
        exclude=tuple(exclude or ()) or None, suffixes=tuple(suffixes or ()) or None,
        ray_address=ray_address, wait=wait or None, max_image_pixels=max_image_pixels,
        max_object_bytes=max_object_bytes, engine=engine)
    storage_options = storage_options_from_flags(storage_option)
    # Usage errors first, before the storage and the model are touched (InvalidSetting: exit 2).
    options = ScanOptions(**{k: v for k, v in chosen.items() if v is not None},
                          storage_options=storage_options)
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
    if notify and summary.run_id:
        from vip2scan.pipeline.output.paths import REPORTS
        from vip2scan.pipeline.run.webhook import post_json, run_payload

        explorer = f"{summary.out.rstrip('/')}/{REPORTS}/explorer/index.html"
        typer.echo(post_json(notify, run_payload(summary, explorer), budget_s=notify_timeout).line)
    if fail_on_alert and summary.alerts:
        raise typer.Exit(EXIT_ALERT)
    if strict and int((summary.counts or {}).get("failed", 0) or 0) > 0:
        raise typer.Exit(EXIT_PARTIAL)


def check_notify_url(value: Optional[str]) -> Optional[str]:
    """An http(s) URL; remembered as a secret, so no message ever quotes its token."""
    if value is None:
        return None
    from vip2scan.pipeline.run.webhook import WebhookError, check_webhook_url
    from vip2scan.pipeline.storage.redaction import register_uri_secrets

    register_secret(value)
    register_uri_secrets(value)
    try:
        return check_webhook_url(value)
    except WebhookError as exc:
        raise BadParameter(str(exc)) from None


def parse_maps_mode(value: str | None) -> str | None:
    """``--maps``; a config file's ``maps = true/false`` (the old switch) means all/none."""
    if value is None:
        return None
    text = str(value).strip().lower()
    return {"true": "all", "false": "none"}.get(text, text)


def register(app: typer.Typer) -> None:
    app.command("scan", epilog=EXAMPLE)(scan)
