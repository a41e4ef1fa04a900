"""Helpers shared by the CLI tests (a uniquely named module: `conftest` names collide across folders)."""

from __future__ import annotations

from cli_process import VENV_BIN, VIP2SCAN, Ran, invoke, run_cli

__all__ = ["VENV_BIN", "VIP2SCAN", "Ran", "invoke", "run_cli", "LAKE_IMAGES", "BROKEN", "WIDE_IMAGE"]


# The lake scanned on moto S3 by the session fixture `s3_scan`.
LAKE_IMAGES = 24
BROKEN = {"broken/empty.png": b"", "broken/text.jpg": b"not an image\n"}
WIDE_IMAGE = "wide/odd_aspect.png"  # 96 x 64: the report must keep this aspect
