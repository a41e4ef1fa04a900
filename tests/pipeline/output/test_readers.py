"""The documentation's reader recipes, run as written, agree on every column's type.

Each fenced block after a ``<!-- reader: NAME -->`` marker in the docs (docs/guide/analysts.md,
"Reading the files directly"; found in whichever page holds it) is executed against a
real OUT (two nights, one object vanished in between), with the documentation's OUT path
swapped for the local one. DuckDB, pyarrow, pandas, polars and the package's ``read_scores``
must return the same columns with the same types (``scan_date`` a date everywhere); the Spark
and Athena recipes, which cannot run here, are checked as text for the same column list.
"""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from tests.helpers import ROOT
from vip2scan.model.data.synthetic import write_lake
from vip2scan.pipeline import ScanOptions, scan
from vip2scan.pipeline.output.schema import SCORES_SCHEMA

PAGES = sorted((ROOT / "docs").rglob("*.md"))
DOC_OUT = "s3://results/vip2scan"
MARKER = re.compile(r"<!-- reader: ([\w-]+) -->\s*```(\w+)\n(.*?)```", re.S)


def recipes() -> dict[str, tuple[str, str]]:
    found = [(name, lang, code, page) for page in PAGES for name, lang, code in MARKER.findall(page.read_text())]
    names = [name for name, *_ in found]
    assert len(names) == len(set(names)), f"a reader recipe is in the docs twice: {sorted(names)}"
    return {name: (lang, code) for name, lang, code, _ in found}


@pytest.fixture(scope="module")
def two_nights(tmp_path_factory, tiny_checkpoint) -> Path:
    root = tmp_path_factory.mktemp("readers")
    lake, out = root / "lake", root / "out"
    truth = write_lake(str(lake), 6, size=32, seed=5)
    opts = ScanOptions(engine="local", batch_size=4)
    scan(str(lake), str(out), tiny_checkpoint, opts)
    Path(truth[0]["image_uri"].removeprefix("file://")).unlink()  # gone before night 2
    (lake / "extra.png").write_bytes((lake / truth[1]["image_uri"].split("/lake/", 1)[1]).read_bytes())
    scan(str(lake), str(out), tiny_checkpoint, opts)
    return out


def run_recipe(name: str, out: Path) -> pa.Table:
    lang, code = recipes()[name]
    code = code.replace(DOC_OUT, str(out))
    if lang == "sql":
        return duckdb.sql(code).fetch_arrow_table()
    scope: dict = {}
    exec(compile(code, f"docs:{name}", "exec"), scope)  # noqa: S102 - our own docs
    result = scope.get("df", scope.get("table"))
    if hasattr(result, "to_arrow"):  # polars
        return result.to_arrow()
    if hasattr(result, "dtypes") and not isinstance(result, pa.Table):  # pandas
        return pa.Table.from_pandas(result, preserve_index=False)
    return result


def type_family(t: pa.DataType) -> str:
    """Types that differ only in physical layout (string vs large_string vs string_view) read
    the same to an analyst."""
    if pa.types.is_string(t) or pa.types.is_large_string(t) or str(t) == "string_view":
        return "string"
    if pa.types.is_timestamp(t):  # DuckDB names UTC by its zone-database alias
        return f"timestamp[{t.unit},{'UTC' if t.tz in ('Etc/UTC', 'UTC') else t.tz}]"
    return str(t)


def column_types(table: pa.Table) -> dict[str, str]:
    return {f.name: type_family(f.type) for f in table.schema}


def test_every_runnable_recipe_gives_the_same_columns_and_types(two_nights) -> None:
    expected = {**{f.name: type_family(f.type) for f in SCORES_SCHEMA}, "scan_date": "date32[day]"}
    ran = {}
    for name in ("duckdb", "duckdb-latest", "snapshot", "pyarrow", "pandas", "polars", "package"):
        table = run_recipe(name, two_nights)
        ran[name] = table
        assert column_types(table) == expected, name
    assert ran["duckdb"].num_rows == ran["pyarrow"].num_rows + ran["duckdb"].filter(
        pa.compute.equal(ran["duckdb"]["status"], "error")).num_rows
    assert ran["pandas"].num_rows == ran["polars"].num_rows == ran["package"].num_rows == ran["duckdb"].num_rows


def test_raw_latest_recipe_matches_the_latest_view(two_nights) -> None:
    from vip2scan.pipeline.output.views import Outputs

    view = Outputs(str(two_nights)).connect().sql(
        "SELECT image_uri, run_id FROM latest ORDER BY image_uri").fetchall()
    for name in ("duckdb-latest", "snapshot"):
        raw = run_recipe(name, two_nights)
        assert sorted(zip(raw["image_uri"].to_pylist(), raw["run_id"].to_pylist())) == view, name
    assert len(view) == 6  # 6 written, 1 vanished, 1 added


def test_spark_and_athena_recipes_name_the_same_columns() -> None:
    spark_lang, spark = recipes()["spark"]
    assert spark_lang == "python" and "/vip2scan/scores" in spark and "scan_date" in spark
    _, athena = recipes()["athena"]
    body = athena.split("(", 1)[1].split(")", 1)[0]
    declared = [part.split()[0] for part in body.replace("\n", " ").split(",") if part.strip()]
    assert declared == SCORES_SCHEMA.names
    assert "PARTITIONED BY (scan_date date)" in athena


def test_query_runs_within_a_memory_limit_and_rejects_a_bad_one(two_nights) -> None:
    from tests.helpers.cli_runner import invoke

    sql = "SELECT current_setting('memory_limit') AS m"
    default = invoke("query", str(two_nights), sql, "--format", "csv")
    assert default.exit_code == 0 and ("GiB" in default.stdout or "MiB" in default.stdout)
    chosen = invoke("query", str(two_nights), sql, "--format", "csv", "--memory-limit", "300MB")
    assert chosen.exit_code == 0 and "286.1 MiB" in chosen.stdout, chosen.stdout
    bad = invoke("query", str(two_nights), sql, "--memory-limit", "lots")
    assert bad.exit_code == 2 and "--memory-limit" in bad.stderr
