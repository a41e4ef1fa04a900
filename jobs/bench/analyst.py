"""`vip2scan bench --analyst N [--nights H]`: the analyst's commands at N objects (issue 24).

Builds, from a fixed seed, the history ``--plan`` builds (plan.py: H nights committed by the
pipeline's own steps, 1 % of the objects changed a night) with ~0.5 % error rows, then times
each command in its own fresh process (wall seconds with start-up, CPU seconds, peak RSS from
VmHWM):

- ``explore OUT`` (first export), again with nothing changed (a quiet night), then once more
  after one more night (an incremental night); the explorer folder's size and file count, and
  how many of its files each run wrote;
- ``report`` of night 1's run (it scored the whole lake) and of the newest run;
- ``calibrate`` plain and ``--by 'line*/'``, then the full-lake ``report`` again under that
  per-prefix calibration;
- ``verify`` and, where this build has it, ``verify --deep``;
- the explorer in headless Chromium (explorer_timing.py), the static export and ``--serve``:
  overview, table ready, a prefix filter, a sort, one image; the server's start-up and peak RSS
  (skipped, with a note, where no Chromium is on PATH).

Only the commands' flags are used, never their internals: other work changes those. Each
figure stands next to the issue's target (set for 10 M objects on 2 cores) as pass or miss. A
command that fails is recorded with its one-line error and the others still run.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from vip2scan.jobs.errors import JobError

from .plan import CHANGED_PER_NIGHT, build_history, measure_cli

ERROR_SHARE = 0.005
EXPECTED_RATE = "0.01"
BY_PREFIX = "line*/"
MIB = 2**20
# Issue 24's targets (10 M objects, 2 cores): seconds and peak RSS in MiB per command.
EXPLORE_TARGET = {"seconds": 60, "peak_rss_mib": 2048}
QUIET_EXPLORE_TARGET = {"seconds": 10, "peak_rss_mib": 2048}
ANALYST_TARGET = {"seconds": 30, "peak_rss_mib": 1536}  # report, calibrate
VERIFY_TARGET = {"seconds": 60, "peak_rss_mib": 1536}
EXPLORER_MB_TARGET = 200
# The page's targets (ms): overview, table ready, a filter or sort, one image.
PAGE_TARGETS = {"overview_ms": 2000, "table_ready_ms": 3000, "prefix_filter_ms": 1000,
                "sort_by_score_ms": 1000, "image_page_ms": 1000}
# Explore pre-renders no image: the fabricated lake's objects cannot be read.
EXPLORE_FLAGS = ("--max-images", "0")
# The report reads its top images from the lake, which is fabricated: it shows none.
REPORT_FLAGS = ("--top", "0")


def checked(figures: dict[str, Any], targets: dict[str, float]) -> dict[str, Any]:
    """Each target next to its figure: ``{name: {value, target, pass}}``."""
    return {name: {"value": figures.get(name), "target": target,
                   "pass": figures.get(name) is not None and figures[name] <= target}
            for name, target in targets.items()}


def _number(pattern: str, text: str) -> int | None:
    found = re.search(pattern, text)
    return int(found.group(1).replace(",", "")) if found else None


def _report_counts(stdout: str) -> dict[str, Any]:
    """The counts the report page shows (scored, failed, rows, error rows), read from its HTML."""
    found = re.search(r"(file://\S+\.html)", stdout)
    page = Path(unquote(urlparse(found.group(1)).path)) if found else None
    if page is None or not page.exists():
        return {}
    text = re.sub(r"<style.*?</style>|<script.*?</script>", " ", page.read_text(), flags=re.S)
    text = " ".join(re.sub(r"<[^>]+>", " ", text).split())
    return {"scored": _number(r"\bscored ([\d,]+)", text),
            "failed": _number(r"\bfailed ([\d,]+)", text),
            "rows": _number(r"(?<!ok )(?<!error )\brows ([\d,]+)", text),
            "error_rows": _number(r"\berror rows ([\d,]+)", text)}


def _outputs(name: str, stdout: str) -> dict[str, Any]:
    """What a command says about what it did, from its stdout (None where it is not said)."""
    if name.startswith("explore"):
        return {"objects": _number(r"\(([\d,]+) objects", stdout)}
    if name.startswith("report"):
        return _report_counts(stdout)
    if name.startswith("calibrate"):
        return {"latest_scores": _number(r"([\d,]+) latest scores", stdout)}
    if name.startswith("verify"):
        return {"consistent": "consistent" in stdout and "inconsistent" not in stdout,
                "runs": _number(r"([\d,]+) run\(s\)", stdout),
                "rows": _number(r"([\d,]+) rows", stdout)}
    return {}


def _folder(path: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``path``: (size, mtime in ns)."""
    if not path.is_dir():
        return {}
    return {str(f.relative_to(path)): (f.stat().st_size, f.stat().st_mtime_ns)
            for f in path.rglob("*") if f.is_file()}


def _error_rows(out: Path, files: list[str]) -> int:
    """Error rows in the snapshot's files, counted from their status column."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    return sum(int(pc.sum(pc.equal(pq.read_table(out / name, columns=["status"])["status"],
                                   "error")).as_py() or 0) for name in files)


class AnalystBench:
    """The measurements, in order, over one fabricated OUT."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.explorer = out / "reports" / "explorer"
        self.commands: dict[str, dict[str, Any]] = {}

    def measure(self, name: str, args: tuple[str, ...], targets: dict[str, float]) -> dict[str, Any]:
        ran = measure_cli(*args)
        entry: dict[str, Any] = {"command": "vip2scan " + " ".join(args),
                                 "ok": ran["exit_code"] == 0, "seconds": ran["seconds"],
                                 "cpu_seconds": ran["cpu_seconds"],
                                 "peak_rss_mib": ran["peak_rss_mib"]}
        if entry["ok"]:
            entry.update(_outputs(name, ran["stdout"]))
            entry["targets"] = checked(entry, targets)
        else:
            entry["error"] = ran["error"]
        self.commands[name] = entry
        return entry

    def explore(self, name: str, targets: dict[str, float]) -> None:
        before = _folder(self.explorer)
        entry = self.measure(name, ("explore", str(self.out), *EXPLORE_FLAGS), targets)
        after = _folder(self.explorer)
        entry["explorer"] = {
            "mb": round(sum(size for size, _ in after.values()) / 1e6, 1), "files": len(after),
            "files_written": sum(1 for f, stat in after.items() if before.get(f) != stat),
            "files_removed": len(set(before) - set(after))}
        if entry["ok"]:
            entry["targets"].update(checked(entry["explorer"], {"mb": EXPLORER_MB_TARGET}))


def run_analyst_bench(objects: int, nights: int, workdir: Path, keep: bool = False,
                      seed: int = 0) -> dict[str, Any]:
    """Build the history, then time explore, report, calibrate and verify over it."""
    from vip2scan.pipeline.storage.location import Location

    root = Path(workdir) / f"analyst-{objects}-{nights}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    out = root / "out"
    t0 = time.perf_counter()
    history = build_history(Location.of(str(out)), objects, nights, seed, ERROR_SHARE)
    history_s = time.perf_counter() - t0
    full_run = history.builds[0]
    bench = AnalystBench(out)
    notes: list[str] = []
    bench.explore("explore_first", EXPLORE_TARGET)
    bench.explore("explore_quiet", QUIET_EXPLORE_TARGET)
    tonight = history.commit_next_night()
    bench.explore("explore_incremental", EXPLORE_TARGET)
    browser = page_timings(out)
    if "skipped" in browser:
        notes.append(f"explorer in Chromium not measured: {browser['skipped']}")
    full = ("report", str(out), "--run", full_run["run_id"], *REPORT_FLAGS)
    bench.measure("report_full_run", full, ANALYST_TARGET)
    bench.measure("report_newest", ("report", str(out), *REPORT_FLAGS), ANALYST_TARGET)
    calibrate = ("calibrate", str(out), "--expected-rate", EXPECTED_RATE)
    bench.measure("calibrate", calibrate, ANALYST_TARGET)
    bench.measure("calibrate_by", (*calibrate, "--by", BY_PREFIX), ANALYST_TARGET)
    bench.measure("report_full_run_calibrated", full, ANALYST_TARGET)
    bench.measure("verify", ("verify", str(out)), VERIFY_TARGET)
    if "--deep" in measure_cli("verify", "--help")["stdout"]:
        bench.measure("verify_deep", ("verify", str(out), "--deep"), VERIFY_TARGET)
    else:
        notes.append("verify --deep not measured: this build's verify has no --deep flag")
    builds = history.builds
    result = {
        "objects": objects, "nights": nights, "changed_per_night": CHANGED_PER_NIGHT,
        "changed_objects_per_night": history.changed,
        "error_share": ERROR_SHARE, "targets_for": "10,000,000 objects on 2 cores (issue 24)",
        "history": {"runs": len(builds), "rows": sum(b["run_rows"] for b in builds),
                    "error_rows": sum(b["run_failed"] for b in builds),
                    "build_s": round(history_s, 1),
                    "full_run": {"run_id": full_run["run_id"], "rows": full_run["run_rows"],
                                 "error_rows": full_run["run_failed"]},
                    "newest_run": {"run_id": tonight["run_id"], "rows": tonight["run_rows"],
                                   "error_rows": tonight["run_failed"]},
                    "latest_rows": tonight["rows"],
                    "latest_error_rows": _error_rows(out, tonight["files"])},
        "commands": bench.commands, "browser": browser,
        "failed": [name for name, entry in bench.commands.items() if not entry["ok"]],
        "notes": notes,
    }
    if not keep:
        shutil.rmtree(root, ignore_errors=True)
    return result


def page_timings(out: Path) -> dict[str, Any]:
    """The explorer's timings in Chromium, static and served, each next to the page's targets."""
    from .explorer_timing import explorer_timings

    timings = explorer_timings(out)
    for mode in ("static", "served"):
        if mode in timings:
            timings[mode]["targets"] = checked(timings[mode], PAGE_TARGETS)
    return timings


def _figures(entry: dict[str, Any]) -> str:
    if not entry["ok"]:
        return f"FAILED: {entry['error']}"
    parts = []
    for name, check in entry["targets"].items():
        unit = {"seconds": "s", "peak_rss_mib": "MiB", "mb": "MB"}[name]
        parts.append(f"{check['value']} {unit} (<= {check['target']}: "
                     f"{'pass' if check['pass'] else 'MISS'})")
    parts.append(f"{entry['cpu_seconds']} s CPU")
    if "explorer" in entry:
        parts.append(f"{entry['explorer']['files']} files, {entry['explorer']['files_written']} "
                     f"written")
    return ", ".join(parts)


def format_analyst(result: dict[str, Any]) -> str:
    history = result["history"]
    lines = [f"analyst bench: {result['objects']:,} objects, {result['nights']} night(s) + 1 "
             f"({history['rows']:,} rows of history, {history['error_rows']:,} error rows; "
             f"built in {history['build_s']} s); targets for {result['targets_for']}"]
    width = max(len(name) for name in result["commands"])
    for name, entry in result["commands"].items():
        lines.append(f"  {name:<{width}}  {_figures(entry)}")
    for mode in ("static", "served"):
        page = result.get("browser", {}).get(mode)
        if page:
            shown = ", ".join(f"{name.removesuffix('_ms').replace('_', ' ')} {check['value']:.0f} ms"
                              f"{'' if check['pass'] else ' (MISS)'}" for name, check in page["targets"].items())
            extra = (f"; server start {page['server_start_s']} s, peak {page['server_peak_rss_mib']} MiB"
                     if mode == "served" else "")
            lines.append(f"  explorer in Chromium, {mode}: {shown}{extra}")
    lines += [f"  note: {note}" for note in result["notes"]]
    return "\n".join(lines)


def write_analyst_result(result: dict[str, Any], json_out: str | None) -> None:
    """The table (or, with ``-``, the JSON) on stdout; the JSON to ``json_out`` if a path. Raises
    (exit 1) after writing when a command failed."""
    text = json.dumps(result, indent=2, default=str)
    if json_out == "-":
        print(text)
    else:
        print(format_analyst(result))
        if json_out:
            Path(json_out).parent.mkdir(parents=True, exist_ok=True)
            Path(json_out).write_text(text + "\n")
    if result["failed"]:
        raise JobError(f"analyst bench: {len(result['failed'])} command(s) failed: "
                       + ", ".join(result["failed"]))
