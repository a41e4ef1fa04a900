"""The bench result as one JSON object, its targets, and the table printed for people.

Every field is always present, so runs on different machines compare key by key; a figure
that was not measured is ``null``.
"""

from __future__ import annotations

from typing import Any

from .ceiling import format_ceiling

BENCH_FORMAT_VERSION = 1
SOURCES = ("local", "s3")
STAGES = ("list_diff", "read", "decode", "infer", "write", "commit")
STAGE_LABELS = {
    "list_diff": "listing+diff", "read": "reading", "decode": "decode+resize",
    "infer": "inference", "write": "writing", "commit": "commit",
}
# The CPU targets, set for 2 cores, vip2-tiny at its native size and 2,000 images: the
# pipeline's overhead over the bare model, memory that stays flat, a rescan that is nearly free.
TARGET_EFFICIENCY = {"local": 0.90, "s3": 0.80}
TARGET_MEMORY_GROWTH = 0.10  # peak RSS at 20,000 within 10% of the figure at 2,000
TARGET_RESCAN_FRACTION = 0.05  # unchanged-lake rescan <= 5% of the full scan


def empty_result(environment: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """The result skeleton: each section keyed by source, null until measured."""
    return {
        "format_version": BENCH_FORMAT_VERSION,
        "environment": environment,
        "settings": settings,
        "bare_model": None,
        "pipeline": {s: None for s in SOURCES},
        "efficiency": {s: None for s in SOURCES},
        "stage_breakdown": {s: None for s in SOURCES},
        "memory": {**{s: None for s in SOURCES}, "scale": None},
        "incremental": {s: None for s in SOURCES},
        "ceiling": None,  # --model null: per source, see ceiling.py
        "targets": None,
    }


def set_bare_model(result: dict[str, Any], windows: list[dict[str, Any]]) -> None:
    """Record the bare model and the efficiencies it implies.

    The bare model is measured in two windows, before and after the scans, and the faster
    one is the yardstick: load from other processes can then only make the pipeline look
    less efficient, never more.
    """
    best = max(windows, key=lambda w: w["images_per_s"])
    result["bare_model"] = {**best, "windows_images_per_s": [w["images_per_s"] for w in windows]}
    for source in SOURCES:
        pipeline = result["pipeline"][source]
        if pipeline is None:
            continue
        ips, steady = pipeline.get("images_per_s"), pipeline.get("steady_images_per_s")
        result["efficiency"][source] = None if ips is None else ips / best["images_per_s"]
        pipeline["steady_efficiency"] = None if steady is None else steady / best["images_per_s"]
        # The CPU-time ratio: how much more CPU an image costs in the pipeline than in the
        # model alone. Other processes' load barely moves it, unlike the wall-time figures.
        cpu = pipeline.get("cpu_ms_per_image")
        pipeline["cpu_efficiency"] = None if not cpu else min(w["cpu_ms_per_image"] for w in windows) / cpu


def stage_breakdown(stage_s: dict[str, float], wall_s: float, images: int) -> dict[str, Any]:
    """Seconds per stage as the scan reported them, plus ms/image and the unaccounted rest.

    read/decode/infer/write are worker time summed over tasks (they overlap one another and
    can exceed the wall time); listing+diff and commit are driver wall time.
    """
    seconds = {name: float(stage_s.get(name, 0.0)) for name in STAGES}
    engine_s = float(stage_s.get("engine", 0.0))
    per_image = {name: (1000.0 * value / images if images else None) for name, value in seconds.items()}
    return {
        "seconds": seconds,
        "ms_per_image": per_image,
        "engine_wall_s": engine_s,
        # Engine start to the first rows back, and model loading summed over actors: the
        # start-up a short scan pays before it streams (null where the scan did not report it).
        "first_rows_s": stage_s.get("first_rows"),
        "actor_init_s": stage_s.get("actor_init"),
        # Checks, model facts, lease, planning, staging uploads: wall time outside the stages.
        "other_wall_s": max(0.0, wall_s - engine_s - seconds["list_diff"] - seconds["commit"]),
    }


def _check(value: float | None, target: float, higher_is_better: bool) -> dict[str, Any]:
    met = None if value is None else (value >= target if higher_is_better else value <= target)
    return {"value": value, "target": target, "met": met}


def evaluate_targets(result: dict[str, Any]) -> dict[str, Any]:
    """Each target with the measured value and whether it is met (null: not measured)."""
    targets: dict[str, Any] = {}
    for source in SOURCES:
        targets[f"efficiency_{source}"] = _check(result["efficiency"][source],
                                                 TARGET_EFFICIENCY[source], True)
        rescan = result["incremental"][source]
        targets[f"rescan_fraction_{source}"] = _check(
            None if rescan is None else rescan["fraction_of_full_scan"], TARGET_RESCAN_FRACTION, False)
    scale = result["memory"]["scale"]
    growth = None if scale is None else scale.get("max_growth")
    targets["memory_growth"] = _check(growth, TARGET_MEMORY_GROWTH, False)
    return targets


# --------------------------------------------------------------------------- table

def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _row(label: str, *cells: Any, digits: int = 1) -> str:
    return f"  {label:<28}" + "".join(f"{_fmt(c, digits):>14}" for c in cells)


def format_table(result: dict[str, Any]) -> str:
    """A plain-text summary of the JSON (the JSON remains the complete record)."""
    env, bare = result["environment"], result["bare_model"]
    lines = [
        f"vip2scan bench: {env['backbone']} at {env['image_size']} px, batch {env['batch_size']}, "
        f"{env['device']} ({env['gpu_name'] or str(env['cpu_count']) + ' CPUs'}), engine {env['engine']}, "
        f"torch {env['torch_version']}, ray {env['ray_version'] or '-'}, load {_fmt(env['load_average_1m'], 2)}",
    ]
    if bare:
        lines.append(f"  bare model: {bare['images_per_s']:.1f} images/s, {bare['ms_per_image']:.2f} ms/image "
                     f"({bare['torch_threads']} torch threads; best of windows "
                     f"{', '.join(f'{w:.1f}' for w in bare['windows_images_per_s'])})")
    lines.append(_row("", *SOURCES))
    pipe = result["pipeline"]
    lines.append(_row("images scanned", *[(p or {}).get("images") for p in pipe.values()]))
    lines.append(_row("pipeline images/s", *[(p or {}).get("images_per_s") for p in pipe.values()]))
    lines.append(_row("efficiency (pipe/bare)", *result["efficiency"].values(), digits=3))
    lines.append(_row("steady images/s", *[(p or {}).get("steady_images_per_s") for p in pipe.values()]))
    lines.append(_row("steady efficiency", *[(p or {}).get("steady_efficiency") for p in pipe.values()], digits=3))
    lines.append(_row("CPU ms/image (bare {})".format(_fmt(bare and bare["cpu_ms_per_image"])),
                      *[(p or {}).get("cpu_ms_per_image") for p in pipe.values()]))
    lines.append(_row("object store CPU ms/image", *[(p or {}).get("object_store_cpu_ms_per_image")
                                                     for p in pipe.values()]))
    lines.append(_row("CPU efficiency", *[(p or {}).get("cpu_efficiency") for p in pipe.values()], digits=3))
    lines.append(_row("first rows after s", *[(p or {}).get("first_rows_s") for p in pipe.values()], digits=2))
    for stage in STAGES:
        cells = [None if b is None else b["ms_per_image"][stage] for b in result["stage_breakdown"].values()]
        lines.append(_row(f"  {STAGE_LABELS[stage]} ms/image", *cells, digits=2))
    lines.append(_row("  engine start to rows s", *[None if b is None else b["first_rows_s"]
                                                    for b in result["stage_breakdown"].values()], digits=2))
    lines.append(_row("  actor init s", *[None if b is None else b["actor_init_s"]
                                          for b in result["stage_breakdown"].values()], digits=2))
    lines.append(_row("  other wall s", *[None if b is None else b["other_wall_s"]
                                          for b in result["stage_breakdown"].values()], digits=2))
    for key, label in (("driver_peak_rss_mb", "driver peak RSS MiB"), ("workers_peak_rss_mb", "workers peak RSS MiB")):
        lines.append(_row(label, *[None if m is None else m.get(key) for k, m in result["memory"].items()
                                   if k in SOURCES]))
    lines.append(_row("rescan s", *[None if r is None else r["wall_s"] for r in result["incremental"].values()],
                      digits=2))
    lines.append(_row("rescan / full", *[None if r is None else r["fraction_of_full_scan"]
                                         for r in result["incremental"].values()], digits=3))
    for source, pipeline in pipe.items():
        roles = (pipeline or {}).get("cpu_ms_per_image_by_role")
        if roles:
            shown = ", ".join(f"{role} {ms:.1f}" for role, ms in sorted(roles.items(), key=lambda kv: -kv[1]))
            lines.append(f"  CPU ms/image by process ({source}): {shown}")
    for source, pipeline in pipe.items():
        storage = (pipeline or {}).get("storage") or {}
        per_1000 = storage.get("requests_per_1000_images")
        if per_1000 and any(per_1000.values()):  # S3 only: local files are not counted
            shown = ", ".join(f"{c} {n:.1f}" for c, n in per_1000.items() if n or c != "OTHER")
            lines.append(f"  storage requests per 1,000 images ({source}): {shown}; "
                         f"{_fmt(storage['bytes_written_per_1000_images'] / 1e6, 2)} MB written; "
                         f"{_fmt(storage['usd_per_million_images'], 2)} USD per million images "
                         f"({storage['prices']})")
    scale = result["memory"]["scale"]
    if scale:
        points = ", ".join(f"{p['images']}: driver {_fmt(p['driver_peak_rss_mb'])} / workers "
                           f"{_fmt(p['workers_peak_rss_mb'])} MiB" for p in scale["points"])
        lines.append(f"  memory scale ({scale['source']}): {points}; growth {_fmt(scale['max_growth'], 3)} "
                     f"(private, without shared pages: {_fmt(scale['max_private_growth'], 3)})")
    photos = result.get("large_photos")
    if photos:
        decode = ", ".join(f"{size} px {ms['exact']:.1f} -> {ms['fast']:.1f}"
                           for size, ms in photos["decode_cpu_ms_per_image"].items())
        lines.append(f"  5 MP JPEG decode CPU ms/image (exact -> fast): {decode}; max |delta score| "
                     f"{photos['max_abs_delta_image_score']:.2e}, max |delta map| {photos['max_abs_delta_map']:.2e}")
    lines.extend(format_ceiling(result))
    for entry in (result.get("map_store") or {}).get("configurations", []):
        lines.append(f"  map store --maps {entry['maps']} {entry['dtype']} K={entry['maps_per_shard']}: "
                     f"{entry['put_per_1000']:.1f} PUT, {entry['get_per_1000']:.1f} GET, "
                     f"{entry['mb_written_per_1000']:.1f} MB per 1,000 images "
                     f"(target <= {entry['target_put_per_1000']:.1f} PUT: {_fmt(entry['meets_target'])})")
    if result["targets"]:
        met = ", ".join(f"{name} {_fmt(t['value'], 3)} (target {t['target']}): {_fmt(t['met'])}"
                        for name, t in result["targets"].items() if t["value"] is not None)
        lines.append(f"  targets: {met}")
    return "\n".join(lines)
