"""The report's aggregates (counts, histogram, what a per-prefix calibration would flag) in
DuckDB against plain numpy and Python on a fabricated run's rows (no OUT, no model)."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa

RUN = "20250102T020000000Z-000001"


def fabricated_run_rows() -> pa.Table:
    """One run's rows (ok, error, a NULL is_anomalous) and another run's, which must not count."""
    rng = np.random.default_rng(5)
    rows = []
    for i in range(300):
        line = ["line0", "line1", "line1/d1", "ünïcødé", "misc"][i % 5]
        status = "error" if i % 37 == 0 else "ok"
        score = None if status == "error" else float(np.float32(rng.beta(3, 5)))
        rows.append({"image_uri": f"s3://lake/{line}/img_{i}.png", "run_id": RUN,
                     "status": status, "image_score": score,
                     "is_anomalous": None if i == 1 else (score is not None and score >= 0.5)})
    rows += [{"image_uri": f"s3://lake/line0/other_{i}.png", "run_id": "other-run",
              "status": "ok", "image_score": 0.99, "is_anomalous": True} for i in range(10)]
    return pa.Table.from_pylist(rows, schema=pa.schema([
        ("image_uri", pa.string()), ("run_id", pa.string()), ("status", pa.string()),
        ("image_score", pa.float32()), ("is_anomalous", pa.bool_())]))


def test_report_aggregates_equal_numpy_on_a_fabricated_run(monkeypatch):
    from vip2scan.jobs import report_page
    from vip2scan.pipeline.output.calibration import Calibration, GroupThreshold

    monkeypatch.setattr(report_page, "BATCH_ROWS", 16)  # several batches, as at lake scale
    table = fabricated_run_rows()
    con = duckdb.connect()
    con.register("run_rows", table)
    mine = [r for r in table.to_pylist() if r["run_id"] == RUN]
    ok = [r for r in mine if r["status"] == "ok"]
    scores = np.asarray([r["image_score"] for r in ok], dtype=np.float64)

    assert report_page.run_counts(con, RUN) == {
        "rows": len(mine), "ok rows": len(ok), "anomalous": sum(bool(r["is_anomalous"]) for r in ok),
        "error rows": len(mine) - len(ok)}

    counts, edges, n = report_page.score_histogram(con, RUN)
    pad = max(1e-3, 0.05 * (scores.max() - scores.min()))
    expected, expected_edges = np.histogram(scores, bins=40,
                                            range=(scores.min() - pad, scores.max() + pad))
    assert n == len(ok) and counts.sum() == len(ok)
    assert counts.tolist() == expected.tolist() and edges.tolist() == expected_edges.tolist()

    by_prefix = {"s3://lake/line1/": 0.45, "s3://lake/line1/d1/": 0.3, "s3://lake/ünïcødé/": 0.6}
    calibration = Calibration(
        model_id="m", expected_rate=0.1, quantile=0.9, n_scores=len(ok), image_threshold=0.5,
        flagged_before=0, flagged_after=0, created_at="2025-01-01T00:00:00+00:00", by="line*/",
        groups=tuple(GroupThreshold(p.removeprefix("s3://lake/"), p, 1, t, 0, 0)
                     for p, t in by_prefix.items()))

    def limit(uri: str) -> float:
        matching = [p for p in by_prefix if uri.startswith(p)]
        return by_prefix[max(matching, key=len)] if matching else 0.5
    flagged = sum(r["image_score"] >= limit(r["image_uri"]) for r in ok)
    assert report_page.flagged_under(con, RUN, calibration) == flagged
    assert flagged != sum(s >= 0.5 for s in scores)  # the per-prefix thresholds mattered


def test_a_run_without_rows_has_zero_counts_and_an_empty_histogram():
    from vip2scan.jobs import report_page

    con = duckdb.connect()
    con.register("run_rows", fabricated_run_rows())
    assert report_page.run_counts(con, "a-quiet-night") == {
        "rows": 0, "ok rows": 0, "anomalous": 0, "error rows": 0}
    counts, edges, n = report_page.score_histogram(con, "a-quiet-night")
    assert n == 0 and counts.sum() == 0 and len(edges) == 41


def test_a_top_image_that_cannot_be_read_now_is_a_note_not_an_aborted_report(tmp_path, monkeypatch):
    """Credentials, a network or a permission problem on one image must not cost the analyst the
    report: its scores are in OUT. Here the object is a folder (IsADirectoryError); another one
    is gone, as before."""
    from tests.helpers import hand_made_runs
    from tests.helpers.cli_runner import invoke
    from vip2scan.pipeline.storage.location import Location

    lake = tmp_path / "lake"
    (lake / "unreadable.png").mkdir(parents=True)  # exists, but no bytes can be read from it
    monkeypatch.setattr(hand_made_runs, "LAKE", lake.as_uri())
    out = tmp_path / "out"
    hand_made_runs.Night(Location.of(str(out))).commit(1, "m", {"unreadable.png": 10, "gone.png": 10})

    ran = invoke("report", str(out), "--top", "2")

    assert ran.exit_code == 0, ran.stderr
    assert ("warning: 1 of the top image(s) could not be read now and are shown without a "
            "picture, e.g. " + (lake / "unreadable.png").as_uri() + ": IsADirectoryError") in ran.stderr
    page = next(out.glob("reports/*/report.html")).read_text()
    assert "not readable now: IsADirectoryError" in page
    assert "gone from the lake since this run" in page
