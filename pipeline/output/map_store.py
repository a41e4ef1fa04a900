"""The Zarr map store of a run: create it, write maps into it, read one map back.

``maps/<run_id>.zarr`` is a Zarr v3 group whose array ``maps`` is [N, R, R] (float16, or
uint8 quantised) with one inner chunk per map, K maps per shard object (map_format.py has the
rules); unwritten slots have no inner chunk and read as the fill value (NaN, or 255 for uint8).
Stores written before sharding have one object per map and are read the same way. A scores row
points at its map with ``map_store`` (the store's path below OUT) and ``map_index``; both are
null for a row without a map (an error, or below the threshold with ``--maps anomalous``).

Beside it, ``image_uri`` [N] (a coordinate along ``map_index``) names the object each slot was
planned for, and the group's metadata is consolidated, so ``xarray.open_zarr(store)`` opens it
as one dataset without warnings. Slots stay NaN for objects whose row is an ``error`` (they
never got a map): use ``nanmean`` or keep slots whose scores row has ``status = 'ok'``.
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

import numpy as np

from ..specs import MapSpec
from ..storage.location import FilesystemWrapper, Location, env_wrapper, fs_kwargs
from ..storage.retries import configure_client, with_retries
from .map_format import (INDEX_CHECKSUM_BYTES, INDEX_ENTRY_BYTES, decode_maps, encode_maps, fill_value, store_attributes, written_in_shard_index)
from .paths import MAPS_ARRAY, maps_store_name, safe_relative_path
from .schema import SCHEMA_VERSION

MAP_JOIN_RULE = (
    "scores rows whose map_store names this store hold their map at maps[map_index] "
    "(resolution x resolution, values in [0, 1]; uint8 stores: value = code / 254); rows whose "
    "map_store is null (errors; below the threshold with maps_mode 'anomalous') have no map"
)
_OPEN_ARRAYS_KEPT = 16
URI_ARRAY = "image_uri"  # beside MAPS_ARRAY: the object of each slot


def wrap_zarr_store(store: Any, wrapper: FilesystemWrapper | None) -> Any:
    """Apply the ``wrap_zarr_store(store)`` method of the env and explicit fs wrappers, if any.

    Zarr writes maps through its own async store, not through our fsspec filesystems, so a
    wrapper that injects faults (or adds behaviour) can opt in to wrapping Zarr stores too.
    """
    for wrap in (env_wrapper(), wrapper):
        method = getattr(wrap, "wrap_zarr_store", None)
        if method is not None:
            store = method(store)
    return store


def zarr_store(out: Location, store_name: str, read_only: bool = False):
    """The Zarr store ``store_name`` below OUT (a name read back from OUT must stay inside it)."""
    import zarr.storage

    safe_relative_path(store_name)
    if out.is_local:
        store = zarr.storage.LocalStore(out.fs_path(store_name), read_only=read_only)
    else:
        options = fs_kwargs(out.protocol, out.storage_options)
        store = zarr.storage.FsspecStore.from_url(out.join(store_name), storage_options=options,
                                                  read_only=read_only)
        configure_client(store.fs)  # the S3 client retries; no layer above it (retries.py)
    return wrap_zarr_store(store, out.wrapper)


def create_map_store(out: Location, run_id: str, n_maps: int, map_spec: MapSpec | int,
                     attributes: dict[str, Any], image_uris: Sequence[str] | None = None) -> str:
    """:func:`write_new_map_store`; a local OUT that is full or read-only is one line."""
    with out.refusals_named(out.fs_path(maps_store_name(run_id))):
        return write_new_map_store(out, run_id, n_maps, map_spec, attributes, image_uris)


def write_new_map_store(out: Location, run_id: str, n_maps: int, map_spec: MapSpec | int,
                        attributes: dict[str, Any],
                        image_uris: Sequence[str] | None = None) -> str:
    """Create the run's store with array ``maps`` [n, R, R] (fill = not written), sharded by
    ``map_spec.maps_per_shard``, and, given the planned objects in map_index order, array
    ``image_uri`` [n]. An int ``map_spec`` is a map size: float16, one object per map."""
    import warnings

    import zarr
    from zarr.codecs import BloscCodec

    if not isinstance(map_spec, MapSpec):
        map_spec = MapSpec(map_size=int(map_spec), maps_per_shard=1)
    size = map_spec.map_size
    per_shard = map_spec.maps_per_shard or 1
    name = maps_store_name(run_id)
    shards = None
    if per_shard > 1:
        shards = (min(per_shard, max(n_maps, 1)), size, size)
    group = zarr.open_group(zarr_store(out, name), mode="w",
                            attributes={"vip2scan.schema_version": SCHEMA_VERSION,
                                        "run_id": run_id})
    group.create_array(
        MAPS_ARRAY, shape=(max(n_maps, 0), size, size), chunks=(1, size, size),
        shards=shards, dtype=map_spec.map_dtype, fill_value=fill_value(map_spec.map_dtype),
        # lz4 with byte shuffle: a 256 px float16 map encodes ~40 % faster than with Zarr's
        # default zstd and a little smaller (maps are smooth); readers need only numcodecs.
        compressors=BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),
        # "resolution" is the stored name of the map size (readers of older stores use it).
        attributes={"run_id": run_id, "resolution": size, "join": MAP_JOIN_RULE,
                    "vip2scan.schema_version": SCHEMA_VERSION, **attributes,
                    **store_attributes(map_spec),
                    # xarray (CF convention): image_uri is a coordinate of maps
                    **({"coordinates": URI_ARRAY} if image_uris is not None else {})},
        dimension_names=("map_index", "y", "x"),
    )
    if image_uris is not None:
        uris = group.create_array(URI_ARRAY, shape=(len(image_uris),), dtype=str,
                                  chunks=(max(1, min(len(image_uris), 100_000)),),
                                  dimension_names=("map_index",),
                                  attributes={"long_name": "object each map slot was planned for"})
        if len(image_uris):
            uris[:] = np.asarray(list(image_uris), dtype=object)
    with warnings.catch_warnings():
        # Zarr warns that consolidated metadata is not in the v3 spec yet; xarray and zarr-python
        # read it, and without it xarray.open_zarr warns on every open.
        warnings.simplefilter("ignore", UserWarning)
        zarr.consolidate_metadata(group.store)
    return name


def open_maps(out: Location, store_name: str) -> Any:
    """The ``maps`` array of a store, read-only and freshly opened (what verify inspects)."""
    import zarr

    return zarr.open_array(zarr_store(out, store_name, read_only=True), path=MAPS_ARRAY, mode="r")


_open_arrays: dict[tuple, Any] = {}


def cached_maps_array(out: Location, store_name: str, read_only: bool = True):
    """The ``maps`` array of a store, cached per process (each worker opens it once)."""
    import zarr

    # The options are part of the key: the same OUT reached through another endpoint (or
    # other credentials) must not reuse a store bound to the first one.
    options = json.dumps(dict(out.storage_options), sort_keys=True, default=repr)
    key = (os.getpid(), out.uri, options, store_name, read_only)
    array = _open_arrays.get(key)
    if array is None:
        array = zarr.open_array(zarr_store(out, store_name, read_only=read_only),
                                path=MAPS_ARRAY, mode="r" if read_only else "r+")
        if len(_open_arrays) > _OPEN_ARRAYS_KEPT:
            _open_arrays.clear()
        _open_arrays[key] = array
    return array


def write_maps(out: Location, store_name: str, indices: np.ndarray, maps: np.ndarray) -> None:
    """Write maps[i] at ``indices``: whole shards at a time, one object write per shard.

    In a sharded store every shard that ``indices`` touch is rewritten whole: its slots not in
    ``indices`` become empty, so the caller passes all the maps of whole shards (a work unit).
    In a store with one object per map, each map is its own chunk, written once.
    """
    if len(indices) == 0:
        return
    array = cached_maps_array(out, store_name, read_only=False)
    order = np.argsort(indices)
    indices = np.asarray(indices, dtype=np.int64)[order]
    values = encode_maps(np.asarray(maps)[order], str(array.dtype))
    fs = store_client(array.store_path.store)
    # Retried here only for a local store (an S3 store's client retries each request); a
    # local disk that is full or read-only is one line naming the store and the bytes.
    with out.refusals_named(out.fs_path(store_name), int(values.nbytes)):
        per_shard = shard_length(array)
        if per_shard == 1:
            with_retries(array.set_orthogonal_selection, (indices,), values, fs=fs)
            return
        for shard in np.unique(indices // per_shard):
            lo, hi = int(shard) * per_shard, min((int(shard) + 1) * per_shard, array.shape[0])
            block = np.full((hi - lo, *array.shape[1:]), array.fill_value, dtype=array.dtype)
            inside = (indices >= lo) & (indices < hi)
            block[indices[inside] - lo] = values[inside]
            with_retries(array.__setitem__, slice(lo, hi), block, fs=fs)


def shard_length(array: Any) -> int:
    """Maps per shard object of a ``maps`` array (1 for a store with one object per map)."""
    shards = getattr(array, "shards", None)
    return int(shards[0]) if shards else 1


def store_client(store: Any) -> Any:
    """The filesystem of a plain fsspec Zarr store (its client retries itself); None for a
    local or wrapped store, whose writes the outer policy retries."""
    import zarr.storage

    return store.fs if type(store) is zarr.storage.FsspecStore else None


def read_map_array(out: Location, store_name: str, index: int) -> np.ndarray:
    """maps[index] as float32 [R, R] in [0, 1] (NaN where the slot has no map)."""
    array = cached_maps_array(out, store_name, read_only=True)
    return decode_maps(np.asarray(array[int(index)]))


def resize_map(amap: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinear resize of a float map to (height, width), float32 in [0, 1]."""
    from PIL import Image

    if amap.shape == (height, width):
        return amap.astype(np.float32)
    image = Image.fromarray(np.asarray(amap, dtype=np.float32), mode="F")
    resized = np.asarray(image.resize((int(width), int(height)), Image.BILINEAR), dtype=np.float32)
    return np.clip(resized, 0.0, 1.0)


def written_indices(array: Any) -> np.ndarray:
    """Sorted map indices that hold a map: from a store listing (one object per map) or, in
    a sharded store, from each shard's index (one ranged read per shard object)."""
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.chunk_key_encodings import DefaultChunkKeyEncoding
    from zarr.core.sync import sync
    from zarr.abc.store import SuffixByteRequest

    encoding = array.metadata.chunk_key_encoding
    separator = getattr(encoding, "separator", "/")
    prefix = f"{array.path}/" if array.path else ""
    if isinstance(encoding, DefaultChunkKeyEncoding):
        prefix += f"c{separator}"
    store = array.store_path.store
    per_shard = shard_length(array)
    index_bytes = per_shard * INDEX_ENTRY_BYTES + INDEX_CHECKSUM_BYTES

    async def collect() -> list[int]:
        found = []
        async for key in store.list_prefix(prefix):
            head = key[len(prefix):].split(separator)[0]
            if not head.isdigit():
                continue
            if per_shard == 1:
                found.append(int(head))
                continue
            raw = await store.get(key, prototype=default_buffer_prototype(),
                                  byte_range=SuffixByteRequest(index_bytes))
            if raw is not None:
                slots = written_in_shard_index(raw.to_bytes(), per_shard)
                found.extend(int(head) * per_shard + int(j) for j in slots)
        return found

    written = np.unique(np.asarray(sync(collect()), dtype=np.int64))
    return written[written < array.shape[0]]
