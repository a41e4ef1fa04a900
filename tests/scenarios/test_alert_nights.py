"""Anomaly-rate alerts over six nights of a generated lake, through the real CLI.

Two product lines get 20 tiny images a night: flat grey ones, which the session's tiny model
scores below the fixed ``--threshold``, and random-noise ones, which it scores above. Nights
1-3 are quiet (line1 flags one image a night); on night 4 half of line1 is noise (a defect
jump); on night 5 7 of line2's 20 are corrupt files (an error jump); on night 6 the threshold
changes and line1 jumps again, which must be reported as a change, not an alert. A webhook on
127.0.0.1 receives the alerts; one that answers 500 and one that hangs must not stop a commit.
"""

from __future__ import annotations

import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from PIL import Image
from tests.helpers.cli_runner import Ran, invoke
from tests.helpers.night_lake import days_ago

pytestmark = pytest.mark.slow

PER_LINE = 20
THRESHOLD, NEW_THRESHOLD = "0.5002", "0.50015"
TOKEN = "s3cr3t-hook-token"
EXIT_ALERT = 4


def grey_png(level: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), level, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def noise_png(seed: int) -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 256, (32, 32, 3)).astype(np.uint8)
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


class Hook:
    """A webhook on 127.0.0.1 that answers ``status`` (or hangs) and keeps what it received."""

    def __init__(self) -> None:
        self.status, self.hang_s, self.received = 200, 0.0, []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                hook.received.append((self.path, json.loads(body)))
                time.sleep(hook.hang_s)
                self.send_response(hook.status)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/{TOKEN}?key={TOKEN}"


@pytest.fixture()
def hook() -> Iterator[Hook]:
    server = Hook()
    yield server
    server.server.shutdown()
    server.server.server_close()


def test_alerts_over_six_nights(tmp_path: Path, tiny_checkpoint: str, hook: Hook) -> None:
    lake, out = tmp_path / "lake", tmp_path / "out"

    def scan(threshold: str, *flags: str) -> Ran:
        return invoke("scan", str(lake), "--out", str(out), "--checkpoint", tiny_checkpoint,
                      "--engine", "local", "--image-size", "64", "--batch-size", "40",
                      "--maps", "none", "--threshold", threshold, "--no-progress", *flags)

    def night(n: int, noise: int = 0, corrupt: int = 0, threshold: str = THRESHOLD,
              *flags: str) -> Ran:
        for line, bad, broken in (("line1", noise, 0), ("line2", 0, corrupt)):
            folder = lake / line / f"n{n}"
            folder.mkdir(parents=True)
            for i in range(PER_LINE):
                name = folder / f"img_{i:02d}.png"
                if i < broken:
                    name.write_bytes(b"not an image\n")
                elif i >= PER_LINE - bad:
                    name.write_bytes(noise_png(1000 * n + i))
                else:
                    name.write_bytes(grey_png(180 + 2 * i + n))
        with days_ago(6 - n):
            return scan(threshold, *flags)

    ran = [night(n, noise=1) for n in (1, 2, 3)]
    assert [r.exit_code for r in ran] == [0, 0, 0], ran[-1].stderr[-2000:]
    ran.append(night(4, 10, 0, THRESHOLD, "--fail-on-alert", "--notify", hook.url))
    config = tmp_path / "nightly.toml"
    config.write_text(f'[scan]\nfail-on-alert = true\nnotify = "{hook.url}"\n')
    ran.append(night(5, 1, 7, THRESHOLD, "--config", str(config)))
    ran.append(night(6, 10, 0, NEW_THRESHOLD, "--fail-on-alert"))
    assert [r.exit_code for r in ran[3:]] == [EXIT_ALERT, EXIT_ALERT, 0], ran[3].stderr[-2000:]

    records = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))]
    records.sort(key=lambda r: r["started_at"])
    counts = [{g["group"]: (g["flagged"], g["errors"]) for g in r["group_counts"]["groups"]}
              for r in records]
    assert counts[:5] == [{"line1/": (1, 0), "line2/": (0, 0)}] * 3 + [
        {"line1/": (10, 0), "line2/": (0, 0)}, {"line1/": (1, 0), "line2/": (0, 7)}]
    assert [[(a["group"], a["kind"]) for a in r["alerts"]] for r in records] == [
        [], [], [], [("line1/", "flagged")], [("line2/", "errors")], []]
    assert [[(c["group"], c["kind"]) for c in r["alert_changes"]] for r in records] == [
        [], [], [], [], [], [("line1/", "threshold_changed"), ("line2/", "threshold_changed")]]

    # the summary: one line per alert / change
    alert_lines = [[line.strip() for line in r.stdout.splitlines() if "alert:" in line] for r in ran]
    assert alert_lines[:3] == [[], [], []] and alert_lines[5] == []
    assert alert_lines[3] == ["alert: line1/ flagged images: 10 of 20 (50.0 %) vs 5.0 % over "
                              f"the previous 3 night(s), p = {records[3]['alerts'][0]['p_value']:.2g}"]
    assert len(alert_lines[4]) == 1 and alert_lines[4][0].startswith("alert: line2/ error rows: 7 of 20")
    assert sum("changed: line" in line for line in ran[5].stdout.splitlines()) == 2

    # the webhook got night 4's and night 5's runs, with their alerts and a link
    assert [(body["run_id"], [a["group"] for a in body["alerts"]]) for _, body in hook.received] == [
        (records[3]["run_id"], ["line1/"]), (records[4]["run_id"], ["line2/"])]
    assert hook.received[0][1]["explorer"].endswith("/reports/explorer/index.html")
    assert all(f"{TOKEN}" in path for path, _ in hook.received)
    assert [sum("notify: posted" in line for line in r.stdout.splitlines()) for r in ran[3:5]] == [1, 1]

    # `vip2scan alerts` lists exactly these
    listed = invoke("alerts", str(out), "--format", "json")
    assert listed.exit_code == 0, listed.stderr
    report = json.loads(listed.stdout)
    assert [(a["night"], a["group"], a["kind"]) for a in report["alerts"]] == [
        (records[3]["scan_date"], "line1/", "flagged"), (records[4]["scan_date"], "line2/", "errors")]
    assert [c["kind"] for c in report["changes"]] == ["threshold_changed"] * 2
    since = invoke("alerts", str(out), "--since", records[4]["scan_date"])
    assert since.exit_code == 0 and since.stdout.count("alert:") == 1
    assert "line2/ error rows" in since.stdout and since.stdout.count("changed:") == 2

    # the explorer's per-night chart marks the two nights; its overview lists the alerts
    assert invoke("explore", str(out), "--max-images", "0").exit_code == 0
    meta_js = (out / "reports" / "explorer" / "data" / "meta.js").read_text()
    meta = json.loads(meta_js[meta_js.index("(") + 1:meta_js.rindex(")")])
    assert [(d["night"], d.get("alerts", 0)) for d in meta["per_night"]] == [
        (r["scan_date"], int(i in (3, 4))) for i, r in enumerate(records)]
    assert [(a["group"], a["kind"]) for a in meta["alerts"] if a["alert"]] == [
        ("line1/", "flagged"), ("line2/", "errors")]

    # a failing and a hanging webhook: the run commits, the failure is one line
    hook.status = 500
    failing = scan(NEW_THRESHOLD, "--notify", hook.url)
    hook.status, hook.hang_s = 200, 30.0
    t0 = time.monotonic()
    hanging = scan(NEW_THRESHOLD, "--notify", hook.url, "--notify-timeout", "1")
    waited = time.monotonic() - t0
    assert (failing.exit_code, hanging.exit_code) == (0, 0), failing.stderr[-2000:]
    assert len(list((out / "runs").glob("*.json"))) == 8
    for result, why in ((failing, "HTTP 500"), (hanging, "")):
        notes = [line for line in result.stdout.splitlines() if "notify" in line]
        assert len(notes) == 1 and notes[0].startswith("warning: notify to http://127.0.0.1:")
        assert why in notes[0] and "the run is committed" in notes[0]
    assert len(hook.received) == 2 + 3 + 1  # the 500 was retried twice, the hang not at all
    assert waited < 15
    for result in [*ran, failing, hanging]:
        assert TOKEN not in result.stdout + result.stderr
