"""`vip2scan bench` runs end to end and its JSON holds every field it promises.

No timing is asserted: figures depend on the machine and its load. What is asserted is that
each measurement happened (positive where it must be measured, null where it was not asked
for) and that the rescan really was the incremental no-op the fraction claims to measure.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from vip2scan.jobs.bench.report import STAGES
from vip2scan.jobs.cli import app

ENVIRONMENT_FIELDS = ("cpu_count", "torch_threads", "gpu_name", "torch_version", "ray_version",
                      "backbone", "image_size", "batch_size", "device", "engine")
MEMORY_FIELDS = ("driver_peak_rss_mb", "workers_peak_rss_mb")


def _run(args: list[str]) -> dict:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "efficiency" in result.output  # the table was printed
    return result


def _assert_source_measured(report: dict, source: str, images: int) -> None:
    pipeline = report["pipeline"][source]
    assert pipeline["images"] == images and pipeline["failed"] == 0
    assert pipeline["images_per_s"] > 0 and pipeline["ms_per_image"] > 0
    assert report["efficiency"][source] == pytest.approx(
        pipeline["images_per_s"] / report["bare_model"]["images_per_s"])
    stages = report["stage_breakdown"][source]
    assert set(stages["seconds"]) == set(STAGES) == set(stages["ms_per_image"])
    assert stages["seconds"]["infer"] > 0 and stages["seconds"]["decode"] > 0
    assert report["memory"][source]["driver_peak_rss_mb"] > 0
    rescan = report["incremental"][source]
    assert rescan["inference_started"] is False
    assert rescan["counts"]["unchanged"] == images and rescan["counts"]["to_scan"] == 0
    assert 0 < rescan["fraction_of_full_scan"] == pytest.approx(rescan["wall_s"] / pipeline["wall_s"])


@pytest.mark.slow
def test_bench_both_sources_with_ray_emits_every_field(tmp_path, s3_server, ray_local):
    out = tmp_path / "bench.json"
    _run(["bench", "--images", "64", "--source", "both", "--batch-size", "16", "--bare-seconds", "1",
          "--s3-endpoint", s3_server.endpoint_url, "--workdir", str(tmp_path / "work"), "--json", str(out)])
    report = json.loads(out.read_text())

    assert all(report["environment"][name] is not None for name in ENVIRONMENT_FIELDS if name != "gpu_name")
    assert "gpu_name" in report["environment"]
    assert report["environment"]["image_size"] == 224  # vip2-tiny's native size
    bare = report["bare_model"]
    assert bare["images_per_s"] > 0 and bare["ms_per_image"] == pytest.approx(1000 / bare["images_per_s"])
    for source in ("local", "s3"):
        _assert_source_measured(report, source, 64)
        # Ray workers ran the decode tasks and the actor: their memory was seen.
        assert report["memory"][source]["workers_peak_rss_mb"] > 0
    assert report["memory"]["scale"] is None  # not asked for: present, null
    assert set(report["targets"]) == {"efficiency_local", "efficiency_s3", "rescan_fraction_local",
                                      "rescan_fraction_s3", "memory_growth"}
    assert report["targets"]["memory_growth"]["value"] is None


@pytest.mark.slow  # scans at several scale points
def test_bench_local_engine_scale_points(tmp_path):
    out = tmp_path / "bench.json"
    _run(["bench", "--engine", "local", "--source", "local", "--images", "12", "--image-size", "64",
          "--batch-size", "4", "--bare-seconds", "0.5", "--scale", "--scale-images", "12,24",
          "--large-photos", "2", "--workdir", str(tmp_path / "work"),
          "--map-store", "64", "--map-store-size", "16", "--json", str(out)])
    report = json.loads(out.read_text())
    maps = report["map_store"]
    by_config = {(e["maps"], e["dtype"], e["maps_per_shard"]): e for e in maps["configurations"]}
    assert by_config[("all", "float16", 1)]["put_per_1000"] == 1000  # one object per map
    assert by_config[("all", "float16", 8)]["put_per_1000"] == 125 == 1000 / 8
    assert by_config[("all", "float16", 8)]["objects"] == 8
    sparse = next(e for e in maps["configurations"] if e["maps"] == "anomalous")
    assert sparse["objects"] <= maps["anomalous_images"]
    # (the sparse target is per 1,000 images at scale: one PUT in 64 images is 15.6 here)
    assert all(e["meets_target"] for e in maps["configurations"]
               if e["maps"] == "all" and e["maps_per_shard"] <= 8)  # K=128 > 64 maps: one short shard
    photos = report["large_photos"]
    assert photos["photos"] == 2 and photos["photo_px"] == [2448, 2048] and photos["model_px"] == 64
    assert set(photos["decode_cpu_ms_per_image"]) == {"64", "518"}
    for ms in photos["decode_cpu_ms_per_image"].values():
        assert ms["exact"] > 0 and ms["fast"] > 0
    assert 0 <= photos["max_abs_delta_image_score"] < 0.05 and 0 <= photos["max_abs_delta_map"] <= 1

    _assert_source_measured(report, "local", 12)
    assert report["pipeline"]["s3"] is None and report["efficiency"]["s3"] is None
    assert report["memory"]["local"]["workers_peak_rss_mb"] is None  # no Ray: no workers
    scale = report["memory"]["scale"]
    assert scale["source"] == "local" and [p["images"] for p in scale["points"]] == [12, 24]
    assert all(p["driver_peak_rss_mb"] > 0 for p in scale["points"])
    assert scale["max_growth"] == pytest.approx(
        scale["points"][1]["driver_peak_rss_mb"] / scale["points"][0]["driver_peak_rss_mb"] - 1)


@pytest.mark.slow
def test_bench_null_model_ceiling_with_ray(tmp_path, ray_local):
    """`--model null`: the scan with the null detector, CPU by role, the ceiling's targets."""
    from vip2scan.jobs.bench.ceiling import ROLES

    out = tmp_path / "bench.json"
    result = _run(["bench", "--model", "null", "--source", "local", "--images", "160", "--batch-size", "32",
                   "--bare-seconds", "0.3", "--workdir", str(tmp_path / "work"), "--json", str(out)])
    assert "data-plane ceiling (local, null-64" in result.output
    report = json.loads(out.read_text())
    assert report["settings"]["model"] == "null" and report["environment"]["backbone"] == "null"
    assert report["environment"]["image_size"] == 64  # the null model's default lake
    assert report["bare_model"]["images_per_s"] > 0  # the null detector alone
    assert report["efficiency"] == {"local": None, "s3": None} and report["pipeline"]["s3"] is None
    ceiling = report["ceiling"]["local"]
    assert ceiling["model_id"] == "null-64" and ceiling["images"] == 160
    assert report["pipeline"]["local"]["failed"] == 0
    assert ceiling["images_per_s"] > 0 and ceiling["steady_images_per_s"] > 0 and ceiling["first_rows_s"] > 0
    roles = ceiling["cpu_ms_per_image_by_role"]
    assert set(roles) == set(ROLES) and sum(roles.values()) == pytest.approx(ceiling["cpu_ms_per_image"])
    assert all(roles[role] > 0 for role in ("driver", "decode", "actor", "ray")), ceiling
    assert sum(ceiling["cpu_ms_per_image_by_process"].values()) == pytest.approx(ceiling["cpu_ms_per_image"])
    assert ceiling["decode_ms_per_image"] > 0 and ceiling["cpu_ms_per_image_outside_decode_and_model"] > 0
    assert set(report["targets"]) == {"ceiling_steady_images_per_s_local", "ceiling_first_rows_s_local",
                                      "ceiling_overhead_cpu_ms_local"}
    assert report["incremental"]["local"]["counts"]["unchanged"] == 160


@pytest.mark.slow
def test_bench_with_the_embedded_checkpoint(tmp_path):
    """`--model embedded`: the shipped model, at its own size (vip2-synth, 112 px)."""
    out = tmp_path / "bench.json"
    _run(["bench", "--model", "embedded", "--engine", "local", "--source", "local", "--images", "32",
          "--batch-size", "16", "--bare-seconds", "0.5", "--workdir", str(tmp_path / "work"), "--json", str(out)])
    report = json.loads(out.read_text())
    assert report["settings"]["model"] == "embedded"
    assert report["environment"]["backbone"] == "vip2-synth" and report["environment"]["image_size"] == 112
    _assert_source_measured(report, "local", 32)
