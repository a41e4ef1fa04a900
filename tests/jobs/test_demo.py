"""The demo, run as a user runs it: the installed script in a subprocess, offline."""

from __future__ import annotations

import json
import re

import pytest

OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "RAY_ADDRESS": None}


@pytest.mark.slow
def test_demo_leaves_parquet_zarr_and_a_report_and_says_where(cli_subprocess, tmp_path) -> None:
    root = tmp_path / "demo"
    # Fewer images than the default only to keep the suite short; the flow is the same.
    ran = cli_subprocess("demo", "--dir", str(root), "--images", "60", env=OFFLINE, timeout=600)
    assert ran.exit_code == 0, ran.stderr[-3000:]
    out = root / "out"
    assert list((out / "scores").glob("scan_date=*/*.parquet"))
    stores = list((out / "maps").glob("*.zarr"))
    assert len(stores) == 1 and (stores[0] / "zarr.json").exists()
    reports = list((out / "reports").glob("*/report.html"))
    assert len(reports) == 1 and str(reports[0]) in ran.stdout
    assert (out / "reports" / "explorer" / "index.html").exists()
    assert "vip2scan query" in ran.stdout
    # The embedded model finds the generated defects, and the demo says how well.
    measured = dict(re.findall(r"(image AUROC|pixel AUROC|AUPRO) ([0-9.]+)", ran.stdout))
    assert float(measured["image AUROC"]) >= 0.85, ran.stdout
    assert float(measured["pixel AUROC"]) >= 0.9, ran.stdout

    # The printed next step works: query the demo's output from another process.
    query = cli_subprocess("query", str(out), "SELECT status, count(*) AS n FROM latest GROUP BY 1 ORDER BY 1",
                           "--format", "json")
    assert query.exit_code == 0, query.stderr
    counts = {row["status"]: row["n"] for row in map(json.loads, query.stdout.splitlines())}
    assert counts == {"error": 4, "ok": 60}


def test_demo_refuses_to_wipe_a_directory_it_did_not_make(cli, tmp_path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    ran = cli("demo", "--dir", str(tmp_path), "--images", "8")
    assert ran.exit_code == 2 and "not made by the demo" in ran.stderr
    assert (tmp_path / "precious.txt").read_text() == "keep me"
