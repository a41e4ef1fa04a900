"""The scan engine without Ray: the same read+decode -> infer -> write-maps path on threads.

:func:`run` has the signature of the Ray engine's and calls the very same stage callables
(``read_and_decode``, ``InferActor``, ``write_maps_batch``), so the rows it hands to
``consume`` are the rows the Ray engine would hand over; only the scheduling differs:

    work list (Parquet, one work unit at a time: whole map shards, stages/units.py)
      -> decode pool      threads; PIL and fsspec release the GIL for the heavy parts
      -> inference        the calling thread, one model, torch on every core (or the GPU),
                          batch_size rows at a time
      -> map-writer pool  threads; each unit's shards written whole (I/O + lz4)
      -> consume()        one consumer thread, in work-list order

Both pools are bounded (at most ``prefetch`` batches decoded ahead, ``prefetch`` batches
being written), so memory stays flat however long the work list is. It exists for machines
where Ray cannot run (the GPU bench machine has no Ray wheel) and as a yardstick for the
overhead Ray's scheduling adds on one node.
"""

from __future__ import annotations

import os
import queue
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..specs import EngineSpec
from ..stages.decode import read_and_decode
from ..stages.infer import InferActor
from ..stages.units import numpy_rows, unit_slices
from ..stages.write_maps import write_maps_batch
from ..storage.location import Location
from . import EngineConfig, StageSettings

# Decoded batches kept ahead of the model beyond one per decode thread: enough to hide a
# slow object-store read, small enough that pixels never pile up.
EXTRA_PREFETCH_BATCHES = 2
MAX_WRITE_THREADS = 4


def decode_threads(spec: EngineSpec, cpus: int) -> int:
    """Threads that read and decode. Reads wait on the network, so even a 2-core machine
    wants more than one; on a GPU node decode is the CPU's whole job."""
    if spec.device is not None and str(spec.device).startswith("cuda"):
        return max(2, cpus)
    return max(2, min(cpus, 8))


def write_threads(cpus: int) -> int:
    return max(2, min(MAX_WRITE_THREADS, cpus // 4))


def iter_work_units(work: Location, work_path: str, unit_rows: int) -> Iterator[dict[str, np.ndarray]]:
    """The remaining-work Parquet file (map_index order), one work unit at a time, streamed."""
    path = work.fs_path(work_path)
    handle: Any = open(path, "rb") if work.is_local else work.fs.open(path, "rb")
    carry: pa.Table | None = None
    with handle:
        for batch in pq.ParquetFile(handle).iter_batches(batch_size=max(unit_rows, 1024)):
            table = pa.Table.from_batches([batch])
            if carry is not None:
                table = pa.concat_tables([carry, table])
            slices = list(unit_slices(table.column("map_index").to_numpy(), unit_rows))
            # The last unit may go on in the next batch: keep it back.
            for _, start, stop in slices[:-1]:
                yield numpy_rows(table.slice(start, stop - start))
            carry = table.slice(slices[-1][1]) if slices else None
    if carry is not None and carry.num_rows:
        yield numpy_rows(carry)


class OrderedConsumer:
    """One thread that waits on map-write futures in submission order and hands their rows
    to ``consume``, so the staging writes never hold up the model.

    ``consume`` (the scan's staging writer) is not thread-safe; only this thread calls it.
    The bounded queue is the write stage's backpressure: ``put`` blocks once ``capacity``
    batches are waiting. A failure is re-raised in the submitting thread at its next call.
    """

    def __init__(self, consume: Callable[[pa.Table], None], capacity: int):
        self.consume = consume
        self.pending: queue.Queue[Future | None] = queue.Queue(maxsize=max(1, capacity))
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="consume", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            future = self.pending.get()
            if future is None:
                return
            if self.error is not None:
                continue  # after a failure, drain without consuming
            try:
                self.consume(pa.table(_rows_only(future.result())))
            except BaseException as exc:  # noqa: BLE001 - handed to the submitting thread
                self.error = exc

    def raise_if_failed(self) -> None:
        if self.error is not None:
            raise self.error

    def put(self, future: Future) -> None:
        self.raise_if_failed()
        self.pending.put(future)

    def close(self) -> None:
        """Wait until every batch put so far is consumed (or skipped after a failure)."""
        self.pending.put(None)
        self.thread.join()


def _rows_only(batch: dict[str, np.ndarray]) -> dict[str, Any]:
    """Drop multi-dimensional columns (none should be left after the map writer)."""
    return {name: value for name, value in batch.items()
            if not (isinstance(value, np.ndarray) and value.ndim > 1)}


def run(work: Location, work_path: str, config: EngineConfig, stages: StageSettings,
        consume: Callable[[pa.Table], None]) -> None:
    """Run the scan's stages on threads in this process, handing each result batch to ``consume``."""
    import torch

    cpus = os.cpu_count() or 1
    threads_before = torch.get_num_threads()
    # The model gets every core unless told otherwise, as the bare-model yardstick does;
    # decode threads mostly wait on I/O or run GIL-free C code in between.
    spec = config.engine_spec
    settings = replace(stages.infer, engine_spec=replace(spec, torch_threads=spec.torch_threads or cpus))
    n_decode = decode_threads(spec, cpus)
    prefetch = n_decode + EXTRA_PREFETCH_BATCHES
    if config.notify is not None:
        config.notify(f"starting the local engine ({n_decode} decode threads, the model in this process)...")
    try:
        actor = InferActor(settings)
        with ThreadPoolExecutor(n_decode, thread_name_prefix="decode") as decode_pool, \
                ThreadPoolExecutor(write_threads(cpus), thread_name_prefix="write-maps") as write_pool:
            consumer = OrderedConsumer(consume, capacity=prefetch)
            decoding: deque[Future] = deque()
            work_batches = iter_work_units(work, work_path, config.unit_rows)

            def top_up() -> None:
                while len(decoding) < prefetch:
                    batch = next(work_batches, None)
                    if batch is None:
                        return
                    decoding.append(decode_pool.submit(read_and_decode, batch, stages.decode))

            try:
                top_up()
                while decoding:
                    decoded = decoding.popleft().result()
                    top_up()  # keep the decoders busy while the model runs
                    scored = actor.score_unit(decoded)
                    consumer.put(write_pool.submit(write_maps_batch, scored, stages.maps))
            finally:
                for future in decoding:  # after a failure: do not decode what nobody will score
                    future.cancel()
                consumer.close()
            consumer.raise_if_failed()
    finally:
        torch.set_num_threads(threads_before)
