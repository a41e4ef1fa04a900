"""`vip2scan scan SOURCE --out OUT --checkpoint CKPT`: flags -> ScanOptions -> pipeline.scan."""

from __future__ import annotations

import shlex
import sys
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from vip2scan.jobs.config import ConfigOption, storage_options_from_flags
from vip2scan.jobs.errors import EXIT_PARTIAL, BadParameter, UsageError
from vip2scan.jobs.query import StorageOption

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
    """'4' -> (4, 4); '1..4' -> (1, 4); None -> pipeline default."""
    if value is None:
        return None
    low, sep, high = value.partition("..")
    try:
        pair = (int(low), int(high)) if sep else (int(low), int(low))
    except ValueError:
        raise BadParameter(f"expected N or MIN..MAX, got {value!r}", param_hint="'--actors'") from None
    if pair[0] < 1 or pair[1] < pair[0]:
        raise BadParameter(f"need 1 <= MIN <= MAX, got {value!r}", param_hint="'--actors'")
    return pair


def follow_up_commands(summary: RunSummary, out: str, storage_options: dict) -> list[str]:
    """Ready-to-paste query and report lines for this run (secrets never included)."""
    flags = "".join(f" -s {shlex.quote(f'{k}={v}')}" for k, v in storage_options.items()
                    if k in _PUBLIC_STORAGE_OPTIONS)
    sql = f"SELECT status, is_anomalous, count(*) AS n FROM scores WHERE run_id = '{summary.run_id}' GROUP BY ALL"
    return [
        f"vip2scan query {shlex.quote(out)} \"{sql}\"{flags}",  # run ids are [0-9A-Za-z-]: safe in "..."
        f"vip2scan report {shlex.quote(out)} --run {summary.run_id}{flags}",
    ]


def format_summary(summary: RunSummary, out: str, storage_options: dict) -> str:
    """Counts, failures, speed, where the outputs are, and what to run next."""
    counts = dict(summary.counts or {})
    shown = ", ".join(f"{k} {v}" for k, v in counts.items())
    rate = f", {summary.images_per_s:.1f} images/s" if summary.images_per_s else ""
    title = f"run {summary.run_id}: {summary.status}" if summary.run_id else summary.status.replace("_", " ")
    lines = [f"{title} in {summary.wall_s:.1f} s{rate}", f"  {shown}"]
    if summary.model_id:
        lines.append(f"  model {summary.model_id}")
    failed = int(counts.get("failed", 0) or 0)
    if failed:
        lines.append(f"  {failed} image(s) could not be scored (status='error' rows, with the reason)")
    for label, where in (("scores", summary.scores_uri), ("maps", summary.maps_uri), ("record", summary.record_uri)):
        if where:
            lines.append(f"  {label}: {where}")
    if summary.record_uri and not counts.get("scored") and not failed:
        lines.append("  nothing new or changed since the last run: no inference ran")
    elif summary.record_uri:  # a dry run writes no record: nothing to query yet
        lines.append("next:")
        lines += [f"  {cmd}" for cmd in follow_up_commands(summary, out, storage_options)]
    return "\n".join(lines)


class ProgressBar:
    """The pipeline reports (done, total); we draw it with typer's progress bar on stderr."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._bar: Any = None
        self._done = 0

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or total <= 0:
            return
        if self._bar is None:
            self._bar = typer.progressbar(length=total, label="scanning", file=sys.stderr,
                                          show_pos=True, show_eta=True)
            self._bar.__enter__()
        self._bar.update(max(0, done - self._done))
        self._done = max(self._done, done)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None


def scan(
    source: Annotated[str, typer.Argument(help="Image lake: s3://bucket/prefix, file:///dir or a local path.")],
    out: Annotated[str, typer.Option(help="Where scores/, maps/, runs/ go (path or URI).")],
    checkpoint: Annotated[Optional[str], typer.Option(
        envvar="VIP2SCAN_CHECKPOINT",
        help="Our checkpoint directory, a training run's output (its latest epoch) or a released ViP2-CLIP .pth (path or URI).",
        show_envvar=True)] = None,
    backbone: Annotated[Optional[str], typer.Option(help="Override the checkpoint's OpenCLIP backbone.")] = None,
    weights: Annotated[Optional[str], typer.Option(
        help="Backbone weights: safetensors path/URI or OpenCLIP tag (TorchScript only via `convert`).")] = None,
    image_size: Annotated[Optional[int], typer.Option(help="Model input size in pixels.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(min=1, help="Images per inference batch.")] = None,
    actors: Annotated[Optional[str], typer.Option(
        metavar="N|MIN..MAX", help="Inference actors (default: one per GPU, else sized to the CPUs).")] = None,
    gpus_per_actor: Annotated[Optional[float], typer.Option(help="GPUs each actor reserves (0 for CPU).")] = None,
    compile_model: Annotated[bool, typer.Option(
        "--compile", help="torch.compile the model in each actor (GPU; costs a warm-up per actor).")] = False,
    channels_last: Annotated[bool, typer.Option(
        "--channels-last", help="Feed the model channels_last input (skips one copy per batch).")] = False,
    map_size: Annotated[int, typer.Option(min=1, help="Stored anomaly-map resolution (square).")] = 256,
    maps: Annotated[bool, typer.Option("--maps/--no-maps", help="Write anomaly maps to Zarr.")] = True,
    threshold: Annotated[Optional[float], typer.Option(
        help="Image-score threshold for is_anomalous (default: the checkpoint's calibrated value, else 0.5).")] = None,
    pixel_threshold: Annotated[Optional[float], typer.Option(
        help="Pixel threshold for anomalous_area_fraction (default: calibrated, else 0.5).")] = None,
    full: Annotated[bool, typer.Option("--full", help="Rescan everything, not only new or changed objects.")] = False,
    limit: Annotated[Optional[int], typer.Option(min=1, help="Scan at most N objects this run.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List and diff only; print the counts.")] = False,
    retry_errors: Annotated[bool, typer.Option(
        "--retry-errors", help="Also rescan unchanged objects whose last row was an error.")] = False,
    manifest: Annotated[Optional[str], typer.Option(
        help="Parquet/CSV listing with image_uri (e.g. S3 Inventory) instead of listing SOURCE.")] = None,
    include: Annotated[Optional[list[str]], typer.Option(help="Glob of keys to scan (repeatable).")] = None,
    exclude: Annotated[Optional[list[str]], typer.Option(help="Glob of keys to skip (repeatable).")] = None,
    storage_option: StorageOption = None,
    ray_address: Annotated[Optional[str], typer.Option(
        help="Ray cluster to run on (default: $RAY_ADDRESS inside a cluster, else a local Ray).")] = None,
    wait: Annotated[bool, typer.Option(
        "--wait", help="If another scan holds OUT's lock, wait for it instead of failing.")] = False,
    max_image_pixels: Annotated[Optional[int], typer.Option(
        help="Decompression-bomb guard: larger images become error rows.")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Exit 3 when some images became error rows.")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
    config: ConfigOption = None,
) -> None:
    """Score every new or changed image under SOURCE into Parquet rows and Zarr anomaly maps."""
    if not checkpoint:
        raise UsageError(MISSING_CHECKPOINT)
    actor_range = parse_actors(actors)  # usage errors first, before the heavy imports
    storage_options = storage_options_from_flags(storage_option)
    from vip2scan.model.training.layout import resolve_checkpoint
    from vip2scan.pipeline import ScanOptions
    from vip2scan.pipeline import scan as run_scan

    # A training run's output root means its latest epoch: resolved once, here, so every
    # actor of the run loads the same epoch even if training writes a newer one meanwhile.
    checkpoint = resolve_checkpoint(checkpoint, storage_options or None)
    bar = ProgressBar(progress and not dry_run)
    chosen = dict(
        backbone=backbone, weights=weights, image_size=image_size, batch_size=batch_size, actors=actor_range,
        gpus_per_actor=gpus_per_actor, compile=compile_model or None,
        channels_last=channels_last or None, map_size=map_size, write_maps=maps, threshold=threshold,
        pixel_threshold=pixel_threshold, full=full, limit=limit, dry_run=dry_run, retry_errors=retry_errors,
        manifest=manifest, include=tuple(include or ()), exclude=tuple(exclude or ()),
        storage_options=storage_options, ray_address=ray_address, wait=wait, max_image_pixels=max_image_pixels,
    )
    # Unset flags keep the pipeline's own defaults.
    options = ScanOptions(**{k: v for k, v in chosen.items() if v is not None}, progress=bar)
    try:
        summary = run_scan(source, out, checkpoint, options)
    finally:
        bar.close()
    typer.echo(format_summary(summary, out, storage_options))
    if strict and int((summary.counts or {}).get("failed", 0) or 0) > 0:
        raise typer.Exit(EXIT_PARTIAL)


def register(app: typer.Typer) -> None:
    app.command("scan", epilog=EXAMPLE)(scan)
