"""A synthetic OUT with many rows (no images, no maps) for measuring the explorer at scale.

    .venv/bin/python tests/helpers/big_out.py /tmp/big-out 100000

Writes three complete runs on three nights the way a scan commits them (score files under
scores/scan_date=..., a record per run): night 1 scores every object, nights 2 and 3 rescore
5 % each; 1 % of rows are errors. Then `vip2scan explore /tmp/big-out --max-images 0`.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vip2scan.pipeline.output.schema import SCORES_SCHEMA

SOURCE = "s3://lake/images"
MODEL = "synthetic0000000"


def rows_for(uris: list[str], run_id: str, when: dt.datetime, rng: np.random.Generator,
             threshold: float = 0.52, shift: float = 0.0) -> pa.Table:
    n = len(uris)
    error = rng.random(n) < 0.01
    score = rng.normal(0.5 + shift, 0.01, n).astype(np.float32)
    ok = ~error
    return pa.table({
        "image_uri": uris, "etag": [f"e{i}" for i in range(n)], "mtime": [when] * n,
        "size_bytes": rng.integers(10_000, 900_000, n), "width": np.full(n, 640, np.int32),
        "height": np.full(n, 480, np.int32),
        "image_score": pa.array(score, mask=error), "is_anomalous": pa.array(score > threshold, mask=error),
        "max_pixel_score": pa.array(score + 0.01, mask=error),
        "anomalous_area_fraction": pa.array(rng.random(n).astype(np.float32) * 0.1, mask=error),
        "map_store": pa.nulls(n, pa.string()), "map_index": pa.nulls(n, pa.int64()),
        "model_id": [MODEL] * n, "run_id": [run_id] * n, "scanned_at": [when] * n,
        "status": np.where(ok, "ok", "error").tolist(),
        "error": pa.array(np.where(ok, None, "cannot decode: synthetic").tolist(), pa.string()),
    }, schema=SCORES_SCHEMA)


def write_big_out(out: Path, n: int, thresholds: tuple[float, float, float] = (0.52, 0.52, 0.52),
                  shares: tuple[float, float, float] = (1.0, 0.05, 0.05)) -> None:
    """Three nights; ``shares``: the part of the objects each night scores (1.0: all, as a
    --full rescan), ``thresholds``: each night's image threshold."""
    rng = np.random.default_rng(0)
    uris = [f"{SOURCE}/line{i % 12}/day{(i // 12) % 30:02d}/img_{i:07d}.jpg" for i in range(n)]
    today = dt.datetime.now(dt.timezone.utc).replace(hour=1, minute=0, second=0, microsecond=0)
    for night, (share, threshold) in enumerate(zip(shares, thresholds)):
        when = today - dt.timedelta(days=2 - night)
        picked = uris if share == 1.0 else sorted(rng.choice(uris, int(n * share), replace=False).tolist())
        add_night(out, picked, when, night, n, rng, threshold)


def add_night(out: Path, picked: list[str], when: dt.datetime, night: int, n: int,
              rng: np.random.Generator, threshold: float = 0.52, shift: float = 0.0) -> str:
    """One committed run on ``when``'s night rescoring ``picked`` of the ``n`` objects (scores
    around 0.5 + ``shift``); its run id."""
    run_id = when.strftime("%Y%m%dT%H%M%S000Z") + f"-big{night:03d}"
    table = rows_for(picked, run_id, when, rng, threshold, shift)
    rel = f"scores/scan_date={when:%Y-%m-%d}/{run_id}-00000.parquet"
    (out / rel).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out / rel)
    counts = {"listed": n, "new": len(picked) if night == 0 else 0, "changed": 0 if night == 0 else len(picked),
              "unchanged": n - len(picked), "vanished": 0, "scored": table.num_rows, "failed": 0}
    record = {"run_id": run_id, "status": "complete", "source": SOURCE, "model_id": MODEL,
              "started_at": when.isoformat(), "finished_at": when.isoformat(), "scan_date": f"{when:%Y-%m-%d}",
              "files": [rel], "counts": counts, "image_threshold": threshold, "pixel_threshold": 0.5,
              "map_store": None, "vanished_file": None, "record_version": 1}
    (out / "runs").mkdir(parents=True, exist_ok=True)
    (out / "runs" / f"{run_id}.json").write_text(json.dumps(record, indent=2))
    return run_id

if __name__ == "__main__":
    write_big_out(Path(sys.argv[1]), int(sys.argv[2]))
