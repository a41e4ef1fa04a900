"""Request and byte accounting (pipeline/storage/accounting.py) against what the S3 server was sent.

The fault proxy (tests/helpers/fault_proxy.py) sits between the real s3fs/botocore client and moto and
lists every request it receives; the counts the pipeline kept must equal that list, class by
class, faults and resends included. Parquet reads through pyarrow's native S3 client
(storage/arrow_fs.py: the diff, the snapshot build) are not counted: they are told apart by
their User-Agent.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from urllib.parse import parse_qsl

import numpy as np
import pyarrow as pa
import pytest
from tests.helpers.fault_proxy import FaultProxy
from tests.helpers.lake_files import small_png

from vip2scan.jobs.formatting import format_summary
from vip2scan.pipeline import ScanOptions, scan
from vip2scan.pipeline.storage import accounting
from vip2scan.pipeline.storage.accounting import (REQUEST_CLASSES, IoCounts, cost_line, report_io,
                                          request_class, take_io)
from vip2scan.pipeline.run.attempt import RunStats
from vip2scan.pipeline.storage.location import Location

# Bucket- or object-level GET subresources that are neither a listing nor an object read.
OTHER_SUBRESOURCES = {"location", "versioning", "acl", "policy", "tagging", "cors", "lifecycle"}


def server_class(method: str, target: str) -> str:
    """The request class of an HTTP request as the server received it (independent of the
    operation names the client counts by)."""
    path, _, query = target.partition("?")
    params = dict(parse_qsl(query, keep_blank_values=True))
    key = path.lstrip("/").partition("/")[2]
    if method == "GET":
        if OTHER_SUBRESOURCES & set(params):
            return "OTHER"
        # ListObjects(V2), ListObjectVersions, ListMultipartUploads; ListParts on a key
        return "LIST" if not key or "uploadId" in params else "GET"
    if method == "POST":  # DeleteObjects; Create/CompleteMultipartUpload
        return "DELETE" if "delete" in params else "PUT"
    return method  # HEAD, PUT (PutObject, UploadPart, CopyObject, CreateBucket), DELETE


NATIVE_AGENT = "aws-sdk-cpp"  # pyarrow's S3FileSystem, the readers' native client


def server_counts(proxy: FaultProxy) -> dict[str, int]:
    """What the pipeline's s3fs clients sent, by class (the native reader's requests aside)."""
    seen = Counter(server_class(method, target)
                   for (method, target), agent in zip(proxy.sent, proxy.agents)
                   if not agent.startswith(NATIVE_AGENT))
    return {c: seen.get(c, 0) for c in REQUEST_CLASSES}


def test_operations_map_to_request_classes():
    expected = {
        "ListObjects": "LIST", "ListObjectsV2": "LIST", "ListMultipartUploads": "LIST",
        "HeadObject": "HEAD", "HeadBucket": "HEAD", "GetObject": "GET",
        "PutObject": "PUT", "UploadPart": "PUT", "CreateMultipartUpload": "PUT",
        "CompleteMultipartUpload": "PUT", "CopyObject": "PUT", "CreateBucket": "PUT",
        "DeleteObject": "DELETE", "DeleteObjects": "DELETE", "AbortMultipartUpload": "DELETE",
        "GetBucketLocation": "OTHER", "SomethingNew": "OTHER",
    }
    assert {op: request_class(op) for op in expected} == expected
    counts = IoCounts(list=2000, put=1000, get=10_000, head=5000, delete=7, other=0)
    # 3,000 LIST/PUT at 0.005 per 1,000 + 15,000 GET/HEAD at 0.0004 per 1,000; DELETE free
    assert counts.cost_usd() == pytest.approx(0.015 + 0.006)
    assert IoCounts.from_record(counts.record()) == counts
    assert "USD per million images" in cost_line(counts, 1000)


def test_workers_counts_reach_the_driver_as_exact_integers():
    take_io()
    stats = RunStats()
    sent = IoCounts()
    for n, requests in ((3, 7), (0, 5), (5, 1), (1, 0)):
        for _ in range(requests):
            sent += IoCounts(get=1, bytes_read=1001)
            accounting.COUNTS.add("get", 1)  # what a worker's S3 client counted
            accounting.COUNTS.add("bytes_read", 1001)
        batch = {"image_uri": np.array([f"u{i}" for i in range(n)], dtype=object)}
        report_io(batch, n)  # a batch without rows leaves the counts for the next one
        if n:
            stats.add_batch(pa.table(batch))
    assert stats.requests == sent
    assert stats.io()["requests"]["GET"] == 13 and stats.io()["storage_bytes_read"] == 13 * 1001


def test_storage_calls_are_counted_as_the_server_saw_them(s3_server):
    bucket = s3_server.make_bucket(f"acct-calls-{int(time.time() * 1000) % 10**8}")
    with FaultProxy(s3_server.endpoint_url, seed=3) as proxy:
        options = {**s3_server.storage_options, "endpoint_url": proxy.endpoint_url}
        out = Location(f"s3://{bucket}/out", options)
        take_io()
        out.write_bytes(b"x" * 1234, "a.bin")
        out.write_bytes(b"y" * 10, "b.bin")
        assert len(out.read_bytes("a.bin")) == 1234
        assert out.exists("a.bin")
        # a multipart upload: create, part(s), complete
        with out.fs.open(out.fs_path("big.bin"), "wb", block_size=5 * 2**20) as fh:
            fh.write(b"z" * (11 * 2**20))
        out.fs.ls(out.fs_path(), refresh=True)
        out.fs.rm([out.fs_path("a.bin"), out.fs_path("b.bin")])  # one DeleteObjects
        out.remove("big.bin")
        counted = take_io()
        seen = server_counts(proxy)
    assert counted.requests() == seen, proxy.sent
    # 2 PutObject + CreateMultipartUpload, UploadPart(s), CompleteMultipartUpload
    assert seen["PUT"] >= 2 + 3 and seen["DELETE"] == 2 and seen["LIST"] >= 1
    assert counted.bytes_written == 1234 + 10 + 11 * 2**20
    assert counted.bytes_read == 1234


@pytest.mark.slow  # a scan through the fault proxy
def test_a_scan_counts_every_request_the_server_saw_resends_included(s3_server, checkpoint):
    bucket = s3_server.make_bucket(f"acct-scan-{int(time.time() * 1000) % 10**8}")
    fs = s3_server.filesystem()  # not counted: it writes the lake straight to moto
    for i in range(6):
        fs.pipe_file(f"{bucket}/lake/img{i}.png", small_png(i))
    lake, out = f"s3://{bucket}/lake", f"s3://{bucket}/out"
    # Error answers, not connection resets: aiohttp resends an idempotent request once by
    # itself when its connection is reset, unseen by botocore (accounting.py).
    with FaultProxy(s3_server.endpoint_url, seed=16, fault_rate=0.1, kinds=("500",),
                    methods=("GET", "PUT")) as proxy:
        options = {**s3_server.storage_options, "endpoint_url": proxy.endpoint_url}
        summary = scan(lake, out, checkpoint, ScanOptions(engine="local", batch_size=4,
                                                          map_size=16, storage_options=options))
        after = take_io()  # the driver after the summary: releasing the lease
        seen = server_counts(proxy)
        injected = sum(proxy.injected.values())
        native = sum(agent.startswith(NATIVE_AGENT) for agent in proxy.agents)
    assert summary.counts["scored"] == 6
    counted = IoCounts.from_record(summary.io) + after
    assert counted.requests() == seen, (summary.io, after, proxy.summary())
    assert injected >= 1 and summary.io["retries"] >= 1  # the resends were billed and counted
    assert native >= 1  # the commit's snapshot build read the run's rows natively
    assert seen["GET"] >= 6 and seen["PUT"] >= 6 and seen["LIST"] >= 1
    assert counted.bytes_read >= sum(len(small_png(i)) for i in range(6))
    # `vip2scan scan` prints them with their cost
    line = next(line for line in format_summary(summary, out, options).splitlines()
                if "storage requests:" in line)
    assert f"GET {summary.io['requests']['GET']}," in line and "per million images" in line
    io = json.loads(fs.cat_file(f"{bucket}/out/runs/{summary.run_id}.json"))["io"]
    assert 0 < sum(io["requests"].values()) <= sum(seen.values())
    assert io["storage_bytes_written"] > 0 and "as of" in io["prices"]
