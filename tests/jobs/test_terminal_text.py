"""Object keys that carry terminal escapes or shell syntax, through what the commands print:
`scan --dry-run --list`, `query`'s table, `map` and its errors show control characters escaped;
the command lines the scan summary and the explorer print for pasting read back exactly in
bash, running nothing (jobs/terminal.py, explorer.js shellWord); the explorer's links keep '#',
'?' and '%3C' in the file name."""

from __future__ import annotations

import json

import pytest

from tests.helpers.cdp_browser import Browser, require_browser
from tests.helpers.cli_runner import invoke
from tests.helpers.hostile_names import (HOSTILE_KEYS, HOSTILE_OUT, LINK_KEY, RAW_CONTROLS, SHELL_KEYS,
                                         TERMINAL_KEYS, scan_hostile_lake, words_bash_reads)
from vip2scan.jobs.terminal import printable

ESCAPED = {"osc\x1b]52;c;SGVsbG8=\x07.png": "osc\\x1b]52;c;SGVsbG8=\\x07.png",
           "cr\rfake.png": "cr\\rfake.png", "csi\x1b[31mred.png": "csi\\x1b[31mred.png",
           "rlo\u202egnp.png": "rlo\\u202egnp.png"}


pytestmark = pytest.mark.slow  # one small scan with the in-process engine, and a browser


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, tiny_checkpoint):
    return scan_hostile_lake(tmp_path_factory.mktemp("hostile-names"), tiny_checkpoint)


def assert_shown_escaped(text: str) -> None:
    assert not [c for c in RAW_CONTROLS if c in text], repr(text)
    for key in TERMINAL_KEYS:
        assert ESCAPED[key] in text, (key, text)


def test_dry_run_list_shows_control_characters_escaped(hostile, tiny_checkpoint, tmp_path):
    ran = invoke("scan", str(hostile.lake), "--out", str(tmp_path / "fresh"), "--checkpoint",
                 tiny_checkpoint, "--dry-run", "--list")
    assert ran.exit_code == 0, ran.stderr
    listed = [line for line in ran.stdout.splitlines() if line.startswith("new ")]
    assert len(listed) == len(HOSTILE_KEYS)
    assert_shown_escaped(ran.stdout)


def test_query_table_shows_control_characters_escaped(hostile):
    ran = invoke("query", str(hostile.out),
                 "SELECT regexp_replace(image_uri, '^.*/', '') AS key FROM latest ORDER BY key")
    assert ran.exit_code == 0, ran.stderr
    assert_shown_escaped(ran.stdout)
    assert f"({len(HOSTILE_KEYS)} rows)" in ran.stdout


def test_map_and_its_errors_show_control_characters_escaped(hostile):
    key = "osc\x1b]52;c;SGVsbG8=\x07.png"
    ran = invoke("map", str(hostile.out), f"file://{hostile.lake / key}")
    assert ran.exit_code == 0, ran.stderr
    assert ran.stdout.startswith("map of ") and ESCAPED[key] in ran.stdout
    assert not [c for c in RAW_CONTROLS if c in ran.stdout]
    missing = invoke("map", str(hostile.out), f"file://{hostile.lake}/gone{key}")
    assert missing.exit_code == 1 and len(missing.error_lines) == 1
    assert ESCAPED[key] in missing.stderr and "\x1b" not in missing.stderr


def test_summary_commands_read_back_exactly_in_bash(hostile, tmp_path):
    from vip2scan.jobs.formatting import format_summary

    for out in (str(hostile.out), *(f"s3://bucket/{key}" for key in TERMINAL_KEYS)):
        options = {"endpoint_url": "http://h'; touch PWNED; echo '/", "region_name": "\x1b]52;c;eA==\x07"}
        text = format_summary(hostile.summary, out, options)
        assert not [c for c in RAW_CONTROLS if c in text], repr(text)
        lines = [line.strip() for line in text.splitlines() if line.strip().startswith("vip2scan ")]
        lines += [text.split("`")[1]]  # the uncalibrated threshold's `vip2scan calibrate ...`
        assert len(lines) == 3, text
        for line in lines:
            words = words_bash_reads(line, tmp_path)
            assert words[1] == out, (line, words)
            if words[0] != "calibrate":
                assert words[words.index("-s") + 1] == f"endpoint_url={options['endpoint_url']}"
                assert words[-1] == f"region_name={options['region_name']}"
        assert list(tmp_path.iterdir()) == []  # nothing ran: no PWNED


def test_printable_escapes_controls_and_keeps_other_text():
    assert printable("a\x1b]52;c;x\x07b\rc\u202ed\x9b") == "a\\x1b]52;c;x\\x07b\\rc\\u202ed\\x9b"
    assert printable("日本 ü 😀 tab-free, 'quotes' and $(dollars)") == \
        "日本 ü 😀 tab-free, 'quotes' and $(dollars)"
    assert HOSTILE_OUT in printable(HOSTILE_OUT)


def test_explorer_map_commands_and_links_survive_hostile_keys(hostile, tmp_path):
    ran = invoke("explore", str(hostile.out), "--max-images", "0")  # every image gets the hint
    assert ran.exit_code == 0, ran.stderr
    page = hostile.out / "reports" / "explorer"
    index_js = (page / "data" / "index.js").read_text()
    keys = json.loads(index_js[index_js.index("(") + 1: index_js.rindex(")")])["k"]
    shell = tmp_path / "shell"
    shell.mkdir()
    with Browser(require_browser(), tmp_path / "profile") as browser:
        browser.open((page / "index.html").as_uri())
        note = browser.evaluate("document.getElementById('render-note').textContent")
        hint = note.split("Any other image's map: ")[1].split(" --png map.png")[0] + " --png map.png"
        assert words_bash_reads(hint, shell) == ["map", f"file://{hostile.out}", "IMAGE_URI", "--png", "map.png"]
        for key in (*SHELL_KEYS, *TERMINAL_KEYS, LINK_KEY):
            browser.evaluate(f"location.hash = '#image/{keys.index(key)}'")
            browser.wait_for(f"(document.querySelector('#view-image h2') || {{}}).textContent === "
                             f"{json.dumps(f'file://{hostile.lake}/{key}')}")
            legend = browser.evaluate("Array.from(document.querySelectorAll('#view-image .legend'))"
                                      ".map(p => p.textContent).join('')")
            line = legend.split("Its map: ")[1]
            assert not [c for c in RAW_CONTROLS if c in line], line
            assert words_bash_reads(line, shell) == [
                "map", f"file://{hostile.out}", f"file://{hostile.lake}/{key}", "--png", "map.png"]
        link = browser.evaluate("(() => { const u = new URL(document.querySelector('#view-image h2 a')"
                                ".href); return [u.protocol, decodeURIComponent(u.pathname), u.search,"
                                " u.hash]; })()")
        assert link == ["file:", f"{hostile.lake}/{LINK_KEY}", "", ""]
        assert browser.errors() == []
    assert list(shell.iterdir()) == []  # nothing ran: no PWNED
