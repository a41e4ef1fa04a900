"""Map write: a batch's anomaly maps -> the run's Zarr store, whole shards at a time.

Rows leave this stage only after their map is durable, so the driver stages a row (the
exactly-once record) only once its map is written; ``has_map`` says which rows got one. The
inference actor runs it in-process (stages/infer.py); the local engine also runs it on a thread
of its own (:func:`write_maps_batch`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..output.map_store import write_maps
from ..output.schema import HAS_MAP
from ..specs import MapSpec
from ..storage.accounting import report_io
from ..storage.location import Location
from ..storage.retries import take_retries


@dataclass(frozen=True)
class MapWriterSettings:
    """Where a run's maps go (picklable: the filesystem is built inside the worker)."""

    out_uri: str
    store_name: str | None  # None: this run writes no maps
    map_spec: MapSpec = MapSpec()
    storage_options: dict | None = field(default=None, repr=False)
    wrapper: Any = field(default=None, repr=False)


class WriteMaps:
    """map_batches callable: write the batch's maps to the Zarr store, drop the maps.

    Given a work unit (whole shards), each shard is written once, whole. With
    ``maps='anomalous'`` only rows at or above their image threshold get a map.
    """

    def __init__(self, settings: MapWriterSettings):
        self.settings = settings
        self.out = Location(settings.out_uri, settings.storage_options or {}, settings.wrapper)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        t0 = time.perf_counter()
        maps = batch.pop("map", None)
        n = len(batch["image_uri"])
        has_map = np.zeros(n, dtype=bool)
        if self.settings.store_name and maps is not None:
            has_map = np.asarray(batch["status"]) == "ok"
            if self.settings.map_spec.maps == "anomalous":
                has_map &= np.asarray(batch.get("is_anomalous", has_map), dtype=bool)
            write_maps(self.out, self.settings.store_name,
                       np.asarray(batch["map_index"])[has_map].astype(np.int64), maps[has_map])
        batch[HAS_MAP] = has_map
        batch["write_s"] = np.full(n, (time.perf_counter() - t0) / max(n, 1))
        batch["retries"] = np.asarray(batch.get("retries", np.zeros(n)), dtype=float) + \
            take_retries() / max(n, 1)  # this process's storage retries, for the run record
        report_io(batch, n)  # this process's storage requests and bytes, for the run record
        return batch


def write_maps_batch(batch: dict[str, np.ndarray], settings: MapWriterSettings
                     ) -> dict[str, np.ndarray]:
    """Stateless form of :class:`WriteMaps` for tasks (the array is cached per process)."""
    return WriteMaps(settings)(batch)
