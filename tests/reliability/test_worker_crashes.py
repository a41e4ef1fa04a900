"""Worker crashes: an inference actor and a decode worker killed mid-run (os._exit, like an
OOM kill or a segfault) are replaced and the run finishes with every object exactly once; an
actor that cannot load its checkpoint fails the run fast with a clear one-line message."""

from __future__ import annotations

import importlib
import shutil
import time

import pytest

from tests.helpers.hostile_files import small_png
from vip2scan.pipeline import ScanError, ScanOptions, read_scores, scan
from vip2scan.pipeline import faults
from vip2scan.pipeline.output.verify import verify

N_IMAGES = 24  # 3 batches: the actor dies on the 2nd, mid-run
BATCH = 8


def _lake(root) -> list[str]:
    uris = []
    for i in range(N_IMAGES):
        path = root / f"p{i % 3}" / f"img{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(small_png(i))
        uris.append(f"file://{path}")
    return sorted(uris)


@pytest.mark.slow
def test_killed_actor_and_decode_worker_are_replaced_and_nothing_is_lost(
        tmp_path, monkeypatch, ray_for_faults, tiny_checkpoint):
    expected = _lake(tmp_path / "lake")
    markers = tmp_path / "markers"
    markers.mkdir()
    monkeypatch.setenv(faults.MARKER_DIR_ENV, str(markers))
    monkeypatch.setenv(faults.KILL_ACTOR_ENV, "2")  # the actor dies on its 2nd batch
    monkeypatch.setenv(faults.KILL_DECODE_ENV, "1")  # the first decode batch kills its worker
    out = str(tmp_path / "out")
    summary = scan(str(tmp_path / "lake"), out, tiny_checkpoint,
                   ScanOptions(engine="ray", batch_size=BATCH, map_size=16, actors=(1, 1), stage_rows=BATCH))
    # Both processes really died (each marker is written just before os._exit).
    assert (markers / "actor.fired").exists() and (markers / "decode.fired").exists()
    assert summary.status == "complete" and summary.counts["scored"] == N_IMAGES
    rows = read_scores(out).to_pylist()
    assert sorted(r["image_uri"] for r in rows) == expected  # exactly once, none missing
    assert all(r["status"] == "ok" for r in rows)
    report = verify(out)
    assert report.ok and report.maps_checked == N_IMAGES, [p.line() for p in report.problems]


@pytest.mark.slow  # a Ray scan
@pytest.mark.timeout(300)  # against an actor restart loop; the time itself is not asserted
def test_an_actor_that_cannot_load_its_checkpoint_fails_the_run_fast(
        tmp_path, monkeypatch, ray_for_faults, tiny_checkpoint):
    """The driver loads the checkpoint fine; then it is damaged before the actors start (a
    checkpoint replaced mid-deploy, or a worker that reads a different copy)."""
    scan_module = importlib.import_module("vip2scan.pipeline.run.scan")  # the module, not scan()
    _lake(tmp_path / "lake")
    checkpoint = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, checkpoint)
    real_learn_model = scan_module.learn_model

    def facts_then_damage(*args, **kwargs):
        facts = real_learn_model(*args, **kwargs)
        (checkpoint / "weights.safetensors").write_bytes(b"\x00" * 64)
        return facts

    monkeypatch.setattr(scan_module, "learn_model", facts_then_damage)
    started = time.monotonic()
    with pytest.raises(ScanError) as raised:
        scan(str(tmp_path / "lake"), str(tmp_path / "out"), str(checkpoint),
             ScanOptions(engine="ray", batch_size=BATCH, map_size=16, actors=(1, 1)))
    elapsed = time.monotonic() - started
    message = str(raised.value)
    print(f"failed after {elapsed:.1f} s: {message}")
    assert "\n" not in message and len(message) < 600
    assert "inference actor failed to start" in message
    assert "weights.safetensors" in message or "header" in message.lower()
