"""Label-free thresholds: `vip2scan calibrate`, and scans, records and reports that use them.

A tiny local lake (3 product lines x 4 images) is scanned once; each test works on its own
copy of that OUT and scans again only where a new run is the subject (dry runs print the
threshold a scan would use). Everything goes through the real CLI; scans use ``--engine local`` (Ray's
start-up is not the subject here).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.helpers.cli_runner import Ran, invoke

RATE = 0.25
LINES = 3
PER_LINE = 4


@dataclass
class Scanned:
    lake: str
    out: str
    checkpoint: str
    first: Ran  # what the first, uncalibrated scan printed
    record: dict  # and its run record


def scan_local(lake: str, out: str, checkpoint: str, *flags: str) -> tuple[Ran, dict]:
    """`vip2scan scan` on the local engine; (what it printed, its run record or {})."""
    ran = invoke("scan", lake, "--out", out, "--checkpoint", checkpoint, "--engine", "local",
                 "--batch-size", "8", "--map-size", "16", "--no-progress", *flags)
    assert ran.exit_code == 0, ran.stderr[-2000:]
    first = ran.stdout.splitlines()[0]
    if not first.startswith("run "):
        return ran, {}  # a dry run
    return ran, record_of(out, first.split()[1].rstrip(":"))


def record_of(out: str, run_id: str) -> dict:
    return json.loads((Path(out) / "runs" / f"{run_id}.json").read_text())


def flagged_by_line(out: str, run_id: str) -> dict[str, tuple[int, int]]:
    """line -> (flagged, ok rows) of one run."""
    from vip2scan.pipeline.output.views import Outputs

    rows = Outputs(out).connect().execute(
        "SELECT regexp_extract(image_uri, '/(line[0-9]+)/', 1), sum(is_anomalous::INT), count(*) "
        "FROM scores WHERE run_id = ? AND status = 'ok' GROUP BY 1", [run_id]).fetchall()
    return {line: (int(flagged), int(n)) for line, flagged, n in rows}


@pytest.fixture(scope="module")
def scanned(tmp_path_factory, tiny_checkpoint) -> Scanned:
    """The lake scanned once, uncalibrated."""
    from vip2scan.model.data.synthetic import CATEGORIES, write_lake

    root = tmp_path_factory.mktemp("calibrate")
    lake, out = str(root / "lake"), str(root / "out")
    write_lake(lake, LINES * PER_LINE, defect_fraction=0.25, size=48, seed=4,
               categories=CATEGORIES[:LINES])
    first, record = scan_local(lake, out, tiny_checkpoint)
    assert record["counts"]["scored"] == LINES * PER_LINE
    return Scanned(lake, out, tiny_checkpoint, first, record)


@pytest.fixture()
def out_copy(scanned, tmp_path) -> str:
    """A private copy of the scanned OUT (its records still name the shared lake)."""
    return str(shutil.copytree(scanned.out, tmp_path / "out"))


# ------------------------------------------------------------------ uncalibrated

def test_uncalibrated_threshold_is_flagged_in_summary_record_and_report(scanned, out_copy, cli):
    record = scanned.record
    warning = [line for line in scanned.first.stdout.splitlines() if "not calibrated" in line]
    assert warning == [f"  warning: image threshold 0.5 is not calibrated; run `vip2scan calibrate "
                       f"{scanned.out} --expected-rate 0.01` (the fraction of defective images "
                       "you expect) or `vip2scan eval --calibrate` with labels"]
    assert (record["threshold_source"], record["image_threshold"]) == ("default (uncalibrated)", 0.5)
    ran = cli("report", out_copy, "--run", record["run_id"], "--top", "0")
    assert ran.exit_code == 0, ran.stderr
    page = (Path(out_copy) / "reports" / record["run_id"] / "report.html").read_text()
    assert '<p class="warning">warning: image threshold 0.5 is not calibrated' in page


def test_dry_run_names_the_threshold_it_would_use(scanned, out_copy):
    ran, _ = scan_local(scanned.lake, out_copy, scanned.checkpoint, "--dry-run")
    assert "warning: image threshold 0.5 is not calibrated" in ran.stdout


# ------------------------------------------------------------------ calibrate, then rescan

def test_calibrate_sets_the_quantile_and_a_rescan_flags_about_the_rate(scanned, out_copy, cli):
    import numpy as np

    from vip2scan.pipeline.output.views import Outputs

    ran = cli("calibrate", out_copy, "--expected-rate", str(RATE))
    assert ran.exit_code == 0, ran.stderr
    n = LINES * PER_LINE
    saved = json.loads((Path(out_copy) / "calibration.json").read_text())
    [(model_id, entry)] = saved["models"].items()
    scores = np.array([s for (s,) in Outputs(out_copy).connect().execute(
        "SELECT image_score FROM latest WHERE status = 'ok'").fetchall()])
    assert entry["image_threshold"] == pytest.approx(float(np.quantile(scores, 1 - RATE)))
    assert (entry["expected_rate"], entry["n_scores"], entry["model_id"]) == (RATE, n, model_id)
    assert entry["created_at"] and entry["quantile"] == pytest.approx(1 - RATE)
    all_line = [line.split() for line in ran.stdout.splitlines() if line.startswith("all ")]
    assert all_line == [["all", str(n), f"{entry['image_threshold']:.5f}",
                         str(entry["flagged_before"]), f"{100 * entry['flagged_before'] / n:.1f}",
                         "%", str(entry["flagged_after"]), f"{100 * entry['flagged_after'] / n:.1f}",
                         "%"]]

    ran, record = scan_local(scanned.lake, out_copy, scanned.checkpoint, "--full")
    assert f"  image threshold {entry['image_threshold']:.5g} (label-free rate {RATE:g})" in ran.stdout
    assert "not calibrated" not in ran.stdout
    flagged = sum(f for f, _ in flagged_by_line(out_copy, record["run_id"]).values())
    assert flagged == entry["flagged_after"]
    assert abs(flagged / n - RATE) <= 1 / n
    assert record["threshold_source"] == f"label-free rate {RATE:g}"
    assert record["image_threshold"] == entry["image_threshold"]
    ran = cli("report", out_copy, "--run", record["run_id"], "--top", "0")
    assert ran.exit_code == 0, ran.stderr
    page = (Path(out_copy) / "reports" / record["run_id"] / "report.html").read_text()
    assert f"(label-free rate {RATE:g})" in page and "not calibrated" not in page


@pytest.mark.slow  # rescans of the module's lake
def test_per_prefix_thresholds_flag_the_rate_in_every_line(scanned, out_copy, cli):
    ran = cli("calibrate", out_copy, "--expected-rate", str(RATE), "--by", "LINE*/")
    assert ran.exit_code == 0, ran.stderr
    [entry] = json.loads((Path(out_copy) / "calibration.json").read_text())["models"].values()
    lake_uri = f"file://{scanned.lake}/"
    assert [(g["group"], g["prefix"], g["n_scores"]) for g in entry["groups"]] == \
        [(f"line{k}/", f"{lake_uri}line{k}/", PER_LINE) for k in range(LINES)]
    thresholds = [g["image_threshold"] for g in entry["groups"]]
    assert len(set(thresholds)) == LINES  # one per line, not one for all
    assert [line.split()[0] for line in ran.stdout.splitlines()[2:2 + LINES]] == \
        [f"line{k}/" for k in range(LINES)]

    ran, record = scan_local(scanned.lake, out_copy, scanned.checkpoint, "--full")
    assert f"(label-free rate {RATE:g} per 'LINE*/', {LINES} per-prefix)" in ran.stdout
    expected = round(RATE * PER_LINE)
    assert flagged_by_line(out_copy, record["run_id"]) == \
        {f"line{k}": (expected, PER_LINE) for k in range(LINES)}
    assert record["image_thresholds"] == {g["prefix"]: g["image_threshold"] for g in entry["groups"]}
    assert record["threshold_source"] == f"label-free rate {RATE:g} per 'LINE*/'"


def test_report_says_what_a_newer_calibration_would_flag(scanned, out_copy, cli):
    ran = cli("calibrate", out_copy, "--expected-rate", str(RATE))
    assert ran.exit_code == 0, ran.stderr
    ran = cli("report", out_copy, "--top", "0")
    assert ran.exit_code == 0, ran.stderr
    [entry] = json.loads((Path(out_copy) / "calibration.json").read_text())["models"].values()
    [run_id] = [p.stem for p in (Path(out_copy) / "runs").glob("*.json")]
    page = (Path(out_copy) / "reports" / run_id / "report.html").read_text()
    assert (f"OUT&#x27;s current calibration (label-free rate {RATE:g}, {entry['created_at']}) "
            f"would flag {entry['flagged_after']} of these {LINES * PER_LINE} images") in page


# ------------------------------------------------------------------ precedence

@pytest.mark.slow  # rescans of the module's lake
def test_flag_and_labelled_thresholds_win_over_the_calibration(scanned, out_copy, cli, tmp_path):
    from vip2scan.model.checkpoint import save_thresholds

    assert cli("calibrate", out_copy, "--expected-rate", str(RATE)).exit_code == 0
    ran, _ = scan_local(scanned.lake, out_copy, scanned.checkpoint, "--full", "--threshold", "0.2",
                        "--dry-run")
    assert "  image threshold 0.2 (flag)" in ran.stdout

    # eval --calibrate writes labelled thresholds into the checkpoint (a new model id)...
    labelled = str(shutil.copytree(scanned.checkpoint, tmp_path / "labelled"))
    save_thresholds(labelled, 0.3, None)
    ran, record = scan_local(scanned.lake, out_copy, labelled)
    assert record["threshold_source"] == "labelled"
    assert "image threshold 0.3 (labelled)" in ran.stdout
    # ... and a label-free calibration of that very model does not override them.
    ran = cli("calibrate", out_copy, "--expected-rate", str(RATE))
    assert ran.exit_code == 0, ran.stderr
    assert "labelled thresholds (eval --calibrate): those keep winning" in ran.stdout
    assert record["model_id"] in json.loads((Path(out_copy) / "calibration.json").read_text())["models"]
    ran, _ = scan_local(scanned.lake, out_copy, labelled, "--full", "--dry-run")
    assert "  image threshold 0.3 (labelled)" in ran.stdout


@pytest.mark.slow  # a second checkpoint and a rescan
def test_a_calibration_of_another_model_is_named_not_used(scanned, out_copy, cli, tmp_path):
    from vip2scan.model.config import DetectorConfig
    from vip2scan.model.detector import Detector

    assert cli("calibrate", out_copy, "--expected-rate", str(RATE)).exit_code == 0
    other = str(tmp_path / "other")
    other_id = Detector.from_config(DetectorConfig(seed=9)).save_checkpoint(other)
    ran, record = scan_local(scanned.lake, out_copy, other)
    assert record["threshold_source"] == "default (uncalibrated)"
    assert f"calibration.json calibrates model(s) {_model_of(out_copy)}, not {other_id}" in ran.stdout
    # Latest rows now hold the new model: calibrate picks it and says the old rows were left out.
    ran = cli("calibrate", out_copy, "--expected-rate", str(RATE), "--dry-run")
    assert ran.exit_code == 0, ran.stderr
    assert ran.stdout.startswith(f"model {other_id}: {LINES * PER_LINE} latest scores")
    assert "not saved (--dry-run)" in ran.stdout
    assert list(json.loads((Path(out_copy) / "calibration.json").read_text())["models"]) == \
        [_model_of(out_copy)]


def _model_of(out: str) -> str:
    return json.loads(sorted((Path(out) / "runs").glob("*.json"))[0].read_text())["model_id"]


# ------------------------------------------------------------------ errors: one line, exit code

@pytest.mark.parametrize("args, message", [
    (["--expected-rate", "0"], "must be between 0 and 1"),
    (["--expected-rate", "1.5"], "must be between 0 and 1"),
    (["--expected-rate", "0.1", "--by", "/"], "needs a glob naming a folder level"),
])
def test_bad_flags_are_usage_errors(out_copy, cli, args, message):
    ran = cli("calibrate", out_copy, *args)
    assert ran.exit_code == 2
    assert len(ran.error_lines) == 1 and message in ran.error_lines[0]


def test_nothing_to_calibrate_is_one_line(tmp_path, out_copy, cli):
    (tmp_path / "empty").mkdir()
    for args, message in [
        ([str(tmp_path / "empty")], "has scored an image: scan the lake first"),
        ([str(tmp_path / "missing")], "no such output location"),
        ([out_copy, "--model-id", "feedfeedfeedfeed"], "no latest scores of model feedfeedfeedfeed"),
    ]:
        ran = cli("calibrate", *args, "--expected-rate", "0.1")
        assert ran.exit_code == 1, ran.stdout
        assert len(ran.error_lines) == 1 and message in ran.error_lines[0], ran.stderr


def test_a_damaged_calibration_stops_the_scan_and_calibrate_rewrites_it(scanned, out_copy, cli):
    (Path(out_copy) / "calibration.json").write_text("{not json")
    ran = cli("scan", scanned.lake, "--out", out_copy, "--checkpoint", scanned.checkpoint,
              "--engine", "local", "--full", "--no-progress")
    assert ran.exit_code == 1
    assert len(ran.error_lines) == 1 and "calibration.json is unreadable (KeyError); rerun " \
        "`vip2scan calibrate` to rewrite it" in ran.error_lines[0]
    assert cli("calibrate", out_copy, "--expected-rate", str(RATE)).exit_code == 0
    ran, _ = scan_local(scanned.lake, out_copy, scanned.checkpoint, "--dry-run")
    assert f"(label-free rate {RATE:g})" in ran.stdout


# ------------------------------------------------------------------ the rules, without I/O

def test_rows_take_their_longest_matching_prefix():
    from vip2scan.pipeline.output.calibration import row_thresholds

    got = row_thresholds(["s3://l/a/x.png", "s3://l/a/b/y.png", "s3://l/c/z.png"], 0.5,
                         {"s3://l/a/": 0.6, "s3://l/a/b/": 0.7})
    assert got.tolist() == [0.6, 0.7, 0.5]


def test_groups_are_the_shortest_matching_folder_below_the_outermost_source():
    from vip2scan.pipeline.output.calibration import group_of, relative_key

    roots = ["s3://b/lake", "s3://b/lake/line1"]  # a parent and a sub-prefix scan
    assert relative_key("s3://b/lake/line1/d1/x.png", roots) == ("s3://b/lake/", "line1/d1/x.png")
    assert relative_key("s3://other/y.png", roots) == ("s3://", "other/y.png")
    assert group_of("line1/d1/x.png", "Line*") == "line1/"
    assert group_of("line1/d1/x.png", "*/d1/") == "line1/d1/"
    assert group_of("misc/x.png", "line*/") is None


def test_the_jobs_name_of_the_uncalibrated_source_is_the_pipelines():
    from vip2scan.jobs.formatting import UNCALIBRATED
    from vip2scan.pipeline.output.calibration import SOURCE_DEFAULT

    assert UNCALIBRATED == SOURCE_DEFAULT


def test_the_per_prefix_table_shows_a_hostile_folder_name_escaped():
    """A folder named with a terminal escape (OSC 52 writes the clipboard) or a carriage return
    is printed escaped, like every other line the CLI prints from the lake."""
    from vip2scan.jobs.calibrate import format_table
    from vip2scan.pipeline.output.calibration import Calibration, GroupThreshold

    hostile = "line\x1b]52;c;ZWNobyBoaQ==\x07\r/"
    calibration = Calibration(
        model_id="m", expected_rate=0.1, quantile=0.9, n_scores=30, image_threshold=0.5,
        flagged_before=0, flagged_after=3, created_at="2025-01-01T00:00:00+00:00", by="line*/",
        groups=(GroupThreshold(hostile, "s3://lake/" + hostile, 30, 0.51, 0, 3),))
    table = format_table(calibration)
    assert not any(c in table for c in "\x1b\x07\r")
    assert "line\\x1b]52;c;ZWNobyBoaQ==\\x07\\r/" in table.splitlines()[1]
