"""DuckDB connections whose reads of native S3 Parquet run again after a transient failure.

The readers (the scan's diff, plan and snapshot, verify, query, report, explore, calibrate)
scan Arrow datasets on pyarrow's C++ S3 client; one gap of that client turns a single 5xx on a
small ranged read into a non-retryable error (storage/arrow_fs.py). Retrying inside the read is
not possible without calling back into Python from Arrow's I/O threads, which deadlocked
(issue 27), so the retry sits one level up: a statement, or a relation's materialisation, that
failed that way is run again. Reading has no side effects, and DuckDB rolls a failed statement
back, so running it again is safe.

Streams (``to_arrow_reader``) cannot be resumed after a failure mid-way; a caller that streams
retries its whole step instead (snapshot.py, diff.py).
"""

from __future__ import annotations

from typing import Any

from ..storage.arrow_fs import with_native_read_retries


class RetryingReads:
    """A DuckDB connection or relation whose method calls are retried on transient native
    read failures. Relations it returns are wrapped too; ``raw`` is the object itself."""

    __slots__ = ("raw",)

    def __init__(self, raw: Any) -> None:
        self.raw = raw

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.raw, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            result = with_native_read_retries(attr, *args, **kwargs)
            return self._wrap(result)

        call.__name__ = name
        return call

    def _wrap(self, result: Any) -> Any:
        import duckdb

        if result is self.raw:  # execute() returns the connection itself
            return self
        if isinstance(result, (duckdb.DuckDBPyRelation, duckdb.DuckDBPyConnection)):
            return RetryingReads(result)
        return result

    def __repr__(self) -> str:
        return f"RetryingReads({self.raw!r})"
