"""What the lake explorer shows, gathered from OUT's ``latest`` and ``scores`` views.

The page gets three kinds of data, all plain JSON wrapped in a JavaScript call (a page opened
from ``file://`` may load scripts but not ``fetch`` files):

- ``meta``: everything the overview needs (counts, per-prefix and per-night rates, the score
  histogram with the thresholds in force, error reasons), small whatever the lake's size;
- ``index``: one compact column per field the table filters and sorts on (row i = the i-th
  current object by URI), loaded once when the table is first shown;
- ``chunks``: the per-image details (error text, size, run, history across nights, rendering),
  :data:`CHUNK_ROWS` rows a file, loaded when an image is opened.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa

    from vip2scan.pipeline.output.views import Outputs

CHUNK_ROWS = 1000
HIST_BINS = 40
MAX_ERRORS_LISTED = 200
MAX_REASONS = 30
TOP_LEVEL = "(top level)"  # the prefix of objects directly under a run's source
STATUS_ERROR, FLAG_ANOMALOUS, FLAG_RENDERED, FLAG_IMAGE = 1, 2, 4, 8  # bits of the index's ``f``

LATEST_SQL = """
SELECT image_uri, status, error, image_score, max_pixel_score, anomalous_area_fraction,
       is_anomalous, model_id, run_id, width, height, map_store, map_index
FROM latest ORDER BY image_uri
"""
# Every row of every current object, oldest first: its history across nights.
HISTORY_SQL = """
SELECT s.image_uri, s.run_id, s.status, s.image_score, s.is_anomalous
FROM scores s SEMI JOIN latest l ON s.image_uri = l.image_uri
ORDER BY s.image_uri, s.scanned_at, s.run_id
"""
PER_RUN_SQL = """
SELECT run_id, count(*) AS n, count(*) FILTER (status = 'ok') AS ok,
       count(*) FILTER (status = 'ok' AND is_anomalous) AS anomalous,
       count(*) FILTER (status = 'error') AS errors
FROM scores GROUP BY run_id
"""


@dataclass
class LakeState:
    """The explorer's data before it is written: ``rows`` are the current objects by URI."""

    meta: dict[str, Any]
    index: dict[str, list]
    rows: "pa.Table"
    history: list[list[list]]  # per row: [night, run, status code, score, anomalous] entries
    run_ids: list[str]
    rendered: dict[int, dict[str, Any]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def chunk(self, k: int) -> list[list]:
        """Details of rows [k * CHUNK_ROWS, (k + 1) * CHUNK_ROWS): [error, width, height, run
        index, history, rendering or null]."""
        start, stop = k * CHUNK_ROWS, min((k + 1) * CHUNK_ROWS, self.rows.num_rows)
        columns = {name: self.rows.column(name).slice(start, stop - start).to_pylist()
                   for name in ("error", "width", "height", "run_id")}
        run_index = {r: i for i, r in enumerate(self.run_ids)}
        return [[columns["error"][j], columns["width"][j], columns["height"][j],
                 run_index.get(columns["run_id"][j], -1), self.history[start + j],
                 self.rendered.get(start + j)] for j in range(stop - start)]

    @property
    def n_chunks(self) -> int:
        return (self.rows.num_rows + CHUNK_ROWS - 1) // CHUNK_ROWS


def night_of(record: dict) -> str:
    """The night (UTC date) a run belongs to: its scan_date, else the date it started."""
    return str(record.get("scan_date") or str(record.get("started_at") or "")[:10] or "unknown")


def prefix_of(key: str) -> str:
    """The first folder of a key below its run's source ('line3/'), the product line."""
    head, sep, _ = key.partition("/")
    return head + "/" if sep else TOP_LEVEL


def scaled(values: np.ndarray, factor: float) -> list[Optional[int]]:
    """Floats as integers of ``factor`` (compact JSON); NaN -> null."""
    out = np.round(np.asarray(values, dtype=np.float64) * factor)
    return [None if not np.isfinite(v) else int(v) for v in out]


def float_column(table: "pa.Table", name: str) -> np.ndarray:
    return np.asarray(table.column(name).to_numpy(zero_copy_only=False), dtype=np.float64)


def histogram(scores: np.ndarray) -> dict[str, Any]:
    """HIST_BINS bins over the observed range (scores of a weak head crowd near one value)."""
    scores = scores[np.isfinite(scores)]
    low, high = (float(scores.min()), float(scores.max())) if len(scores) else (0.0, 1.0)
    pad = max(1e-3, 0.05 * (high - low))
    counts, edges = np.histogram(scores, bins=HIST_BINS, range=(low - pad, high + pad))
    return {"lo": float(edges[0]), "hi": float(edges[-1]), "counts": counts.tolist()}


def thresholds_in_force(records: dict[str, dict], run_ids: set[str]) -> list[dict[str, Any]]:
    """The image thresholds of the runs that wrote the current rows: global and per prefix."""
    seen: dict[tuple[float, str], None] = {}
    for run_id in sorted(run_ids):
        record = records.get(run_id) or {}
        if record.get("image_threshold") is not None:
            source = record.get("threshold_source") or ""
            seen[(float(record["image_threshold"]), f"threshold{' (' + source + ')' if source else ''}")] = None
        root = str(record.get("source") or "").rstrip("/") + "/"
        for prefix, value in sorted((record.get("image_thresholds") or {}).items()):
            seen[(float(value), f"{str(prefix).removeprefix(root)} threshold")] = None
    return [{"value": v, "label": label} for v, label in seen]


def drop_non_finite_thresholds(records: dict[str, dict]) -> list[str]:
    """Blank, in place, the thresholds of run records that are not finite numbers (older
    versions accepted `--threshold nan`): JSON, and so the page, cannot hold them. Returns one
    warning per such run."""
    import math

    def finite(value: Any) -> bool:
        return isinstance(value, (int, float)) and math.isfinite(value)

    warnings = []
    for run_id, record in records.items():
        bad = [name for name in ("image_threshold", "pixel_threshold")
               if record.get(name) is not None and not finite(record[name])]
        by_prefix = record.get("image_thresholds") or {}
        kept = {p: v for p, v in by_prefix.items() if finite(v)} if isinstance(by_prefix, dict) else {}
        if len(kept) != len(by_prefix):
            bad.append("image_thresholds")
        for name in bad:
            record[name] = kept if name == "image_thresholds" else None
        if bad:
            warnings.append(f"run {run_id} recorded a non-finite {', '.join(bad)}: shown as none")
    return warnings


def mark_threshold_changes(per_night: list[dict[str, Any]], records: dict[str, dict],
                           run_night: dict[str, int]) -> None:
    """Give each night the image thresholds its runs used and, where they differ from the
    previous night's, a ``threshold_change`` note: a jump in the flagged rate there is the
    threshold's, not the lake's."""
    used: dict[int, set[float]] = {}
    for run_id, record in records.items():
        if record.get("image_threshold") is not None and run_id in run_night:
            used.setdefault(run_night[run_id], set()).add(round(float(record["image_threshold"]), 4))
    before: set[float] | None = None
    for j, night in enumerate(per_night):
        now = used.get(j)
        night["thresholds"] = sorted(now or ())
        if now and before and now != before:
            night["threshold_change"] = (f"threshold {', '.join(f'{v:g}' for v in sorted(before))}"
                                         f" \u2192 {', '.join(f'{v:g}' for v in sorted(now))}")
        before = now or before


def gather(outputs: "Outputs") -> LakeState:
    """Read the lake's current state and its history into the explorer's JSON shapes."""
    from vip2scan.pipeline.output.calibration import relative_key

    records = {r["run_id"]: r for r in outputs.run_records()}
    warnings = drop_non_finite_thresholds(records)
    roots = sorted({str(r.get("source")) for r in records.values() if r.get("source")}, key=len)
    con = outputs.connect()
    try:
        rows = con.sql(LATEST_SQL).to_arrow_table()
        hist_rows = con.sql(HISTORY_SQL).to_arrow_table()
        per_run = con.sql(PER_RUN_SQL).to_arrow_table().to_pylist()
        n_score_rows = con.execute("SELECT count(*) FROM scores").fetchone()[0]
        n_vanished = con.execute("SELECT count(DISTINCT image_uri) FROM vanished v WHERE NOT EXISTS "
                             "(SELECT 1 FROM latest l WHERE l.image_uri = v.image_uri)").fetchone()[0]
    finally:
        con.close()

    run_ids = list(records)
    run_index = {r: i for i, r in enumerate(run_ids)}
    nights = sorted({night_of(r) for r in records.values()})
    night_index = {n: i for i, n in enumerate(nights)}
    run_night = {r: night_index[night_of(rec)] for r, rec in records.items()}

    uris = rows.column("image_uri").to_pylist()
    keyed = [relative_key(u, roots) for u in uris]
    root_names = sorted({root for root, _ in keyed})
    root_index = {r: i for i, r in enumerate(root_names)}
    prefixes = sorted({prefix_of(key) for _, key in keyed})
    prefix_index = {p: i for i, p in enumerate(prefixes)}
    models = sorted(set(rows.column("model_id").to_pylist()))
    model_index = {m: i for i, m in enumerate(models)}

    status = rows.column("status").to_pylist()
    is_error = np.asarray([s != "ok" for s in status], dtype=bool)
    anomalous = np.asarray(rows.column("is_anomalous").fill_null(False).to_pylist(), dtype=bool) & ~is_error
    scores = float_column(rows, "image_score")
    scores[is_error] = np.nan
    row_runs = rows.column("run_id").to_pylist()
    pre = [prefix_index[prefix_of(key)] for _, key in keyed]
    index = {
        "k": [key for _, key in keyed], "root": [root_index[root] for root, _ in keyed],
        "pre": pre, "night": [run_night.get(r, 0) for r in row_runs],
        "model": [model_index[m] for m in rows.column("model_id").to_pylist()],
        "f": (is_error * STATUS_ERROR + anomalous * FLAG_ANOMALOUS).astype(int).tolist(),
        "sc": scaled(scores, 1e6), "mp": scaled(float_column(rows, "max_pixel_score"), 1e4),
        "ar": scaled(float_column(rows, "anomalous_area_fraction"), 1e5),
    }
    history = group_history(uris, hist_rows, run_index, run_night)
    # The night filter matches an object scanned that night even when a later night (a
    # --full rescan) wrote its current row: [row, [its other nights]], only for such rows.
    index["hn"] = [[j, others] for j, entries in enumerate(history)
                   if (others := sorted({e[0] for e in entries} - {index["night"][j]}))]

    pre_arr = np.asarray(pre, dtype=np.int64)
    per_prefix = [{"prefix": p, "n": int((pre_arr == i).sum()),
                   "ok": int(((pre_arr == i) & ~is_error).sum()),
                   "anomalous": int(((pre_arr == i) & anomalous).sum()),
                   "errors": int(((pre_arr == i) & is_error).sum())} for i, p in enumerate(prefixes)]
    per_night = {n: {"night": n, "n": 0, "ok": 0, "anomalous": 0, "errors": 0, "runs": 0} for n in nights}
    for item in per_run:
        night = per_night[nights[run_night[item["run_id"]]]] if item["run_id"] in run_night else None
        if night is not None:
            for name in ("n", "ok", "anomalous", "errors"):
                night[name] += int(item[name])
            night["runs"] += 1
    alerts = run_alerts(records)
    for item in alerts:
        per_night[item["night"]]["alerts"] = per_night[item["night"]].get("alerts", 0) + item["alert"]
    mark_threshold_changes(list(per_night.values()), records, run_night)
    errors = [(i, str(rows.column("error")[i].as_py() or "")) for i in np.flatnonzero(is_error)]
    index["er"] = [[int(i), reason] for i, reason in errors]  # for the table's reason column
    meta = {
        "out": outputs.location.display(),
        "roots": root_names, "prefixes": prefixes, "nights": nights, "models": models,
        "runs": [{"id": r, "night": run_night[r], "model": rec.get("model_id"),
                  "threshold": rec.get("image_threshold"), "pixel_threshold": rec.get("pixel_threshold"),
                  "source": rec.get("source"), "started_at": rec.get("started_at")}
                 for r, rec in records.items()],
        "counts": {"current objects": rows.num_rows, "ok": int((~is_error).sum()),
                   "anomalous": int(anomalous.sum()), "error rows": int(is_error.sum()),
                   "vanished (not shown)": int(n_vanished), "score rows (all nights)": int(n_score_rows),
                   "runs": len(records), "nights": len(nights), "models": len(models)},
        "per_prefix": per_prefix, "per_night": list(per_night.values()),
        "histogram": histogram(scores[~is_error]),
        "thresholds": thresholds_in_force(records, set(row_runs)),
        "error_reasons": [{"reason": r, "n": n} for r, n in
                          Counter(reason for _, reason in errors).most_common(MAX_REASONS)],
        "errors": [[int(i), reason, keyed[i][1]] for i, reason in errors[:MAX_ERRORS_LISTED]],
        "n_rows": rows.num_rows, "chunk_rows": CHUNK_ROWS, "alerts": alerts,
    }
    return LakeState(meta=meta, index=index, rows=rows, history=history, run_ids=run_ids,
                     warnings=warnings)


def run_alerts(records: dict[str, dict]) -> list[dict[str, Any]]:
    """The anomaly-rate alerts (``alert``: 1) and model or threshold changes (0) the runs
    recorded at their commits (pipeline/output/alerts.py), oldest first, by night."""
    return [{"night": night_of(record), "run": run_id, "group": item.get("group"),
             "kind": item.get("kind"), "alert": int(key == "alerts"), "line": item.get("line")}
            for run_id, record in records.items() for key in ("alerts", "alert_changes")
            for item in record.get(key) or [] if isinstance(item, dict)]


def group_history(uris: list[str], hist_rows: "pa.Table", run_index: dict[str, int],
                  run_night: dict[str, int]) -> list[list[list]]:
    """Per current object (same order as ``uris``): its rows oldest first, as
    [night, run, 0 ok / 1 error, score (6 decimals) or null, 0/1 anomalous]."""
    by_uri: dict[str, list[list]] = {}
    columns = {name: hist_rows.column(name).to_pylist()
               for name in ("image_uri", "run_id", "status", "image_score", "is_anomalous")}
    for uri, run, state, score, flag in zip(*columns.values()):
        ok = state == "ok"
        value = round(float(score), 6) if ok and score is not None and np.isfinite(score) else None
        by_uri.setdefault(uri, []).append(
            [run_night.get(run, 0), run_index.get(run, -1), 0 if ok else 1, value, int(bool(flag) and ok)])
    return [by_uri.get(u, []) for u in uris]
