"""The heat lands on the defect where people look at it: the explorer's per-image view (its
heat overlay and its marker of the map's maximum) and the run report's map thumbnails, for a
lake scanned with ``--checkpoint embedded`` whose defect masks are known (square, non-square and
EXIF-rotated images). The page is opened in headless Chromium; what it shows is measured in the
page (element boxes, the marker's place) and in the pictures it loaded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers.cdp_browser import Browser, artifacts_dir, require_browser
from tests.helpers.cli_runner import invoke
from tests.helpers.quality_lake import heat_values, hot_spot, inside, overlay_heat, quality_cases

pytestmark = pytest.mark.slow

MOST = 0.75
BOX = "(() => {{ const r = document.querySelector({sel}).getBoundingClientRect(); return [r.left, r.top, r.width, r.height]; }})()"


@pytest.fixture(scope="module")
def scanned(tmp_path_factory):
    root = tmp_path_factory.mktemp("heat")
    lake, out = root / "lake", root / "out"
    cases = [c for c in quality_cases() if c.kind in ("square", "non_square", "exif")]
    cases = [c for c in cases if c.kind != "square"] + [c for c in cases if c.kind == "square"][:7]
    for case in cases:
        (lake / case.name).parent.mkdir(parents=True, exist_ok=True)
        (lake / case.name).write_bytes(case.data)
    ran = invoke("scan", str(lake), "--out", str(out), "--checkpoint", "embedded", "--engine", "local",
                 "--no-progress")
    assert ran.exit_code == 0, ran.stderr[-2000:]
    return lake, out, {c.name: c for c in cases}


@pytest.fixture()
def browser(tmp_path):
    with Browser(require_browser(), tmp_path / "profile") as b:
        yield b


def _box(browser: Browser, selector: str) -> list[float]:
    return browser.evaluate(BOX.format(sel=json.dumps(selector)))


def test_explorer_overlay_and_marker_sit_on_the_defect(browser, scanned, tmp_path) -> None:
    lake, out, cases = scanned
    ran = invoke("explore", str(out))
    assert ran.exit_code == 0, ran.stderr
    explorer = out / "reports" / "explorer"
    browser.open((explorer / "index.html").as_uri())
    browser.evaluate("location.hash = '#images'")  # the table view loads the index (lazily)
    browser.wait_for("window.V2S.timing.tableMs !== undefined")
    shots = artifacts_dir(tmp_path / "screenshots")
    marker_hits, heat_hits, defective = 0, 0, [c for c in cases.values() if c.defective]
    for case in defective:
        row = browser.evaluate(f"V2S.index.k.indexOf({json.dumps(case.name)})")
        assert row >= 0, case.name
        name = browser.evaluate(f"V2S.index.im[{row}]")
        browser.evaluate(f"location.hash = '#image/{row}'")
        browser.wait_for(f"!!document.querySelector('#view-image img[src=\"img/{name}.png\"]')")
        browser.wait_images()
        assert browser.broken_images() == []
        base = _box(browser, f'#view-image img[src="img/{name}.png"]')
        heat = _box(browser, "#overlay-heat")
        # The overlay covers exactly the picture (same place, same size) ...
        assert np.allclose(base, heat, atol=1.0), (case.name, base, heat)
        # ... the picture shown is upright, with the image's own aspect ...
        height, width = case.mask.shape
        assert abs(base[2] / base[3] - width / height) < 0.02, (case.name, base)
        # ... the marker of the map's maximum sits on the defect ...
        marker = _box(browser, "#peak-marker")
        mx = (marker[0] + marker[2] / 2 - base[0]) / base[2]
        my = (marker[1] + marker[3] / 2 - base[1]) / base[3]
        marker_hits += inside(case.mask, mx, my)
        # ... and so does the hottest part of the heat picture the page shows.
        heat_png = np.asarray(Image.open(explorer / "img" / f"{name}-map.png").convert("RGB"))
        heat_hits += inside(case.mask, *hot_spot(heat_values(heat_png)))
        if case.kind == "exif":
            browser.screenshot(shots / "explorer-heat-exif.png")
    assert marker_hits >= MOST * len(defective), (marker_hits, len(defective))
    assert heat_hits >= MOST * len(defective), (heat_hits, len(defective))
    assert browser.errors() == []


def test_report_thumbnails_and_overlays_agree_with_the_masks(browser, scanned, tmp_path) -> None:
    lake, out, cases = scanned
    top = sum(c.defective for c in cases.values())
    ran = invoke("report", str(out), "--top", str(top))
    assert ran.exit_code == 0, ran.stderr
    page = Path(ran.stdout.split("report: ", 1)[1].split()[0].removeprefix("file://"))
    browser.open(page.as_uri())
    browser.wait_images()
    assert browser.broken_images() == []
    shown = browser.evaluate(
        "Array.from(document.querySelectorAll('img[alt^=\"anomaly map \"]')).map(o => {"
        " const row = o.closest('tr'); const i = row.querySelector('img[alt^=\"image \"]');"
        " const a = o.getBoundingClientRect(), b = i.getBoundingClientRect();"
        " return [o.getAttribute('src'), i.getAttribute('src'), row.querySelector('code').textContent,"
        " [a.width, a.height], [b.width, b.height]]; })")
    assert len(shown) == top
    hits, defective = 0, 0
    for overlay_src, image_src, uri, overlay_box, image_box in shown:
        assert np.allclose(overlay_box, image_box, atol=1.0), uri  # side by side, the same shape
        case = cases[Path(uri.removeprefix("file://")).relative_to(lake).as_posix()]
        heat = overlay_heat((page.parent / image_src).read_bytes(), (page.parent / overlay_src).read_bytes())
        height, width = case.mask.shape
        assert abs(heat.shape[1] / heat.shape[0] - width / height) < 0.02, uri
        if case.defective:
            defective += 1
            hits += inside(case.mask, *hot_spot(heat_values(heat)))
    browser.screenshot(artifacts_dir(tmp_path / "screenshots") / "report-heat.png")
    assert defective >= top - 1  # the most anomalous images are the defective ones
    assert hits >= MOST * defective, (hits, defective)
    assert browser.errors() == []
