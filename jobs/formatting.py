"""What the commands print about a run: a scan's summary and how a run's image threshold is named.

The scan command, the demo and the report page say these the same way, from here.
"""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING

from vip2scan.jobs.terminal import printable, shell_word

if TYPE_CHECKING:
    from typing import Callable

    from vip2scan.pipeline import RunSummary
    from vip2scan.pipeline.output.calibration import Calibration
    from vip2scan.pipeline.output.views import Outputs

UNCALIBRATED = "default (uncalibrated)"  # pipeline.calibration.SOURCE_DEFAULT, kept import-free

# Storage option names safe to echo back in the suggested follow-up commands.
_PUBLIC_STORAGE_OPTIONS = ("endpoint_url", "region_name", "anon", "use_ssl", "requester_pays")


def threshold_lines(threshold: float | None, source: str, by_prefix: dict[str, float],
                    out: str, note: str = "") -> list[str]:
    """How a scan summary and a report name a run's image threshold: its value and source,
    or a warning with the command to run when it is the uncalibrated default."""
    if not source or threshold is None:
        return []  # a run recorded before thresholds had sources
    if source == UNCALIBRATED:
        why = f" ({note})" if note else ""
        return [f"warning: image threshold {threshold:g} is not calibrated{why}; run "
                f"`vip2scan calibrate {shell_word(out)} --expected-rate 0.01` (the fraction of "
                "defective images you expect) or `vip2scan eval --calibrate` with labels"]
    per = f", {len(by_prefix)} per-prefix" if by_prefix else ""
    return [f"image threshold {threshold:.5g} ({source}{per})"]


def report_threshold_lines(outputs: Outputs, record: dict, n_scores: int,
                           flagged_under: Callable[[Calibration], int]) -> list[str]:
    """What a run's report says about its threshold: source, per-prefix values, and what OUT's
    current calibration would flag (``flagged_under`` counts it among the run's ``n_scores``
    scored images) if it differs from what the run used."""
    from vip2scan.pipeline.output.calibration import (SOURCE_FLAG, SOURCE_LABELLED, CalibrationError,
                                               read_calibrations)

    source = str(record.get("threshold_source") or "")
    by_prefix = dict(record.get("image_thresholds") or {})
    lines = threshold_lines(record.get("image_threshold"), source, by_prefix, outputs.out)
    root = str(record.get("source") or "").rstrip("/") + "/"
    if by_prefix:
        lines.append("per prefix: " + ", ".join(
            f"{p.removeprefix(root)} {t:.5g}" for p, t in sorted(by_prefix.items())))
    if source in (SOURCE_FLAG, SOURCE_LABELLED):
        return lines  # these win over OUT's calibration in later scans too
    try:
        current = read_calibrations(outputs.location).get(str(record.get("model_id")))
    except CalibrationError as exc:
        return [*lines, f"warning: {exc}"]
    if current is None or (current.source == source and by_prefix == current.by_prefix()
                           and current.image_threshold == record.get("image_threshold")):
        return lines
    lines.append(f"OUT's current calibration ({current.source}, {current.created_at}) would flag "
                 f"{flagged_under(current)} of these {n_scores} images; later "
                 "scans use it, and scan --full re-scores this run's images with it")
    return lines


def cli_command() -> str:
    """How to call this installation's ``vip2scan`` from the working directory, pasted as is:
    ``vip2scan`` when that is what PATH finds, else its script's path (relative when under the
    working directory: ``.venv/bin/vip2scan`` after ``make demo``)."""
    import os
    import shutil
    import sys
    from pathlib import Path

    script = Path(sys.executable).parent / "vip2scan"
    found = shutil.which("vip2scan")
    if not script.exists():  # not an installed script (python -m): this interpreter, then
        return f"{shlex.quote(sys.executable)} -m vip2scan.jobs" if not found else "vip2scan"
    if found and os.path.realpath(found) == os.path.realpath(script):
        return "vip2scan"
    try:
        return shlex.quote(str(script.absolute().relative_to(Path.cwd())))
    except ValueError:
        return shlex.quote(str(script.absolute()))


def follow_up_commands(summary: RunSummary, out: str, storage_options: dict,
                       program: str = "vip2scan") -> list[str]:
    """Ready-to-paste query and report lines for this run (secrets never included)."""
    flags = "".join(f" -s {shell_word(f'{k}={v}')}" for k, v in storage_options.items()
                    if k in _PUBLIC_STORAGE_OPTIONS)
    sql = f"SELECT status, is_anomalous, count(*) AS n FROM scores WHERE run_id = '{summary.run_id}' GROUP BY ALL"
    return [
        f"{program} query {shell_word(out)} \"{sql}\"{flags}",  # run ids are [0-9A-Za-z-]: safe in "..."
        f"{program} report {shell_word(out)} --run {summary.run_id}{flags}",
    ]


def engine_lines(summary: RunSummary) -> list[str]:
    """Which engine scored and why, where Ray's own notices went, and a pending run."""
    lines = [f"  engine {summary.engine} ({summary.engine_reason})"] if summary.engine else []
    if summary.engine_log:
        lines.append(f"  ray log: {summary.engine_log}")
    pending = summary.pending
    if pending is not None:
        lines.append(f"  pending: run {pending.run_id} was interrupted with {pending.staged} of "
                     f"{pending.total} rows staged; the next scan resumes it before anything new")
    return lines


def alert_lines(summary: RunSummary) -> list[str]:
    """One line per anomaly-rate alert and per model or threshold change of a group."""
    return ([f"  alert: {a.get('line', '')}" for a in getattr(summary, "alerts", None) or []]
            + [f"  changed: {c.get('line', '')}" for c in getattr(summary, "alert_changes", None) or []])


# The order a summary lists a run's counts in (a resumed run's come back from its plan file,
# whose keys are sorted); any others follow in their own order.
COUNT_ORDER = ("listed", "new", "changed", "unchanged", "retried", "vanished", "deferred",
               "to_scan", "skipped", "excluded", "scored", "failed")


def in_count_order(counts: dict) -> dict:
    ordered = {k: counts[k] for k in COUNT_ORDER if k in counts}
    return {**ordered, **{k: v for k, v in counts.items() if k not in ordered}}


def format_summary(summary: RunSummary, out: str, storage_options: dict,
                   program: str = "vip2scan") -> str:
    """Counts, failures, speed, where the outputs are, and what to run next (``program``: how
    the next commands call vip2scan)."""
    counts = in_count_order(summary.counts or {})
    shown = ", ".join(f"{k} {v}" for k, v in counts.items())
    rate = f", {summary.images_per_s:.1f} images/s" if summary.images_per_s else ""
    title = f"run {summary.run_id}: {summary.status}" if summary.run_id else summary.status.replace("_", " ")
    lines = [f"{title} in {summary.wall_s:.1f} s{rate}", f"  {shown}"]
    if counts.get("scored") and summary.flagged is not None:
        lines.append(f"  flagged {summary.flagged} of {counts['scored']} scored images "
                     "(is_anomalous: image_score at or above the image threshold)")
    if summary.model_id:
        lines.append(f"  model {summary.model_id}")
    lines += engine_lines(summary)
    from vip2scan.pipeline.storage.accounting import IoCounts, cost_line

    requests = IoCounts.from_record(summary.io or {})
    if requests.total_requests():  # S3 only: local files are not counted (accounting.py)
        lines.append("  " + cost_line(requests, int((summary.io or {}).get("objects_read", 0))))
    if counts.get("scored") or summary.run_id is None:  # quiet nights: no rows, no threshold
        lines += [f"  {line}" for line in threshold_lines(
            summary.image_threshold, summary.threshold_source, summary.image_thresholds, out,
            summary.threshold_note)]
    skipped = summary.skipped_by_suffix
    if skipped:
        shown_skipped = ", ".join(f"{k} {n}" for k, n in skipped.items())
        lines.append(f"  not scanned, no image suffix: {shown_skipped} (add formats with --suffixes)")
    lines += [f"  warning: {w}" for w in summary.warnings]
    lines += alert_lines(summary)
    failed = int(counts.get("failed", 0) or 0)
    if failed:
        lines.append(f"  {failed} image(s) could not be scored (status='error' rows, with the reason)")
    # A night that wrote no rows has no scores folder of its own to point at.
    scores_uri = summary.scores_uri if summary.files else None
    for label, where in (("scores", scores_uri), ("maps", summary.maps_uri), ("record", summary.record_uri)):
        if where:
            lines.append(f"  {label}: {where}")
    vanished = int(counts.get("vanished", 0) or 0)
    if summary.record_uri and not counts.get("scored") and not failed and vanished:
        # A night that only lost objects did change something: say what it found.
        lines.append(f"  no images to score; {vanished} vanished since the last run "
                     "(gone from the latest view)")
    elif summary.record_uri and not counts.get("scored") and not failed:
        lines.append("  nothing new or changed since the last run: no inference ran")
    elif summary.record_uri:  # a dry run writes no record: nothing to query yet
        lines.append("next:")
        lines += [f"  {cmd}" for cmd in follow_up_commands(summary, out, storage_options, program)]
    # Keys and URIs reach these lines (warnings, locations): no raw control character may.
    return "\n".join(printable(line) for line in lines)
