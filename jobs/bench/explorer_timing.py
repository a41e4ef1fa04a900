"""The explorer in headless Chromium, timed: what ``vip2scan bench --analyst`` reports for the
page (and ``tests/helpers/explorer_timing.py`` prints for any OUT).

Timings are the page's own ``V2S.timing`` (ms after the page started) and, for the steps a person
takes after it is shown, ms from the action to its answer: a prefix filter, a sort by score, a
per-image page. With ``--serve`` the server is the real CLI in a subprocess (port 0), stopped
with Ctrl-C at the end; its start-up seconds and peak RSS are reported too.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from .browser import Browser, find_browser


@contextlib.contextmanager
def served_explorer(out: Path | str, *flags: str, timeout: float = 300) -> Iterator[tuple[str, subprocess.Popen]]:
    """``vip2scan explore OUT --serve --port 0`` in a subprocess: yields (its URL, the process);
    Ctrl-C at the end."""
    proc = subprocess.Popen([sys.executable, "-m", "vip2scan.jobs", "explore", str(out), "--serve", "--port", "0",
                             *flags], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
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
        yield line.split()[1], proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def peak_rss_mib(pid: int) -> float | None:
    """A running process's peak resident memory (VmHWM), MiB."""
    try:
        with open(f"/proc/{pid}/status") as status:
            found = [line.split()[1] for line in status if line.startswith("VmHWM")]
    except OSError:
        return None
    return round(int(found[0]) / 1024, 1) if found else None


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


def explorer_timings(out: Path, served: bool = True) -> dict[str, Any]:
    """The static export's timings (it must have been built) and, with ``served``, the server's;
    ``{"skipped": reason}`` when no Chromium is on PATH."""
    executable = find_browser()
    if executable is None:
        return {"skipped": "no headless Chromium on PATH (apt-get install chromium)"}
    out = Path(out).resolve()
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as profile, Browser(executable, Path(profile)) as browser:
        result["static"] = measure(browser, (out / "reports" / "explorer" / "index.html").as_uri())
        if served:
            started = time.perf_counter()
            with served_explorer(out) as (url, proc):
                start_s = round(time.perf_counter() - started, 1)
                result["served"] = {"server_start_s": start_s, **measure(browser, url),
                                    "server_peak_rss_mib": peak_rss_mib(proc.pid)}
    return result
