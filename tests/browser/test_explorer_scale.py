"""The explorer over an OUT the old design would page on (50,000 current objects over three
nights, tests/helpers/big_out.py, no pictures), in headless Chromium: ``explore --serve`` over
the whole lake and the static export with a small ``--table-rows``, every answer checked
against DuckDB over ``latest``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.helpers.cdp_browser import Browser, require_browser
from tests.helpers.cli_runner import invoke
from tests.helpers.explorer_timing import served_explorer

pytestmark = pytest.mark.slow

OBJECTS = 50_000
TABLE_ROWS = 2_000
COLD_PREFIX = "line1/"
ROWS = "Array.from(document.querySelectorAll('#table tbody tr'))"
KEYS = ROWS + ".map(r => r.children[1].textContent)"
INFO = "document.getElementById('p-info').textContent"


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    import datetime as dt

    import numpy as np
    from tests.helpers.big_out import SOURCE, add_night, write_big_out

    out = tmp_path_factory.mktemp("scale") / "out"
    write_big_out(out, OBJECTS)
    # A fourth night rescored COLD_PREFIX lower: the lake's most anomalous objects are
    # elsewhere, so only the per-prefix part of the static table set holds its page 1.
    cold = [f"{SOURCE}/{COLD_PREFIX}day{(i // 12) % 30:02d}/img_{i:07d}.jpg" for i in range(1, OBJECTS, 12)]
    when = dt.datetime.now(dt.timezone.utc).replace(hour=5, minute=0, second=0, microsecond=0)
    add_night(out, cold, when, 3, OBJECTS, np.random.default_rng(3), shift=-0.015)
    return out


@pytest.fixture(scope="module")
def lake(out):
    """DuckDB over the OUT's views, to check the page against."""
    from vip2scan.pipeline.output.views import Outputs

    con = Outputs(str(out)).connect()
    yield con
    con.close()


def keys(con, where: str = "TRUE", order: str = "image_score DESC NULLS LAST, image_uri", offset: int = 0) -> list[str]:
    rows = con.execute(f"SELECT image_uri FROM latest l WHERE {where} ORDER BY {order} LIMIT 50 OFFSET {offset}").fetchall()
    return [u.removeprefix("s3://lake/images/") for u, in rows]


def count(con, where: str) -> int:
    return con.execute(f"SELECT count(*) FROM latest l WHERE {where}").fetchall()[0][0]


def shown(browser: Browser, total: int) -> list[str]:
    browser.wait_for(f"{INFO}.includes(' of {total} matching')")
    return browser.evaluate(KEYS)


def test_served_explorer_answers_over_the_whole_lake(out, lake, tmp_path):
    nights = [n for n, in lake.execute("SELECT DISTINCT scan_date::VARCHAR FROM scores ORDER BY 1").fetchall()]
    with served_explorer(out) as url, Browser(require_browser(), tmp_path / "profile") as browser:
        browser.open(url + "#images")
        assert shown(browser, OBJECTS) == keys(lake)  # sorted by score, highest first
        browser.click("#p-next")
        browser.wait_for(f"{INFO}.includes('51-100 of')")
        assert browser.evaluate(KEYS) == keys(lake, offset=50)
        browser.click("th[data-sort=score]")  # ascending: the lowest scores, errors last
        browser.wait_for("document.querySelector('th[data-sort=score]').className === 'sorted-asc'")
        assert shown(browser, OBJECTS) == keys(lake, order="image_score ASC NULLS LAST, image_uri")
        browser.click("th[data-sort=score]")

        prefix = browser.evaluate("V2S.meta.prefixes.indexOf('line7/')")
        browser.set_value("#f-prefix", str(prefix))
        where = "image_uri LIKE 's3://lake/images/line7/%'"
        assert shown(browser, count(lake, where)) == keys(lake, where)
        browser.set_value("#f-prefix", "")
        browser.set_value("#f-status", "error")
        where = "status = 'error'"
        assert shown(browser, count(lake, where)) == keys(lake, where, order="image_uri")
        browser.set_value("#f-status", "anomalous")
        where = "status = 'ok' AND is_anomalous"
        assert shown(browser, count(lake, where)) == keys(lake, where)
        browser.set_value("#f-status", "")
        # a night: the objects scanned that night, also those a later night rescanned
        browser.set_value("#f-night", "1")
        where = (f"EXISTS (SELECT 1 FROM scores s WHERE s.image_uri = l.image_uri AND s.scan_date = DATE '{nights[1]}')")
        assert 0 < count(lake, where) < OBJECTS
        assert shown(browser, count(lake, where)) == keys(lake, where)
        browser.set_value("#f-night", "")
        browser.set_value("#f-smin", "0.52")
        browser.set_value("#f-smax", "0.53")
        where = "status = 'ok' AND image_score BETWEEN 0.52 AND 0.53"
        assert shown(browser, count(lake, where)) == keys(lake, where)
        browser.set_value("#f-smin", "")
        browser.set_value("#f-smax", "")
        shown(browser, OBJECTS)

        # the per-image page of an object far outside any static table set, with its history
        uri = lake.execute("SELECT l.image_uri FROM latest l JOIN scores s USING (image_uri) WHERE l.status = 'ok' "
                           "GROUP BY ALL HAVING count(*) > 1 ORDER BY min(l.image_score) LIMIT 1").fetchall()[0][0]
        browser.evaluate(f"location.hash = '#image/' + encodeURIComponent({json.dumps(uri)})")
        browser.wait_for("!!document.querySelector('#view-image dl')")
        assert browser.evaluate("document.querySelector('#view-image h2').textContent") == uri
        assert browser.evaluate("document.querySelectorAll('#view-image table tr').length") >= 3
        browser.evaluate("location.hash = '#image/' + encodeURIComponent('file:///etc/passwd')")
        browser.wait_for("document.getElementById('status-line').textContent.includes('not a current object')")
        # the refusal, and the 404 behind it, are the only errors the page logged
        assert all("not a current object" in e or "404" in e for e in browser.errors()), browser.errors()


def test_static_export_shows_a_bounded_exact_subset(out, lake, tmp_path):
    ran = invoke("explore", str(out), "--max-images", "0", "--table-rows", str(TABLE_ROWS))
    assert ran.exit_code == 0, ran.stderr
    folder = out / "reports" / "explorer"
    text = (folder / "data" / "index.js").read_text()
    assert len(json.loads(text[text.index("(") + 1: text.rindex(")")])["k"]) <= TABLE_ROWS
    with Browser(require_browser(), tmp_path / "profile") as browser:
        browser.open((folder / "index.html").as_uri() + "#images")
        browser.wait_for("V2S.timing.tableMs !== undefined")
        assert browser.evaluate(KEYS) == keys(lake)  # page 1 by score is the lake's page 1
        note = browser.evaluate("document.getElementById('subset-note').textContent")
        assert f" of {OBJECTS} objects: the most anomalous overall and per prefix, and errors" in note
        assert "explore " in note and "--serve" in note
        assert browser.evaluate("!document.getElementById('subset-note').hidden")
        where = f"image_uri LIKE 's3://lake/images/{COLD_PREFIX}%'"
        top = lake.execute(f"SELECT count(*) FROM (SELECT image_uri FROM latest l WHERE status = 'ok' ORDER BY "
                           f"image_score DESC, image_uri LIMIT {TABLE_ROWS // 2}) l WHERE {where}").fetchall()[0][0]
        assert top < 50  # the overall top half of the set does not hold the prefix's page 1
        prefix = browser.evaluate(f"V2S.meta.prefixes.indexOf('{COLD_PREFIX}')")
        browser.set_value("#f-prefix", str(prefix))
        browser.wait_for(f"document.getElementById('subset-note').textContent.includes('; {count(lake, where)} objects of the whole lake')")
        assert browser.evaluate(KEYS) == keys(lake, where)  # exact for a prefix too
        assert browser.errors() == []
