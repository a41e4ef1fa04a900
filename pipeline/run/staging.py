"""Staging: a run's rows written durably while it streams, as small Parquet parts.

Each result batch is buffered and written as a part below the run's staging folder: a row counts
as processed once its part exists, which is what makes a crashed run resumable (plan.py works out
what is left from the parts; publish.py compacts them at the end). Paths: output/paths.py.
"""

from __future__ import annotations

import io
import json
import secrets
import time
from typing import Callable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from ..output.paths import part_name, parts_dir, staging_dir
from ..stages.reader import DEATHS_FOLDER, DeathLog
from ..storage.location import Location

ROW_GROUP_ROWS = 65_536


def parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd", row_group_size=ROW_GROUP_ROWS)
    return sink.getvalue()


class StagingWriter:
    """Writes a run's rows as small Parquet parts to its staging folder.

    A row counts as processed once its part exists: each part is one atomic object write
    (rename locally, single PUT on S3), so a crash loses at most the rows still buffered,
    which the resumed run then processes again.
    """

    def __init__(self, out: Location, run_id: str, flush_rows: int = 2048,
                 flush_s: float = 30.0, on_flush: Callable[[int, int], None] | None = None,
                 fence: Callable[[], None] | None = None):
        self.out = out
        self.fence = fence  # raises when our lease on OUT is gone: checked before each part
        self.run_id = run_id
        self.flush_rows = max(1, flush_rows)
        self.flush_s = flush_s
        self.on_flush = on_flush
        self._tables: list[pa.Table] = []
        self._buffered_rows = 0
        self._buffered_batches = 0
        self._last_flush = time.monotonic()
        self._token = secrets.token_hex(4)
        self._seq = 0
        self.rows_staged = 0
        self.batches_staged = 0
        self.write_s = 0.0

    def add(self, table: pa.Table) -> None:
        self._tables.append(table)
        self._buffered_rows += table.num_rows
        self._buffered_batches += 1
        if self._buffered_rows >= self.flush_rows or \
                time.monotonic() - self._last_flush >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        if not self._tables:
            return
        t0 = time.perf_counter()
        table = pa.concat_tables(self._tables)
        if self.fence is not None:
            self.fence()
        self.out.write_bytes(parquet_bytes(table), parts_dir(self.run_id),
                             part_name(self._seq, self._token))
        self._seq += 1
        self.rows_staged += table.num_rows
        self.batches_staged += self._buffered_batches
        self._tables, self._buffered_rows, self._buffered_batches = [], 0, 0
        self._last_flush = time.monotonic()
        self.write_s += time.perf_counter() - t0
        if self.on_flush is not None:
            self.on_flush(self.rows_staged, self.batches_staged)


def staged_part_names(out: Location, run_id: str) -> list[str]:
    return [n for n in out.ls_names(parts_dir(run_id)) if n.endswith(".parquet")]


def iter_staged_tables(out: Location, run_id: str) -> Iterator[pa.Table]:
    for name in staged_part_names(out, run_id):
        yield pq.read_table(io.BytesIO(out.read_bytes(parts_dir(run_id), name)))


def death_log(out: Location, run_id: str) -> DeathLog:
    """Where the run's reader processes record their deaths (stages/reader.py)."""
    return DeathLog(out.uri, f"{staging_dir(run_id)}/{DEATHS_FOLDER}",
                    dict(out.storage_options) or None, out.wrapper)


def earlier_deaths(out: Location, run_id: str) -> dict[str, list]:
    """image_uri -> [deaths of a reader process it was in flight at, the last one's cause],
    from what earlier attempts of the run recorded."""
    folder = f"{staging_dir(run_id)}/{DEATHS_FOLDER}"
    found: dict[str, list] = {}
    for name in sorted(out.ls_names(folder)):
        if not name.endswith(".json"):
            continue
        try:
            death = json.loads(out.read_bytes(folder, name))
        except (OSError, ValueError):
            continue  # a record cut short by a crash: what it held is read again alone
        for uri in death.get("uris") or ():
            seen = found.setdefault(str(uri), [0, ""])
            seen[0], seen[1] = seen[0] + 1, str(death.get("cause", ""))
    return found
