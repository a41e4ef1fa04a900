"""Storage faults against the real s3fs on moto: transient read errors (every 7th read fails
once), an object that vanishes between listing and reading, a forbidden object, and one failed
write of every kind (lease, plan, staging part, Zarr chunk, committed scores file, run record).
The scan must finish complete, with each object exactly once, and verify clean."""

from __future__ import annotations

import errno
import random

import pytest

from tests.helpers.hostile_files import small_png
from tests.helpers.faulty_storage import FaultPlan, s3_error
from vip2scan.pipeline import ScanOptions, read_scores, scan
from vip2scan.pipeline.storage.retries import is_transient, with_retries
from vip2scan.pipeline.output.verify import verify

N_GOOD = 24
VANISHING = "vanish/gone.png"
FORBIDDEN = "deny/forbidden.png"
# Keys an S3 lake can hold that a filesystem cannot: literal '..' and '.' segments, empty
# segments, spaces, unicode, characters that mean something in URLs.
ODD_KEYS = ("a/../escape.png", "../up.png", "./dot.png", "b//double.png", "with space/x y.png",
            "unicodé/日本 ü.png", "q?x=1#frag.png", "%2e%2e/pct.png")
WRITE_FAULTS = ("_lock", "plan.json", "/parts/part-", "maps/c/", "/scores/scan_date=", "/runs/")


@pytest.mark.parametrize("code,status,transient", [
    ("SlowDown", 503, True), ("ServiceUnavailable", 503, True), ("InternalError", 500, True),
    ("RequestTimeout", 400, True), ("connection-reset", 0, True),
    ("AccessDenied", 403, False), ("NoSuchKey", 404, False), ("ExpiredToken", 400, False),
])
def test_s3fs_errors_are_classified(code, status, transient):
    assert is_transient(s3_error(code, status)) is transient


def test_backoff_is_exponential_bounded_and_jittered(monkeypatch):
    delays: list[float] = []
    monkeypatch.setattr("vip2scan.pipeline.storage.retries.time.sleep", delays.append)
    random.seed(3)
    calls = []

    def always_throttled():
        calls.append(1)
        raise s3_error("SlowDown", 503)

    with pytest.raises(OSError) as raised:
        with_retries(always_throttled, attempts=6, base_delay_s=0.1, max_delay_s=0.5)
    assert raised.value.errno == errno.EBUSY and len(calls) == 6 and len(delays) == 5
    caps = [min(0.5, 0.1 * 2 ** k) for k in range(5)]
    assert all(0 <= d <= cap for d, cap in zip(delays, caps))
    assert len(set(delays)) == len(delays)  # jittered, not a fixed schedule

    denied = []
    with pytest.raises(PermissionError):
        with_retries(lambda: denied.append(1) or (_ for _ in ()).throw(s3_error("AccessDenied", 403)))
    assert len(denied) == 1  # permanent: never retried


@pytest.fixture(scope="module")
def faulty_scan(s3_server, ray_for_faults, tiny_checkpoint, tmp_path_factory) -> dict:
    import time

    bucket = s3_server.make_bucket(f"faults-{int(time.time() * 1000) % 10**8}")
    fs = s3_server.filesystem()
    keys = [f"good/g{i:02d}.png" for i in range(N_GOOD)] + list(ODD_KEYS) + [VANISHING, FORBIDDEN]
    for i, key in enumerate(keys):
        fs.pipe_file(f"{bucket}/lake/{key}", small_png(100 + i))
    plan = FaultPlan(state_dir=str(tmp_path_factory.mktemp("fault-state")), read_every=7,
                     vanish=(f"lake/{VANISHING}",), deny=(f"lake/{FORBIDDEN}",),
                     fail_write_once=WRITE_FAULTS)
    lake, out = f"s3://{bucket}/lake", f"s3://{bucket}/out"
    summary = scan(lake, out, tiny_checkpoint,
                   ScanOptions(engine="ray", batch_size=8, map_size=16, stage_rows=16,
                               storage_options=s3_server.storage_options, fs_wrapper=plan))
    rows = read_scores(out, s3_server.storage_options).to_pylist()
    return {"bucket": bucket, "lake": lake, "out": out, "summary": summary, "rows": rows,
            "keys": keys, "plan": plan, "fs": fs}


@pytest.mark.slow  # the module's Ray scan (about 15 s idle, over 30 s on a busy machine)
def test_every_object_exactly_once_despite_transient_faults(faulty_scan):
    summary, rows, plan = faulty_scan["summary"], faulty_scan["rows"], faulty_scan["plan"]
    events = plan.events()
    read_faults = [e for e in events if e.startswith("read-fault")]
    # Enough transient faults that every stage met some (lease, plan, listing-diff, decode).
    assert len(read_faults) >= 4, events
    assert {e.split()[1] for e in read_faults} >= {"SlowDown", "InternalError"}
    assert summary.status == "complete" and summary.counts["listed"] == len(faulty_scan["keys"])
    uris = sorted(r["image_uri"] for r in rows)
    expected = sorted(f"{faulty_scan['lake']}/{k}" for k in faulty_scan["keys"])
    assert uris == expected  # each object exactly once, odd keys verbatim


@pytest.mark.slow  # the module's Ray scan (faulty_scan)
def test_permanent_errors_become_error_rows_and_are_not_retried(faulty_scan):
    by_key = {r["image_uri"].split("/lake/", 1)[1]: r for r in faulty_scan["rows"]}
    assert by_key[VANISHING]["status"] == "error"
    assert by_key[VANISHING]["error"].startswith("object not found")
    assert by_key[FORBIDDEN]["status"] == "error"
    assert by_key[FORBIDDEN]["error"].startswith("access denied")
    others = [r for k, r in by_key.items() if k not in (VANISHING, FORBIDDEN)]
    assert all(r["status"] == "ok" for r in others), [r for r in others if r["status"] != "ok"]
    denied_reads = [e for e in faulty_scan["plan"].events() if e.startswith("deny")]
    assert 1 <= len(denied_reads) <= 2  # the batch read, then one single read: no retry loop


@pytest.mark.slow  # the module's Ray scan (faulty_scan)
def test_each_failed_write_was_retried_and_the_output_verifies(faulty_scan, s3_server):
    events = faulty_scan["plan"].events()
    fired = {e.split()[1] for e in events if e.startswith("write-fault")}
    assert fired == set(WRITE_FAULTS), events
    report = verify(faulty_scan["out"], s3_server.storage_options)
    assert report.ok, [p.line() for p in report.problems]
    assert report.maps_checked == len(faulty_scan["keys"]) - 2


@pytest.mark.slow  # the module's Ray scan (faulty_scan)
def test_nothing_is_written_outside_out(faulty_scan):
    fs, bucket = faulty_scan["fs"], faulty_scan["bucket"]
    fs.invalidate_cache()
    written = [k[len(bucket) + 1:] for k in fs.find(bucket)]
    outside = [k for k in written if not k.startswith(("lake/", "out/"))]
    assert outside == []
    lake_now = sorted(k[len("lake/"):] for k in written if k.startswith("lake/"))
    assert lake_now == sorted(k for k in faulty_scan["keys"] if k != VANISHING)  # lake untouched


class _AnswerLostOnce:
    """fs wrapper: the first write of a matching path succeeds on the server, then the client
    sees a timeout (the answer was lost), so the retry finds the object already there."""

    def __init__(self, pattern: str):
        self.pattern = pattern
        self.lost: list[str] = []

    def __call__(self, fs):
        wrapper = self

        class Proxy:
            def __getattr__(self, name):
                return getattr(fs, name)

            def pipe_file(self, path, *args, **kwargs):
                result = fs.pipe_file(path, *args, **kwargs)
                if wrapper.pattern in path and not wrapper.lost:
                    wrapper.lost.append(path)
                    raise TimeoutError("injected: read timeout after the upload completed")
                return result

        return Proxy()


def test_a_lease_whose_create_answer_was_lost_is_still_ours(s3_server, s3_bucket):
    from vip2scan.pipeline.run.lock import Lease, OutputLocked, read_lease
    from vip2scan.pipeline.storage.location import Location

    lost = _AnswerLostOnce("_lock")
    out = Location.of(f"s3://{s3_bucket}/out", s3_server.storage_options, lost)
    lease = Lease(out, ttl_s=30).acquire()
    try:
        assert lost.lost and read_lease(out)["token"] == lease.token
        with pytest.raises(OutputLocked):
            Lease(Location.of(f"s3://{s3_bucket}/out", s3_server.storage_options)).acquire()
    finally:
        lease.release()
    assert read_lease(out) is None


@pytest.mark.slow  # two scans and a rerun per engine, one on Ray
@pytest.mark.parametrize("engine", ["ray", "local"])
def test_credentials_expiring_mid_run_stop_it_and_a_rerun_resumes(engine, s3_server, ray_for_faults,
                                                                  tiny_checkpoint, tmp_path):
    """ExpiredToken is about the run, not the object: the scan stops in one line instead of
    writing an error row for every remaining object, records none of the refused reads, and
    a rerun with working credentials resumes the same run and scores everything once."""
    import time

    from vip2scan.pipeline import ScanError

    n = 40
    bucket = s3_server.make_bucket(f"expire-{int(time.time() * 1000) % 10**8}")
    fs = s3_server.filesystem()
    for i in range(n):
        fs.pipe_file(f"{bucket}/lake/x{i:02d}.png", small_png(300 + i))
    lake, out = f"s3://{bucket}/lake", f"s3://{bucket}/out"
    options = dict(batch_size=8, map_size=16, stage_rows=8, storage_options=s3_server.storage_options,
                   engine=engine)
    plan = FaultPlan(state_dir=str(tmp_path / "state"), expire=(f"{bucket}/lake/",), expire_after=12)

    with pytest.raises(ScanError) as raised:
        scan(lake, out, tiny_checkpoint, ScanOptions(**options, fs_wrapper=plan))
    message = str(raised.value)
    assert "\n" not in message and "rejected the credentials" in message and "ExpiredToken" in message
    assert s3_server.key not in message and s3_server.secret not in message
    assert any(e.startswith("expired") for e in plan.events())

    summary = scan(lake, out, tiny_checkpoint, ScanOptions(**options))
    assert summary.status == "complete" and summary.resumed
    rows = read_scores(out, s3_server.storage_options).to_pylist()
    assert sorted(r["image_uri"] for r in rows) == sorted(f"{lake}/x{i:02d}.png" for i in range(n))
    assert all(r["status"] == "ok" for r in rows), [r["error"] for r in rows if r["status"] != "ok"]
    assert verify(out, s3_server.storage_options).ok
