"""`vip2scan bench --map-store N`: object writes and bytes of the map store per 1,000 images.

The real writer (pipeline/output/map_store.py ``write_maps``, one call per work unit, as the inference
actor makes it) writes N synthetic maps into a local store whose every Zarr request is
counted: on S3 each ``set`` is one PUT, each ``get`` (ranged or not) one GET, each
``delete`` one DELETE, so the counts are the requests a scan would send. Maps are smooth
synthetic fields (a few Gaussian blobs and faint noise, like a real anomaly map), so the
bytes depend on them; the request counts do not.

Per configuration (``--maps`` mode x dtype x maps per shard): PUTs, GETs and bytes written
per 1,000 scored images, objects stored, and the target PUTs <= 1000 / K + 5.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vip2scan.pipeline.specs import EngineSpec, MapSpec, default_of

DEFAULT_SHARD_SIZES = (1, 8, 32, 128)
ANOMALY_RATE = 0.01  # the sparse case: 1 % of images at or above the threshold
BATCH_SIZE = default_of(EngineSpec, "batch_size")  # the scan's


@dataclass
class StoreRequests:
    """Requests a Zarr store received (what it would send to S3)."""

    put: int = 0
    get: int = 0
    delete: int = 0
    bytes_written: int = 0
    metadata_put: int = 0  # zarr.json and the image_uri array: once per store

    def reset(self) -> None:
        self.put = self.get = self.delete = self.bytes_written = self.metadata_put = 0


@dataclass
class CountingWrapper:
    """A filesystem wrapper (storage.Location) that counts the map store's requests."""

    counts: StoreRequests = field(default_factory=StoreRequests)

    def __call__(self, fs: Any) -> Any:
        return fs

    def wrap_zarr_store(self, store: Any) -> Any:
        return counting_zarr_store(store, self.counts)


def counting_zarr_store(store: Any, counts: StoreRequests) -> Any:
    from zarr.storage import WrapperStore

    class CountingStore(WrapperStore):
        def _with_store(self, inner: Any) -> Any:
            return counting_zarr_store(inner, counts)

        async def set(self, key: str, value: Any) -> None:
            if "/c/" in f"/{key}" and not key.startswith("image_uri"):
                counts.put += 1
                counts.bytes_written += len(value)
            else:
                counts.metadata_put += 1
            await self._store.set(key, value)

        async def get(self, key: str, *args: Any, **kwargs: Any) -> Any:
            if "/c/" in f"/{key}":
                counts.get += 1
            return await self._store.get(key, *args, **kwargs)

        async def delete(self, key: str) -> None:
            counts.delete += 1
            await self._store.delete(key)

    return CountingStore(store)


def smooth_maps(n: int, size: int, seed: int) -> np.ndarray:
    """n float16 maps in [0, 1]: a few Gaussian blobs on a low background, faint noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    maps = np.empty((n, size, size), dtype=np.float16)
    for i in range(n):
        field_ = np.full((size, size), 0.2, np.float32)
        for _ in range(3):
            cy, cx, width, height = rng.random(), rng.random(), 0.05 + 0.2 * rng.random(), rng.random()
            field_ += 0.6 * height * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * width ** 2))
        field_ += rng.normal(0, 0.01, field_.shape).astype(np.float32)
        maps[i] = np.clip(field_, 0, 1)
    return maps


def measure_one(n: int, map_spec: MapSpec, maps: np.ndarray, flagged: np.ndarray) -> dict[str, Any]:
    from vip2scan.pipeline.output.map_format import unit_rows
    from vip2scan.pipeline.output.map_store import create_map_store, write_maps
    from vip2scan.pipeline.storage.location import Location

    wrapper = CountingWrapper()
    with tempfile.TemporaryDirectory(prefix="vip2scan-bench-maps-") as root:
        out = Location.of(root, wrapper=wrapper)
        store = create_map_store(out, "bench", n, map_spec, {},
                                 image_uris=[f"s3://lake/{i:08d}.png" for i in range(n)])
        metadata_puts = wrapper.counts.metadata_put
        wrapper.counts.reset()
        per_shard = int(map_spec.maps_per_shard or 1)
        unit = unit_rows(per_shard, BATCH_SIZE)
        t0 = time.perf_counter()
        for lo in range(0, n, unit):
            rows = np.arange(lo, min(lo + unit, n))
            keep = rows[flagged[rows]] if map_spec.maps == "anomalous" else rows
            write_maps(out, store, keep, maps[keep % len(maps)])
        seconds = time.perf_counter() - t0
        objects = sum(len(files) for d, _, files in os.walk(os.path.join(root, store, "maps", "c")))
    per_k = 1000.0 / n
    counts = wrapper.counts
    return {
        "maps": map_spec.maps, "dtype": map_spec.map_dtype, "maps_per_shard": per_shard,
        "put_per_1000": round(counts.put * per_k, 2), "get_per_1000": round(counts.get * per_k, 2),
        "delete_per_1000": round(counts.delete * per_k, 2),
        "mb_written_per_1000": round(counts.bytes_written * per_k / 1e6, 3),
        "objects": objects, "store_setup_puts": metadata_puts,
        "target_put_per_1000": round(1000.0 / per_shard + 5, 2) if map_spec.maps == "all" else 15.0,
        "write_ms_per_image": round(1000 * seconds / n, 3),
    }


def run_map_store_bench(n: int, map_size: int, shard_sizes: tuple[int, ...] = DEFAULT_SHARD_SIZES,
                        seed: int = 0) -> dict[str, Any]:
    """The section's JSON: one entry per (mode, dtype, maps per shard)."""
    from vip2scan.pipeline.output.map_format import choose_maps_per_shard

    maps = smooth_maps(min(n, 256), map_size, seed)  # reused cyclically: bytes per map stay typical
    flagged = np.random.default_rng(seed + 1).random(n) < ANOMALY_RATE
    default_k = choose_maps_per_shard(map_size, "float16", n)
    uint8_k = choose_maps_per_shard(map_size, "uint8", n)
    specs = [MapSpec(map_size=map_size, maps_per_shard=k) for k in sorted(set(shard_sizes) | {default_k})]
    specs += [MapSpec(map_size=map_size, map_dtype="uint8", maps_per_shard=uint8_k),
              MapSpec(maps="anomalous", map_size=map_size, maps_per_shard=default_k)]
    results = [measure_one(n, spec, maps, flagged) for spec in specs]
    for entry in results:
        entry["meets_target"] = entry["put_per_1000"] <= entry["target_put_per_1000"]
    return {"images": n, "map_size": map_size, "anomaly_rate": ANOMALY_RATE,
            "anomalous_images": int(flagged.sum()), "default_maps_per_shard": default_k,
            "maps": "synthetic smooth fields (bytes depend on them; request counts do not)",
            "configurations": results}
