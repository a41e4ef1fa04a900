"""Thresholds must be finite numbers from 0 to 1 wherever they come from: OUT's
calibration.json, a checkpoint's config.json, `eval --calibrate`'s save (flags and config keys
are refused by ThresholdSpec). An OUT whose records already hold a NaN threshold still explores,
with a warning."""

from __future__ import annotations

import json
import math

import pytest

from tests.helpers.cli_runner import invoke


def write_calibration(out, model_id: str, threshold: float, group_threshold: float | None) -> None:
    groups = [] if group_threshold is None else [{
        "group": "d0/", "prefix": "file:///lake/d0/", "n_scores": 5,
        "image_threshold": group_threshold, "flagged_before": 0, "flagged_after": 0}]
    entry = {"model_id": model_id, "expected_rate": 0.1, "quantile": 0.9, "n_scores": 10,
             "image_threshold": threshold, "flagged_before": 0, "flagged_after": 1,
             "created_at": "2026-01-01T00:00:00Z", "by": "d*/" if groups else None, "groups": groups}
    (out / "calibration.json").write_text(json.dumps({"version": 1, "models": {model_id: entry}}))


@pytest.mark.parametrize("threshold, group_threshold", [
    (math.nan, None), (-math.inf, None), (1.5, None), (0.7, math.inf)])
def test_a_calibration_file_with_a_bad_threshold_stops_the_scan(
        small_scan, out_copy, tiny_checkpoint, threshold, group_threshold):
    write_calibration(out_copy, small_scan["summary"].model_id, threshold, group_threshold)
    ran = invoke("scan", str(small_scan["lake"]), "--out", str(out_copy), "--checkpoint",
                 tiny_checkpoint, "--dry-run")
    assert ran.exit_code == 1, ran.stdout
    assert len(ran.error_lines) == 1 and "not a number from 0 to 1" in ran.error_lines[0], ran.stderr


@pytest.mark.parametrize("name, value", [("image_threshold", "NaN"), ("pixel_threshold", "Infinity"),
                                         ("image_threshold", "-0.5")])
def test_a_checkpoint_with_a_bad_threshold_is_refused(small_scan, checkpoint_copy, tmp_path, name, value):
    config = checkpoint_copy / "config.json"
    config.write_text(config.read_text().replace(f'"{name}": null', f'"{name}": {value}'))
    ran = invoke("scan", str(small_scan["lake"]), "--out", str(tmp_path / "out"), "--checkpoint",
                 str(checkpoint_copy), "--dry-run")
    assert ran.exit_code == 1, ran.stdout
    assert len(ran.error_lines) == 1, ran.stderr
    assert f"{name} " in ran.error_lines[0] and "not a number from 0 to 1" in ran.error_lines[0]


def test_saving_a_nan_threshold_into_a_checkpoint_is_refused(checkpoint_copy):
    from vip2scan.model.checkpoint import save_thresholds
    from vip2scan.model.errors import ConfigError

    before = (checkpoint_copy / "config.json").read_text()
    with pytest.raises(ConfigError, match="image_threshold must be a number from 0 to 1"):
        save_thresholds(str(checkpoint_copy), math.nan, 0.5)
    assert (checkpoint_copy / "config.json").read_text() == before


def test_an_out_holding_a_nan_threshold_still_explores(small_scan, out_copy):
    record_path = out_copy / "runs" / f"{small_scan['run_id']}.json"
    record = json.loads(record_path.read_text())
    record.update(image_threshold=math.nan, pixel_threshold=math.inf,
                  image_thresholds={"file:///lake/d0/": math.nan, "file:///lake/d1/": 0.6})
    record_path.write_text(json.dumps(record))
    ran = invoke("explore", str(out_copy), "--max-images", "2")
    assert ran.exit_code == 0, ran.stderr
    warning = [line for line in ran.stderr.splitlines() if line.startswith("warning:")]
    assert warning == [f"warning: run {small_scan['run_id']} recorded a non-finite image_threshold, "
                       "pixel_threshold, image_thresholds: shown as none"]
    meta_js = (out_copy / "reports" / "explorer" / "data" / "meta.js").read_text()
    meta = json.loads(meta_js[meta_js.index("(") + 1: meta_js.rindex(")")])
    assert [t["value"] for t in meta["thresholds"]] == [0.6]
