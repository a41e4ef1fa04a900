"""`vip2scan bench --analyst N`: a small version runs every command and reports what was built.

No timing is asserted (targets live in the bench's JSON). What is asserted: every command ran
and succeeded, and what each says it saw matches the fabricated history, counted here with
DuckDB over the kept OUT (error rows included).
"""

from __future__ import annotations

import json

import duckdb
import pytest

from tests.helpers.cli_runner import invoke
from vip2scan.jobs.bench.analyst import ANALYST_TARGET, PAGE_TARGETS, AnalystBench, write_analyst_result
from vip2scan.jobs.bench.browser import find_browser
from vip2scan.jobs.errors import JobError

OBJECTS, NIGHTS = 3000, 3
COMMANDS = ["explore_first", "explore_quiet", "explore_incremental", "report_full_run",
            "report_newest", "calibrate", "calibrate_by", "report_full_run_calibrated", "verify"]


@pytest.mark.slow  # history, then ten commands, each in a fresh process
def test_analyst_bench_runs_every_command_over_the_history_it_built(tmp_path) -> None:
    report_path = tmp_path / "analyst.json"
    ran = invoke("bench", "--analyst", str(OBJECTS), "--nights", str(NIGHTS), "--workdir",
                 str(tmp_path / "work"), "--json", str(report_path), "--keep-outputs")
    assert ran.exit_code == 0, ran.stdout + ran.stderr
    assert "analyst bench: 3,000 objects" in ran.stdout and "explore_quiet" in ran.stdout
    report = json.loads(report_path.read_text())
    history, commands = report["history"], report["commands"]

    deep = "--deep" in invoke("verify", "--help").stdout
    assert list(commands) == COMMANDS + (["verify_deep"] if deep else [])
    has_browser = find_browser() is not None
    assert report["failed"] == [] and bool(report["notes"]) != (deep and has_browser)
    browser = report["browser"]
    if has_browser:  # the explorer in Chromium, static and served, each next to the page's targets
        for mode in ("static", "served"):
            assert set(browser[mode]["targets"]) == set(PAGE_TARGETS), mode
            for check in browser[mode]["targets"].values():
                assert check["value"] > 0 and check["pass"] == (check["value"] <= check["target"]), mode
        assert browser["served"]["server_start_s"] > 0 and browser["served"]["server_peak_rss_mib"] > 0
    else:
        assert "no headless Chromium" in browser["skipped"]
    for name, entry in commands.items():
        assert entry["ok"] and entry["seconds"] > 0 and entry["peak_rss_mib"] > 0, name
        assert 0 < entry["cpu_seconds"], name
        assert {"seconds", "peak_rss_mib"} <= set(entry["targets"]), name
        for check in entry["targets"].values():
            assert check["pass"] == (check["value"] <= check["target"]), name

    scores = str(tmp_path / "work" / f"analyst-{OBJECTS}-{NIGHTS}" / "out" / "scores" / "**" / "*.parquet")
    rows = duckdb.sql(f"SELECT run_id, count(*) AS n, count(*) FILTER (status = 'error') AS e, "
                      f"count(DISTINCT error) AS reasons FROM read_parquet('{scores}') "
                      f"GROUP BY run_id ORDER BY run_id").fetchall()
    changed = OBJECTS // 100
    assert [n for _, n, _, _ in rows] == [OBJECTS] + [changed] * NIGHTS  # and one more night
    full_id, full_rows, full_errors, reasons = rows[0]
    assert 0.002 * OBJECTS < full_errors < 0.01 * OBJECTS and reasons >= 3
    assert history["full_run"] == {"run_id": full_id, "rows": OBJECTS, "error_rows": full_errors}
    assert history["rows"] == sum(n for _, n, _, _ in rows)
    assert history["error_rows"] == sum(e for _, _, e, _ in rows)

    for name in ("report_full_run", "report_full_run_calibrated"):
        assert (commands[name]["rows"], commands[name]["scored"], commands[name]["failed"]) == \
            (OBJECTS, OBJECTS - full_errors, full_errors), name
    newest = commands["report_newest"]
    assert (newest["rows"], newest["failed"]) == (changed, rows[-1][2])
    latest_ok = history["latest_rows"] - history["latest_error_rows"]
    assert history["latest_rows"] == OBJECTS and history["latest_error_rows"] > 0
    assert commands["calibrate"]["latest_scores"] == commands["calibrate_by"]["latest_scores"] == latest_ok
    for name in ("explore_first", "explore_quiet", "explore_incremental"):
        assert commands[name]["objects"] == OBJECTS
        assert commands[name]["explorer"]["files"] > 0 and commands[name]["explorer"]["mb"] > 0
    assert commands["explore_quiet"]["explorer"]["files_written"] == 0  # nothing changed, nothing rewritten
    for name in ["verify"] + (["verify_deep"] if deep else []):
        assert commands[name]["consistent"], name
        assert (commands[name]["runs"], commands[name]["rows"]) == (NIGHTS + 1, history["rows"])


@pytest.mark.slow  # one command in a fresh process
def test_a_failed_command_is_recorded_with_its_error_and_fails_the_bench(tmp_path, capsys) -> None:
    bench = AnalystBench(tmp_path / "no-out")
    entry = bench.measure("report_full_run", ("report", str(tmp_path / "no-out")), ANALYST_TARGET)
    assert not entry["ok"] and "targets" not in entry
    assert entry["error"].startswith("error: no complete run under") and "\n" not in entry["error"]
    result = {"objects": 1, "nights": 1, "targets_for": "test", "commands": bench.commands,
              "history": {"rows": 1, "error_rows": 0, "build_s": 0.0}, "notes": [],
              "failed": ["report_full_run"]}
    with pytest.raises(JobError, match="1 command\\(s\\) failed: report_full_run"):
        write_analyst_result(result, str(tmp_path / "a.json"))
    assert "FAILED: error: no complete run" in capsys.readouterr().out
    assert json.loads((tmp_path / "a.json").read_text())["failed"] == ["report_full_run"]
    with pytest.raises(JobError):
        write_analyst_result(result, "-")  # the JSON alone on stdout
    assert json.loads(capsys.readouterr().out)["commands"]["report_full_run"]["ok"] is False


@pytest.mark.parametrize(("flags", "said"), [
    (["--analyst", "0"], "Invalid value for '--analyst': Input should be greater than or equal to 1"),
    (["--analyst", "10", "--plan", "10"], "Invalid value for '--analyst': give --plan or --analyst, not both"),
    (["--analyst", "10", "--nights", "0"], "Invalid value for '--nights'")])
def test_bad_analyst_flags_are_usage_errors(tmp_path, flags, said) -> None:
    ran = invoke("bench", *flags, "--workdir", str(tmp_path))
    assert ran.exit_code == 2, ran.stdout + ran.stderr
    assert len(ran.error_lines) == 1 and ran.error_lines[0].startswith(f"usage error: {said}")
    assert not list(tmp_path.iterdir())  # nothing was built
