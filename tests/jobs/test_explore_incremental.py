"""A night's `explore` rewrites only what changed: nothing at all on a quiet night, and on a
night that rescored a few objects only the files that hold them (and the overview)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from tests.helpers.cli_runner import invoke

pytestmark = pytest.mark.slow  # three explores of a 3,000-object OUT

OBJECTS = 3000  # four object files (hash buckets)


def files(folder: Path) -> dict[str, tuple[int, str]]:
    """name -> (mtime in ns, content hash) of every file in the explorer's folder."""
    return {p.relative_to(folder).as_posix(): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in folder.rglob("*") if p.is_file()}


def explore(out: Path) -> str:
    ran = invoke("explore", str(out), "--max-images", "0", "--table-rows", "5000")
    assert ran.exit_code == 0, ran.stderr
    return ran.stdout


def test_quiet_night_rewrites_nothing_and_a_changed_night_only_its_files(tmp_path):
    from tests.helpers.big_out import SOURCE, add_night, write_big_out
    from vip2scan.jobs.explore_tableset import bucket_of

    out = tmp_path / "out"
    write_big_out(out, OBJECTS)
    explore(out)
    folder = out / "reports" / "explorer"
    before = files(folder)
    assert "files written" in (text := explore(out)) and "; 0 files written, 0 deleted" in text, text
    assert files(folder) == before  # same bytes, same mtimes: not even rewritten alike

    # a night that rescored two objects: the overview, the table, their object files, the manifest
    changed = [f"{SOURCE}/line3/day00/img_0000003.jpg", f"{SOURCE}/line5/day00/img_0000005.jpg"]
    meta = json.loads((folder / "data" / "meta.js").read_text().split("(", 1)[1].rsplit(")", 1)[0])
    when = dt.datetime.now(dt.timezone.utc).replace(hour=3, minute=0, second=0, microsecond=0)
    add_night(out, changed, when, 3, OBJECTS, np.random.default_rng(7), threshold=0.3)
    text = explore(out)
    after = files(folder)
    rewritten = {name for name in after if after[name] != before.get(name)}
    buckets = {f"data/obj-{bucket_of(uri, meta['buckets']):05d}.js" for uri in changed}
    assert meta["buckets"] == 4 and len(buckets) <= 2
    assert rewritten == {"data/meta.js", "data/index.js", "manifest.json"} | buckets, rewritten
    assert set(after) == set(before)
    assert f"; {len(rewritten)} files written, 0 deleted" in text, text
