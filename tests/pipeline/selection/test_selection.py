"""Selection: case-insensitive globs, skipped suffixes counted, a warning when nothing is
selected, `--suffixes`, `scan --dry-run --list`, and sub-prefix / parent scans sharing state.

Scans run on the local engine with the tiny checkpoint and 32 px images; the CLI tests run
the real `vip2scan scan` in-process and check its exit code and printed lines.
"""

from __future__ import annotations

import io
import json
import logging
import os

import pytest
from PIL import Image

from tests.helpers.cli_runner import invoke
from tests.helpers.lake_files import put_files, small_png
from vip2scan.pipeline import ScanOptions, scan
from vip2scan.pipeline.selection.diff import DiffCounts, state_runs
from vip2scan.pipeline.output.paths import PLAN_FILE, staging_file
from vip2scan.errors import InvalidSetting
from vip2scan.pipeline.selection.listing import IMAGE_SUFFIXES, ObjectFilter, extra_suffixes, list_prefix
from vip2scan.pipeline.output.calibration import Thresholds
from vip2scan.pipeline.specs import MapSpec, SelectionSpec
from vip2scan.pipeline.run.plan import Plan, find_resumable
from vip2scan.pipeline.output.records import write_json
from vip2scan.pipeline.storage.location import Location


def _gif(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(small_png(seed))).convert("P").save(buf, format="GIF")
    return buf.getvalue()


def _jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(small_png(seed))).save(buf, format="JPEG")
    return buf.getvalue()


# A lake with upper-case names, formats outside the default list and files without a suffix.
LAKE = {
    "line1/IMG_0001.JPG": _jpeg(1),
    "line1/day2/img_0002.jpg": _jpeg(2),
    "line1/day2/b.png": small_png(3),
    "line2/c.png": small_png(4),
    "line2/anim.gif": _gif(5),
    "line2/photo.JFIF": _jpeg(6),
    "line2/README": b"notes\n",
    "line2/.DS_Store": b"\0\0",
}
N_IMAGES = 4  # with the default suffixes


def _options(**kw) -> ScanOptions:
    return ScanOptions(engine="local", batch_size=4, map_size=16, stage_rows=8, **kw)


def _record(out: str, run_id: str) -> dict:
    with open(os.path.join(out, "runs", f"{run_id}.json")) as fh:
        return json.load(fh)


@pytest.fixture()
def lake(tmp_path) -> str:
    root = str(tmp_path / "lake")
    put_files(None, root, LAKE)
    return root


# ------------------------------------------------------------------------------ the filter

def test_globs_ignore_case_like_the_suffixes():
    assert ObjectFilter(include=("*.jpg",)).matches("line1/IMG_0001.JPG")
    assert ObjectFilter(include=("LINE1/*",)).matches("line1/b.png")
    assert not ObjectFilter(exclude=("*/tmp/*",)).matches("line1/TMP/b.png")


def test_star_crosses_slashes():
    keep = ObjectFilter(include=("line1/*.png",))
    assert keep.matches("line1/day2/b.png") and not keep.matches("line2/c.png")


def test_listing_counts_skipped_objects_by_suffix(lake, tmp_path):
    tally = list_prefix(Location.of(lake), str(tmp_path / "m.parquet"), ObjectFilter())
    assert tally.kept == N_IMAGES and tally.seen == len(LAKE)
    assert tally.skipped == {".gif": 1, ".jfif": 1, "(none)": 2}
    assert tally.excluded == 0


def test_objects_left_out_by_globs_are_not_counted_by_suffix(lake, tmp_path):
    tally = list_prefix(Location.of(lake), str(tmp_path / "m.parquet"),
                        ObjectFilter(include=("line1/*",)))
    assert (tally.kept, tally.excluded, tally.skipped) == (3, 5, {})


def test_suffixes_add_formats_pillow_opens():
    assert extra_suffixes(".jfif,GIF") == (".jfif", ".gif")
    assert extra_suffixes(["gif", ".png"]) == (".gif",)
    assert SelectionSpec(suffixes=".jfif").object_filter().suffixes == IMAGE_SUFFIXES + (".jfif",)
    with pytest.raises(InvalidSetting, match="suffixes: .*'.heic'"):
        extra_suffixes([".heic"])
    with pytest.raises(InvalidSetting, match="Ghostscript"):
        SelectionSpec(suffixes=(".eps",))


# ------------------------------------------------------------------------------ scans

def test_scan_counts_skipped_suffixes_in_summary_and_record(lake, tmp_path, checkpoint):
    out = str(tmp_path / "out")
    summary = scan(lake, out, checkpoint, _options())
    assert summary.counts["scored"] == N_IMAGES and summary.counts["skipped"] == 4
    assert summary.skipped_by_suffix == {"(none)": 2, ".gif": 1, ".jfif": 1}
    record = _record(out, summary.run_id)
    assert record["skipped_by_suffix"] == summary.skipped_by_suffix
    assert record["counts"]["skipped"] == 4 and record["warnings"] == []


def test_added_suffixes_are_scored(lake, tmp_path, checkpoint):
    out = str(tmp_path / "out")
    summary = scan(lake, out, checkpoint, _options(suffixes=(".gif", ".jfif")))
    assert summary.counts["scored"] == N_IMAGES + 2 and summary.counts["failed"] == 0
    assert summary.skipped_by_suffix == {"(none)": 2}


def test_empty_selection_warns_in_log_summary_and_record(lake, tmp_path, checkpoint, caplog):
    out = str(tmp_path / "out")
    with caplog.at_level(logging.WARNING, logger="vip2scan.pipeline.selection.diff"):
        summary = scan(lake, out, checkpoint, _options(include=("*.nomatch",)))
    assert summary.counts["listed"] == 0 and summary.counts["excluded"] == len(LAKE)
    assert len(summary.warnings) == 1
    assert f"holds {len(LAKE)} object(s), {len(LAKE)} left out by --include/--exclude" \
        in summary.warnings[0]
    assert summary.warnings[0] in caplog.text
    assert _record(out, summary.run_id)["warnings"] == summary.warnings


def test_a_selection_of_unknown_suffixes_says_so(tmp_path, checkpoint):
    lake = str(tmp_path / "lake")
    put_files(None, lake, {"a.gif": _gif(1), "b.heic": b"x"})
    summary = scan(lake, str(tmp_path / "out"), checkpoint, _options(dry_run=True))
    assert summary.warnings and "2 without an image suffix (.gif 1, .heic 1" \
        in summary.warnings[0]


def test_an_empty_prefix_warns(tmp_path, checkpoint):
    os.makedirs(tmp_path / "lake")
    summary = scan(str(tmp_path / "lake"), str(tmp_path / "out"), checkpoint,
                   _options(dry_run=True))
    assert summary.warnings and "holds no objects" in summary.warnings[0]


@pytest.mark.slow  # four scans
def test_a_sub_prefix_scan_reuses_the_parents_state(lake, tmp_path, checkpoint):
    out = str(tmp_path / "out")
    parent = scan(lake, out, checkpoint, _options())
    assert parent.counts["scored"] == N_IMAGES
    # The sub-prefix holds nothing new: nothing rescored.
    sub = scan(f"{lake}/line1", out, checkpoint, _options())
    assert (sub.counts["unchanged"], sub.counts["scored"]) == (3, 0)
    # A change under the sub-prefix, a deletion beside it: the sub-prefix scan rescores only
    # the change and does not find its sibling vanished.
    put_files(None, lake, {"line1/day2/b.png": small_png(30)})
    os.remove(f"{lake}/line2/c.png")
    sub = scan(f"{lake}/line1/", out, checkpoint, _options())
    assert (sub.counts["changed"], sub.counts["scored"], sub.counts["vanished"]) == (1, 1, 0)
    # The parent then scores nothing again and finds the sibling gone.
    again = scan(lake, out, checkpoint, _options())
    assert (again.counts["unchanged"], again.counts["scored"], again.counts["vanished"]) \
        == (N_IMAGES - 1, 0, 1)


@pytest.mark.slow  # three scans
def test_a_parent_scan_skips_what_a_sub_prefix_scan_scored(lake, tmp_path, checkpoint):
    out = str(tmp_path / "out")
    assert scan(f"{lake}/line2", out, checkpoint, _options()).counts["scored"] == 1
    parent = scan(lake, out, checkpoint, _options())
    assert (parent.counts["new"], parent.counts["unchanged"], parent.counts["scored"]) \
        == (N_IMAGES - 1, 1, N_IMAGES - 1)


def test_state_comes_from_runs_of_the_prefix_its_parents_and_sub_prefixes(tmp_path):
    """Runs of a sibling prefix (line10 or line beside line1) cannot hold our objects."""
    out = Location.of(str(tmp_path / "out"))
    sources = {"parent": "file:///lake", "same": "file:///lake/line1", "sub":
               "file:///lake/line1/day2/", "sibling": "file:///lake/line10", "stem": "file:///lake/line",
               "other": "s3://b/x",
               "manifest": "s3://b/y"}  # a run from a manifest: its URIs may lie anywhere
    for n, (name, source) in enumerate(sources.items()):
        run_id = f"2025010{n + 1}T030405123Z-{name[:6]:a<6}"
        config = {"manifest": "s3://b/inventory.csv"} if name == "manifest" else {}
        write_json(out, {"run_id": run_id, "status": "complete", "source": source,
                         "model_id": "m1", "started_at": f"2025-01-0{n + 1}", "files": [],
                         "config": config}, "runs", f"{run_id}.json")
    runs = state_runs(out, "file:///lake/line1/", "m1", with_manifest=False)
    assert [r["source"] for r in runs] == [sources[k] for k in ("parent", "same", "sub", "manifest")]
    assert state_runs(out, "file:///lake/line1", "m2", with_manifest=False) == []
    assert len(state_runs(out, "file:///lake/line1", "m1", with_manifest=True)) == len(sources)


def test_a_scan_of_another_prefix_discards_an_interrupted_run_and_says_so(tmp_path, caplog):
    out = Location.of(str(tmp_path / "out"))
    run_id = "20250102T030405123Z-1a2b3c"
    Plan(run_id=run_id, source="file:///lake", model_id="m1", started_at="2025-01-02T03:04:05",
         scan_date="2025-01-02", counts=DiffCounts().as_dict(), n_todo=0, map_store=None,
         map_spec=MapSpec(map_size=16), thresholds=Thresholds(0.5, 0.5, "flag")).save(out)
    with caplog.at_level(logging.WARNING, logger="vip2scan.pipeline.run.plan"):
        resumable, removed = find_resumable(out, "file:///lake/line1", "m1")
    assert resumable is None and removed == [run_id]
    assert f"discarding interrupted run {run_id} of file:///lake" in caplog.text
    assert not os.path.exists(out.fs_path(staging_file(run_id, PLAN_FILE)))


# ------------------------------------------------------------------------------ the CLI

def _cli_scan(lake: str, out: str, checkpoint: str, *flags: str):
    return invoke("scan", lake, "--out", out, "--checkpoint", checkpoint, *flags)


def test_cli_dry_run_lists_what_it_would_score(lake, tmp_path, checkpoint):
    out = str(tmp_path / "out")
    ran = _cli_scan(lake, out, checkpoint, "--dry-run", "--list", "--include", "line1/*.jpg")
    assert ran.exit_code == 0, ran.stderr
    listed = [line for line in ran.stdout.splitlines() if line.startswith("new ")]
    assert listed == [f"new       file://{lake}/line1/IMG_0001.JPG",
                      f"new       file://{lake}/line1/day2/img_0002.jpg"]
    scan(lake, out, checkpoint, _options())
    put_files(None, lake, {"line2/c.png": small_png(40)})
    ran = _cli_scan(lake, out, checkpoint, "--dry-run", "--list")
    assert ran.exit_code == 0, ran.stderr
    assert [line for line in ran.stdout.splitlines() if "file://" in line] \
        == [f"changed   file://{lake}/line2/c.png"]


def test_cli_list_needs_dry_run(lake, tmp_path, checkpoint):
    ran = _cli_scan(lake, str(tmp_path / "out"), checkpoint, "--list")
    assert ran.exit_code == 2
    assert "--list only goes with --dry-run" in ran.stderr and not os.path.exists(tmp_path / "out")


def test_cli_suffixes_add_formats_and_refuse_unknown_ones(lake, tmp_path, checkpoint):
    out = str(tmp_path / "out")
    ran = _cli_scan(lake, out, checkpoint, "--dry-run", "--list", "--suffixes", ".jfif,gif")
    assert ran.exit_code == 0, ran.stderr
    assert f"new       file://{lake}/line2/anim.gif" in ran.stdout.splitlines()
    assert f"new       file://{lake}/line2/photo.JFIF" in ran.stdout.splitlines()
    assert "not scanned, no image suffix: (none) 2 (add formats with --suffixes)" in ran.stdout
    ran = _cli_scan(lake, out, checkpoint, "--dry-run", "--suffixes", ".heic")
    assert ran.exit_code == 2
    assert "cannot scan '.heic' files" in ran.stderr


def test_cli_counts_skipped_suffixes(lake, tmp_path, checkpoint):
    ran = _cli_scan(lake, str(tmp_path / "out"), checkpoint, "--dry-run")
    assert ran.exit_code == 0, ran.stderr
    lines = [line.strip() for line in ran.stdout.splitlines()]
    assert "not scanned, no image suffix: (none) 2, .gif 1, .jfif 1 (add formats with " \
        "--suffixes)" in lines
    assert any(line.startswith("listed 4,") and "skipped 4, excluded 0" in line for line in lines)


def test_cli_warns_when_the_selection_is_empty(lake, tmp_path, checkpoint):
    ran = _cli_scan(lake, str(tmp_path / "out"), checkpoint, "--dry-run", "--include", "*.tif")
    assert ran.exit_code == 0, ran.stderr
    warnings = [line.strip() for line in ran.stdout.splitlines() if "warning: nothing" in line]
    assert warnings == [f"warning: nothing selected: {Location.of(lake).display()} holds "
                        f"{len(LAKE)} object(s), {len(LAKE)} left out by --include/--exclude"]
