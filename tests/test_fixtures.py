"""The shared fixtures really start moto's S3 server and a local Ray."""

from __future__ import annotations

import pytest


def test_moto_server_speaks_s3_over_http(s3_server, s3_bucket) -> None:
    fs = s3_server.filesystem()
    fs.pipe(f"{s3_bucket}/a/b.txt", b"hello")
    assert fs.cat(f"{s3_bucket}/a/b.txt") == b"hello"
    assert s3_server.endpoint_url.startswith("http://127.0.0.1:")


@pytest.mark.slow  # starts the session's Ray (the fast lane never does)
def test_ray_is_a_real_local_instance(ray_local) -> None:
    @ray_local.remote
    def square(x: int) -> int:
        return x * x

    assert ray_local.get([square.remote(i) for i in range(4)]) == [0, 1, 4, 9]
    assert ray_local.cluster_resources()["CPU"] == 2
