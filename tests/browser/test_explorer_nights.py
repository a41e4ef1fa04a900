"""Per-night views across a threshold change and a --full rescan, in headless Chromium.

A small synthetic OUT (tests/helpers/big_out.py: 60 objects, no pictures): night 1 scores
everything at the uncalibrated 0.5, night 2 rescans everything (--full) at 0.5, night 3 rescores
a few at a calibrated 0.5067... The explorer's per-night chart marks night 3, its night filter
finds night 1's objects, and night 3's report says its threshold changed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.helpers.cdp_browser import Browser, require_browser
from tests.helpers.cli_runner import invoke

pytestmark = pytest.mark.slow

OBJECTS = 60
THRESHOLDS = (0.5, 0.5, 0.5067054569721222)  # as calibrate writes it: shown rounded


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    from tests.helpers.big_out import write_big_out

    out = tmp_path_factory.mktemp("nights") / "out"
    write_big_out(out, OBJECTS, thresholds=THRESHOLDS, shares=(1.0, 1.0, 0.1))
    ran = invoke("explore", str(out), "--max-images", "0")
    assert ran.exit_code == 0, ran.stderr
    return out


def test_explorer_marks_the_threshold_change_and_filters_by_any_night(out, tmp_path) -> None:
    text = (out / "reports" / "explorer" / "data" / "meta.js").read_text()
    meta = json.loads(text[text.index("(") + 1: text.rindex(")")])
    assert [bool(n.get("threshold_change")) for n in meta["per_night"]] == [False, False, True]

    with Browser(require_browser(), tmp_path / "profile") as browser:
        browser.open((out / "reports" / "explorer" / "index.html").as_uri())
        browser.wait_for("document.querySelectorAll('#chart-night svg g').length === 3")
        marks = browser.evaluate("Array.from(document.querySelectorAll('#chart-night text.threshold-change'))"
                                 ".map(t => t.textContent)")
        assert marks == ["\u25C6 threshold 0.5 \u2192 0.5067"]
        # The mark sits on night 3's row (the third bar group).
        assert browser.evaluate("document.querySelectorAll('#chart-night svg g')[2]"
                                ".querySelectorAll('.threshold-change').length") == 2
        assert browser.evaluate("!!document.getElementById('threshold-change-note')")

        # Night 1's objects were all rescanned on night 2: the filter still finds them.
        browser.evaluate("location.hash = '#images'")
        browser.wait_for("window.V2S.timing.tableMs !== undefined")
        browser.set_value("#f-night", "0")
        browser.wait_for(f"document.getElementById('p-info').textContent.includes('of {OBJECTS} matching')")
        assert browser.errors() == []


def test_report_says_the_threshold_changed_since_the_previous_run(out) -> None:
    runs = sorted(p.stem for p in (out / "runs").glob("*.json"))
    ran = invoke("report", str(out), "--run", runs[-1], "--top", "0")
    assert ran.exit_code == 0, ran.stderr
    page = (out / "reports" / runs[-1] / "report.html").read_text()
    assert f"threshold changed: the previous run of this source, {runs[-2]}" in page
    assert "image threshold 0.50671." in page and "0.5067054569721222" not in page
    first = invoke("report", str(out), "--run", runs[1], "--top", "0")
    assert first.exit_code == 0 and "threshold changed" not in \
        (out / "reports" / runs[1] / "report.html").read_text()
