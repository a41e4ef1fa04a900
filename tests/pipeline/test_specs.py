"""One spec per concept: each setting is declared, defaulted and validated once and keeps its
name from ScanOptions to the run record; plans saved before the specs still resume. (The same
values through the CLI, a config file and the bench: tests/jobs/test_scan_settings.py.)"""

from __future__ import annotations

import json

import pytest

from vip2scan.errors import InvalidSetting
from vip2scan.model.factory import ModelSpec
from vip2scan.pipeline import ScanOptions
from vip2scan.pipeline.output.calibration import Thresholds
from vip2scan.pipeline.run.plan import Plan
from vip2scan.pipeline.specs import OWNER, EngineSpec, MapSpec
from vip2scan.pipeline.storage.location import Location


def test_flat_settings_and_specs_are_one_thing():
    flat = ScanOptions(batch_size=16, maps="anomalous", map_size=64, image_threshold=0.3, full=True)
    nested = ScanOptions(engine_spec=EngineSpec(batch_size=16),
                         map_spec=MapSpec(maps="anomalous", map_size=64), threshold=0.3, full=True)
    assert flat.specs() == nested.specs()
    assert flat.engine_spec.batch_size == 16 and flat.map_spec.map_size == 64
    # a spec given whole, with a flat setting on top
    assert ScanOptions(map_spec=MapSpec(map_size=64), maps="none").map_spec == \
        MapSpec(maps="none", map_size=64)
    with pytest.raises(TypeError, match="unexpected setting 'map_resolution'"):
        ScanOptions(map_resolution=64)


def test_every_setting_is_declared_once_and_recorded_by_its_name():
    record = ScanOptions(batch_size=8, map_size=32, include=("*.png",)).public()
    assert {"batch_size": 8, "map_size": 32, "include": ("*.png",), "maps": "all",
            "image_threshold": None, "engine": "auto"}.items() <= record.items()
    # every setting a spec declares appears under its own name (no credentials, no callables)
    assert set(OWNER) - {"checkpoint", "ray_init_kwargs"} <= set(record)
    json.dumps(record, default=list)


def test_the_model_spec_validates_and_keeps_overrides_apart():
    assert ModelSpec("ckpt", image_size=336).overrides() == {"image_size": 336}
    with pytest.raises(InvalidSetting, match="amp: expected one of auto, bf16, fp16, off"):
        ModelSpec("ckpt", amp="fp8")
    with pytest.raises(InvalidSetting, match="checkpoint: no checkpoint given"):
        ModelSpec().require_checkpoint()


def test_a_plan_saved_before_the_specs_still_loads(tmp_path):
    """A run interrupted on the previous version resumes after an upgrade: its plan.json has
    the map and threshold fields flat."""
    out = Location.of(str(tmp_path / "out"))
    run_id = "20250102T030405123Z-1a2b3c"
    old = {"run_id": run_id, "source": "file:///lake", "model_id": "m1",
           "started_at": "2025-01-02T03:04:05", "scan_date": "2025-01-02", "counts": {},
           "n_todo": 4, "map_store": "maps/x.zarr", "map_size": 16, "image_threshold": 0.4,
           "pixel_threshold": 0.6, "attempts": 1, "config": {}, "threshold_source": "flag",
           "image_thresholds": {"file:///lake/a/": 0.3}, "map_dtype": "uint8",
           "maps_per_shard": 4, "maps_mode": "anomalous", "unit_rows": 4}
    out.write_bytes(json.dumps(old).encode(), f"_staging/{run_id}/plan.json")
    plan = Plan.load(out, run_id)
    assert plan is not None
    assert plan.map_spec == MapSpec(maps="anomalous", map_size=16, map_dtype="uint8", maps_per_shard=4)
    assert plan.thresholds == Thresholds(0.4, 0.6, "flag", {"file:///lake/a/": 0.3})
    plan.save(out)  # and it is saved back in today's shape
    assert Plan.load(out, run_id) == plan
