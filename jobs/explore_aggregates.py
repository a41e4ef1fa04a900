"""The explorer's overview (``meta``), every figure a DuckDB aggregate over the ``objects`` table
(jobs/explore_data.py): counts, rates per prefix and per night, the score histogram binned in
SQL, the top error reasons, the first errors, and the count cube (prefix x night x status) the
page uses to say how many objects of the whole lake match a filter."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vip2scan.jobs.explore_data import (ERROR, HIST_BINS, MAX_ERRORS_LISTED, MAX_REASONS, OWN_ROOT_SQL, PER_RUN_SQL,
                                        Lake, mark_threshold_changes, run_alerts, split_root, thresholds_in_force)

if TYPE_CHECKING:
    from vip2scan.pipeline.output.views import Outputs


def histogram(con: Any) -> dict[str, Any]:
    """HIST_BINS bins over the observed range (scores of a weak head crowd near one value)."""
    low, high = con.execute("SELECT min(score), max(score) FROM objects WHERE cls < 2 AND isfinite(score)").fetchall()[0]
    low, high = (float(low), float(high)) if low is not None else (0.0, 1.0)
    pad = max(1e-3, 0.05 * (high - low))
    lo, hi = low - pad, high + pad
    width = (hi - lo) / HIST_BINS
    counts = [0] * HIST_BINS
    for b, n in con.execute(f"SELECT least(CAST(floor((score - {lo!r}) / {width!r}) AS INTEGER), {HIST_BINS - 1}), "
                            "count(*) FROM objects WHERE cls < 2 AND isfinite(score) GROUP BY 1").fetchall():
        counts[int(b)] = int(n)
    return {"lo": lo, "hi": hi, "counts": counts}


def count_cube(con: Any, prefixes: list[str]) -> list[list[int]]:
    """[prefix, night, status class, objects]: night -1 counts each object once; a night
    counts the objects scanned that night (current row or an older one)."""
    code = {p: i for i, p in enumerate(prefixes)}
    rows = con.execute("""
        SELECT prefix, -1, cls, count(*) FROM objects GROUP BY ALL
        UNION ALL
        SELECT prefix, night, cls, count(*) FROM (
            SELECT image_uri, prefix, night, cls FROM objects
            UNION SELECT o.image_uri, c.prefix, o.night, c.cls FROM other_rows o JOIN objects c USING (image_uri))
        GROUP BY ALL""").fetchall()
    return sorted([code[p], int(night), int(cls), int(n)] for p, night, cls, n in rows)


def gather_meta(outputs: "Outputs", con: Any, lake: Lake) -> dict[str, Any]:
    """Everything the overview shows, small whatever the lake's size."""
    records, nights, run_night = lake.records, lake.nights, lake.run_night
    n, ok, anomalous, errors = con.execute(
        f"SELECT count(*), count(*) FILTER (cls < {ERROR}), count(*) FILTER (cls = 1), "
        f"count(*) FILTER (cls = {ERROR}) FROM objects").fetchall()[0]
    per_prefix = [{"prefix": p, "n": int(a), "ok": int(b), "anomalous": int(c), "errors": int(d)}
                  for p, a, b, c, d in con.execute(
                      f"SELECT prefix, count(*), count(*) FILTER (cls < {ERROR}), count(*) FILTER (cls = 1), "
                      f"count(*) FILTER (cls = {ERROR}) FROM objects GROUP BY prefix ORDER BY prefix").fetchall()]
    prefixes = [p["prefix"] for p in per_prefix]
    codes = [c for c, in con.execute("SELECT DISTINCT root_code FROM objects").fetchall()]
    roots = sorted({lake.roots[c] for c in codes if c >= 0} | ({r for r, in con.execute(
        f"SELECT DISTINCT {OWN_ROOT_SQL} FROM objects WHERE root_code < 0").fetchall()} if -1 in codes else set()))
    models = [m for m, in con.execute("SELECT DISTINCT model_id FROM objects ORDER BY model_id").fetchall()]
    current_runs = {lake.run_ids[r] for r, in con.execute("SELECT DISTINCT run FROM objects").fetchall() if r is not None}
    n_score_rows = con.execute("SELECT count(*) FROM scores").fetchall()[0][0]
    n_vanished = con.execute("SELECT count(DISTINCT image_uri) FROM vanished v WHERE NOT EXISTS "
                             "(SELECT 1 FROM latest l WHERE l.image_uri = v.image_uri)").fetchall()[0][0]
    per_night = {name: {"night": name, "n": 0, "ok": 0, "anomalous": 0, "errors": 0, "runs": 0} for name in nights}
    for item in con.sql(PER_RUN_SQL).to_arrow_table().to_pylist():
        if item["run_id"] in run_night:
            night = per_night[nights[run_night[item["run_id"]]]]
            for name in ("n", "ok", "anomalous", "errors"):
                night[name] += int(item[name])
            night["runs"] += 1
    alerts = run_alerts(records)
    for item in alerts:
        per_night[item["night"]]["alerts"] = per_night[item["night"]].get("alerts", 0) + item["alert"]
    mark_threshold_changes(list(per_night.values()), records, run_night)
    reasons = con.execute(f"SELECT coalesce(error, '') AS reason, count(*) AS n FROM objects WHERE cls = {ERROR} "
                          f"GROUP BY 1 ORDER BY n DESC, reason LIMIT {MAX_REASONS}").fetchall()
    first_errors = con.execute(f"SELECT image_uri, coalesce(error, '') FROM objects WHERE cls = {ERROR} "
                               f"ORDER BY image_uri LIMIT {MAX_ERRORS_LISTED}").fetchall()
    return {
        "out": outputs.location.display(),
        "roots": roots, "prefixes": prefixes, "nights": nights, "models": models,
        "runs": [{"id": r, "night": run_night[r], "model": rec.get("model_id"),
                  "threshold": rec.get("image_threshold"), "pixel_threshold": rec.get("pixel_threshold"),
                  "source": rec.get("source"), "started_at": rec.get("started_at")}
                 for r, rec in records.items()],
        "counts": {"current objects": int(n), "ok": int(ok), "anomalous": int(anomalous), "error rows": int(errors),
                   "vanished (not shown)": int(n_vanished), "score rows (all nights)": int(n_score_rows),
                   "runs": len(records), "nights": len(nights), "models": len(models)},
        "per_prefix": per_prefix, "per_night": list(per_night.values()),
        "histogram": histogram(con),
        "thresholds": thresholds_in_force(records, current_runs),
        "error_reasons": [{"reason": r, "n": int(c)} for r, c in reasons],
        "errors": [[uri, reason, split_root(uri, lake.roots)[1]] for uri, reason in first_errors],
        "cube": count_cube(con, prefixes),
        "n_rows": int(n), "alerts": alerts,
    }
