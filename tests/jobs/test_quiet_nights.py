"""Quiet nights through the real CLI: `verify`, `report` and `query` after a night that scored
nothing, a night of error rows only, a night where every object vanished; an OUT, SOURCE or
manifest that nest are refused in one line.

The night that scores images runs through the Python API on the local engine (the subject
here is what comes after it, and a Ray start-up per test would dominate the suite); every
command under test runs through the CLI. A rescan with nothing to score ends before any
engine starts, so those nights go through `vip2scan scan` itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.helpers.cli_runner import Ran, invoke

IMAGES = 3


@dataclass
class Lake:
    lake: Path
    out: Path
    checkpoint: str

    def scan_cli(self, *extra: str) -> Ran:
        """`vip2scan scan LAKE --out OUT`, as the nightly job runs it."""
        return invoke("scan", str(self.lake), "--out", str(self.out), "--checkpoint",
                      self.checkpoint, "--batch-size", "4", "--map-size", "16", "--no-progress",
                      *extra)

    def scan_local(self, **options) -> dict:
        """A night that has images to score, on the local engine; returns its counts."""
        from vip2scan.pipeline import ScanOptions, scan

        summary = scan(str(self.lake), str(self.out), self.checkpoint,
                       ScanOptions(engine="local", batch_size=4, map_size=16, **options))
        return summary.counts


def _write_images(folder: Path, count: int, start: int = 0) -> None:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + count):
        pixels = (np.random.default_rng(i).random((32, 32, 3)) * 255).astype("uint8")
        Image.fromarray(pixels).save(folder / f"img_{i:02d}.png")


@pytest.fixture()
def scanned(tmp_path, tiny_checkpoint) -> Lake:
    """A lake of three tiny images, scanned once (the first night: three ok rows)."""
    lake = Lake(tmp_path / "lake", tmp_path / "out", tiny_checkpoint)
    _write_images(lake.lake, IMAGES)
    counts = lake.scan_local()
    assert counts["scored"] == IMAGES
    return lake


def _one_line(ran: Ran, prefix: str) -> str:
    """The single stdout line starting with ``prefix`` (what a monitoring job reads)."""
    lines = [line for line in ran.stdout.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, ran.stdout + ran.stderr
    return lines[0]


def _verify_clean(lake: Lake, scope: str, rows: int, maps: int, check: str, *extra: str) -> None:
    """`vip2scan verify OUT`: exit 0 and its one line, with the counts it checked and which
    snapshot check ran (``check``: what follows the counts)."""
    ran = invoke("verify", str(lake.out), *extra)
    assert ran.exit_code == 0, ran.stdout + ran.stderr
    assert _one_line(ran, "file://") == (f"file://{lake.out}: consistent ({scope}, {rows} rows, "
                                        f"{maps} maps checked{check})")


def _csv(ran: Ran) -> list[list[str]]:
    """`vip2scan query --format csv` output: exit 0, then header and rows."""
    import csv

    assert ran.exit_code == 0, ran.stderr
    return list(csv.reader(ran.stdout.splitlines()))


def _run_ids(lake: Lake) -> list[str]:
    return sorted(p.name[: -len(".json")] for p in (lake.out / "runs").glob("*.json"))


# ------------------------------------------------------------------ nights with nothing to score

def test_unchanged_rescans_verify_report_and_query(scanned: Lake) -> None:
    """The demo's own suggested rescan, twice (a rerun after a run that succeeded): no crash."""
    for _ in range(2):
        again = scanned.scan_cli()
        assert again.exit_code == 0, again.stderr[-2000:]
        assert "nothing new or changed since the last run: no inference ran" in again.stdout
    first, *quiet = _run_ids(scanned)
    assert len(quiet) == 2

    # The quiet nights name the first run's snapshot, which had no previous one to start from.
    _verify_clean(scanned, "3 run(s)", IMAGES, IMAGES, "; full snapshot check (no previous "
                  f"snapshot to start from: latest/{first} was rebuilt from every run)")
    _verify_clean(scanned, f"run {quiet[-1]}", 0, 0, "", "--run", quiet[-1])

    report = invoke("report", str(scanned.out), "--run", quiet[-1])
    assert report.exit_code == 0, report.stderr
    assert _one_line(report, "report: ").endswith(f"/reports/{quiet[-1]}/report.html")
    quiet_page = (scanned.out / "reports" / quiet[-1] / "report.html").read_text()
    assert "This run scored no image" in quiet_page
    default = invoke("report", str(scanned.out))  # the newest run that scored something
    assert default.exit_code == 0 and f"/reports/{first}/" in default.stdout, default.stderr

    query = invoke("query", str(scanned.out),
                   "SELECT (SELECT count(*) FROM latest) AS latest, "
                   f"(SELECT count(*) FROM scores WHERE run_id = '{quiet[-1]}') AS quiet_rows, "
                   "(SELECT count(*) FROM runs) AS runs", "--format", "csv")
    assert _csv(query) == [["latest", "quiet_rows", "runs"], [str(IMAGES), "0", "3"]]


@pytest.mark.slow  # three scans, verify, report and query
def test_night_of_error_rows_only(scanned: Lake) -> None:
    """A night whose only new object cannot be decoded, between two quiet nights."""
    assert scanned.scan_cli().exit_code == 0  # a quiet night first: the view crash's trigger
    (scanned.lake / "broken.png").write_bytes(b"not an image")
    counts = scanned.scan_local()
    assert (counts["scored"], counts["failed"]) == (0, 1)
    errors_run = _run_ids(scanned)[-1]

    _verify_clean(scanned, "3 run(s)", IMAGES + 1, IMAGES, "; incremental snapshot check")
    report = invoke("report", str(scanned.out))  # default: this run (it wrote rows)
    assert report.exit_code == 0, report.stderr
    assert _one_line(report, "report: ").endswith(f"/reports/{errors_run}/report.html")
    page = (scanned.out / "reports" / errors_run / "report.html").read_text()
    assert "broken.png" in page and "This run scored no image" in page
    query = invoke("query", str(scanned.out),
                   "SELECT status, count(*) AS n FROM latest GROUP BY status ORDER BY status",
                   "--format", "csv")
    assert _csv(query) == [["status", "n"], ["error", "1"], ["ok", str(IMAGES)]]


@pytest.mark.slow  # three scans, verify, report and query
def test_night_where_every_object_vanished(scanned: Lake) -> None:
    """The lake emptied: the summary says so, verify is clean, the older run still reports."""
    for image in scanned.lake.iterdir():
        image.unlink()
    night = scanned.scan_cli()
    assert night.exit_code == 0, night.stderr[-2000:]
    assert f"  no images to score; {IMAGES} vanished since the last run" in night.stdout
    assert "nothing new or changed" not in night.stdout
    first, emptied = _run_ids(scanned)

    _verify_clean(scanned, "2 run(s)", IMAGES, IMAGES, "; incremental snapshot check")
    query = invoke("query", str(scanned.out),
                   "SELECT (SELECT count(*) FROM latest) AS latest, "
                   f"(SELECT count(*) FROM vanished WHERE run_id = '{emptied}') AS vanished",
                   "--format", "csv")
    assert _csv(query) == [["latest", "vanished"], ["0", str(IMAGES)]]

    # The default report is of the first run, whose images are gone from the lake now.
    report = invoke("report", str(scanned.out))
    assert report.exit_code == 0, report.stderr
    assert _one_line(report, "report: ").endswith(f"/reports/{first}/report.html")
    page = (scanned.out / "reports" / first / "report.html").read_text()
    assert page.count("gone from the lake since this run") == IMAGES
    assert len(list((scanned.out / "reports" / first / "top").glob("*-map.png"))) == IMAGES


# ------------------------------------------------------------------ SOURCE, OUT and manifest apart

def _refused(ran: Ran, *expected: str) -> str:
    """Exit 1 and exactly one `error:` line holding ``expected``; returns that line."""
    assert ran.exit_code == 1, ran.stdout + ran.stderr
    assert len(ran.error_lines) == 1, ran.stderr
    line = ran.error_lines[0]
    for text in expected:
        assert text in line, line
    return line


@pytest.mark.slow  # refusals, then a scan that excludes OUT
def test_out_inside_source_refused_unless_excluded(scanned: Lake, tiny_checkpoint) -> None:
    inner = Lake(scanned.lake, scanned.lake / "results", tiny_checkpoint)
    refused = inner.scan_cli()
    _refused(refused, f"OUT file://{inner.out} lies inside source file://{inner.lake}",
             "results/reports/", "--exclude 'results/*'")
    assert not inner.out.exists()  # refused before anything was written

    # With the exclusion: a night scores into it, a report writes PNGs under OUT, and the next
    # night lists the same three images (not the report's thumbnails and histogram as new).
    assert inner.scan_local(exclude=("results/*",))["scored"] == IMAGES
    assert invoke("report", str(inner.out)).exit_code == 0
    assert list((inner.out / "reports").rglob("*.png"))
    night = inner.scan_cli("--exclude", "results/*")
    assert night.exit_code == 0, night.stderr[-2000:]
    assert f"listed {IMAGES}, new 0" in night.stdout


def test_out_equal_to_source_refused(scanned: Lake, tiny_checkpoint) -> None:
    same = Lake(scanned.lake, scanned.lake, tiny_checkpoint)
    _refused(same.scan_cli(), "lies inside source", "use an OUT apart from the lake")


def test_source_inside_out_refused(scanned: Lake, tiny_checkpoint) -> None:
    nested = Lake(scanned.out / "lake", scanned.out, tiny_checkpoint)
    _write_images(nested.lake, 1)
    _refused(nested.scan_cli(), f"source file://{nested.lake} lies inside OUT file://{nested.out}")


def test_manifest_inside_out_refused(scanned: Lake) -> None:
    listing = scanned.out / "listing.csv"
    listing.write_text("image_uri\n" + "".join(f"{p}\n" for p in sorted(scanned.lake.iterdir())))
    _refused(scanned.scan_cli("--manifest", str(listing)),
             f"manifest file://{listing} lies inside OUT file://{scanned.out}")


@pytest.mark.slow  # four nights on moto S3
def test_quiet_nights_on_object_storage(s3_server, tiny_checkpoint, tmp_path) -> None:
    """The same on moto S3, where runs are read as Arrow datasets: rows, two quiet nights, rows."""
    from vip2scan.pipeline import ScanOptions, scan

    bucket = s3_server.make_bucket("quiet-nights")
    lake, out = f"s3://{bucket}/lake", f"s3://{bucket}/out"
    flags = ["-s", f"endpoint_url={s3_server.endpoint_url}", "-s", "key=testing",
             "-s", "secret=testing"]
    local = tmp_path / "images"
    _write_images(local, IMAGES + 1)
    fs = s3_server.filesystem()
    images = sorted(local.iterdir())
    for image in images[:IMAGES]:
        fs.put(str(image), f"{bucket}/lake/{image.name}")
    options = ScanOptions(engine="local", batch_size=4, map_size=16,
                          storage_options=s3_server.storage_options)
    assert scan(lake, out, tiny_checkpoint, options).counts["scored"] == IMAGES
    for _ in range(2):
        quiet = invoke("scan", lake, "--out", out, "--checkpoint", tiny_checkpoint,
                       "--no-progress", *flags)
        assert quiet.exit_code == 0, quiet.stderr[-2000:]
        assert "nothing new or changed" in quiet.stdout
    fs.put(str(images[-1]), f"{bucket}/lake/{images[-1].name}")
    assert scan(lake, out, tiny_checkpoint, options).counts["scored"] == 1

    ran = invoke("verify", out, *flags)
    assert ran.exit_code == 0, ran.stdout + ran.stderr
    assert _one_line(ran, "s3://") == (f"{out}: consistent (4 run(s), {IMAGES + 1} rows, "
                                      f"{IMAGES + 1} maps checked; incremental snapshot check)")
