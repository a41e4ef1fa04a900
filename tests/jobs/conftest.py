"""Fixtures for the CLI tests.

The expensive things (a converted tiny checkpoint, a scanned lake on S3) are built once per
session and shared: most tests read the same output tree.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.helpers.cli_runner import Ran, invoke, run_cli
from tests.helpers.s3_scan_lake import BROKEN, LAKE_IMAGES, WIDE_IMAGE

@pytest.fixture(scope="session", autouse=True)
def _two_threads():
    import torch

    torch.set_num_threads(2)  # the machine has 2 cores shared by several helpers


@pytest.fixture(scope="session")
def cli():
    """The in-process runner: cli("query", OUT, SQL) -> Ran."""
    return invoke


@pytest.fixture(scope="session")
def cli_subprocess():
    """The installed script in a subprocess: cli_subprocess("scan", ...) -> Ran."""
    return run_cli


# ---------------------------------------------------------------- model files built here
@pytest.fixture(scope="session")
def released_pth(tmp_path_factory) -> Path:
    """A released-ViP2-CLIP-layout .pth for the tiny backbone, with a head that is not the seeded init."""
    import torch

    from vip2scan.model.config import DetectorConfig
    from vip2scan.model.detector import Detector

    detector = Detector.from_config(DetectorConfig(backbone="vip2-tiny"))
    generator = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for parameter in detector.ica.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    path = tmp_path_factory.mktemp("released") / "vip2clip_tiny.pth"
    torch.save({"prompt_learner": detector.ica.state_dict(), "Zero_try": detector.fgp.state_dict()}, path)
    return path


@dataclass
class Converted:
    checkpoint: str
    ran: Ran


@pytest.fixture(scope="session")
def converted_checkpoint(released_pth, tmp_path_factory) -> Converted:
    """`vip2scan convert` of the released .pth: the checkpoint every scan test uses."""
    dst = str(tmp_path_factory.mktemp("ckpt") / "tiny")
    ran = invoke("convert", str(released_pth), dst, "--backbone", "vip2-tiny")
    assert ran.exit_code == 0, ran.stderr
    return Converted(dst, ran)


# ---------------------------------------------------------------- one scanned lake on moto S3
@dataclass
class S3Scan:
    bucket: str
    lake: str
    out: str
    flags: list[str]  # --storage-option flags for every command
    first: Ran
    first_run_id: str
    truth: list[dict]


def _png(width: int, height: int) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    pixels = (np.random.default_rng(3).random((height, width, 3)) * 255).astype("uint8")
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def s3_scan(s3_server, converted_checkpoint, ray_local) -> S3Scan:
    """A lake on moto S3 (images, broken files, one non-square image) scanned once through the CLI.

    In-process scans reuse the session's local Ray (the pipeline only starts Ray when none
    is running), so each scan does not pay Ray's start-up.
    """
    import time as _time

    from vip2scan.model.data.synthetic import write_lake

    bucket = s3_server.make_bucket(f"jobs-e2e-{int(_time.time() * 1000) % 10**8}")
    lake, out = f"s3://{bucket}/lake", f"s3://{bucket}/out"
    truth = write_lake(lake, LAKE_IMAGES, defect_fraction=0.25, seed=1, storage_options=s3_server.storage_options)
    fs = s3_server.filesystem()
    for name, data in BROKEN.items():
        fs.pipe(f"{bucket}/lake/{name}", data)
    fs.pipe(f"{bucket}/lake/{WIDE_IMAGE}", _png(96, 64))
    flags = ["-s", f"endpoint_url={s3_server.endpoint_url}", "-s", "key=testing", "-s", "secret=testing"]
    first = invoke("scan", lake, "--out", out, "--checkpoint", converted_checkpoint.checkpoint,
                   "--batch-size", "8", "--no-progress", *flags)
    assert first.exit_code == 0, first.stderr[-3000:]
    run_id = fs.ls(f"{bucket}/out/runs")[0].rsplit("/", 1)[-1].split(".")[0]
    return S3Scan(bucket, lake, out, flags, first, run_id, truth)
