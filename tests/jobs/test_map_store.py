"""Map stores an analyst can open: xarray without warnings, each slot named by its image_uri,
and `vip2scan map` fetching one image's map as a PNG or numbers."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
from tests.helpers.cli_runner import invoke
from PIL import Image


@pytest.fixture(scope="module")
def scanned(tmp_path_factory, tiny_checkpoint) -> Path:
    import torch

    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("maps")
    lake = root / "lake"
    (lake / "line1").mkdir(parents=True)
    rng = np.random.default_rng(4)
    for i in range(5):
        pixels = (rng.random((32 + 4 * i, 48, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(lake / "line1" / f"img_{i}.png")
    (lake / "line1" / "broken.png").write_bytes(b"not a png")
    out = root / "out"
    ran = invoke("scan", str(lake), "--out", str(out), "--checkpoint", tiny_checkpoint,
                 "--engine", "local", "--no-progress")
    assert ran.exit_code == 0, ran.stderr[-3000:]
    return out


def test_xarray_opens_the_store_without_warnings_and_slots_name_their_rows(scanned):
    xr = pytest.importorskip("xarray")
    from vip2scan.pipeline import read_scores

    rows = read_scores(str(scanned)).to_pylist()
    store = scanned / next(r["map_store"] for r in rows if r["status"] == "ok")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # consolidated metadata: no "falling back" warning
        ds = xr.open_zarr(store)
        maps = ds["maps"].load()
    assert maps.dims == ("map_index", "y", "x")
    assert "image_uri" in maps.coords  # a coordinate along map_index
    uris = [str(u) for u in ds["image_uri"].values]
    assert len(uris) == len(rows) == 6
    for row in rows:
        slot = uris.index(row["image_uri"])
        if row["status"] == "ok":
            assert slot == row["map_index"]
            assert np.isfinite(maps[slot].values).all()
        else:  # an error row has no map: its planned slot stays NaN (documented)
            assert row["map_index"] is None and np.isnan(maps[slot].values).all()
    # float16 sums overflow: averages go through float32 (as docs/reference/map-store.md says)
    assert 0.0 <= float(maps.astype("float32").mean(skipna=True)) <= 1.0


def test_map_command_writes_the_png_and_the_values(scanned, tmp_path):
    from vip2scan.pipeline import read_map, read_scores

    row = next(r for r in read_scores(str(scanned)).to_pylist() if r["status"] == "ok")
    png, npy = tmp_path / "map.png", tmp_path / "map.npy"
    ran = invoke("map", str(scanned), row["image_uri"], "--png", str(png), "--npy", str(npy), "--overlay")
    assert ran.exit_code == 0, ran.stderr
    assert "maximum at x=" in ran.stdout and "percentile" in ran.stdout
    assert Image.open(png).size == (row["width"], row["height"])
    values = np.load(io.BytesIO(npy.read_bytes()))
    np.testing.assert_array_equal(values, read_map(row, str(scanned)))


def test_map_command_without_a_scored_row_is_one_line(scanned):
    from vip2scan.pipeline import read_scores

    broken = next(r for r in read_scores(str(scanned)).to_pylist() if r["status"] == "error")
    ran = invoke("map", str(scanned), broken["image_uri"], "--png", "x.png")
    assert ran.exit_code == 1
    assert ran.error_lines == [line for line in ran.stderr.splitlines() if line.strip()]
    assert "no scored row with a map" in ran.stderr
