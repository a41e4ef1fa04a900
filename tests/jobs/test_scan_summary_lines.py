"""What a scan's summary says: how many images it flagged; a night scanned with another model
than OUT's last run gets one warning line, with how many objects it rescores (in `--dry-run`
too)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.helpers.cli_runner import Ran, invoke

IMAGES = 3


@pytest.fixture(scope="module")
def other_checkpoint(tmp_path_factory) -> str:
    """A second tiny model (another seed: another model_id)."""
    from vip2scan.model.config import DetectorConfig
    from vip2scan.model.detector import Detector

    path = str(tmp_path_factory.mktemp("other") / "vip2-tiny-seed1")
    Detector.from_config(DetectorConfig(seed=1)).save_checkpoint(path)
    return path


def _write_images(folder: Path, count: int) -> None:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        pixels = (np.random.default_rng(i).random((32, 32, 3)) * 255).astype("uint8")
        Image.fromarray(pixels).save(folder / f"img_{i:02d}.png")


def _scan(lake: Path, out: Path, checkpoint: str, *extra: str) -> Ran:
    ran = invoke("scan", str(lake), "--out", str(out), "--checkpoint", checkpoint,
                 "--engine", "local", "--batch-size", "4", "--map-size", "16", "--no-progress",
                 *extra)
    assert ran.exit_code == 0, ran.stdout + ran.stderr
    return ran


def _model_lines(ran: Ran) -> list[str]:
    """The model-change warnings (not the alerts' per-group ``changed:`` notes)."""
    return [line for line in ran.stdout.splitlines()
            if "model changed" in line and line.lstrip().startswith("warning:")]


def _flagged_in(out: Path) -> int:
    import pyarrow.dataset as ds

    table = ds.dataset(str(out / "scores"), format="parquet").to_table(columns=["is_anomalous"])
    return sum(bool(v) for v in table.column(0).to_pylist())


@pytest.mark.slow
def test_a_scan_with_another_model_warns_and_counts_the_rescore(tmp_path, tiny_checkpoint,
                                                                  other_checkpoint) -> None:
    lake, out = tmp_path / "lake", tmp_path / "out"
    _write_images(lake, IMAGES)
    first = _scan(lake, out, tiny_checkpoint)
    assert not _model_lines(first)
    # The summary says how many images were flagged (what `query` would count).
    assert f"  flagged {_flagged_in(out)} of {IMAGES} scored images" in first.stdout, first.stdout
    old_id = first.stdout.split("  model ", 1)[1].split()[0]

    dry = _scan(lake, out, other_checkpoint, "--dry-run")
    lines = _model_lines(dry)
    assert len(lines) == 1, dry.stdout
    assert old_id in lines[0] and f"{IMAGES} object(s) scored by {old_id}" in lines[0], lines

    second = _scan(lake, out, other_checkpoint)
    lines = _model_lines(second)
    assert len(lines) == 1 and f"{IMAGES} object(s)" in lines[0], second.stdout
    assert f"new {IMAGES}" in second.stdout

    # The next night with the same (new) model: nothing changed, nothing said, and no
    # scores folder named (it wrote none).
    quiet = _scan(lake, out, other_checkpoint)
    assert not _model_lines(quiet)
    assert "nothing new or changed" in quiet.stdout and "scores:" not in quiet.stdout, quiet.stdout


def test_a_resumed_runs_counts_keep_the_summary_order() -> None:
    from vip2scan.jobs.formatting import format_summary
    from vip2scan.pipeline import RunSummary

    # A resumed run's counts come back from its plan file, keys sorted.
    counts = dict(sorted({"listed": 5, "new": 5, "changed": 0, "unchanged": 0, "vanished": 0,
                          "to_scan": 5, "scored": 5, "failed": 0}.items()))
    summary = RunSummary(run_id="r1", status="complete", counts=counts, wall_s=1.0,
                         images_per_s=5.0, out="o", scores_uri=None, maps_uri=None,
                         record_uri=None, resumed=True)
    line = format_summary(summary, "o", {}).splitlines()[1]
    assert line == "  listed 5, new 5, changed 0, unchanged 0, vanished 0, to_scan 5, scored 5, failed 0"
