"""Work units: the rows of whole map-store shards, kept together from the work list to the writer.

A shard object holds K maps and must be written whole, once, by one writer. Ray Data cuts and
merges blocks of rows as it likes, so a unit travels as *one* row between the stages:

    work list rows (map_index order)
      -> one row per unit: ``rows`` (the unit's work rows, Arrow IPC)       read task
      -> ``pixels`` [U, S, S, 3] (zero-padded to the unit size) + ``rows``  decode task
      -> the unit's score rows, its shards written                          inference actor

The local engine keeps units as plain numpy batches (no packing: nothing cuts them there).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa

UNIT = "unit"  # the unit's number: map_index // unit_rows
ROWS = "rows"  # Arrow IPC bytes of the unit's rows (without pixels)
COUNT = "count"  # rows in the unit (pixels beyond it are padding)
PIXELS = "pixels"


def unit_slices(map_index: np.ndarray, unit_rows: int) -> Iterator[tuple[int, int, int]]:
    """(unit, start, stop) of each run of consecutive rows in one unit (rows in map_index order)."""
    if len(map_index) == 0:
        return
    units = np.asarray(map_index, dtype=np.int64) // max(1, int(unit_rows))
    cuts = np.flatnonzero(np.diff(units)) + 1
    starts = np.concatenate([[0], cuts])
    stops = np.concatenate([cuts, [len(units)]])
    for start, stop in zip(starts, stops):
        yield int(units[start]), int(start), int(stop)


def to_ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def from_ipc(blob: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(blob)).read_all()


def numpy_rows(table: pa.Table) -> dict[str, np.ndarray]:
    """A table as the numpy dict Ray Data hands a ``map_batches`` UDF."""
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}


def table_rows(rows: dict[str, np.ndarray]) -> pa.Table:
    """One-dimensional numpy columns -> a table (multi-dimensional ones are not rows)."""
    columns = {}
    for name, value in rows.items():
        value = np.asarray(value)
        if value.ndim != 1:
            continue
        columns[name] = value.tolist() if value.dtype == object else value
    return pa.table(columns)


def pack_work_units(table: pa.Table, unit_rows: int) -> dict[str, np.ndarray]:
    """Work-list rows (map_index order) -> one row per unit."""
    units, blobs = [], []
    for unit, start, stop in unit_slices(table.column("map_index").to_numpy(), unit_rows):
        units.append(unit)
        blobs.append(to_ipc(table.slice(start, stop - start)))
    return {UNIT: np.asarray(units, dtype=np.int64), ROWS: np.asarray(blobs, dtype=object)}


def decode_units(batch: dict[str, np.ndarray], decode: Callable[[dict], dict],
                 unit_rows: int) -> dict[str, np.ndarray]:
    """Each unit row -> its decoded pixels (padded to ``unit_rows``) and rows."""
    units, counts, pixels, blobs = [], [], [], []
    for unit, blob in zip(batch[UNIT], batch[ROWS]):
        decoded = decode(numpy_rows(from_ipc(blob)))
        unit_pixels = decoded.pop(PIXELS)
        n = len(unit_pixels)
        padded = np.zeros((max(unit_rows, n), *unit_pixels.shape[1:]), dtype=unit_pixels.dtype)
        padded[:n] = unit_pixels
        units.append(int(unit))
        counts.append(n)
        pixels.append(padded)
        blobs.append(to_ipc(table_rows(decoded)))
    return {UNIT: np.asarray(units, dtype=np.int64), COUNT: np.asarray(counts, dtype=np.int64),
            PIXELS: np.stack(pixels), ROWS: np.asarray(blobs, dtype=object)}


def is_packed(batch: dict[str, Any]) -> bool:
    return ROWS in batch


def unpack_decoded(batch: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
    """Each packed unit of a decoded batch as a plain numpy batch with its pixels."""
    for i, blob in enumerate(batch[ROWS]):
        rows = numpy_rows(from_ipc(blob))
        rows[PIXELS] = batch[PIXELS][i][:int(batch[COUNT][i])]
        yield rows


def concat_rows(batches: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Numpy batches with the same columns -> one batch."""
    if len(batches) == 1:
        return batches[0]
    return {name: np.concatenate([b[name] for b in batches]) for name in batches[0]}


def split_rows(batch: dict[str, np.ndarray], size: int) -> Iterator[dict[str, np.ndarray]]:
    """A numpy batch in slices of at most ``size`` rows."""
    n = len(next(iter(batch.values())))
    size = max(1, int(size or n or 1))
    for start in range(0, max(n, 1), size):
        yield {name: value[start:start + size] for name, value in batch.items()}
