"""A --manifest may only name objects under SOURCE, and never inside OUT: an entry inside OUT
(the explorer's own pictures) or outside SOURCE is refused in one line, exit 1, before anything
is scored; --manifest-any-source admits entries outside SOURCE, still never inside OUT."""

from __future__ import annotations

import pytest

from tests.helpers.cli_runner import invoke
from tests.helpers.hostile_files import small_png


@pytest.fixture()
def places(tmp_path):
    lake, out, elsewhere = tmp_path / "lake", tmp_path / "out", tmp_path / "elsewhere"
    for folder in (lake, out / "reports" / "explorer" / "img", elsewhere):
        folder.mkdir(parents=True)
    for i, path in enumerate((lake / "a.png", lake / "b.png", elsewhere / "c.png",
                              out / "reports" / "explorer" / "img" / "0.png")):
        path.write_bytes(small_png(i, side=8))
    return {"lake": lake, "out": out, "elsewhere": elsewhere, "tmp": tmp_path}


def dry_run(places, tiny_checkpoint, entries, *flags):
    manifest = places["tmp"] / "manifest.csv"
    manifest.write_text("image_uri\n" + "".join(f"{e}\n" for e in entries))
    return invoke("scan", str(places["lake"]), "--out", str(places["out"]), "--checkpoint",
                  tiny_checkpoint, "--manifest", str(manifest), "--dry-run", *flags)


def test_entries_under_source_are_listed(places, tiny_checkpoint):
    ran = dry_run(places, tiny_checkpoint, ["a.png", f"file://{places['lake']}/b.png"])
    assert ran.exit_code == 0, ran.stderr
    assert "listed 2," in ran.stdout


@pytest.mark.parametrize("flags", [(), ("--manifest-any-source",)])
def test_an_entry_inside_out_is_refused(places, tiny_checkpoint, flags):
    inside = places["out"] / "reports" / "explorer" / "img" / "0.png"
    for entry in (f"file://{inside}", str(inside)):
        ran = dry_run(places, tiny_checkpoint, ["a.png", entry], *flags)
        assert ran.exit_code == 1, ran.stdout
        assert len(ran.error_lines) == 1 and "1 manifest entry lies inside OUT" in ran.error_lines[0]
        assert f"file://{inside}" in ran.error_lines[0]


def test_an_entry_outside_source_needs_the_flag(places, tiny_checkpoint):
    other = f"file://{places['elsewhere']}/c.png"
    ran = dry_run(places, tiny_checkpoint, ["a.png", other, f"s3://bucket/{places['lake']}/a.png"])
    assert ran.exit_code == 1, ran.stdout
    assert len(ran.error_lines) == 1, ran.stderr
    assert "2 manifest entries lie outside SOURCE" in ran.error_lines[0]
    assert "--manifest-any-source" in ran.error_lines[0]
    allowed = dry_run(places, tiny_checkpoint, ["a.png", other], "--manifest-any-source")
    assert allowed.exit_code == 0, allowed.stderr
    assert "listed 2," in allowed.stdout


@pytest.mark.parametrize("entry, refused", [
    ("file:///home/me/secret.png", "1 manifest entry lies outside SOURCE s3://lake/line3/"),
    ("s3://bucket/out/reports/explorer/img/0.png", "1 manifest entry lies inside OUT s3://bucket/out/"),
])
def test_an_s3_scan_refuses_a_local_entry_and_one_in_its_out(tmp_path, entry, refused):
    from vip2scan.pipeline.errors import ScanError
    from vip2scan.pipeline.selection.listing import ObjectFilter
    from vip2scan.pipeline.selection.manifest import read_manifest
    from vip2scan.pipeline.storage.location import Location

    manifest = tmp_path / "inventory.csv"
    manifest.write_text(f"image_uri\ns3://lake/line3/a.png\n{entry}\n")
    src, out = Location.of("s3://lake/line3"), Location.of("s3://bucket/out")
    with pytest.raises(ScanError, match=refused):
        read_manifest(Location.of(str(manifest)), src, str(tmp_path / "m.parquet"), ObjectFilter(),
                      out=out, any_source="outside" not in refused)
