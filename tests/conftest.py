"""Shared fixtures: a real moto S3 server on 127.0.0.1 and a real local Ray.

Both are started once per test session. S3 is moto's own HTTP server in a
subprocess, spoken to by s3fs over HTTP exactly as a production endpoint would be.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass

import pytest
from tests.helpers.local_servers import free_port

# Fake, fixed credentials for moto. Set before any worker process starts so Ray
# workers inherit them like they would inherit a node's real environment.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.pop("AWS_PROFILE", None)
# Keep Ray quiet and small on a 2-core machine.
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str
    key: str = "testing"
    secret: str = "testing"

    @property
    def storage_options(self) -> dict:
        """fsspec/s3fs options for this endpoint."""
        return {"endpoint_url": self.endpoint_url, "key": self.key, "secret": self.secret}

    def filesystem(self):
        import s3fs

        return s3fs.S3FileSystem(
            key=self.key, secret=self.secret, client_kwargs={"endpoint_url": self.endpoint_url}
        )

    def make_bucket(self, name: str) -> str:
        fs = self.filesystem()
        if not fs.exists(name):
            fs.mkdir(name)
        return name


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on a free 127.0.0.1 port, for the whole test session."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while True:
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=1)
            break
        except Exception:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                raise RuntimeError("moto server did not start")
            time.sleep(0.2)
    os.environ["AWS_ENDPOINT_URL_S3"] = url
    try:
        yield S3Server(endpoint_url=url)
    finally:
        os.environ.pop("AWS_ENDPOINT_URL_S3", None)
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture()
def s3_bucket(s3_server, request):
    """A fresh, empty bucket per test (name derived from the test)."""
    import re

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-")
    name = f"t-{name}-{int(time.time() * 1000) % 100000}"
    s3_server.make_bucket(name)
    return name


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray instance shared by the session (2 CPUs, no dashboard)."""
    import ray

    if not ray.is_initialized():
        # address='local' always starts a private instance, never joins a cluster
        # that another test (or a developer) started with `ray start --head`.
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
            object_store_memory=512 * 1024 * 1024,
        )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> str:
    """A vip2-tiny checkpoint with a seeded random head, saved once per test session."""
    from vip2scan.model.config import DetectorConfig
    from vip2scan.model.detector import Detector

    path = str(tmp_path_factory.mktemp("ckpt") / "vip2-tiny")
    Detector.from_config(DetectorConfig()).save_checkpoint(path)
    return path


@pytest.fixture()
def checkpoint_copy(tiny_checkpoint, tmp_path):
    """A private copy of the session checkpoint, for tests that damage or edit it."""
    import shutil
    from pathlib import Path

    copy = Path(tmp_path) / "ckpt"
    shutil.copytree(tiny_checkpoint, copy)
    return copy
