"""100 runs of `verify` and of a `latest` query on an S3 OUT of ten runs, none hangs (issue 27:
over Arrow datasets on a Python filesystem about one `verify` in thirty deadlocked)."""

from __future__ import annotations

import os

import pytest

from tests.helpers.reader_stress import build_out, latest_once, stress, verify_once
from vip2scan.pipeline.storage.location import Location

RUNS = int(os.environ.get("VIP2SCAN_STRESS_RUNS", "100"))
PER_RUN_TIMEOUT_S = 30.0  # a run takes about 2 s on moto and 2 busy cores; a hang, forever


@pytest.mark.slow  # 200 reads of a ten-run OUT on moto: about 3 minutes on 2 cores
@pytest.mark.timeout(1200)
def test_verify_and_latest_never_hang_on_s3(s3_server, s3_bucket) -> None:
    out = Location.of(f"s3://{s3_bucket}/out", s3_server.storage_options)
    build_out(out)
    assert verify_once(out) > 170 and latest_once(out)[0] > 100
    tally = stress(out, RUNS, PER_RUN_TIMEOUT_S)  # each run in a watched child process
    assert tally.hangs == {"verify": 0, "latest": 0} and tally.errors == []
    assert tally.runs == RUNS and tally.children == 1
