"""What the CLI tests' session scan on moto S3 (tests/jobs/conftest.py, ``s3_scan``) puts in its lake."""

from __future__ import annotations

# The lake scanned on moto S3 by the session fixture `s3_scan`.
LAKE_IMAGES = 24
BROKEN = {"broken/empty.png": b"", "broken/text.jpg": b"not an image\n"}
WIDE_IMAGE = "wide/odd_aspect.png"  # 96 x 64: the report must keep this aspect
