"""InferActor writing its own maps, called from two threads at once as Ray Data does."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from vip2scan.pipeline.output.map_store import cached_maps_array, create_map_store
from vip2scan.model.factory import ModelSpec
from vip2scan.pipeline.output.calibration import Thresholds
from vip2scan.pipeline.specs import EngineSpec, MapSpec
from vip2scan.pipeline.stages.infer import InferActor, InferSettings
from vip2scan.pipeline.stages.write_maps import MapWriterSettings, write_maps_batch
from vip2scan.pipeline.storage.location import Location

N_BATCHES, BATCH, MAP = 4, 3, 32


def _batches() -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    out = []
    for b in range(N_BATCHES):
        status = np.array(["ok", "error", "ok"], dtype=object)
        out.append({
            "image_uri": np.array([f"img-{b}-{i}" for i in range(BATCH)], dtype=object),
            "status": status,
            "map_index": np.arange(b * BATCH, (b + 1) * BATCH),
            "pixels": rng.integers(0, 256, (BATCH, 224, 224, 3), dtype=np.uint8),
        })
    return out


@pytest.fixture(scope="module")
def settings(tiny_checkpoint) -> InferSettings:
    return InferSettings(model_spec=ModelSpec(tiny_checkpoint), map_spec=MapSpec(map_size=MAP),
                         thresholds=Thresholds(0.5, 0.5, "flag"),
                         engine_spec=EngineSpec(torch_threads=2))


def _store(root) -> tuple[Location, MapWriterSettings]:
    out = Location.of(str(root))
    name = create_map_store(out, "run", N_BATCHES * BATCH, MAP, {})
    return out, MapWriterSettings(out_uri=out.uri, store_name=name)


def test_writing_maps_in_the_actor_matches_a_separate_writer(settings, tmp_path):
    batches = _batches()
    out_a, maps_a = _store(tmp_path / "separate")
    separate = InferActor(settings)
    rows_a = [write_maps_batch(separate(dict(b)), maps_a) for b in batches]

    out_b, maps_b = _store(tmp_path / "fused")
    fused = InferActor(settings, maps_b)
    rows_b = [fused(dict(b)) for b in batches]

    for a, b in zip(rows_a, rows_b):
        assert "map" not in b and "pixels" not in b
        np.testing.assert_array_equal(a["image_uri"], b["image_uri"])
        np.testing.assert_allclose(a["image_score"], b["image_score"], rtol=1e-5, equal_nan=True)
        assert (b["write_s"] >= 0).all()
    written_a = cached_maps_array(out_a, maps_a.store_name)[:]
    written_b = cached_maps_array(out_b, maps_b.store_name)[:]
    ok = np.concatenate([b["status"] == "ok" for b in batches])
    assert np.isfinite(written_b[ok]).all() and np.isnan(written_b[~ok]).all()
    np.testing.assert_allclose(written_a, written_b, atol=1e-3, equal_nan=True)


def test_two_threads_calling_one_actor_get_the_serial_results(settings, tmp_path):
    batches = _batches()
    _, maps_serial = _store(tmp_path / "serial")
    serial = InferActor(settings, maps_serial)
    expected = {b["image_uri"][0]: serial(dict(b))["image_score"] for b in batches}

    out, maps = _store(tmp_path / "threads")
    actor = InferActor(settings, maps)
    results: dict[str, np.ndarray] = {}
    errors: list[BaseException] = []

    def work(part: list[dict]) -> None:
        try:
            for b in part:
                results[b["image_uri"][0]] = actor(dict(b))["image_score"]
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(batches[i::2],)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert actor.batches_seen == N_BATCHES
    for key, scores in expected.items():
        np.testing.assert_allclose(results[key], scores, rtol=1e-5, equal_nan=True)
    written = cached_maps_array(out, maps.store_name)[:]
    ok = np.concatenate([b["status"] == "ok" for b in batches])
    assert np.isfinite(written[ok]).all()


def test_channels_last_input_gives_the_same_scores(settings):
    from dataclasses import replace

    batch = _batches()[0]
    plain = InferActor(settings)(dict(batch))
    channels_last = InferActor(replace(settings, engine_spec=replace(settings.engine_spec, channels_last=True)))(dict(batch))
    np.testing.assert_allclose(plain["image_score"], channels_last["image_score"], rtol=1e-4,
                               equal_nan=True)
    np.testing.assert_allclose(plain["map"], channels_last["map"], atol=2e-3)


def test_short_batches_are_padded_for_a_compiled_model(settings):
    """A compiled model sees one static batch size; the padding rows never reach the output."""
    from dataclasses import replace

    actor = InferActor(replace(settings, engine_spec=replace(settings.engine_spec, batch_size=BATCH + 2)))
    actor.compile = True  # padding on, without compiling
    seen = []
    model = actor.run
    actor.run = lambda images: (seen.append(images.shape[0]), model(images))[1]
    padded = actor(dict(_batches()[1]))
    plain = InferActor(settings)(dict(_batches()[1]))
    assert seen == [BATCH + 2]
    np.testing.assert_allclose(padded["image_score"], plain["image_score"], rtol=1e-4, equal_nan=True)
    np.testing.assert_allclose(padded["map"], plain["map"], atol=2e-3)
