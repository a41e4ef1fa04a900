"""`vip2scan bench --plan N --nights H`: a small version runs end to end and reports every field.

No timing is asserted. What is asserted: the history was committed through the snapshot path
(first night rebuilt, later nights incremental), the dry run planned exactly tonight's 1 %
of changes, and the `latest` query over the snapshot gave what the old window gave (the
bench itself refuses to report otherwise).
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from vip2scan.jobs.cli import app

pytestmark = pytest.mark.slow  # planning and queries timed in fresh processes


def test_plan_bench_reports_planning_and_latest_figures(tmp_path) -> None:
    report_path = tmp_path / "plan.json"
    result = CliRunner().invoke(app, ["bench", "--plan", "20000", "--nights", "3", "--workdir",
                                      str(tmp_path / "work"), "--json", str(report_path)])
    assert result.exit_code == 0, result.output
    assert "planning (--dry-run --manifest)" in result.output
    report = json.loads(report_path.read_text())
    assert (report["objects"], report["nights"], report["history_rows"]) == (20000, 3, 20400)
    snapshot = report["snapshot"]
    assert snapshot["rows"] == 20000 and snapshot["files"] == 1
    assert snapshot["first_build_s"] > 0 and snapshot["nightly_build_s_max"] > 0
    plan = report["plan"]
    assert plan["seconds"] > 0 and plan["peak_rss_mib"] > 0 and plan["dry_run_s"] > 0
    assert "listed 20000, new 0, changed 200, unchanged 19800" in plan["counts"]
    for side in ("snapshot", "window_over_runs"):
        figures = report["latest_query"][side]
        assert figures["seconds"] > 0 and figures["peak_rss_mib"] > 0
    assert not (tmp_path / "work" / "plan-20000-3").exists()  # removed unless --keep-outputs
