"""scan -> query -> report end to end on moto S3, all through the CLI."""

from __future__ import annotations

import io
import json
import shlex
from html.parser import HTMLParser

import pyarrow.parquet as pq
import pytest
from tests.helpers.s3_scan_lake import BROKEN, LAKE_IMAGES, WIDE_IMAGE

from vip2scan.pipeline import SCHEMA_VERSION

pytestmark = pytest.mark.slow  # two real scans (shared by every test here)

LISTED = LAKE_IMAGES + len(BROKEN) + 1  # + the non-square image


def rows_of(ran) -> list[dict]:
    assert ran.exit_code == 0, ran.stderr
    return [json.loads(line) for line in ran.stdout.splitlines() if line.strip()]


def test_scan_prints_counts_outputs_and_a_ready_query_line(cli, s3_scan) -> None:
    out = s3_scan.first.stdout
    assert f"listed {LISTED}" in out and f"scored {LAKE_IMAGES + 1}" in out and f"failed {len(BROKEN)}" in out
    assert f"{s3_scan.out}/maps/{s3_scan.first_run_id}.zarr" in out
    assert "secret=testing" not in out  # only non-secret storage options are echoed back
    query_line = next(line.strip() for line in out.splitlines() if line.strip().startswith("vip2scan query"))
    argv = shlex.split(query_line)[1:]
    assert "endpoint_url=" in query_line
    ran = cli(*argv)
    assert ran.exit_code == 0, ran.stderr
    assert "error" in ran.stdout and "ok" in ran.stdout


def test_query_counts_rows_by_status(cli, s3_scan) -> None:
    ran = cli("query", s3_scan.out, "SELECT status, count(*) AS n FROM scores "
              f"WHERE run_id = '{s3_scan.first_run_id}' GROUP BY status ORDER BY status",
              "--format", "json", *s3_scan.flags)
    assert rows_of(ran) == [{"status": "error", "n": len(BROKEN)}, {"status": "ok", "n": LAKE_IMAGES + 1}]


def test_query_table_csv_and_parquet_to_s3(cli, s3_scan, s3_server) -> None:
    table = cli("query", s3_scan.out, "SELECT scan_date, count(*) AS n FROM scores GROUP BY ALL", *s3_scan.flags)
    assert table.exit_code == 0 and "scan_date" in table.stdout and "(1 row)" in table.stdout
    csv = cli("query", s3_scan.out, "SELECT image_uri FROM scores WHERE status = 'error' ORDER BY 1",
              "--format", "csv", *s3_scan.flags)
    assert csv.stdout.splitlines()[0] == '"image_uri"' and len(csv.stdout.splitlines()) == 1 + len(BROKEN)
    target = f"s3://{s3_scan.bucket}/exports/anomalous.parquet"
    ran = cli("query", s3_scan.out, "SELECT * FROM scores WHERE status = 'ok'", "--format", "parquet",
              "--to", target, *s3_scan.flags)
    assert ran.exit_code == 0, ran.stderr
    exported = pq.read_table(io.BytesIO(s3_server.filesystem().cat(target)))
    assert exported.num_rows == LAKE_IMAGES + 1


def test_committed_parquet_carries_the_schema_version(s3_scan, s3_server) -> None:
    fs = s3_server.filesystem()
    files = fs.glob(f"{s3_scan.bucket}/out/scores/scan_date=*/*.parquet")
    assert files
    metadata = pq.read_schema(io.BytesIO(fs.cat(files[0]))).metadata
    assert metadata[b"vip2scan.schema_version"].decode() == SCHEMA_VERSION


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value:
                self.links.append(value)


def test_report_writes_pngs_and_an_html_whose_links_all_exist(cli, s3_scan, s3_server) -> None:
    from PIL import Image

    ran = cli("report", s3_scan.out, "--run", s3_scan.first_run_id, "--top", str(LAKE_IMAGES + 1), *s3_scan.flags)
    assert ran.exit_code == 0, ran.stderr
    fs = s3_server.filesystem()
    report_dir = f"{s3_scan.bucket}/out/reports/{s3_scan.first_run_id}"
    assert f"s3://{report_dir}/report.html" in ran.stdout
    parser = _Links()
    parser.feed(fs.cat(f"{report_dir}/report.html").decode())
    assert "histogram.png" in parser.links
    images = [link for link in parser.links if link.endswith(".png")]
    assert len(images) == 1 + 2 * (LAKE_IMAGES + 1)  # histogram + image/map pair per scored image
    for link in parser.links:
        assert "://" not in link and not link.startswith("/"), f"not a relative link: {link}"
        assert fs.exists(f"{report_dir}/{link}"), f"missing {link}"
    for link in images:
        Image.open(io.BytesIO(fs.cat(f"{report_dir}/{link}"))).verify()
    # Each overlay has its image's size, so a 96 x 64 image gets a 3:2 map, not the model's square.
    html_text = fs.cat(f"{report_dir}/report.html").decode()
    pairs = [(a, b) for a, b in zip(images[1::2], images[2::2])]
    sizes = {Image.open(io.BytesIO(fs.cat(f"{report_dir}/{a}"))).size for a, _ in pairs}
    for image_png, map_png in pairs:
        image_size = Image.open(io.BytesIO(fs.cat(f"{report_dir}/{image_png}"))).size
        assert Image.open(io.BytesIO(fs.cat(f"{report_dir}/{map_png}"))).size == image_size
    assert WIDE_IMAGE in html_text
    assert any(w * 2 == h * 3 for w, h in sizes), sizes
    assert "broken/empty.png" in html_text  # errors are listed with their reason


@pytest.fixture(scope="module")
def rescanned(cli, s3_scan, s3_server, converted_checkpoint):
    """Delete one image and add one, then scan again: the second run of the same lake."""
    from vip2scan.model.data.synthetic import encode_png, make_sample

    fs = s3_server.filesystem()
    gone = s3_scan.truth[0]["image_uri"]
    fs.rm(gone.removeprefix("s3://"))
    image, _ = make_sample("disc", "scratch", size=224, seed=99)
    added = f"{s3_scan.lake}/line9/day01/new_image.png"
    fs.pipe(added.removeprefix("s3://"), encode_png(image))
    # --retry-errors rescans the broken files, which fail again: with --strict that exits 3.
    ran = cli("scan", s3_scan.lake, "--out", s3_scan.out, "--checkpoint", converted_checkpoint.checkpoint,
              "--no-progress", "--retry-errors", "--strict", *s3_scan.flags)
    assert ran.exit_code == 3, ran.stderr[-3000:]
    return gone, added, ran


def test_latest_drops_vanished_objects_and_keeps_new_ones(cli, s3_scan, rescanned) -> None:
    gone, added, ran = rescanned
    assert "new 1" in ran.stdout and "vanished 1" in ran.stdout and f"failed {len(BROKEN)}" in ran.stdout
    latest = rows_of(cli("query", s3_scan.out, "SELECT image_uri, run_id FROM latest ORDER BY image_uri",
                         "--format", "json", *s3_scan.flags))
    uris = [row["image_uri"] for row in latest]
    assert len(uris) == len(set(uris)) == LISTED  # one row per object still in the lake
    assert gone not in uris and added in uris
    # The vanished object's history stays in `scores`; `runs` lists both runs.
    history = rows_of(cli("query", s3_scan.out, f"SELECT count(*) AS n FROM scores WHERE image_uri = '{gone}'",
                          "--format", "json", *s3_scan.flags))
    assert history == [{"n": 1}]
    runs = rows_of(cli("query", s3_scan.out, "SELECT run_id, new, vanished FROM runs ORDER BY started_at",
                       "--format", "json", *s3_scan.flags))
    assert [r["vanished"] for r in runs] == [0, 1] and runs[0]["run_id"] == s3_scan.first_run_id


def test_first_scan_without_strict_exits_0_despite_error_rows(s3_scan) -> None:
    assert s3_scan.first.exit_code == 0 and f"failed {len(BROKEN)}" in s3_scan.first.stdout


def test_a_missing_bucket_is_a_one_line_runtime_error(cli, s3_server, converted_checkpoint) -> None:
    ran = cli("scan", "s3://no-such-bucket-vip2scan/lake", "--out", "s3://no-such-bucket-vip2scan/out",
              "--checkpoint", converted_checkpoint.checkpoint, "-s", f"endpoint_url={s3_server.endpoint_url}")
    assert ran.exit_code == 1
    assert len(ran.error_lines) == 1 and "no-such-bucket-vip2scan" in ran.error_lines[0], ran.stderr
    assert "Traceback" not in ran.stderr
