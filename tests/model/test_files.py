"""model/files.is_uri: the one "is this a URI?" test that model/, pipeline/ and jobs/ share."""

from __future__ import annotations

import os

import pytest

from vip2scan.jobs.storage import options_for
from vip2scan.model.files import is_uri
from vip2scan.pipeline.storage.location import split_protocol


@pytest.mark.parametrize("text, uri", [
    ("s3://b/k", True),
    ("gs://", True),
    ("file:///x", True),
    ("S3A://Bucket/Key", True),
    ("/abs", False),
    ("rel/path", False),
    ("C:\\x", False),
    ("C:/x", False),
    ("", False),
])
def test_is_uri_means_the_text_names_its_protocol(text, uri):
    assert is_uri(text) is uri


def test_file_uris_are_local_for_the_storage_options_and_the_pipeline():
    options = {"endpoint_url": "http://127.0.0.1:9000"}
    assert options_for("s3://b/k", options) == options
    assert options_for("file:///x", options) == {}
    assert options_for("/abs", options) == {}
    assert options_for("rel/path", options) == {}
    assert split_protocol("file:///x") == ("file", "/x")
    assert split_protocol("s3a://b/k") == ("s3", "b/k")
    assert split_protocol("rel/path") == ("file", os.path.abspath("rel/path"))
