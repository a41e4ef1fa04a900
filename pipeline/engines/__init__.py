"""Engines run a scan's stages over its work list and hand each result batch to the driver.

Both have one signature, ``run(work, work_path, config, stages, consume)``, and call the very
same stage callables (pipeline/stages/), so the rows they hand to ``consume`` are the same:

- ``engines.ray``: Ray Data streaming over a cluster, the product;
- ``engines.local``: threads in this process, for small runs, machines without Ray and as a
  yardstick for what Ray's scheduling costs on one node.

:func:`choose_engine` resolves ``--engine auto`` once the run's work is known.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass, field
from typing import Callable

from ..specs import EngineSpec
from ..stages.decode import DecodeSettings
from ..stages.infer import InferSettings
from ..stages.write_maps import MapWriterSettings


@dataclass(frozen=True)
class StageSettings:
    """What each stage needs (picklable: it travels to every worker)."""

    decode: DecodeSettings
    infer: InferSettings
    maps: MapWriterSettings


@dataclass(frozen=True)
class EngineConfig:
    """One attempt's engine: the scan's EngineSpec plus what the run derives from its plan."""

    engine_spec: EngineSpec
    unit_rows: int  # rows per work unit: whole shards of the map store (stages/units.py)
    # What the person running the scan should see while the engine starts (one line each),
    # and the local file the Ray engine sends Ray's own notices to (the driver's stderr).
    notify: Callable[[str], None] | None = field(default=None, repr=False, compare=False)
    log_file: str | None = None


# Below this many images to score, `--engine auto` runs the local engine: Ray's start-up
# (a local cluster and its actors, 10-30 s) then costs more than the scoring itself.
AUTO_LOCAL_MAX_IMAGES = 300


@dataclass(frozen=True)
class EngineChoice:
    """The engine a scan runs on and why (shown in the summary, kept in the run record)."""

    name: str  # 'ray' or 'local'
    reason: str


def ray_running_here() -> bool:
    """Whether this process is already connected to Ray (then its start-up is paid)."""
    ray = sys.modules.get("ray")
    return bool(ray is not None and getattr(ray, "is_initialized", lambda: False)())


def choose_engine(requested: str, to_score: int, ray_address: str | None) -> EngineChoice:
    """``requested`` ('auto', 'ray' or 'local') -> the engine for ``to_score`` images."""
    if requested != "auto":
        return EngineChoice(requested, f"--engine {requested}")
    if ray_address:
        return EngineChoice("ray", "auto: a Ray cluster was given (--ray-address)")
    if os.environ.get("RAY_ADDRESS"):
        return EngineChoice("ray", "auto: a Ray cluster was given (RAY_ADDRESS)")
    if ray_running_here():
        return EngineChoice("ray", "auto: Ray is already running in this process")
    if importlib.util.find_spec("ray") is None:
        return EngineChoice("local", "auto: Ray is not installed")
    if to_score < AUTO_LOCAL_MAX_IMAGES:
        return EngineChoice("local", f"auto: {to_score} images to score, fewer than "
                                     f"{AUTO_LOCAL_MAX_IMAGES}, and no Ray cluster given")
    return EngineChoice("ray", f"auto: {to_score} images to score, {AUTO_LOCAL_MAX_IMAGES} or more")
