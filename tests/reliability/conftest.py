"""Fixtures for the reliability tests: one tiny checkpoint, Ray that can unpickle our helpers."""

from __future__ import annotations

import pytest

from tests.helpers import faulty_storage


@pytest.fixture(scope="session")
def ray_for_faults(ray_local):
    """The shared local Ray, able to unpickle the fault wrappers of tests/helpers/faulty_storage.py."""
    import ray.cloudpickle

    # Ray workers cannot import modules from the tests folder: ship them by value.
    ray.cloudpickle.register_pickle_by_value(faulty_storage)
    return ray_local


SMALL_SCAN_GOOD = 10
SMALL_SCAN_BROKEN = {"broken/empty.png": b"", "broken/junk.jpg": b"not an image at all"}


@pytest.fixture(scope="session")
def small_scan(tmp_path_factory, tiny_checkpoint) -> dict:
    """One real scan of a small local lake (in-process engine: no Ray needed for a real OUT)."""
    from tests.helpers.hostile_files import small_png
    from vip2scan.pipeline import ScanOptions, scan

    base = tmp_path_factory.mktemp("small-scan")
    lake, out = base / "lake", base / "out"
    for i in range(SMALL_SCAN_GOOD):
        (lake / f"d{i % 2}").mkdir(parents=True, exist_ok=True)
        (lake / f"d{i % 2}" / f"img{i}.png").write_bytes(small_png(i))
    for name, data in SMALL_SCAN_BROKEN.items():
        (lake / name).parent.mkdir(parents=True, exist_ok=True)
        (lake / name).write_bytes(data)
    summary = scan(str(lake), str(out), tiny_checkpoint,
                   ScanOptions(engine="local", batch_size=4, map_size=16))
    assert summary.counts["scored"] == SMALL_SCAN_GOOD
    assert summary.counts["failed"] == len(SMALL_SCAN_BROKEN)
    return {"out": out, "lake": lake, "run_id": summary.run_id, "summary": summary}


@pytest.fixture()
def out_copy(small_scan, tmp_path):
    """A private copy of the small scan's OUT tree, to damage."""
    import shutil

    copy = tmp_path / "out"
    shutil.copytree(small_scan["out"], copy)
    return copy
