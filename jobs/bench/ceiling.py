"""`vip2scan bench --model null`: the data plane's ceiling.

The scan runs as usual (list, diff, read, decode, infer, write maps, stage, commit) with the
null detector (vip2scan.model.null: the real outputs at ~zero cost) on a lake of small PNGs
(64 px unless --image-size), so what is left is what the pipeline itself costs. Reported per
source: images/s end to end and in steady state, seconds to the first rows, and CPU ms per
image by role:

    driver   planning, Ray Data's scheduler, staging, commit
    decode   the pooled task workers and their sandbox and reader children: read+decode tasks
             and the repartition tasks Ray Data runs in the same workers (a task shorter
             than the sampling interval cannot be told apart, so the split between the two
             in the by-process figures is approximate)
    actor    the inference actor: the model, map resize, map writes
    ray      Ray's own processes: raylet, GCS, agents, worker start-up, Ray Data's helper actors
    other    anything else the driver started
"""

from __future__ import annotations

import os
from typing import Any

from .probes import DECODE_CHILD_SCRIPTS

NULL_IMAGE_SIZE = 64
ROLES = ("driver", "decode", "actor", "ray", "other")
# Issue 16 targets, on 2 cores, 64 px PNGs, maps on, a warm local Ray.
TARGET_STEADY_IMAGES_PER_S = 400.0
TARGET_FIRST_ROWS_S = 5.0
TARGET_OVERHEAD_CPU_MS = 3.0  # CPU per image outside decode and the model


def null_checkpoint(image_size: int) -> str:
    """The checkpoint name the scan's loader turns into the null detector."""
    return f"null:{int(image_size)}"


def _decode_task_names() -> tuple[str, ...]:
    # Taken from the engine's own functions, so a renamed stage cannot silently move its CPU
    # into "ray" (it did once: the profile kept pre-rename names and decode read ~0).
    from vip2scan.pipeline.engines.ray import decode_unit_batch, read_work_units

    return (read_work_units.__name__, decode_unit_batch.__name__, "Repartition")


def role_group(process_role: str) -> str:
    """A process role of probes.process_role -> one of ROLES."""
    if process_role == "driver":
        return "driver"
    if any(task in process_role for task in _decode_task_names()) or process_role == "ray::IDLE" \
            or process_role in {f"system:{script}" for script in DECODE_CHILD_SCRIPTS}:
        # ray::IDLE: a pooled worker seen only between its tasks.
        return "decode"
    if "InferActor" in process_role:
        return "actor"
    if process_role.startswith(("ray::", "system:")):
        return "ray"
    return "other"


def measure_null_model(image_size: int, batch_size: int, device: str, seconds: float) -> dict[str, Any]:
    """The null detector alone, as the bench measures a bare model: what "the model" costs in
    the ceiling (the pipeline's figures include it; it should be ~0)."""
    from vip2scan.model.factory import ModelSpec, load_detector

    from .probes import measure_bare_model

    detector = load_detector(ModelSpec(null_checkpoint(image_size)), device)
    # One thread: the model's own cost. With a pool of threads, a busy machine adds the pool's
    # spin-waits (0.01 to 1.6 ms/image measured on 2 shared cores), which say nothing about it.
    return measure_bare_model(detector, batch_size, device=device, min_seconds=seconds, threads=1).to_dict()


def ceiling_section(pipeline: dict[str, Any], stages: dict[str, Any], null_model: dict[str, Any] | None,
                    model_id: str, map_size: int | None) -> dict[str, Any]:
    """One source's ceiling from its measured pipeline and stage figures."""
    images = pipeline["images"]
    by_process = pipeline.get("cpu_ms_per_image_by_role") or {}
    by_role = {role: 0.0 for role in ROLES}
    for process, ms in by_process.items():
        by_role[role_group(process)] += ms
    total = pipeline.get("cpu_ms_per_image")
    model_ms = (null_model or {}).get("cpu_ms_per_image") or 0.0
    # Decoding itself, as the decode tasks time it per row (worker time: CPU-bound PIL work).
    decode_ms = ((stages.get("ms_per_image") or {}).get("decode")) or 0.0
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {
        "model_id": model_id, "images": images, "map_size": map_size,
        "images_per_s": pipeline["images_per_s"], "steady_images_per_s": pipeline["steady_images_per_s"],
        # From the scan call (planning included) and from the engine's start (Ray Data's plan,
        # task and actor start-up, the first batch through every stage).
        "first_rows_s": pipeline["first_rows_s"], "engine_first_rows_s": stages.get("first_rows_s"),
        "cpu_ms_per_image": total,
        "cpu_ms_per_image_by_role": by_role,
        "cpu_ms_per_image_by_process": dict(sorted(by_process.items(), key=lambda kv: -kv[1])),
        "null_model_cpu_ms_per_image": model_ms,
        "decode_ms_per_image": decode_ms,
        # Everything but decoding and the model: what the data plane itself costs per image.
        "cpu_ms_per_image_outside_decode_and_model":
            None if total is None else total - decode_ms - model_ms,
        # The share of the machine the scan kept busy (1.0: every core, all the time).
        "cpu_utilisation": None if total is None or not pipeline["wall_s"] else
            total * images / 1000.0 / pipeline["wall_s"] / (os.cpu_count() or 1),
        "stage_ms_per_image": stages.get("ms_per_image"),
        "load_average_1m_after": None if load is None else round(load, 2),
    }


def _check(value: float | None, target: float, higher_is_better: bool) -> dict[str, Any]:
    met = None if value is None else (value >= target if higher_is_better else value <= target)
    return {"value": value, "target": target, "met": met}


def ceiling_targets(result: dict[str, Any]) -> dict[str, Any]:
    """The ceiling's targets for each measured source."""
    targets: dict[str, Any] = {}
    for source, ceiling in (result.get("ceiling") or {}).items():
        if not isinstance(ceiling, dict) or "images_per_s" not in ceiling:
            continue
        targets[f"ceiling_steady_images_per_s_{source}"] = _check(
            ceiling["steady_images_per_s"], TARGET_STEADY_IMAGES_PER_S, True)
        targets[f"ceiling_first_rows_s_{source}"] = _check(ceiling["first_rows_s"], TARGET_FIRST_ROWS_S, False)
        targets[f"ceiling_overhead_cpu_ms_{source}"] = _check(
            ceiling["cpu_ms_per_image_outside_decode_and_model"], TARGET_OVERHEAD_CPU_MS, False)
    return targets


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_ceiling(result: dict[str, Any]) -> list[str]:
    """Table lines for the ceiling section (none when it was not measured)."""
    lines = []
    for source, c in (result.get("ceiling") or {}).items():
        if not isinstance(c, dict) or "images_per_s" not in c:
            continue
        lines.append(f"  data-plane ceiling ({source}, {c['model_id']}, maps {c['map_size']} px): "
                     f"{_num(c['images_per_s'])} images/s end to end, {_num(c['steady_images_per_s'])} "
                     f"steady, first rows after {_num(c['first_rows_s'])} s")
        if c["cpu_ms_per_image"] is not None:
            roles = ", ".join(f"{role} {ms:.2f}" for role, ms in c["cpu_ms_per_image_by_role"].items() if ms)
            lines.append(f"    CPU ms/image {c['cpu_ms_per_image']:.2f} ({roles}); outside decode and model "
                         f"{_num(c['cpu_ms_per_image_outside_decode_and_model'], 2)}; decode "
                         f"{_num(c['decode_ms_per_image'], 2)}; null model "
                         f"{_num(c['null_model_cpu_ms_per_image'], 3)}; machine busy "
                         f"{_num(100 * (c['cpu_utilisation'] or 0), 0)}%")
    return lines
