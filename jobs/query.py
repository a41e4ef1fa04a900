"""`vip2scan query OUT "SQL"`: DuckDB over a scan's outputs, with ready-made views."""

from __future__ import annotations

import json
import re
from enum import Enum
from typing import Annotated, Any, Optional

import typer

from vip2scan.jobs.config import ConfigOption, storage_options_from_flags
from vip2scan.jobs.deadline import DEFAULT_DEADLINE, DeadlineOption, reader_deadline
from vip2scan.jobs.errors import BadParameter, UsageError
from vip2scan.jobs.storage import StorageOption, write_object
from vip2scan.jobs.terminal import printable

EXAMPLE = (
    "Example: vip2scan query ./demo-out/out "
    "\"SELECT status, count(*) AS n FROM scores GROUP BY status\"\n\n"
    "Views: scores (rows of complete runs), latest (newest row per image_uri, vanished objects dropped; "
    "the snapshot the newest commit wrote), "
    "runs (one row per complete run), vanished (URIs each run found gone)."
)


class OutputFormat(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"
    parquet = "parquet"


def format_table(table: Any, max_rows: int) -> str:
    """A plain aligned text table (first ``max_rows`` rows) with a row count footer."""
    shown = table.slice(0, max_rows).to_pylist()
    names = table.column_names
    cells = [[_cell(row[name]) for name in names] for row in shown]
    names = [printable(n) for n in names]
    widths = [max([len(n)] + [len(r[i]) for r in cells]) for i, n in enumerate(names)]
    lines = ["  ".join(n.ljust(w) for n, w in zip(names, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    more = f" (showing {max_rows}; use --format/--to for all)" if table.num_rows > max_rows else ""
    lines.append(f"({table.num_rows} row{'s' if table.num_rows != 1 else ''}{more})")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, float):
        return f"{value:.6g}"
    text = printable(value)  # object keys may carry terminal escapes
    return text if len(text) <= 80 else text[:77] + "..."


MEMORY_SIZE = re.compile(r"^\d+(\.\d+)?\s*([KMGT]i?B|B)$", re.I)


def write_result(table: Any, fmt: OutputFormat, to: Optional[str], storage_options: dict) -> Optional[bytes]:
    """Encode ``table`` as csv/json/parquet; write to ``to`` (any fsspec URI) or return the bytes."""
    import io

    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    if fmt is OutputFormat.csv:
        pacsv.write_csv(table, buffer)
    elif fmt is OutputFormat.parquet:
        pq.write_table(table, buffer)
    else:  # JSON lines: one object per row, streams and appends well
        for row in table.to_pylist():
            buffer.write((json.dumps(row, default=str) + "\n").encode())
    data = buffer.getvalue()
    if to is None:
        return data
    write_object(data, to, storage_options)
    return None


def query(
    out: Annotated[str, typer.Argument(help="The scan's output location (path or URI, e.g. s3://bucket/out).")],
    sql: Annotated[str, typer.Argument(help="SQL over the views scores, latest, runs, vanished.")],
    format: Annotated[OutputFormat, typer.Option(
        "--format", "-f", help="table (printed), csv, json (lines) or parquet (needs --to).")] = OutputFormat.table,
    to: Annotated[Optional[str], typer.Option(help="Write the result here (path or URI) instead of stdout.")] = None,
    max_rows: Annotated[int, typer.Option(help="Rows printed by --format table.")] = 50,
    memory_limit: Annotated[Optional[str], typer.Option(
        metavar="SIZE", help="DuckDB memory before spilling to disk, e.g. 4GB "
        "(default: $VIP2SCAN_DUCKDB_MEMORY, else a quarter of RAM).")] = None,
    storage_option: StorageOption = None,
    deadline: DeadlineOption = DEFAULT_DEADLINE,
    config: ConfigOption = None,
) -> None:
    """Run SQL (DuckDB) over a scan's outputs and print or save the result."""
    from vip2scan.pipeline.output.views import Outputs

    if format is OutputFormat.parquet and to is None:
        raise UsageError("--format parquet needs --to FILE")
    if memory_limit is not None and not MEMORY_SIZE.match(memory_limit):
        raise BadParameter(f"expected a size such as 512MB or 4GB, got {memory_limit!r}",
                           param_hint="'--memory-limit'")
    storage_options = storage_options_from_flags(storage_option)
    with reader_deadline("query", deadline):
        table = _run_query(Outputs(out, storage_options).connect(memory_limit), sql)
    if table is None:
        return
    if format is OutputFormat.table and to is None:
        typer.echo(format_table(table, max_rows))
        return
    data = write_result(table, OutputFormat.csv if format is OutputFormat.table else format, to, storage_options)
    if data is not None:
        typer.echo(data.decode(), nl=False)
    else:
        typer.echo(f"wrote {table.num_rows} rows to {to}", err=True)


def _run_query(con: Any, sql: str) -> Any:
    """The result of ``sql`` as an Arrow table (None for a statement without rows)."""
    import duckdb

    from vip2scan.pipeline.deadline import step

    with step("running the query"):
        try:
            result = con.sql(sql)
        except duckdb.Error as exc:  # DuckDB's parser/binder errors are the user's SQL
            raise UsageError(f"SQL: {str(exc).splitlines()[0]}") from None
        return result.to_arrow_table() if result is not None else None


def register(app: typer.Typer) -> None:
    app.command("query", epilog=EXAMPLE)(query)
