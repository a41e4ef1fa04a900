"""What `vip2scan bench` measures on: a synthetic lake (generated once, then reused), a moto S3
server on 127.0.0.1 when no endpoint is given, and a random-weight checkpoint.

Nothing here is timed; it only prepares inputs so the timed scans start from the same state.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from vip2scan.jobs.errors import JobError

# Images per generated shard: shards are generated in parallel processes, and a fixed size
# keeps a lake's content independent of how many cores generated it.
SHARD_IMAGES = 500
LAKE_SEED = 20_240_601
MOTO_KEY = "testing"
MOTO_SECRET = "testing"
MOTO_START_TIMEOUT_S = 60.0
S3_LAKE_BUCKET = "vip2scan-bench"
S3_OUT_BUCKET = "vip2scan-bench-out"


def log(message: str) -> None:
    """A bench progress line on stderr (stdout may carry the JSON)."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def default_workdir() -> Path:
    """Where lakes are cached between bench runs (VIP2SCAN_BENCH_DIR overrides)."""
    root = os.environ.get("VIP2SCAN_BENCH_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "vip2scan", "bench")
    return Path(root)


def _write_shard(root: str, count: int, size: int, seed: int) -> int:
    from vip2scan.model.data.synthetic import write_lake

    write_lake(root, count, size=size, seed=seed, nested=True)
    return count


def ensure_local_lake(workdir: Path, n_images: int, image_size: int, processes: int | None = None) -> Path:
    """A directory of ``n_images`` synthetic PNGs at ``image_size``; reused when complete.

    Completion is recorded in a sibling JSON written last, so a generation that was
    interrupted is redone rather than measured half-finished.
    """
    name = f"lake-{image_size}px-{n_images}"
    lake = workdir / name
    marker = workdir / f"{name}.json"
    if marker.exists() and lake.is_dir():
        return lake
    if lake.exists():
        shutil.rmtree(lake)
    lake.mkdir(parents=True)
    n_shards = math.ceil(n_images / SHARD_IMAGES)
    counts = [min(SHARD_IMAGES, n_images - j * SHARD_IMAGES) for j in range(n_shards)]
    workers = max(1, min(processes or os.cpu_count() or 1, n_shards))
    if workers == 1:
        for j, count in enumerate(counts):
            _write_shard(str(lake / f"shard{j:03d}"), count, image_size, LAKE_SEED + j)
    else:
        # spawn, not fork: the parent may already hold torch threads or an s3fs event loop.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            futures = [pool.submit(_write_shard, str(lake / f"shard{j:03d}"), count, image_size, LAKE_SEED + j)
                       for j, count in enumerate(counts)]
            for future in futures:
                future.result()
    marker.write_text(json.dumps({"images": n_images, "image_size": image_size, "seed": LAKE_SEED}))
    return lake


def count_files(root: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(root))


# --------------------------------------------------------------------------- S3 (moto)

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class S3Endpoint:
    """An S3 endpoint to scan from: one we started (moto) or one given on the command line."""

    endpoint_url: str
    key: str | None
    secret: str | None
    process: subprocess.Popen | None = None

    @property
    def storage_options(self) -> dict:
        options: dict = {"endpoint_url": self.endpoint_url}
        if self.key is not None:
            options.update(key=self.key, secret=self.secret)
        return options

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def filesystem(self):
        import s3fs

        return s3fs.S3FileSystem(key=self.key, secret=self.secret,
                                 client_kwargs={"endpoint_url": self.endpoint_url})

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process = None


def start_moto() -> S3Endpoint:
    """moto's S3 server in a subprocess on a free 127.0.0.1 port (the `bench` extra installs it)."""
    try:
        import moto.server  # noqa: F401 - only checks that the extra is installed
    except ImportError as exc:
        raise JobError("--source s3 without --s3-endpoint needs moto: pip install 'vip2scan[bench]'") from exc
    port = _free_port()
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + MOTO_START_TIMEOUT_S
    while True:
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=1)
            break
        except (OSError, http.client.HTTPException):  # not up yet (URLError is an OSError)
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise JobError("the moto S3 server did not start") from None
            time.sleep(0.2)
    return S3Endpoint(endpoint_url=url, key=MOTO_KEY, secret=MOTO_SECRET, process=process)


def given_endpoint(endpoint_url: str) -> S3Endpoint:
    """An existing endpoint; credentials come from the standard AWS environment variables."""
    return S3Endpoint(endpoint_url=endpoint_url, key=os.environ.get("AWS_ACCESS_KEY_ID"),
                      secret=os.environ.get("AWS_SECRET_ACCESS_KEY"))


def upload_lake(endpoint: S3Endpoint, lake: Path, bucket: str, prefix: str) -> str:
    """Copy a local lake to ``s3://bucket/prefix`` unless the same number of objects is there."""
    fs = endpoint.filesystem()
    if not fs.exists(bucket):
        fs.mkdir(bucket)
    target = f"{bucket}/{prefix}"
    expected = count_files(lake)
    try:
        present = len(fs.find(target))
    except FileNotFoundError:
        present = 0
    if present != expected:
        # s3fs uploads a list of files concurrently; one put call keeps the requests in flight.
        sources, targets = [], []
        for dirpath, _, files in os.walk(lake):
            for name in files:
                path = os.path.join(dirpath, name)
                sources.append(path)
                targets.append(f"{target}/{os.path.relpath(path, lake).replace(os.sep, '/')}")
        fs.put(sources, targets)
    return f"s3://{target}"


class Sources:
    """Lake and output locations per source kind; owns the moto server if it started one."""

    def __init__(self, workdir: Path, image_size: int, s3_endpoint: str | None, keep_outputs: bool) -> None:
        self.workdir = workdir
        self.image_size = image_size
        self.s3_endpoint = s3_endpoint
        self.keep_outputs = keep_outputs
        self.endpoint: S3Endpoint | None = None
        self.outputs: list[str] = []

    def lake(self, kind: str, images: int) -> tuple[str, dict]:
        """(source URI, storage options) of a lake of ``images`` images."""
        local = ensure_local_lake(self.workdir, images, self.image_size)
        if kind == "local":
            return str(local), {}
        if self.endpoint is None:
            self.endpoint = given_endpoint(self.s3_endpoint) if self.s3_endpoint else start_moto()
        log(f"uploading {images} images to {self.endpoint.endpoint_url}")
        uri = upload_lake(self.endpoint, local, S3_LAKE_BUCKET, local.name)
        return uri, self.endpoint.storage_options

    def fresh_out(self, kind: str) -> str:
        """An empty OUT on the same kind of storage as the source."""
        name = f"out-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
        if kind == "local":
            out = str(self.workdir / "outputs" / name)
        else:
            assert self.endpoint is not None, "lake('s3') starts the endpoint first"
            fs = self.endpoint.filesystem()
            if not fs.exists(S3_OUT_BUCKET):
                fs.mkdir(S3_OUT_BUCKET)
            out = f"s3://{S3_OUT_BUCKET}/{name}"
        self.outputs.append(out)
        return out

    def exclude_pids(self) -> set[int]:
        """The moto server is the object store, not the pipeline: left out of the CPU figures."""
        return {self.endpoint.pid} if self.endpoint is not None and self.endpoint.pid else set()

    def close(self) -> None:
        if not self.keep_outputs:
            for out in self.outputs:
                with contextlib.suppress(Exception):  # cleanup must not hide the measurements
                    if not out.startswith("s3://"):
                        shutil.rmtree(out, ignore_errors=True)
                    elif self.endpoint is not None:
                        self.endpoint.filesystem().rm(out[len("s3://"):], recursive=True)
        if self.endpoint is not None:
            self.endpoint.close()


# --------------------------------------------------------------------------- checkpoint

def ensure_checkpoint(workdir: Path, backbone: str, image_size: int) -> str:
    """A random-weight checkpoint for (backbone, size): what bench scans with.

    Reused when its config and weights header agree and name the same backbone and size;
    one an interrupted run left incomplete is made again.
    """
    from vip2scan.model.facts import CheckpointFactsError, read_checkpoint_facts

    path = str(workdir / f"ckpt-{backbone}-{image_size}px")
    with contextlib.suppress(CheckpointFactsError, FileNotFoundError):
        facts = read_checkpoint_facts(path)
        if (facts.backbone, facts.image_size) == (backbone, image_size):
            return path
    from vip2scan.model import Detector, DetectorConfig

    detector = Detector.from_config(DetectorConfig(backbone=backbone, image_size=image_size))
    detector.save_checkpoint(path)
    return path
