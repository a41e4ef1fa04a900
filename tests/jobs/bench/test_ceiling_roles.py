"""The ceiling's CPU profile puts each process in the right role, for the engine as it is now."""

from __future__ import annotations

import inspect
import re

from vip2scan.jobs.bench.ceiling import role_group
from vip2scan.pipeline.engines import ray as ray_engine


def _map_batches_stages() -> list[str]:
    """The callables the Ray engine's dataset maps over, read from its source."""
    source = inspect.getsource(ray_engine)
    return sorted(set(re.findall(r"map_batches\(\s*([A-Za-z_]\w*)", source)))


def test_every_ray_stage_lands_in_decode_or_actor():
    stages = _map_batches_stages()
    assert "InferActor" in stages and len(stages) >= 3, stages
    for stage in stages:
        # Ray names a task worker 'ray::MapBatches(fn)' and an actor 'ray::MapWorker(MapBatches(Cls))'.
        expected = "actor" if stage == "InferActor" else "decode"
        assert role_group(f"ray::MapBatches({stage})") == expected, stage
    assert role_group("ray::MapWorker(MapBatches(InferActor))") == "actor"
    assert role_group("ray::MapWorker(MapBatches(InferActor)).__init__") == "actor"


def test_decode_children_helpers_and_the_driver():
    assert role_group("system:reader_child.py") == "decode"
    assert role_group("system:sandbox.py") == "decode"
    assert role_group("ray::IDLE") == "decode"
    assert role_group("ray::_StatsActor") == "ray"
    assert role_group("system:raylet") == "ray"
    assert role_group("system:default_worker.py") == "ray"
    assert role_group("driver") == "driver"
    assert role_group("something-else") == "other"
