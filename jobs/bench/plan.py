"""`vip2scan bench --plan N [--nights H]`: planning a scan of N objects after H nights.

Builds, from a fixed seed, an OUT holding H committed nights of a lake of N objects (night 1
scores every object, each later night the 1 % that changed), each committed the way a scan
commits (score files, then the ``latest`` snapshot from the previous one, then the record),
and an S3-Inventory-style manifest of the lake one more night later (another 1 % changed).
Then measures, each in its own process (seconds and peak RSS from the kernel's rusage of
that process alone):

- the planning step: ``vip2scan scan s3://bench-lake --manifest M --dry-run`` (null model:
  no torch, no Ray; the manifest's URIs are never read);
- ``SELECT ... FROM latest`` through ``vip2scan query``, reading the snapshot, and the same
  query over the old window on every run's rows (what ``latest`` was before snapshots).

Nothing on the lake is read or listed, so N can be tens of millions on one machine.
"""

from __future__ import annotations

import datetime as dt
import json
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from vip2scan.jobs.errors import JobError

SOURCE = "s3://bench-lake"
CHECKPOINT = "null:64"
CHANGED_PER_NIGHT = 0.01
FILE_ROWS = 1_000_000
QUERY = "SELECT image_uri, image_score FROM {view} ORDER BY image_score DESC, image_uri LIMIT 10"
# The `latest` view before snapshots: a window over every committed run's rows.
WINDOW_VIEW = """(SELECT s.* FROM (
    SELECT * FROM scores
    QUALIFY row_number() OVER (PARTITION BY image_uri ORDER BY scanned_at DESC, run_id DESC) = 1
) AS s WHERE NOT EXISTS (
    SELECT 1 FROM vanished v WHERE v.image_uri = s.image_uri AND v.detected_at >= s.scanned_at))"""
T0 = dt.datetime(2025, 1, 1, 2, 0, tzinfo=dt.timezone.utc)


def _uris(indices: np.ndarray) -> Any:
    import pyarrow as pa
    import pyarrow.compute as pc

    numbers = pc.utf8_lpad(pa.array(indices, pa.int64()).cast(pa.string()), 9, "0")
    lines = pa.array((indices % 64).astype(np.int64)).cast(pa.string())
    return pc.binary_join_element_wise(f"{SOURCE}/line", lines, "/img_", numbers, ".jpg", "")


def _etags(indices: np.ndarray, versions: np.ndarray) -> Any:
    import pyarrow as pa
    import pyarrow.compute as pc

    mixed = (indices.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
             + versions.astype(np.uint64) * np.uint64(0xBF58476D1CE4E5B9)) >> np.uint64(1)
    digits = pa.array(mixed.astype(np.int64)).cast(pa.string())
    return pc.utf8_lpad(digits, 32, "0")  # an MD5-long string, as S3 gives


def _sizes(indices: np.ndarray, versions: np.ndarray) -> np.ndarray:
    return (50_000 + (indices * 7919 + versions * 104_729) % 100_000).astype(np.int64)


def write_manifest(path: Path, versions: np.ndarray) -> None:
    """The lake as an inventory lists it: image_uri, size_bytes, etag, mtime."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from vip2scan.pipeline.output.schema import MANIFEST_SCHEMA

    with pq.ParquetWriter(path, MANIFEST_SCHEMA, compression="zstd") as writer:
        for start in range(0, len(versions), FILE_ROWS):
            idx = np.arange(start, min(start + FILE_ROWS, len(versions)))
            mtime = pa.array([T0] * len(idx), MANIFEST_SCHEMA.field("mtime").type)
            writer.write_table(pa.table({
                "image_uri": _uris(idx), "size_bytes": _sizes(idx, versions[idx]),
                "etag": _etags(idx, versions[idx]), "mtime": mtime}, schema=MANIFEST_SCHEMA))


# Why a scan's image becomes an error row, in the pipeline's own words (pipeline/stages).
ERROR_REASONS = (
    "read timed out after 30 s",
    "decode timed out after 20 s",
    "cannot identify image file",
    "object too large: 612000000 bytes exceeds the limit of 500000000 bytes (not read)",
)


def error_mask(indices: np.ndarray, night: int, share: float) -> np.ndarray:
    """Which of the night's rows are error rows: a fixed hash of object and night below ``share``."""
    if share <= 0:
        return np.zeros(len(indices), bool)
    mixed = (indices.astype(np.uint64) * np.uint64(2246822519)
             + np.uint64(night) * np.uint64(3266489917)) % np.uint64(1_000_000)
    return mixed < np.uint64(round(share * 1_000_000))


def _night_tables(night: int, indices: np.ndarray, versions: np.ndarray, model_id: str,
                  run_id: str, started: dt.datetime, error_share: float) -> Iterator[Any]:
    """The night's score rows, fabricated in the scores schema, FILE_ROWS at a time; error
    rows carry no scores and one of ERROR_REASONS, as the pipeline writes them."""
    import pyarrow as pa

    from vip2scan.pipeline.output.schema import SCORES_SCHEMA

    for start in range(0, len(indices), FILE_ROWS):
        idx = indices[start:start + FILE_ROWS]
        n = len(idx)
        failed = error_mask(idx, night, error_share)
        score = ((idx * 2654435761 + night * 40503) % 1_000_003 / 1_000_003).astype(np.float32)
        size = np.full(n, 2448, np.int32), np.full(n, 2048, np.int32)
        reasons = np.array(ERROR_REASONS, dtype=object)[(idx + night) % len(ERROR_REASONS)]
        yield pa.table({
            "image_uri": _uris(idx), "etag": _etags(idx, versions[idx]),
            "mtime": pa.array([T0] * n, SCORES_SCHEMA.field("mtime").type),
            "size_bytes": _sizes(idx, versions[idx]),
            "width": pa.array(size[0], mask=failed), "height": pa.array(size[1], mask=failed),
            "image_score": pa.array(score, mask=failed),
            "is_anomalous": pa.array(score >= 0.99, mask=failed),
            "max_pixel_score": pa.array(score, mask=failed),
            "anomalous_area_fraction": pa.array(score / 10, mask=failed),
            "map_store": pa.nulls(n, pa.string()), "map_index": pa.nulls(n, pa.int64()),
            "model_id": pa.array([model_id] * n), "run_id": pa.array([run_id] * n),
            "scanned_at": pa.array([started + dt.timedelta(minutes=5)] * n,
                                   SCORES_SCHEMA.field("scanned_at").type),
            "status": pa.array(np.where(failed, "error", "ok").astype(object), pa.string()),
            "error": pa.array(reasons, pa.string(), mask=~failed)}, schema=SCORES_SCHEMA)


def commit_night(out: Any, night: int, indices: np.ndarray, versions: np.ndarray,
                 model_id: str, error_share: float = 0.0) -> dict[str, Any]:
    """One night's run, committed by the pipeline's own steps: score files, the snapshot, the
    record last (pipeline/run/publish.py). Returns the snapshot's build figures, plus the
    run's id, rows and error rows."""
    from vip2scan.pipeline.output.schema import STATUS_COMPLETE
    from vip2scan.pipeline.output.snapshot import commit_snapshot
    from vip2scan.pipeline.run.publish import publish_record, write_score_files

    started = T0 + dt.timedelta(days=night)
    run_id = f"{started:%Y%m%dT%H%M%S}000Z-{night:06x}"
    scan_date = f"{started:%Y-%m-%d}"
    failed = int(error_mask(indices, night, error_share).sum())
    result = write_score_files(out, run_id, scan_date, _night_tables(
        night, indices, versions, model_id, run_id, started, error_share),
        max_rows_per_file=FILE_ROWS)
    run = {"run_id": run_id, "model_id": model_id, "started_at": started.isoformat(),
           "files": result.files, "vanished_file": None}
    latest = commit_snapshot(out, run)
    publish_record(out, {**run, "status": STATUS_COMPLETE, "source": SOURCE, "rows": result.rows,
                         "scan_date": scan_date, "latest": latest,
                         "counts": {"scored": result.rows - failed, "failed": failed,
                                    "vanished": 0}})
    return {**latest, "run_id": run_id, "run_rows": result.rows, "run_failed": failed}


@dataclass
class History:
    """A fabricated lake's committed nights: night 1 scored every object, each later night the
    ``CHANGED_PER_NIGHT`` share that changed (drawn from ``rng``)."""

    out: Any  # Location
    model_id: str
    versions: np.ndarray
    rng: np.random.Generator
    error_share: float
    builds: list[dict[str, Any]] = field(default_factory=list)

    @property
    def changed(self) -> int:
        return max(1, int(len(self.versions) * CHANGED_PER_NIGHT))

    def commit_next_night(self) -> dict[str, Any]:
        night = len(self.builds) + 1
        if night == 1:
            idx = np.arange(len(self.versions))
        else:
            idx = np.sort(self.rng.choice(len(self.versions), self.changed, replace=False))
            self.versions[idx] += 1
        self.builds.append(commit_night(self.out, night, idx, self.versions, self.model_id,
                                        self.error_share))
        return self.builds[-1]


def build_history(out: Any, objects: int, nights: int, seed: int = 0,
                  error_share: float = 0.0) -> History:
    """``nights`` nights of a lake of ``objects`` objects, committed into ``out`` (a Location)."""
    from vip2scan.model.null import null_image_size, null_model_id

    history = History(out, null_model_id(null_image_size(CHECKPOINT)),
                      np.zeros(objects, np.int32), np.random.default_rng(seed), error_share)
    for _ in range(nights):
        history.commit_next_night()
    return history


# The CLI in-process, then its peak RSS from VmHWM: getrusage's ru_maxrss would survive exec
# and report the parent's (the history builder's) peak.
_PEAK = ("import runpy, sys; sys.argv = ['vip2scan'] + sys.argv[1:]\n"
         "try:\n    runpy.run_module('vip2scan.jobs.cli', run_name='__main__')\n"
         "except SystemExit as exc:\n    code = exc.code\nelse:\n    code = 0\n"
         "hwm = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')]\n"
         "print('peak_rss_kb', hwm[0], file=sys.stderr)\nsys.exit(code)")


def _children_cpu_s() -> float:
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def measure_cli(*args: str) -> dict[str, Any]:
    """``vip2scan ARGS`` in a fresh interpreter: exit code, seconds, CPU seconds (user + system:
    what load on shared cores leaves alone), peak RSS (MiB), stdout, and the last line of
    stderr as its error when it failed."""
    t0, cpu0 = time.perf_counter(), _children_cpu_s()
    ran = subprocess.run([sys.executable, "-c", _PEAK, *args], capture_output=True, text=True)
    seconds, cpu_seconds = time.perf_counter() - t0, _children_cpu_s() - cpu0
    peak = [line for line in ran.stderr.splitlines() if line.startswith("peak_rss_kb")]
    said = [line.strip() for line in ran.stderr.splitlines()
            if line.strip() and not line.startswith("peak_rss_kb")]
    return {"exit_code": ran.returncode, "seconds": round(seconds, 2),
            "cpu_seconds": round(cpu_seconds, 2),
            "peak_rss_mib": round(int(peak[-1].split()[1]) / 1024, 1) if peak else None,
            "stdout": ran.stdout, "stderr": ran.stderr,
            "error": (said[-1] if said else f"exit code {ran.returncode}")
            if ran.returncode != 0 else None}


def run_cli(*args: str) -> dict[str, Any]:
    """``vip2scan ARGS`` in a fresh interpreter: seconds, peak RSS (MiB), stdout; raises if it fails."""
    ran = measure_cli(*args)
    if ran["exit_code"] != 0:
        raise JobError(f"vip2scan {args[0]} failed: {ran['stderr'][-2000:]}")
    return ran


def _figure(stdout: str, prefix: str, whole_line: bool = False) -> Any:
    """From the dry run's summary: the seconds after ``prefix``, or the line itself."""
    for line in stdout.splitlines():
        if line.startswith(prefix):
            rest = line[len(prefix):]
            return ("listed " + rest) if whole_line else float(rest.split()[0])
    return None


def run_plan_bench(objects: int, nights: int, workdir: Path, keep: bool = False,
                   window_query: bool = True, seed: int = 0) -> dict[str, Any]:
    """Build the OUT and manifest, then measure planning and ``latest`` queries."""
    from vip2scan.pipeline.storage.location import Location

    root = Path(workdir) / f"plan-{objects}-{nights}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    t0 = time.perf_counter()
    history = build_history(Location.of(str(root / "out")), objects, nights, seed)
    history_s = time.perf_counter() - t0
    builds, versions, changed = history.builds, history.versions, history.changed
    versions[history.rng.choice(objects, changed, replace=False)] += 1  # tonight's changes
    manifest = root / "inventory.parquet"
    write_manifest(manifest, versions)

    out_path = str(root / "out")
    plan = run_cli("scan", SOURCE, "--out", out_path, "--checkpoint", CHECKPOINT,
                   "--manifest", str(manifest), "--dry-run", "--no-progress")
    query = run_cli("query", out_path, QUERY.format(view="latest"), "--format", "csv")
    window = run_cli("query", out_path, QUERY.format(view=WINDOW_VIEW), "--format", "csv") \
        if window_query else None
    if window is not None and window["stdout"] != query["stdout"]:
        raise JobError("the snapshot's latest and the window over all runs disagree")
    incremental = [b["build_s"] for b in builds if b.get("built") == "incremental"]
    snapshot_bytes = sum((root / "out" / f).stat().st_size for f in builds[-1]["files"])
    history_rows = objects + (nights - 1) * changed
    result = {
        "objects": objects, "nights": nights, "changed_per_night": CHANGED_PER_NIGHT,
        "history_rows": history_rows, "history_build_s": round(history_s, 1),
        "snapshot": {"rows": builds[-1]["rows"], "files": len(builds[-1]["files"]),
                     "mib": round(snapshot_bytes / 2**20, 1),
                     "first_build_s": builds[0]["build_s"],
                     "nightly_build_s_max": max(incremental) if incremental else None,
                     "nightly_build_s_median": round(float(np.median(incremental)), 3)
                     if incremental else None},
        "plan": {"seconds": plan["seconds"], "peak_rss_mib": plan["peak_rss_mib"],
                 "dry_run_s": _figure(plan["stdout"], "dry run in "),
                 "counts": _figure(plan["stdout"], "  listed ", whole_line=True)},
        "latest_query": {
            "sql": QUERY.format(view="latest"),
            "snapshot": {k: query[k] for k in ("seconds", "peak_rss_mib")},
            "window_over_runs": {k: window[k] for k in ("seconds", "peak_rss_mib")}
            if window else None},
    }
    if not keep:
        shutil.rmtree(root, ignore_errors=True)
    return result


def format_plan(result: dict[str, Any]) -> str:
    snap, plan, q = result["snapshot"], result["plan"], result["latest_query"]
    lines = [f"plan bench: {result['objects']:,} objects, {result['nights']} night(s) "
             f"({result['history_rows']:,} rows of history)",
             f"  planning (--dry-run --manifest): {plan['seconds']} s with start-up "
             f"({plan['dry_run_s']} s listing and diff), peak RSS {plan['peak_rss_mib']} MiB",
             f"  snapshot: {snap['rows']:,} rows, {snap['mib']} MiB; first build "
             f"{snap['first_build_s']} s, nightly build max {snap['nightly_build_s_max']} s",
             f"  latest query (snapshot): {q['snapshot']['seconds']} s, "
             f"{q['snapshot']['peak_rss_mib']} MiB"]
    if q["window_over_runs"]:
        lines.append(f"  latest query (window over runs): {q['window_over_runs']['seconds']} s, "
                     f"{q['window_over_runs']['peak_rss_mib']} MiB")
    return "\n".join(lines)


def write_plan_result(result: dict[str, Any], json_out: str | None) -> None:
    """The table (or, with ``-``, the JSON) on stdout; the JSON to ``json_out`` if a path."""
    text = json.dumps(result, indent=2, default=str)
    if json_out == "-":
        print(text)
        return
    print(format_plan(result))
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(text + "\n")


def main() -> None:  # python -m vip2scan.jobs.bench.plan N H [WORKDIR]
    args = sys.argv[1:]
    result = run_plan_bench(int(args[0]), int(args[1]) if len(args) > 1 else 1,
                            Path(args[2]) if len(args) > 2 else Path("/tmp/vip2scan-plan-bench"))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
