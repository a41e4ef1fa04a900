"""An S3 object whose key ends in '/' ('dir.png/', with bytes) is counted as skipped, so the
summary shows it; an empty folder marker stays out of every count."""

from __future__ import annotations

from tests.helpers.hostile_files import small_png
from vip2scan.pipeline.selection.listing import SLASH_KEY, ObjectFilter, list_prefix
from vip2scan.pipeline.storage.location import Location


def test_a_key_ending_in_slash_is_counted_as_skipped(s3_server, s3_bucket, tmp_path):
    client = s3_server.filesystem()
    for key, data in (("lake/a.png", small_png(1)), ("lake/dir.png/", small_png(2)),
                      ("lake/folder/", b"")):
        client.call_s3("put_object", Bucket=s3_bucket, Key=key, Body=data)
    src = Location.of(f"s3://{s3_bucket}/lake", s3_server.storage_options)
    tally = list_prefix(src, str(tmp_path / "m.parquet"), ObjectFilter())
    assert (tally.seen, tally.kept, tally.skipped) == (2, 1, {SLASH_KEY: 1})
