"""Storage, listing and the OUT lease, against local disk and moto S3 (no Ray)."""

from __future__ import annotations

import datetime as dt
import errno
import json
import os
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.helpers.lake_files import put_files, small_png
from vip2scan.pipeline.selection.listing import ObjectFilter, list_prefix
from vip2scan.pipeline.selection.manifest import read_manifest
from vip2scan.pipeline.run.lock import Lease, LeaseLost, OutputLocked, read_lease
from vip2scan.pipeline.storage.redaction import public_options, redact
from vip2scan.pipeline.storage.retries import is_transient, with_retries
from vip2scan.pipeline.storage.location import Location, staged_local_file, write_local_atomic

FILES = {
    "a/one.png": small_png(1), "a/b/two.JPG": small_png(2), "a/b/c/three.jpeg": small_png(3),
    "skip/four.png": small_png(4), "notes.txt": b"text", "a/five.tif": small_png(5),
}


def _uris(manifest_path: str) -> list[str]:
    return sorted(pq.read_table(manifest_path)["image_uri"].to_pylist())


def test_local_listing_filters_by_suffix_and_globs(tmp_path):
    root = tmp_path / "lake"
    put_files(None, str(root), FILES)
    src = Location.of(str(root))
    manifest = str(tmp_path / "m.parquet")
    n = list_prefix(src, manifest, ObjectFilter(include=("a/*",), exclude=("*three*",))).kept
    expected = [f"file://{root}/a/b/two.JPG", f"file://{root}/a/five.tif",
                f"file://{root}/a/one.png"]
    assert n == 3 and _uris(manifest) == sorted(expected)
    table = pq.read_table(manifest)
    assert table.schema.field("mtime").type == pa.timestamp("us", tz="UTC")
    assert all(s > 0 for s in table["size_bytes"].to_pylist())


def test_local_listing_survives_a_symlink_loop(tmp_path):
    root = tmp_path / "lake"
    put_files(None, str(root), {"x/img.png": small_png(1)})
    os.symlink(root, root / "x" / "loop")
    manifest = str(tmp_path / "m.parquet")
    assert list_prefix(Location.of(str(root)), manifest, ObjectFilter()).kept == 1


def test_s3_listing_streams_pages_with_etags(s3_server, s3_bucket, tmp_path):
    fs = s3_server.filesystem()
    put_files(fs, f"{s3_bucket}/lake", FILES)
    src = Location.of(f"s3://{s3_bucket}/lake", s3_server.storage_options)
    manifest = str(tmp_path / "m.parquet")
    n = list_prefix(src, manifest, ObjectFilter(), page_rows=2).kept  # several pages
    assert n == 5
    table = pq.read_table(manifest)
    assert all(e and '"' not in e for e in table["etag"].to_pylist())
    assert f"s3://{s3_bucket}/lake/a/b/c/three.jpeg" in table["image_uri"].to_pylist()


def test_manifest_csv_and_parquet(tmp_path):
    root = tmp_path / "lake"
    put_files(None, str(root), FILES)
    csv = tmp_path / "list.csv"
    csv.write_text("image_uri,size_bytes\na/one.png,10\n"
                   f"{root}/skip/four.png,11\nnotes.txt,3\n")
    manifest = str(tmp_path / "m.parquet")
    src = Location.of(str(root))
    assert read_manifest(Location.of(str(csv)), src, manifest, ObjectFilter()).kept == 2
    assert _uris(manifest) == [f"file://{root}/a/one.png", f"file://{root}/skip/four.png"]
    pq.write_table(pa.table({"image_uri": [f"file://{root}/a/one.png"], "etag": ["e1"]}),
                   tmp_path / "list.parquet")
    assert read_manifest(Location.of(str(tmp_path / "list.parquet")), src, manifest,
                         ObjectFilter()).kept == 1
    assert pq.read_table(manifest)["etag"].to_pylist() == ["e1"]


def test_redaction_and_public_options():
    options = {"key": "AKIASENTINEL1234", "secret": "s3cr3t-sentinel", "endpoint_url": "http://x"}
    Location.of("s3://bucket/x", options).fs  # registers the secrets
    text = "failed for AKIASENTINEL1234 with s3cr3t-sentinel at https://user:pw@host/p?X-Amz-Signature=abc"
    clean = redact(text)
    assert "SENTINEL" not in clean and "s3cr3t" not in clean and "pw@" not in clean
    assert "abc" not in clean
    assert public_options(options) == {"key": "***", "secret": "***", "endpoint_url": "http://x"}


def test_redaction_of_credentials_never_registered_by_value():
    """What botocore's DEBUG log prints for an instance-role request, and bare key ids."""
    logged = ("headers={'X-Amz-Security-Token': b'IQoJb3JpZ2luX2VjEJr//////wEaCXVz', "
              "'Authorization': b'AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20261129/"
              "us-east-1/s3/aws4_request, SignedHeaders=host', 'User-Agent': b'Boto3'}")
    clean = redact(logged)
    assert "IQoJ" not in clean and "AKIAIOSFODNN7EXAMPLE" not in clean
    assert "'User-Agent': b'Boto3'" in clean  # the rest of the line stays readable
    assert redact("key ASIAABCDEFGHIJKLMNOP used") == "key *** used"
    assert redact("authorization: Bearer abc.def") == "authorization: ***"
    # Keys that merely contain the words are left alone.
    assert redact("s3://lake/authorization/x.png") == "s3://lake/authorization/x.png"


def test_retries_transient_errors_only():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise OSError(errno.EBUSY, "Please reduce your request rate.")  # s3fs's SlowDown
        return "ok"

    assert with_retries(flaky, base_delay_s=0.001) == "ok" and len(calls) == 3
    assert not is_transient(FileNotFoundError("gone")) and not is_transient(PermissionError("403"))
    # Classified by type and code, never by text: a key can contain " 500" or "timeout".
    assert not is_transient(OSError("cannot decode s3://lake/status 500/timeout.png"))
    with pytest.raises(FileNotFoundError):
        with_retries(lambda: (_ for _ in ()).throw(FileNotFoundError("x")), base_delay_s=0.001)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_lease_is_exclusive_expires_and_releases(where, tmp_path, request):
    if where == "s3":
        s3 = request.getfixturevalue("s3_server")
        bucket = s3.make_bucket(f"lease-{int(time.time() * 1000) % 10**8}")
        out = Location.of(f"s3://{bucket}/out", s3.storage_options)
    else:
        out = Location.of(str(tmp_path / "out"))
    first = Lease(out, ttl_s=30).acquire()
    first.set_run_id("run-1")
    with pytest.raises(OutputLocked, match="locked by run run-1"):
        Lease(out, ttl_s=30).acquire(wait=False)
    with pytest.raises(OutputLocked):
        Lease(out, ttl_s=30).acquire(wait=0.3, poll_s=0.1)
    first.release()
    assert read_lease(out) is None
    second = Lease(out, ttl_s=30).acquire()
    second.release()

    # A dead holder's lease (expiry in the past) is taken over.
    stale = {"token": "dead", "run_id": "crashed", "host": "h", "pid": 1,
             "expires_at": (dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)).isoformat()}
    out.write_bytes(json.dumps(stale).encode(), "_lock")
    third = Lease(out, ttl_s=30).acquire()
    assert read_lease(out)["token"] == third.token
    third.release()


def test_local_whole_file_writes_and_the_local_lease_leave_no_temp_file(tmp_path):
    """One helper stages every local whole-file write (a run's files and the lease alike)."""
    path = str(tmp_path / "out" / "runs" / "r.json")
    write_local_atomic(path, b"first")
    with pytest.raises(RuntimeError):
        with staged_local_file(path, b"second") as tmp:
            assert open(tmp, "rb").read() == b"second"
            raise RuntimeError("not published")
    assert open(path, "rb").read() == b"first"

    out = Location.of(str(tmp_path / "out"))
    lease = Lease(out, ttl_s=30).acquire()
    assert not lease._file.swap("a version that is not there", b"{}")  # refused: nothing kept
    lease.release()
    assert sorted(os.listdir(tmp_path / "out" / "runs")) == ["r.json"]
    assert not [n for n in os.listdir(tmp_path / "out") if n.endswith(".tmp")]


def test_heartbeat_extends_and_detects_takeover(tmp_path):
    out = Location.of(str(tmp_path / "out"))
    lease = Lease(out, ttl_s=2, heartbeat_s=0.2).acquire()
    first_expiry = read_lease(out)["expires_at"]
    time.sleep(0.6)
    assert read_lease(out)["expires_at"] > first_expiry
    lease.check()
    out.write_bytes(json.dumps({"token": "intruder", "expires_at": "2999-01-01T00:00:00+00:00"}
                               ).encode(), "_lock")
    time.sleep(0.6)
    with pytest.raises(LeaseLost):
        lease.check()
    lease.release()
    assert read_lease(out)["token"] == "intruder"  # never deletes someone else's lease


def test_a_takeover_between_heartbeat_read_and_write_is_not_overwritten_on_s3(s3_server, monkeypatch):
    """The heartbeat reads the lease, a second scan takes it over (the first looked dead),
    then the heartbeat writes: with If-Match on S3 the write fails and the first scan
    learns it lost the lease, instead of silently taking it back from the second."""
    from vip2scan.pipeline.run import lock

    bucket = s3_server.make_bucket(f"lease-race-{int(time.time() * 1000) % 10**8}")
    out = Location.of(f"s3://{bucket}/out", s3_server.storage_options)
    first = Lease(out, ttl_s=60, heartbeat_s=3600).acquire()  # beats only when told to
    intruder = {"token": "second-scan", "host": "other-host",
                "expires_at": "2999-01-01T00:00:00+00:00"}
    real_read = lock.read_lease_versioned

    def read_then_takeover(location):
        seen = real_read(location)
        location.write_bytes(json.dumps(intruder).encode(), "_lock")  # lands in between
        return seen

    monkeypatch.setattr(lock, "read_lease_versioned", read_then_takeover)
    first._beat()
    monkeypatch.setattr(lock, "read_lease_versioned", real_read)
    assert read_lease(out)["token"] == "second-scan"
    with pytest.raises(LeaseLost, match="other-host"):
        first.check()
    first.release()
    assert read_lease(out)["token"] == "second-scan"


def test_heartbeat_on_s3_extends_the_lease(s3_server):
    bucket = s3_server.make_bucket(f"lease-beat-{int(time.time() * 1000) % 10**8}")
    out = Location.of(f"s3://{bucket}/out", s3_server.storage_options)
    lease = Lease(out, ttl_s=60, heartbeat_s=3600).acquire()
    before = read_lease(out)["expires_at"]
    time.sleep(0.01)
    lease._beat()
    lease._beat()
    assert read_lease(out)["expires_at"] > before and read_lease(out)["token"] == lease.token
    lease.check()
    lease.release()
    assert read_lease(out) is None
