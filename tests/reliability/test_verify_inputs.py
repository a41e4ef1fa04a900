"""`verify` lists what would break later commands instead of aborting on it: a score file of
garbage (with and without --fix), and an unreadable calibration.json that stops every scan."""

from __future__ import annotations

import json

import pytest

from tests.helpers.cli_runner import invoke


@pytest.mark.parametrize("fix", [(), ("--fix",)])
def test_a_garbage_score_file_is_listed(out_copy, small_scan, fix):
    victim = sorted(out_copy.glob("scores/*/*.parquet"))[0]
    victim.write_bytes(b"PAR1 not really parquet " * 40)
    ran = invoke("verify", str(out_copy), *fix)
    assert ran.exit_code == 1 and ran.error_lines == [], ran.stderr
    listed = [line for line in ran.stdout.splitlines() if "not readable Parquet" in line]
    assert len(listed) == 1 and small_scan["run_id"] in listed[0]
    assert f"{victim.parent.name}/{victim.name}" in listed[0]


@pytest.mark.parametrize("content", ['{"models": {"x": {"image_threshold": 0.5',
                                     json.dumps({"version": 1, "models": {"m": {
                                         "model_id": "m", "expected_rate": 0.1, "quantile": 0.9,
                                         "n_scores": 10, "image_threshold": float("nan"),
                                         "flagged_before": 0, "flagged_after": 1,
                                         "created_at": "2026-01-01"}}})])
def test_an_unreadable_calibration_is_listed(out_copy, content):
    assert invoke("verify", str(out_copy)).exit_code == 0
    (out_copy / "calibration.json").write_text(content)
    ran = invoke("verify", str(out_copy))
    assert ran.exit_code == 1, ran.stdout
    listed = [line for line in ran.stdout.splitlines() if "calibration.json is unreadable" in line]
    assert len(listed) == 1 and "every scan of OUT stops on it" in listed[0]
