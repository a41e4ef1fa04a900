"""How a run's anomaly maps are laid out in its Zarr store: shard size, dtype, which rows get one.

A map store holds one inner chunk per map. New stores group K consecutive maps into one
shard object (Zarr v3 sharding codec), so a first scan of 10 M images writes 10 M / K objects
instead of 10 M, and reading one map is still a ranged read of its shard (the shard's index,
then the map's bytes). Stores written before sharding (one object per map) stay readable.

The settings (mode, size, dtype, K) are a :class:`vip2scan.pipeline.specs.MapSpec`, which the
plan freezes with K resolved, so a resumed run writes alike.

- ``maps_per_shard`` K: from the map's size, so a full shard is about ``SHARD_TARGET_BYTES``;
  a small run gets smaller shards, so that its work still spreads over several units.
- ``dtype``: float16 (fill NaN) or uint8, quantised as round(v * 254), 255 = no map, so the
  error is at most 1/508 and CF readers (xarray) decode it with ``scale_factor`` and
  ``_FillValue``.
- ``mode``: ``all`` rows get a map, or only ``anomalous`` ones (at or above the image
  threshold in force); a row's ``map_store``/``map_index`` are null when it has none.

Work units are whole shards (``unit_rows`` is a multiple of K): each shard is written whole,
once, by the one writer of its unit, and a resumed or retried unit rewrites whole shards.
"""

from __future__ import annotations

import numpy as np

from ..specs import MAX_MAPS_PER_SHARD, MapSpec

SHARD_TARGET_BYTES = 4 * 2**20
# A small run still gets at least this many units, so decode and inference overlap.
MIN_UNITS_PER_RUN = 8
UINT8_LEVELS = 254  # codes 0..254 carry values; 255 is the fill (no map)
UINT8_FILL = 255
# A shard's index (Zarr v3 sharding, index at the end): (offset, nbytes) little-endian
# uint64 per inner chunk, then a crc32c; an inner chunk never written has both set to 2**64-1.
INDEX_ENTRY_BYTES = 16
INDEX_CHECKSUM_BYTES = 4
EMPTY_CHUNK = np.uint64(2**64 - 1)


def fill_value(map_dtype: str) -> float | int:
    """What an unwritten slot of a store of ``map_dtype`` holds."""
    return float("nan") if map_dtype == "float16" else UINT8_FILL


def store_attributes(map_spec: MapSpec) -> dict:
    """Array attributes that let readers decode the values (CF conventions for uint8)."""
    saved = {"maps_mode": map_spec.maps, "maps_per_shard": map_spec.maps_per_shard or 1}
    if map_spec.map_dtype == "uint8":
        return {"dtype": "uint8", "scale_factor": 1.0 / UINT8_LEVELS, "_FillValue": UINT8_FILL,
                "quantisation": "value = code / 254; code 255 = no map; error <= 1/508", **saved}
    return {"dtype": "float16", **saved}


def choose_maps_per_shard(map_size: int, map_dtype: str, n_maps: int,
                          requested: int | None = None) -> int:
    """K for a new store: ``requested``, else a few MB of maps, fewer for a small run."""
    if requested:
        return max(1, int(requested))
    per_map = map_size * map_size * np.dtype(map_dtype).itemsize
    by_bytes = max(1, min(MAX_MAPS_PER_SHARD, SHARD_TARGET_BYTES // per_map))
    by_run = max(1, n_maps // MIN_UNITS_PER_RUN)
    k = min(by_bytes, by_run)
    return 1 << (k.bit_length() - 1)  # a power of two: shards line up with any batch size


def unit_rows(maps_per_shard: int, batch_size: int) -> int:
    """Rows per work unit: whole shards, at least one inference batch."""
    k = max(1, int(maps_per_shard))
    return k * max(1, -(-int(batch_size) // k))


def encode_maps(maps: np.ndarray, map_dtype: str) -> np.ndarray:
    """Float maps in [0, 1] -> the store's dtype."""
    if map_dtype == "uint8":
        values = np.nan_to_num(np.asarray(maps, dtype=np.float32), nan=0.0)
        return np.rint(np.clip(values, 0.0, 1.0) * UINT8_LEVELS).astype(np.uint8)
    return np.asarray(maps, dtype=np.float16)


def decode_maps(values: np.ndarray) -> np.ndarray:
    """Stored values -> float32 in [0, 1], NaN where there is no map."""
    if values.dtype == np.uint8:
        decoded = values.astype(np.float32) / UINT8_LEVELS
        decoded[values == UINT8_FILL] = np.nan
        return decoded
    return np.asarray(values, dtype=np.float32)


def written_in_shard_index(raw: bytes, maps_per_shard: int) -> np.ndarray:
    """Positions (0..K-1) of the inner chunks a shard's index says are stored."""
    entries = np.frombuffer(raw[:maps_per_shard * INDEX_ENTRY_BYTES], dtype="<u8")
    entries = entries.reshape(maps_per_shard, 2)
    return np.flatnonzero(~((entries[:, 0] == EMPTY_CHUNK) & (entries[:, 1] == EMPTY_CHUNK)))
