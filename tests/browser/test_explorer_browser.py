"""The lake explorer and a run report, opened in headless Chromium over the DevTools protocol.

One lake (tests/helpers/night_lake.py: ~250 tiny images over three nights, error rows, a 16-bit
PNG, an EXIF-rotated JPEG) is scanned once with the local engine; the explorer and a report are
built with the real CLI and driven as a person would: no console errors, no broken images,
filtering, sorting, paging and the per-image view work. Screenshots go to
$VIP2SCAN_TEST_ARTIFACTS (or the test's tmp folder). Without Chromium the browser tests skip
(``apt-get install chromium``), except under CI=true, where that is a failure.
"""

from __future__ import annotations

import io
import json
from urllib.parse import quote
from pathlib import Path

import numpy as np
import pytest
from tests.helpers.cdp_browser import Browser, artifacts_dir, require_browser
from tests.helpers.cli_runner import invoke
from tests.helpers.awkward_images import sixteen_bit_png
from tests.helpers.night_lake import EXIF_ROTATED, SIXTEEN_BIT, build_night_lake
from PIL import Image

pytestmark = pytest.mark.slow

ROWS = "Array.from(document.querySelectorAll('#table tbody tr'))"
CELL = ROWS + ".map(r => r.children[{col}].textContent)"  # one column of the page shown
COL_OBJECT, COL_PREFIX, COL_STATUS, COL_SCORE = 1, 2, 4, 5


@pytest.fixture(scope="module")
def lake(tmp_path_factory, tiny_checkpoint):
    return build_night_lake(tmp_path_factory.mktemp("night_lake"), tiny_checkpoint)


@pytest.fixture(scope="module")
def explorer(lake) -> Path:
    # Enough to render every image: the 16-bit and the rotated one must be among them.
    ran = invoke("explore", str(lake.out), "--max-images", "400")
    assert ran.exit_code == 0, ran.stderr
    return lake.out / "reports" / "explorer"


@pytest.fixture(scope="module")
def latest(lake) -> dict:
    from vip2scan.pipeline.output.views import Outputs

    con = Outputs(str(lake.out)).connect()
    counts = dict(con.execute("SELECT status, count(*) FROM latest GROUP BY status").fetchall())
    prefix_rows = con.execute("SELECT count(*) FROM latest WHERE image_uri LIKE '%/lake/line2/%'").fetchone()[0]
    return {"ok": counts.get("ok", 0), "error": counts.get("error", 0), "line2": prefix_rows}


@pytest.fixture()
def browser(tmp_path):
    with Browser(require_browser(), tmp_path / "profile") as b:
        yield b


def load_data(folder: Path, name: str) -> list:
    """The arguments of a data file's V2S.call(...)."""
    text = (folder / "data" / name).read_text()
    return json.loads("[" + text[text.index("(") + 1: text.rindex(")")] + "]")


def details_of(folder: Path, meta: dict, index: dict, row: int) -> list:
    """The per-image details of the table's row ``row`` (from its hash bucket's file)."""
    _, details = load_data(folder, f"obj-{index['b'][row]:05d}.js")
    return details[meta["roots"][index["root"][row]] + index["k"][row]]


def picture_of(index: dict, row: int) -> str:
    """The base name of a row's pre-rendered pictures under img/."""
    return dict(index["im"])[row]


# ------------------------------------------------------------------ files (no browser needed)
def test_explorer_data_is_the_lakes_current_state(lake, explorer, latest):
    meta, = load_data(explorer, "meta.js")
    index, = load_data(explorer, "index.js")
    assert meta["nights"] == lake.nights
    assert meta["n_rows"] == latest["ok"] + latest["error"] == len(index["k"])
    assert meta["counts"]["error rows"] == latest["error"] >= 3
    assert [n["night"] for n in meta["per_night"]] == lake.nights
    assert index["k"] == sorted(index["k"])  # URI order: chunk k holds rows k*1000...
    # history: an image rewritten on night 2 has two rows, oldest first
    row = index["k"].index("line0/img_0000.png")
    history = details_of(explorer, meta, index, row)[4]
    assert [meta["nights"][h[0]] for h in history] == lake.nights[:2]
    # the 16-bit image's thumbnail is the 8-bit picture it scored as, not blank
    sixteen = index["k"].index(SIXTEEN_BIT)
    thumb = np.asarray(Image.open(explorer / "img" / f"{picture_of(index, sixteen)}.png").convert("L"), dtype=float)
    original = np.asarray(Image.open(io.BytesIO(sixteen_bit_png())), dtype=float) / 257
    assert thumb.shape == original.shape and np.abs(thumb - original).mean() < 2.0
    assert thumb.std() > 5  # structure, not a flat white or black square


def test_explorer_renders_only_a_bounded_set(lake, tmp_path):
    import shutil

    copy = tmp_path / "out"
    shutil.copytree(lake.out, copy)
    ran = invoke("explore", str(copy), "--max-images", "10")
    assert ran.exit_code == 0, ran.stderr
    assert "10 pre-rendered" in ran.stdout
    assert len(list((copy / "reports" / "explorer" / "img").glob("*-map.png"))) == 10


def test_vip2scan_map_with_the_explorers_range_draws_the_explorers_colours(lake, explorer, tmp_path):
    meta, = load_data(explorer, "meta.js")
    index, = load_data(explorer, "index.js")
    row = next(j for j, _ in index["im"] if details_of(explorer, meta, index, j)[5]["img"])
    render = details_of(explorer, meta, index, row)[5]
    uri = meta["roots"][index["root"][row]] + index["k"][row]
    theirs = np.asarray(Image.open(explorer / "img" / f"{render['name']}-map.png").convert("RGB"), dtype=int)

    def drawn(*extra: str) -> np.ndarray:
        ran = invoke("map", str(lake.out), uri, "--png", str(tmp_path / "map.png"), *extra)
        assert ran.exit_code == 0, ran.stderr
        ours = np.asarray(Image.open(tmp_path / "map.png").convert("RGB"), dtype=int)
        assert ours.shape == theirs.shape
        return np.abs(ours - theirs)

    # The page's range is rounded to 6 decimals: a pixel may fall into the next colour step.
    same = drawn("--range", f"{render['lo']}:{render['hi']}")
    assert same.mean() < 0.5 and same.max() <= 8
    assert drawn().mean() > 5 * max(same.mean(), 0.1)  # its own range: other colours


# ------------------------------------------------------------------ in the browser
def test_explorer_in_headless_chromium(browser, explorer, lake, latest, tmp_path):
    shots = artifacts_dir(tmp_path / "screenshots")
    browser.open((explorer / "index.html").as_uri())
    browser.wait_images()
    assert browser.evaluate("document.querySelectorAll('#chart-night svg g').length") == 3
    assert browser.broken_images() == []
    browser.screenshot(shots / "explorer-overview.png")

    # the table: first page, sorted by score, highest first
    browser.evaluate("location.hash = '#images'")
    browser.wait_for("window.V2S.timing.tableMs !== undefined")
    total = latest["ok"] + latest["error"]
    assert f"of {total} matching" in browser.evaluate("document.getElementById('p-info').textContent")
    scores = [float(s) for s in browser.evaluate(CELL.format(col=COL_SCORE)) if s]
    assert len(scores) == 50 and scores == sorted(scores, reverse=True)
    browser.wait_images()
    assert browser.broken_images() == []
    browser.screenshot(shots / "explorer-table.png", full_page=False)

    # sorting: by score ascending, then by object name
    browser.click("th[data-sort=score]")
    browser.wait_for("document.querySelector('th[data-sort=score]').className === 'sorted-asc'")
    scores = [float(s) for s in browser.evaluate(CELL.format(col=COL_SCORE)) if s]
    assert scores == sorted(scores) and len(scores) == 50
    browser.click("th[data-sort=uri]")
    browser.wait_for("document.querySelector('th[data-sort=uri]').className === 'sorted-asc'")
    names = browser.evaluate(CELL.format(col=COL_OBJECT))
    assert names == sorted(names)

    # paging: page 2 continues page 1
    browser.click("#p-next")
    browser.wait_for("document.getElementById('p-info').textContent.includes('page 2 of')")
    page2 = browser.evaluate(CELL.format(col=COL_OBJECT))
    assert page2 and set(page2).isdisjoint(names) and page2[0] > names[-1]
    browser.click("#p-first")

    # filtering: status, prefix, score range
    browser.set_value("#f-status", "error")
    browser.wait_for(f"document.getElementById('p-info').textContent.includes('of {latest['error']} matching')")
    assert set(browser.evaluate(CELL.format(col=COL_STATUS))) == {"error"}
    browser.set_value("#f-status", "")
    prefix = browser.evaluate("V2S.meta.prefixes.indexOf('line2/')")
    browser.set_value("#f-prefix", str(prefix))
    browser.wait_for(f"document.getElementById('p-info').textContent.includes('of {latest['line2']} matching')")
    assert set(browser.evaluate(CELL.format(col=COL_PREFIX))) == {"line2/"}
    # Filters apply 150 ms after the last change: wait for each one's own count, or the next
    # step reads a table (or, after a navigation, writes back filters) from the step before.
    matching = "document.getElementById('p-info').textContent.includes('of {} matching')"
    browser.set_value("#f-prefix", "")
    browser.wait_for(matching.format(total))
    middle = float(np.median([s for s in browser.evaluate("Array.from(V2S.index.sc)") if s is not None]))
    browser.set_value("#f-smin", repr(middle))
    above = browser.evaluate(f"Array.from(V2S.index.sc).filter(s => s >= {middle!r}).length")
    assert 0 < above < total
    browser.wait_for(matching.format(above))
    shown = [float(s) for s in browser.evaluate(CELL.format(col=COL_SCORE))]
    assert shown and min(shown) >= round(middle, 4) - 1e-4
    browser.set_value("#f-smin", "")
    browser.wait_for(matching.format(total))

    # the per-image view of the 16-bit image: picture, map, marker, opacity, history
    row = browser.evaluate(f"V2S.index.k.indexOf({json.dumps(SIXTEEN_BIT)})")
    browser.evaluate(f"location.hash = '#image/{row}'")
    browser.wait_for("!!document.getElementById('opacity')")
    browser.wait_images()
    assert browser.broken_images() == []
    assert browser.evaluate("document.querySelector('#view-image h2 a').href").endswith(SIXTEEN_BIT)
    assert browser.evaluate("!!document.getElementById('peak-marker')")
    browser.set_value("#opacity", "80")
    assert browser.evaluate("document.getElementById('overlay-heat').style.opacity") == "0.8"
    assert browser.evaluate("document.querySelectorAll('#view-image table tr').length") == 2  # 1 night
    browser.screenshot(shots / "explorer-image.png")

    # the EXIF-rotated JPEG shows upright: stored 44 x 30, displayed 30 x 44
    row = browser.evaluate(f"V2S.index.k.indexOf({json.dumps(EXIF_ROTATED)})")
    browser.evaluate(f"location.hash = '#image/{row}'")
    name = browser.evaluate(f"V2S.index.im[{row}]")
    browser.wait_for(f"!!document.querySelector('#view-image img[src=\"img/{name}.png\"]')")
    browser.wait_images()
    size = browser.evaluate(f"(() => {{ const i = document.querySelector('img[src=\"img/{name}.png\"]');"
                            " return [i.naturalWidth, i.naturalHeight]; })()")
    assert size == [30, 44]

    # an error row's view says why, and clicking a table row opens its view
    browser.evaluate("location.hash = '#images'")
    # hashchange is handled asynchronously and rewrites the filters from the page's state:
    # wait for it, or the filter set below is overwritten.
    # ('nav-images' is already active on an image's view: wait for the table's own view, which
    # the handler shows right before it rewrites the filters)
    browser.wait_for("!document.getElementById('view-images').hidden")
    browser.set_value("#f-status", "error")
    browser.wait_for(f"document.getElementById('p-info').textContent.includes('of {latest['error']} matching')")
    browser.click("#table tbody tr")
    browser.wait_for("!!document.querySelector('#view-image dl')")
    assert "error" in browser.evaluate("document.querySelector('#view-image dl').textContent")
    assert browser.errors() == []


def test_run_report_in_headless_chromium(browser, lake, tmp_path):
    ran = invoke("report", str(lake.out), "--top", "6")
    assert ran.exit_code == 0, ran.stderr
    page = Path(ran.stdout.split("report: ", 1)[1].split()[0].removeprefix("file://"))
    browser.open(page.as_uri())
    assert browser.broken_images() == []
    assert browser.evaluate("document.images.length") >= 1 + 2 * 6  # histogram + image and map each
    assert "percentile" in browser.evaluate("document.body.textContent")  # the colour rule is named
    browser.screenshot(artifacts_dir(tmp_path / "screenshots") / "report.png")
    assert browser.errors() == []


def test_served_explorer_renders_any_image_on_demand(browser, lake, latest):
    """explore --serve: an object that the static export did not pre-render gets its picture
    and its map drawn now, with the export's imaging code."""
    from tests.helpers.explorer_timing import served_explorer
    from vip2scan.pipeline.output.views import Outputs

    con = Outputs(str(lake.out)).connect()
    uri = con.execute("SELECT image_uri FROM latest WHERE status = 'ok' AND map_store IS NOT NULL "
                      "ORDER BY image_score LIMIT 1").fetchall()[0][0]  # the least anomalous: never pre-rendered first
    con.close()
    with served_explorer(lake.out) as url:
        browser.open(url + "#image/" + quote(uri, safe=""))
        browser.wait_for("!!document.getElementById('overlay-heat')")
        browser.wait_images()
        assert browser.broken_images() == []
        sizes = browser.evaluate("Array.from(document.querySelectorAll('#view-image img')).map(i => i.naturalWidth)")
        assert len(sizes) == 3 and min(sizes) > 0
        assert browser.evaluate("document.getElementById('overlay-heat').getAttribute('src')").startswith("api/picture?uri=")
        assert browser.evaluate("document.querySelector('#view-image h2').textContent") == uri
        assert browser.evaluate("!!document.querySelector('.colourbar')")
        assert browser.errors() == []


def test_explorer_details_names_reasons_filters_in_the_url_and_map_scales(browser, explorer, lake, latest):
    """Issue 25's explorer details: error links by name, a reason column, filters kept in the
    URL across a reload, every map's maximum inside its colour bar, the maximum's ring whole
    at the picture's edge, ticks clear of the labels, an axis on the history line."""
    meta, = load_data(explorer, "meta.js")
    index, = load_data(explorer, "index.js")
    rendered = []
    for b in range(meta["buckets"]):
        _, details = load_data(explorer, f"obj-{b:05d}.js")
        rendered += [d[5] for d in details.values() if d[5]]
    assert rendered and all(r["peak"] <= r["hi"] for r in rendered)

    browser.open((explorer / "index.html").as_uri())
    browser.wait_for("!!document.querySelector('#error-list a')")
    names = browser.evaluate("Array.from(document.querySelectorAll('#error-list a')).map(a => a.textContent)")
    assert names and set(names) <= set(index["k"]), names

    browser.evaluate("location.hash = '#images'")
    browser.wait_for("window.V2S.timing.tableMs !== undefined")
    browser.set_value("#f-status", "error")
    matching = f"document.getElementById('p-info').textContent.includes('of {latest['error']} matching')"
    browser.wait_for(matching)
    reasons = browser.evaluate(ROWS + ".map(r => r.lastElementChild.textContent)")
    assert len(reasons) == latest["error"] and all(reasons), reasons
    assert "status=error" in browser.evaluate("location.hash")
    browser.reload("window.V2S && window.V2S.timing.tableMs !== undefined")
    browser.wait_for(matching)
    assert browser.evaluate("document.getElementById('f-status').value") == "error"

    # An image scored on two nights: its history line has axes, its table says yes/no.
    row = index["k"].index("line0/img_0000.png")
    browser.evaluate(f"location.hash = '#image/{row}'")
    browser.wait_for("!!document.querySelector('#view-image dl')")
    assert browser.evaluate("document.querySelectorAll('#view-image svg.sparkline text.axis').length") == 4
    flags = browser.evaluate("Array.from(document.querySelectorAll('#view-image table tr')).slice(1)"
                             ".map(r => r.lastElementChild.textContent)")
    assert len(flags) == 2 and set(flags) <= {"yes", "no"}, flags
    if browser.evaluate("!!document.querySelector('.colourbar')"):
        assert browser.evaluate("""(() => {
            const labels = document.querySelector('.cb-labels').getBoundingClientRect();
            return Array.from(document.querySelectorAll('.colourbar .tick'))
                .every(t => t.getBoundingClientRect().bottom <= labels.top + 0.5); })()""")

    # A maximum in the picture's corner: its ring stays inside the picture.
    row = next(i for i, f in enumerate(index["f"]) if f & 4)  # a rendered row (FLAG_RENDERED)
    bucket, uri = index["b"][row], meta["roots"][index["root"][row]] + index["k"][row]
    browser.evaluate(f"location.hash = '#image/{row}'")
    # The previous image's view may still show a marker: wait for this row's details too.
    browser.wait_for(f"!!(V2S.chunks[{bucket}] && V2S.chunks[{bucket}][{json.dumps(uri)}])"
                     " && !!document.getElementById('peak-marker')")
    browser.evaluate(f"(() => {{ const r = V2S.chunks[{bucket}][{json.dumps(uri)}][5]; r.x = 0.999; r.y = 0.999; "
                     # the old ring goes, so the one waited for below is the new render's
                     "document.getElementById('peak-marker').remove(); location.hash = '#overview'; })()")
    browser.wait_for("!document.getElementById('view-overview').hidden")
    browser.evaluate(f"location.hash = '#image/{row}'")
    browser.wait_for("!!document.getElementById('peak-marker')")
    inside = browser.evaluate("""(() => {
        const ring = document.getElementById('peak-marker').getBoundingClientRect();
        const picture = document.getElementById('peak-marker').parentElement.getBoundingClientRect();
        return ring.right <= picture.right + 0.5 && ring.bottom <= picture.bottom + 0.5; })()""")
    assert inside
    assert browser.errors() == []
