"""The report page of one run: ``build_report`` writes OUT/reports/<run_id>/ (report.html, the
score histogram, thumbnails and map overlays of the most anomalous images).

The ``report`` command and the demo both write it through here.
"""

from __future__ import annotations

import html
import io
import tempfile
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import typer

from vip2scan.jobs.formatting import report_threshold_lines
from vip2scan.jobs.imaging import (SCALING_RULE, THUMB_SIDE, display_range, fit_map, png_bytes,
                                    thumbnail_and_overlay, upright_thumbnail)
from vip2scan.jobs.storage import read_object
from vip2scan.jobs.terminal import printable
from vip2scan.pipeline.errors import one_line

if TYPE_CHECKING:
    from vip2scan.pipeline.output.calibration import Calibration
    from vip2scan.pipeline.output.views import Outputs

MAX_ERRORS_SHOWN = 50


HISTOGRAM_BINS = 40
BATCH_ROWS = 1 << 20  # scores binned per numpy call: 8 MB, whatever the run's size
OK_ROWS = "FROM run_rows WHERE run_id = ? AND status = 'ok'"
# What the page reads of a run's rows: its own score files, not every run's.
RUN_COLUMNS = ["image_uri", "width", "height", "image_score", "is_anomalous", "max_pixel_score",
               "anomalous_area_fraction", "map_store", "map_index", "run_id", "status", "error"]


def score_histogram(con: Any, run_id: str) -> tuple[np.ndarray, np.ndarray, int]:
    """(counts, bin edges, ok rows) of the run's image scores: 40 bins over the observed range
    (scores of a weakly trained head crowd near one value), binned batch by batch, exactly as
    one np.histogram over all of them would."""
    n, low, high = con.execute(f"SELECT count(*), min(image_score), max(image_score) {OK_ROWS}",
                               [run_id]).fetchall()[0]
    low, high = (float(low), float(high)) if n else (0.0, 1.0)
    pad = max(1e-3, 0.05 * (high - low))
    edges = np.histogram_bin_edges([], bins=HISTOGRAM_BINS, range=(low - pad, high + pad))
    counts = np.zeros(HISTOGRAM_BINS, dtype=np.int64)
    if n:
        reader = con.sql(f"SELECT image_score::DOUBLE AS s {OK_ROWS}",
                         params=[run_id]).to_arrow_reader(BATCH_ROWS)
        for batch in reader:
            scores = batch.column(0).to_numpy(zero_copy_only=False)
            counts += np.histogram(scores, bins=HISTOGRAM_BINS, range=(low - pad, high + pad))[0]
    return counts, edges, int(n)


def run_counts(con: Any, run_id: str) -> dict[str, int]:
    """The run's rows, ok rows, anomalous (ok) rows and error rows, as one aggregate."""
    rows, ok, anomalous = con.execute(
        "SELECT count(*), count(*) FILTER (status = 'ok'), "
        "count(*) FILTER (status = 'ok' AND is_anomalous) FROM run_rows WHERE run_id = ?",
        [run_id]).fetchall()[0]
    return {"rows": int(rows), "ok rows": int(ok), "anomalous": int(anomalous),
            "error rows": int(rows - ok)}


def flagged_under(con: Any, run_id: str, calibration: Calibration) -> int:
    """How many of the run's scored images ``calibration`` flags (what a rescan would decide)."""
    from vip2scan.pipeline.output.calibration_sql import threshold_sql

    joins, limit = threshold_sql(con, "r.image_uri", calibration.image_threshold,
                                 calibration.by_prefix())
    return int(con.execute(f"SELECT count(*) FILTER (r.image_score::DOUBLE >= {limit}) "
                           f"FROM run_rows r {joins}WHERE r.run_id = ? AND r.status = 'ok'",
                           [run_id]).fetchall()[0][0])


def histogram_png(counts: np.ndarray, edges: np.ndarray, n_scores: int,
                  threshold: Optional[float]) -> bytes:
    """Image-score histogram with the decision threshold marked (matplotlib's Agg, no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    # One weighted value per bin draws the bars of the binned scores.
    ax.hist(edges[:-1], bins=edges, weights=counts, color="#4477aa")
    if threshold is not None:
        ax.axvline(threshold, color="#cc3311", linestyle="--", label=f"threshold {threshold:.5g}")
        ax.legend()
    ax.set_xlabel("image_score")
    ax.set_ylabel("images")
    ax.set_title(f"Image scores ({n_scores} images scored)")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def number(value: Optional[float], spec: str) -> str:
    """A score cell; a row without that figure (no map was computed for it) shows a dash."""
    return "\u2013" if value is None else format(value, spec)


def render_html(record: dict, counts: dict, threshold: Optional[float], top: list[dict],
                errors: list[dict], threshold_notes: tuple[str, ...] = (),
                scaling_note: str = SCALING_RULE) -> str:
    """The report page. Only relative links and inline CSS: it opens offline from any copy."""
    esc = html.escape
    run_rows = [[esc(k), esc(str(v))] for k, v in counts.items()]
    top_rows = [[
        str(i + 1),
        f'<img src="{esc(item["image_png"])}" alt="image {i + 1}">' if item["image_png"]
        else f'<em>{esc(item.get("image_note") or "gone from the lake since this run")}</em>',
        f'<img src="{esc(item["overlay_png"])}" alt="anomaly map {i + 1}">' if item["overlay_png"]
        else "<em>no map stored (scanned with --maps anomalous or none)</em>",
        f'{number(item["image_score"], ".4f")}<br><small>max pixel '
        f'{number(item["max_pixel_score"], ".3f")}<br>'
        f'area {number(item["anomalous_area_fraction"], ".3%")}</small>',
        f'<code>{esc(item["image_uri"])}</code><br><small>{item["width"]} x {item["height"]}</small>',
    ] for i, item in enumerate(top)]
    error_rows = [[f"<code>{esc(e['image_uri'])}</code>", esc(str(e["error"]))] for e in errors]
    more_errors = max(0, counts.get("error rows", 0) - len(errors))
    nothing_scored = "" if counts.get("ok rows", 1) else (
        "<p>This run scored no image: every object it read became an error row, or it found "
        "nothing new or changed to read (see the counts above).</p>\n")
    more_html = (f"<p>... and {more_errors} more: <code>vip2scan query OUT "
                 f"&quot;SELECT image_uri, error FROM scores WHERE status = 'error'&quot;</code></p>"
                 if more_errors else "")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>vip2scan report {esc(record["run_id"])}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border: 1px solid #ccc; padding: 4px 8px; vertical-align: top; text-align: left; }}
img {{ max-width: {THUMB_SIDE}px; }}
code {{ word-break: break-all; }}
.warning {{ color: #b00020; font-weight: bold; }}
</style></head><body>
<h1>vip2scan run <code>{esc(record["run_id"])}</code></h1>
<p>Source <code>{esc(str(record.get("source", "")))}</code>, model <code>{esc(str(record.get("model_id", "")))}</code>,
started {esc(str(record.get("started_at", "")))}, image threshold {"none" if threshold is None else f"{threshold:.5g}"}.</p>
{"".join(f'<p class="{"warning" if n.startswith("warning:") else "note"}">{esc(n)}</p>'
         for n in threshold_notes)}
<h2>Counts</h2>
{_table(["", "count"], run_rows)}
<h2>Image scores</h2>
{nothing_scored}<img src="histogram.png" alt="histogram of image scores" style="max-width: 640px">
<h2>Top {len(top)} most anomalous images</h2>
<p>Left: the image; right: its anomaly map resized to the image's own aspect. Colour: {esc(scaling_note)}.</p>
{_table(["#", "image", "anomaly map", "image_score", "object"], top_rows)}
<h2>Errors</h2>
{_table(["object", "error"], error_rows) if error_rows else "<p>None.</p>"}
{more_html}
</body></html>
"""


def threshold_change_note(records: list[dict], record: dict) -> Optional[str]:
    """A note when this run's image threshold differs from the previous run's of its source:
    the nights before and after were flagged by different thresholds."""
    key = (str(record.get("started_at", "")), str(record["run_id"]))
    earlier = [r for r in records if r.get("source") == record.get("source")
               and (str(r.get("started_at", "")), str(r["run_id"])) < key
               and r.get("image_threshold") is not None]
    new = record.get("image_threshold")
    if not earlier or new is None:
        return None
    old = earlier[-1]
    if round(float(old["image_threshold"]), 6) == round(float(new), 6):
        return None

    def named(r: dict) -> str:
        return f"{float(r['image_threshold']):.5g} ({r.get('threshold_source') or 'no source recorded'})"
    return (f"threshold changed: the previous run of this source, {old['run_id']}, flagged with "
            f"image threshold {named(old)}, this one with {named(record)}; flagged counts before "
            "and after this run do not compare")


def unreadable_errors() -> tuple[type[BaseException], ...]:
    """What a store raises for an object it will not give now: the OS's and fsspec's errors
    (permissions, network, an unknown protocol) and botocore's (no credentials, a bad endpoint)."""
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:  # no S3 support installed
        return (OSError, ValueError)
    return (OSError, ValueError, BotoCoreError, ClientError)


def readable_image(row: dict, storage_options: dict, unreadable: list[str]) -> Optional[bytes]:
    """The object's bytes for its thumbnail; None when gone, or when it cannot be read now (then
    ``row["image_note"]`` says why and ``unreadable`` gets one line)."""
    try:
        return read_object(row["image_uri"], storage_options)
    except unreadable_errors() as exc:
        reason = one_line(exc, limit=200)
        row["image_note"] = f"not readable now: {reason}"
        unreadable.append(f"{row['image_uri']}: {reason}")
        return None


def stored_map(row: dict, out: str, storage_options: dict) -> Optional[np.ndarray]:
    """The row's map fitted to a thumbnail; None when the scan stored none for it."""
    from vip2scan.pipeline import read_map

    if row.get("map_store") is None:
        return None
    return fit_map(read_map(row, out, storage_options=storage_options), THUMB_SIDE)


def build_report(out: str, run_id: Optional[str], top_n: int, storage_options: dict) -> str:
    """Write OUT/reports/<run_id>/ and return the URI of its report.html."""
    from vip2scan.pipeline.output.schema import SCORES_SCHEMA
    from vip2scan.pipeline.output.views import Outputs, duckdb_connect, register_parquet

    outputs = Outputs(out, storage_options)
    record = outputs.run_record(run_id)
    run_id = record["run_id"]
    with tempfile.TemporaryDirectory(prefix="vip2scan-report-") as workdir:
        # Aggregates over the run's own files only: a run that scored the whole lake never
        # becomes Python lists, and DuckDB spills to workdir above its memory limit.
        con = duckdb_connect(workdir)
        try:
            register_parquet(con, "run_rows", outputs.location, list(record.get("files") or []),
                             RUN_COLUMNS, SCORES_SCHEMA)
            return write_report(outputs, con, record, top_n)
        finally:
            con.close()


def write_report(outputs: Outputs, con: Any, record: dict, top_n: int) -> str:
    """Write the report of ``record``'s run, whose rows are the view run_rows of ``con``."""
    from vip2scan.pipeline.output.paths import report_dir
    from vip2scan.pipeline.output.schema import RUN_COUNT_FIELDS

    run_id = record["run_id"]
    out, storage_options = outputs.out, outputs.storage_options
    recorded = dict(record.get("counts") or {})
    ordered = [k for k in RUN_COUNT_FIELDS if k in recorded] + sorted(set(recorded) - set(RUN_COUNT_FIELDS))
    counts = {**{k: recorded[k] for k in ordered}, **run_counts(con, run_id)}
    threshold = record.get("image_threshold")

    top = con.sql(
        f"SELECT * {OK_ROWS} ORDER BY image_score DESC, image_uri LIMIT ?",
        params=[run_id, top_n]).to_arrow_table().to_pylist()
    errors = con.sql(
        "SELECT image_uri, error FROM run_rows WHERE run_id = ? AND status = 'error' ORDER BY image_uri LIMIT ?",
        params=[run_id, MAX_ERRORS_SHOWN]).to_arrow_table().to_pylist()

    folder = report_dir(run_id)
    fs = outputs.fs
    top_dir = outputs.path(folder, "top")
    if fs.exists(top_dir):  # a rerun with a smaller --top must not leave stale images
        fs.rm(top_dir, recursive=True)
    fs.makedirs(top_dir, exist_ok=True)
    fs.pipe(outputs.path(folder, "histogram.png"),
            histogram_png(*score_histogram(con, run_id), threshold))
    # Maps first: one display stretch for the run, so colours compare across its rows.
    maps = [stored_map(row, out, storage_options) for row in top]
    value_range = display_range(m for m in maps if m is not None)
    unreadable: list[str] = []
    for i, (row, anomaly_map) in enumerate(zip(top, maps)):
        # None: vanished since this run, or unreadable now; its row and map still tell the story.
        image_bytes = readable_image(row, storage_options, unreadable)
        if anomaly_map is None and image_bytes is None:
            image_png = overlay_png = None
        elif anomaly_map is None:  # below the threshold of a --maps anomalous run
            image_png = png_bytes(upright_thumbnail(image_bytes, int(row["width"]),
                                                    int(row["height"]), THUMB_SIDE))
            overlay_png = None
        else:
            image_png, overlay_png = thumbnail_and_overlay(image_bytes, anomaly_map, value_range)
        row["image_png"] = f"top/{i + 1:03d}-image.png" if image_bytes is not None else None
        row["overlay_png"] = f"top/{i + 1:03d}-map.png" if overlay_png is not None else None
        if row["image_png"]:
            fs.pipe(outputs.path(folder, row["image_png"]), image_png)
        if row["overlay_png"]:
            fs.pipe(outputs.path(folder, row["overlay_png"]), overlay_png)
    if unreadable:  # the scores still make the report: one line, not an abort
        typer.echo(printable(f"warning: {len(unreadable)} of the top image(s) could not be read "
                             f"now and are shown without a picture, e.g. {unreadable[0]}"), err=True)
    notes = report_threshold_lines(outputs, record, counts["ok rows"],
                                   lambda calibration: flagged_under(con, run_id, calibration))
    change = threshold_change_note(outputs.run_records(), record)
    if change:
        notes.append(change)
    scaling = f"{SCALING_RULE}; here {value_range[0]:.4g} (blue) to {value_range[1]:.4g} (dark red)"
    page = render_html(record, counts, threshold, top, errors, tuple(notes), scaling)
    fs.pipe(outputs.path(folder, "report.html"), page.encode("utf-8"))
    return outputs.uri(folder, "report.html")
