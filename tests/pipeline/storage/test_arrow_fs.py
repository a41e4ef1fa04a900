"""The pyarrow filesystem Parquet readers get (storage/arrow_fs.py): native S3 built from the
storage options, never a Python callback from Arrow's threads, and no secret in any message."""

from __future__ import annotations

import io
import logging

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from vip2scan.pipeline.output.views import duckdb_connect, register_parquet
from tests.helpers.fault_proxy import FaultProxy
from vip2scan.pipeline.storage.arrow_fs import (RetryingFSSpecHandler, is_transient_native_error,
                                                s3_arguments)
from vip2scan.pipeline.storage.location import Location
from vip2scan.pipeline.storage.retries import CLIENT_MAX_ATTEMPTS, RETRIES

SECRET = "SENTINEL-arrow-secret-5c1d"
KEY_ID = "AKIASENTINELARROW001"


def _state(fs: pafs.S3FileSystem) -> dict:
    """What the native filesystem was built with (its pickling arguments)."""
    return fs.__reduce__()[1][0]


def test_s3_locations_get_a_native_filesystem_with_endpoint_and_credentials() -> None:
    options = {"endpoint_url": "http://127.0.0.1:9555", "key": KEY_ID, "secret": SECRET,
               "token": "SESSION-TOKEN-0001"}
    fs = Location.of("s3://bucket/out", options).pyarrow_filesystem()
    assert isinstance(fs, pafs.S3FileSystem)
    state = _state(fs)
    assert (state["scheme"], state["endpoint_override"]) == ("http", "127.0.0.1:9555")
    assert (state["access_key"], state["secret_key"], state["session_token"]) == \
        (KEY_ID, SECRET, "SESSION-TOKEN-0001")
    assert state["region"] == "us-east-1" and not state["anonymous"]
    assert Location.of("s3://bucket/other", options).pyarrow_filesystem() is fs  # built once


def test_client_kwargs_region_anonymous_and_the_retry_policy() -> None:
    args = s3_arguments({"client_kwargs": {"endpoint_url": "https://minio.example:9000/",
                                           "region_name": "eu-west-3"}, "anon": True})
    assert (args["scheme"], args["endpoint_override"]) == ("https", "minio.example:9000")
    assert args["region"] == "eu-west-3" and args["anonymous"] is True
    assert "access_key" not in args
    assert isinstance(args["retry_strategy"], pafs.AwsStandardS3RetryStrategy)
    assert args["retry_strategy"].max_attempts == CLIENT_MAX_ATTEMPTS
    assert args["connect_timeout"] > 0 and args["request_timeout"] > 0
    # a half pair of credentials is not passed: the default chain decides
    assert "access_key" not in s3_arguments({"endpoint_url": "http://x:1", "key": KEY_ID})


def test_the_endpoint_comes_from_the_environment_like_s3fs(monkeypatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9666")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-south-1")
    args = s3_arguments({})
    assert (args["scheme"], args["endpoint_override"], args["region"]) == \
        ("http", "127.0.0.1:9666", "ap-south-1")


def test_local_and_other_protocols() -> None:
    assert isinstance(Location.of("/tmp/x").pyarrow_filesystem(), pafs.LocalFileSystem)
    other = Location.of("memory://somewhere").pyarrow_filesystem()
    assert isinstance(other, pafs.PyFileSystem)
    assert isinstance(other.handler, RetryingFSSpecHandler)


def _parquet(n: int) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.table({"image_uri": [f"s3://lake/{i}.png" for i in range(n)],
                             "n": list(range(n))}), buffer)
    return buffer.getvalue()


def test_duckdb_reads_s3_parquet_natively_and_no_secret_is_logged_or_raised(
        s3_server, s3_bucket, caplog, tmp_path) -> None:
    options = {"endpoint_url": s3_server.endpoint_url, "key": KEY_ID, "secret": SECRET}
    out = Location.of(f"s3://{s3_bucket}/out", options)
    out.write_bytes(_parquet(50), "a.parquet")
    out.write_bytes(_parquet(7), "b.parquet")
    schema = pa.schema([("image_uri", pa.string()), ("n", pa.int64())])
    con = duckdb_connect(str(tmp_path))
    with caplog.at_level(logging.DEBUG):
        register_parquet(con, "t", out, ["a.parquet", "b.parquet"], ["image_uri", "n"], schema)
        assert con.execute("SELECT count(*), sum(n) FROM t").fetchall() == [(57, 1225 + 21)]
        with pytest.raises(Exception) as missing:
            register_parquet(con, "u", out, ["nope.parquet"], ["image_uri", "n"], schema)
            con.execute("SELECT count(*) FROM u").fetchall()
    con.close()
    text = caplog.text + str(missing.value) + repr(missing.value)
    assert SECRET not in text and KEY_ID not in text
    assert "nope.parquet" in str(missing.value)


# What Arrow 26 raises for a ranged read that met a 5xx (seen through tests/helpers/fault_proxy.py)
FLUSH_FAILURE = ("Invalid Input Error: reading the stream registered as 't_arrow' failed: IOError: "
                 "AWS Error INTERNAL_FAILURE during GetObject operation: Failed to flush response "
                 "stream (eof: 0, bad: 1)")


@pytest.mark.parametrize(("message", "transient"), [
    (FLUSH_FAILURE, True),
    ("When reading information for key 'a' in bucket 'b': AWS Error UNKNOWN (HTTP status 503) "
     "during HeadObject operation: No response body.", True),
    ("AWS Error NETWORK_CONNECTION during GetObject operation: curlCode: 28, Timeout was reached", True),
    ("AWS Error SLOW_DOWN (HTTP status 503) during GetObject operation: Please reduce", True),
    ("When reading information for key 'x' in bucket 'b': AWS Error ACCESS_DENIED (HTTP status 403) "
     "during HeadObject operation: No response body.", False),
    # a key may spell a transient error: only Arrow's own words, the last match, count
    ("When reading key 'AWS Error SLOW_DOWN (HTTP status 503) during GetObject operation' in bucket "
     "'b': AWS Error NO_SUCH_KEY (HTTP status 404) during GetObject operation: not found", False),
    ("Parser Error: syntax error at or near \"SELEC\"", False),
])
def test_which_native_read_failures_are_retried(message, transient) -> None:
    assert is_transient_native_error(OSError(message)) is transient


@pytest.mark.slow  # six statements through the fault proxy, with the SDK's backoff: ~15 s
def test_a_small_read_that_meets_a_5xx_is_retried_by_the_readers(s3_server, s3_bucket, tmp_path):
    """A 503 on a ranged read smaller than its error body fails inside the AWS SDK as a
    non-retryable INTERNAL_FAILURE; the readers' connection runs the statement again."""
    out = Location.of(f"s3://{s3_bucket}/flaky", s3_server.storage_options)
    names = [f"p{i}.parquet" for i in range(4)]
    for i, name in enumerate(names):
        out.write_bytes(_parquet(4 + i), name)
    schema = pa.schema([("image_uri", pa.string()), ("n", pa.int64())])
    plain_failures, retried = [], 0
    for seed in range(6):
        with FaultProxy(s3_server.endpoint_url, seed=seed, fault_rate=0.2, kinds=("503",),
                        methods=("GET",)) as proxy:
            flaky = Location.of(out.uri, {**s3_server.storage_options,
                                          "endpoint_url": proxy.endpoint_url})
            con = duckdb_connect(str(tmp_path))
            register_parquet(con, "t", flaky, names, ["image_uri", "n"], schema)
            before = RETRIES.total
            assert con.execute("SELECT count(*), sum(n) FROM t").fetchone() == (22, 6 + 10 + 15 + 21)
            retried += RETRIES.total - before
            try:  # the same statement on the plain connection, without the retry layer
                con.raw.execute("SELECT count(*), sum(n) FROM t").fetchone()
            except Exception as exc:  # noqa: BLE001 - what the layer exists for
                plain_failures.append(exc)
            con.close()
    assert plain_failures and all(is_transient_native_error(e) for e in plain_failures)
    assert retried >= 1
