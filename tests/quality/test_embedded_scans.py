"""End-to-end quality: a lake with known defect masks, scanned with ``--checkpoint embedded``
through the paths a user takes, must have its heat read back on the defects.

Every path goes the whole way: list -> read (local folder or moto S3 over HTTP) -> decode (EXIF
rotation, 16-bit, non-square) -> batch -> score -> shard the maps (float16 or uint8, several per
shard) -> commit -> ``read_map`` at the image's own size. A pipeline that flips, transposes or
resizes maps with the wrong aspect, swaps colour channels or drops the EXIF rotation fails
here: pixel AUROC falls and the maps stop peaking inside the defects (the closing note of
issue 22 records those mutations and what they did).
"""

from __future__ import annotations

import pyarrow.compute as pc
import pytest

from tests.helpers.cli_runner import invoke
from tests.helpers.quality_lake import map_quality, quality_cases, write_cases
from vip2scan.pipeline import ScanOptions, read_map, read_scores, scan

pytestmark = pytest.mark.slow

MIN_PIXEL_AUROC = 0.9
MIN_PEAK_ON_DEFECT = 0.6  # "most" defective images: the map's maximum on the defect (half a patch)
KINDS = ("square", "non_square", "exif", "sixteen_bit")


@pytest.fixture(scope="module")
def cases():
    return quality_cases()


def _maps_by_case(out: str, run_id: str, root: str, storage_options: dict | None = None) -> dict:
    rows = read_scores(out, storage_options, filter=pc.field("run_id") == run_id).to_pylist()
    assert all(r["status"] == "ok" for r in rows), [r["error"] for r in rows if r["status"] != "ok"]
    return {r["image_uri"].split(root.rstrip("/") + "/", 1)[1]: read_map(r, out, storage_options)
            for r in rows if r["map_store"] is not None}


def _check(cases, maps: dict, kinds=KINDS) -> dict:
    measured = {}
    for kind in kinds:
        chosen = [c for c in cases if c.kind == kind and c.name in maps]
        assert chosen, f"no {kind} image has a map"
        measured[kind] = quality = map_quality(chosen, maps)
        print(kind, quality)  # shown with -s: what each path reached
        assert quality["pixel_auroc"] >= MIN_PIXEL_AUROC, (kind, quality)
        assert quality["peak_on_defect"] >= MIN_PEAK_ON_DEFECT, (kind, quality)
    return measured


def test_local_engine_local_folder_float16_maps_several_per_shard(cases, tmp_path) -> None:
    lake, out = tmp_path / "lake", tmp_path / "out"

    def put(name: str, data: bytes) -> None:
        (lake / name).parent.mkdir(parents=True, exist_ok=True)
        (lake / name).write_bytes(data)

    write_cases(cases, put)
    ran = invoke("scan", str(lake), "--out", str(out), "--checkpoint", "embedded", "--engine", "local",
                 "--map-dtype", "float16", "--maps-per-shard", "4", "--no-progress")
    assert ran.exit_code == 0, ran.stderr[-2000:]
    run_id = sorted(p.stem for p in (out / "runs").glob("*.json"))[-1]
    maps = _maps_by_case(str(out), run_id, str(lake))
    assert len(maps) == len(cases)
    assert len(list((out / "maps").glob("*.zarr"))) == 1
    _check(cases, maps)


def test_ray_engine_s3_lake_uint8_maps_of_anomalous_images_only(cases, s3_server, s3_bucket, ray_ready) -> None:
    options = s3_server.storage_options
    fs = s3_server.filesystem()
    lake, out = f"s3://{s3_bucket}/lake", f"s3://{s3_bucket}/out"
    write_cases(cases, lambda name, data: fs.pipe_file(f"{s3_bucket}/lake/{name}", data))
    summary = scan(lake, out, "embedded", ScanOptions(engine="ray", batch_size=8, map_dtype="uint8",
                                                      maps="anomalous", maps_per_shard=4,
                                                      storage_options=options))
    assert summary.counts["failed"] == 0
    maps = _maps_by_case(out, summary.run_id, lake, options)
    defective = [c for c in cases if c.defective]
    # The shipped image threshold flags most defective images (their maps are written) ...
    assert sum(c.name in maps for c in defective) >= MIN_PEAK_ON_DEFECT * len(defective)
    # ... and few normal ones.
    assert sum(c.name in maps for c in cases if not c.defective) <= 1
    _check(cases, maps, kinds=("square", "non_square", "exif", "sixteen_bit"))
