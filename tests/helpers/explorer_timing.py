"""Open the lake explorer in headless Chromium and print its timings as JSON.

    .venv/bin/python tests/helpers/explorer_timing.py OUT            # the static export
    .venv/bin/python tests/helpers/explorer_timing.py OUT --serve    # vip2scan explore OUT --serve

The static export must have been built (vip2scan explore OUT); with --serve the server is
started here (the real CLI, port 0) and stopped at the end. Timings are the page's own
``V2S.timing`` (ms after the page started) and, for the steps a person takes after it is shown,
ms from the action to its answer: a prefix filter, a sort by score, a per-image page.
Also ``served_explorer(out)``: the running server's URL, for tests.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

VENV_BIN = Path(sys.executable).parent


@contextlib.contextmanager
def served_explorer(out: Path | str, *flags: str, timeout: float = 300) -> Iterator[str]:
    """``vip2scan explore OUT --serve --port 0`` in a subprocess: yields its URL; Ctrl-C at the end."""
    proc = subprocess.Popen([str(VENV_BIN / "vip2scan"), "explore", str(out), "--serve", "--port", "0", *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + timeout
        line = ""
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if line.startswith("explorer: http") or not line:
                break
        if not line.startswith("explorer: http"):
            proc.kill()
            raise RuntimeError(f"the explorer server did not start: {line!r} {proc.stderr.read()[-2000:]}")
        yield line.split()[1]
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def measure(browser, url: str) -> dict[str, float]:
    """The page's timings at ``url`` (the explorer's index.html or the server's root)."""
    timings: dict[str, float] = {}
    browser.open(url)
    browser.wait_for("window.V2S && V2S.timing.overviewMs !== undefined", timeout=120)
    timings["overview_ms"] = browser.evaluate("V2S.timing.overviewMs")
    browser.evaluate("location.hash = '#images'")
    browser.wait_for("V2S.timing.tableMs !== undefined", timeout=120)
    timings["table_ready_ms"] = browser.evaluate("V2S.timing.tableMs")

    def answered(action: str) -> float:
        before = browser.evaluate("V2S.timing.answeredMs")
        started = time.perf_counter()
        browser.evaluate(action)
        browser.wait_for(f"V2S.timing.answeredMs !== {json.dumps(before)}", timeout=60)
        # the page applies a filter 150 ms after the last change (typing): not the query's time
        return round(1000 * (time.perf_counter() - started), 1)

    timings["prefix_filter_ms"] = answered(
        "(() => { const s = document.getElementById('f-prefix'); s.value = '1';"
        " s.dispatchEvent(new Event('change', {bubbles: true})); })()")
    timings["prefix_filter_query_ms"] = browser.evaluate("V2S.timing.lastQueryMs")
    timings["sort_by_score_ms"] = answered("document.querySelector('th[data-sort=score]').click()")
    timings["sort_query_ms"] = browser.evaluate("V2S.timing.lastQueryMs")
    started = time.perf_counter()
    browser.evaluate("document.querySelector('#table tbody tr').click()")
    browser.wait_for("!!document.querySelector('#view-image dl')", timeout=60)
    timings["image_page_ms"] = round(1000 * (time.perf_counter() - started), 1)
    return {k: round(v, 1) for k, v in timings.items()}


def main(argv: list[str]) -> None:
    from tests.helpers.cdp_browser import Browser, require_browser

    out = Path(argv[0]).resolve()
    import tempfile

    with tempfile.TemporaryDirectory() as profile, Browser(require_browser(), Path(profile)) as browser:
        if "--serve" in argv:
            started = time.perf_counter()
            with served_explorer(out) as url:
                start_s = time.perf_counter() - started
                result = {"mode": "served", "server_start_s": round(start_s, 1), **measure(browser, url)}
        else:
            result = {"mode": "static", **measure(browser, (out / "reports" / "explorer" / "index.html").as_uri())}
    print(json.dumps(result))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    main(sys.argv[1:])
