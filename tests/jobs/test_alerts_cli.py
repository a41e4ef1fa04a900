"""`vip2scan alerts` on an OUT whose runs were committed before runs recorded their group
counts (hand-made runs: the counts come from the score files), and the flags' usage errors."""

from __future__ import annotations

import json

import pytest
from tests.helpers.hand_made_runs import Night

from vip2scan.pipeline.storage.location import Location

PER_GROUP = 20


@pytest.fixture()
def legacy_out(tmp_path) -> str:
    """Five nights of groups a/ and b/; on night 4, 8 of b/'s 20 objects are error rows."""
    out = tmp_path / "out"
    night = Night(Location.of(str(out)))
    for day in range(5):
        rows = {f"{group}/n{day}/img_{i:02d}.png": (-1 if group == "b" and day == 3 and i < 8 else 100)
                for group in ("a", "b") for i in range(PER_GROUP)}
        night.commit(day, "m1", rows)
    return str(out)


@pytest.mark.slow  # five hand-made commits with their snapshots
def test_alerts_lists_the_error_jump_of_a_legacy_out(cli, legacy_out) -> None:
    ran = cli("alerts", legacy_out, "--format", "json")
    assert ran.exit_code == 0, ran.stderr
    report = json.loads(ran.stdout)
    assert [(a["night"], a["group"], a["kind"], a["count"], a["n"], a["baseline_n"])
            for a in report["alerts"]] == [("2025-01-04", "b/", "errors", 8, 20, 60)]
    assert report["changes"] == [] and report["runs"] == 5 and report["rule"]["alpha"] == 0.001

    text = cli("alerts", legacy_out)
    assert text.exit_code == 0
    assert text.stdout.splitlines()[0].startswith("2025-01-04  ") and \
        "alert: b/ error rows: 8 of 20 (40.0 %) vs 0.0 % over the previous 3 night(s)" in text.stdout
    assert text.stdout.splitlines()[-1].startswith("1 alert(s), 0 change(s) in all (5 run(s)")

    later = cli("alerts", legacy_out, "--since", "2025-01-05")
    assert later.exit_code == 0 and "alert:" not in later.stdout
    assert later.stdout.startswith("0 alert(s), 0 change(s) since 2025-01-05 (1 run(s)")

    grouped = json.loads(cli("alerts", legacy_out, "--by", "A*/", "--format", "json").stdout)
    assert [(a["group"], a["kind"]) for a in grouped["alerts"]] == [("(no match)", "errors")]


@pytest.mark.parametrize("args, says", [
    (["--since", "yesterday"], "Invalid value for '--since': expected a date YYYY-MM-DD"),
    (["--format", "yaml"], "Invalid value for '--format': expected text or json"),
    (["--by", "/"], "Invalid value for '--by': needs a glob naming a folder level"),
])
def test_alerts_usage_errors(cli, tmp_path, args, says) -> None:
    ran = cli("alerts", str(tmp_path), *args)
    assert ran.exit_code == 2 and len(ran.error_lines) == 1 and says in ran.error_lines[0]


def test_notify_takes_only_http_urls_and_never_prints_their_secrets(cli, tmp_path) -> None:
    ran = cli("scan", str(tmp_path), "--out", str(tmp_path / "out"), "--checkpoint", "c",
              "--notify", "ftp://alice:hunter22@example.com/hooks/tok3n-value")
    assert ran.exit_code == 2 and len(ran.error_lines) == 1
    assert "expected an http:// or https:// URL, got 'ftp://example.com'" in ran.error_lines[0]
    assert "hunter22" not in ran.stdout + ran.stderr and "tok3n" not in ran.stdout + ran.stderr
