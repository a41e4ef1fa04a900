"""`explore` and `map` on an OUT in object storage (moto S3): files written there, maps read there."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow  # the session's CLI scan on moto S3 through Ray (s3_scan)


def test_explore_and_map_on_s3(s3_scan, s3_server, cli, tmp_path):
    ran = cli("explore", s3_scan.out, "--max-images", "4", *s3_scan.flags)
    assert ran.exit_code == 0, ran.stderr
    assert "4 pre-rendered" in ran.stdout
    fs = s3_server.filesystem()
    folder = f"{s3_scan.bucket}/out/reports/explorer"
    names = {p.rsplit("/", 1)[-1] for p in fs.find(folder)}
    assert {"index.html", "explorer.js", "explorer.css", "meta.js", "index.js", "obj-00000.js"} <= names
    assert len([n for n in names if n.endswith("-map.png")]) == 4
    meta_js = fs.cat(f"{folder}/data/meta.js").decode()
    meta = json.loads(meta_js[meta_js.index("(") + 1: meta_js.rindex(")")])
    assert meta["counts"]["error rows"] >= 2 and meta["rendered"] == 4

    # The lake is the session's: another module deletes its first image (order under xdist
    # varies), so take an image that is still there.
    uri = next(t["image_uri"] for t in s3_scan.truth if fs.exists(t["image_uri"].removeprefix("s3://")))
    png = tmp_path / "map.png"
    ran = cli("map", s3_scan.out, uri, "--png", str(png), "--overlay", *s3_scan.flags)
    assert ran.exit_code == 0, ran.stderr
    assert png.stat().st_size > 0
