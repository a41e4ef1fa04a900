"""The nightly loop as an operator lives it: the same `scan` every night on a lake that keeps
changing, followed by `verify`, `report` and a `query`, all through the installed CLI.

After every night the `latest` view must hold exactly one row per live image object, with the
object's current etag; deleted objects are gone from it; `verify` is clean; the report renders.
The S3 variant (moto's server, spoken to over HTTP) runs seven nights, three of them on Ray
(one with the driver killed after staging and then rerun); the local-directory variant runs
three nights on the default engine. Each night's objects, rows and seconds are printed and,
when ``VIP2SCAN_SOAK_TIMELINE`` names a file, written there as JSON (the closing notes quote it).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
from tests.helpers.cli_runner import Ran, run_cli

from vip2scan.model.data.synthetic import CATEGORIES, encode_png, make_sample

pytestmark = pytest.mark.slow

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# Written by pipeline/faults.py when the driver-kill hook fires.
DRIVER_KILLED_EXIT = 86


def image_bytes(seed: int, fmt: str = "png", defect: str | None = None) -> bytes:
    image, _ = make_sample(CATEGORIES[seed % len(CATEGORIES)], defect, 32, seed)
    return encode_png(image, fmt)


@dataclass
class Night:
    name: str
    engine: str
    seconds: float = 0.0
    objects: int = 0
    rows: int = 0
    scored: int = 0
    failed: int = 0
    printed: list[str] = field(default_factory=list)


class Lake:
    """The lake under test: put/delete objects, and the truth of what is live (uri -> etag)."""

    def __init__(self, root: str, put: Callable[[str, bytes], None], delete: Callable[[str], None],
                 live: Callable[[], dict[str, object]], version: str):
        self.root, self.put, self.delete, self.live = root.rstrip("/"), put, delete, live
        self.version = version  # the scores column that tells versions of an object apart

    def images(self) -> dict[str, object]:
        return {uri: etag for uri, etag in self.live().items() if uri.lower().endswith(IMAGE_SUFFIXES)}


class Operator:
    """Runs the nightly commands the way a cron job does, and checks the outputs after each."""

    def __init__(self, lake: Lake, out: str, checkpoint: str, flags: list[str]):
        self.lake, self.out, self.checkpoint, self.flags = lake, out, checkpoint, flags
        self.timeline: list[Night] = []

    def cli(self, *args: str, env: dict | None = None, timeout: float = 600) -> Ran:
        return run_cli(*args, *self.flags, env=env, timeout=timeout)

    def scan(self, engine: str, env: dict | None = None) -> Ran:
        return self.cli("scan", self.lake.root, "--out", self.out, "--checkpoint", self.checkpoint,
                        "--engine", engine, "--batch-size", "4", "--no-progress", env=env)

    def night(self, name: str, engine: str = "auto", kill_driver: bool = False) -> Night:
        night = Night(name, engine)
        t0 = time.perf_counter()
        if kill_driver:
            killed = self.scan(engine, env={"VIP2SCAN_FAULT_KILL_DRIVER_AFTER_BATCHES": "1"})
            assert killed.exit_code == DRIVER_KILLED_EXIT, (name, killed.exit_code, killed.stderr[-2000:])
            ran = self.scan(engine)
            assert "resuming run" in (ran.stdout + ran.stderr).lower(), (name, ran.stdout, ran.stderr[-2000:])
        else:
            ran = self.scan(engine)
        assert ran.exit_code == 0, (name, ran.stdout, ran.stderr[-3000:])
        night.seconds = time.perf_counter() - t0
        night.printed = ran.stdout.splitlines()
        night.scored = count_of(ran.stdout, "scored")
        night.failed = count_of(ran.stdout, "failed")
        self.check(night)
        self.timeline.append(night)
        return night

    def check(self, night: Night) -> None:
        verified = self.cli("verify", self.out)
        assert verified.exit_code == 0, (night.name, verified.stdout, verified.stderr[-2000:])
        assert "consistent" in verified.stdout, (night.name, verified.stdout)
        reported = self.cli("report", self.out)
        assert reported.exit_code == 0, (night.name, reported.stdout, reported.stderr[-2000:])
        assert reported.stdout.startswith("report: "), reported.stdout
        version = self.lake.version
        latest = self.query(f"SELECT image_uri, {version} AS version, status FROM latest")
        uris = [row["image_uri"] for row in latest]
        assert len(uris) == len(set(uris)), f"{night.name}: an object has two rows in latest"
        truth = self.lake.images()
        assert {row["image_uri"]: row["version"] for row in latest} == truth, night.name
        night.objects, night.rows = len(truth), len(latest)
        counted = self.query("SELECT count(*) AS n FROM scores")
        assert counted and counted[0]["n"] >= len(latest)

    def query(self, sql: str) -> list[dict]:
        ran = self.cli("query", self.out, sql, "--format", "json")
        assert ran.exit_code == 0, (sql, ran.stderr[-2000:])
        return [json.loads(line) for line in ran.stdout.splitlines() if line.strip()]

    def report_timeline(self, variant: str) -> None:
        rows = [{"night": n.name, "engine": n.engine, "objects": n.objects, "latest_rows": n.rows,
                 "scored": n.scored, "failed": n.failed, "seconds": round(n.seconds, 1)}
                for n in self.timeline]
        for row in rows:
            print(variant, row)
        target = os.environ.get("VIP2SCAN_SOAK_TIMELINE")
        if target:
            path = Path(f"{target}.{variant}.json")
            path.write_text(json.dumps(rows, indent=1))


def count_of(summary: str, name: str) -> int:
    """A count from the summary's counts line ("listed 12, new 3, ..., scored 3, failed 0")."""
    for line in summary.splitlines():
        for part in line.split(","):
            words = part.split()
            if len(words) == 2 and words[0] == name and words[1].isdigit():
                return int(words[1])
    return 0


# ---------------------------------------------------------------- S3: seven nights
@pytest.fixture()
def s3_lake(s3_server, s3_bucket) -> Lake:
    fs = s3_server.filesystem()
    root = f"s3://{s3_bucket}/lake"

    def put(rel: str, data: bytes) -> None:
        fs.pipe(f"{s3_bucket}/lake/{rel}", data)

    def delete(rel: str) -> None:
        fs.rm(f"{s3_bucket}/lake/{rel}")

    def live() -> dict[str, object]:
        fs.invalidate_cache()
        found = fs.find(f"{s3_bucket}/lake", detail=True)
        return {f"s3://{path}": info["ETag"].strip('"') for path, info in found.items()}

    return Lake(root, put, delete, live, version="etag")


def test_seven_nights_on_s3(s3_server, s3_bucket, s3_lake, tiny_checkpoint) -> None:
    flags = ["-s", f"endpoint_url={s3_server.endpoint_url}", "-s", "key=testing", "-s", "secret=testing"]
    op = Operator(s3_lake, f"s3://{s3_bucket}/out", tiny_checkpoint, flags)
    lake = s3_lake

    # Night 1 (Ray): the first scan, with hostile files among the images.
    for i in range(10):
        lake.put(f"line{i % 2}/img_{i:03d}.png", image_bytes(i, defect="scratch" if i == 3 else None))
    lake.put("broken/empty.png", b"")
    lake.put("broken/text.jpg", b"not an image\n")
    lake.put("notes/readme.txt", b"not scanned: not an image suffix")
    first = op.night("1 first scan", engine="ray")
    assert first.scored == 10 and first.failed == 2

    # Night 2: nothing new. The most common night there is.
    quiet = op.night("2 nothing new")
    assert quiet.scored == 0 and quiet.failed == 0

    # Night 3: new objects (one with an upper-case suffix) and deletions.
    for i in range(10, 14):
        lake.put(f"line{i % 2}/img_{i:03d}.png", image_bytes(i))
    lake.put("line0/IMG_0100.JPG", image_bytes(100, "jpg"))
    lake.delete("line0/img_000.png")
    lake.delete("line1/img_001.png")
    third = op.night("3 new and deleted")
    assert third.scored == 5

    # Night 4 (Ray): objects rewritten with new content, a truncated file.
    for i in (2, 4, 5):
        lake.put(f"line{i % 2}/img_{i:03d}.png", image_bytes(1000 + i, defect="blob"))
    lake.put("broken/truncated.png", image_bytes(7)[:60])
    fourth = op.night("4 rewritten and hostile", engine="ray")
    assert fourth.scored == 3 and fourth.failed == 1

    # Night 5 (Ray): the driver dies after staging its rows; the rerun resumes the same run.
    for i in range(20, 26):
        lake.put(f"line2/img_{i:03d}.png", image_bytes(i))
    fifth = op.night("5 driver killed, rerun", engine="ray", kill_driver=True)
    assert fifth.scored == 6

    # Night 6: only deletions (a whole product line's day is purged).
    for i in range(20, 23):
        lake.delete(f"line2/img_{i:03d}.png")
    sixth = op.night("6 only vanished")
    assert sixth.scored == 0
    assert not any("nothing new or changed" in line for line in sixth.printed), sixth.printed

    # Night 7: a bit of everything at once.
    lake.put("line1/img_003.png", image_bytes(2003))  # rewritten
    lake.delete("line2/img_023.png")
    lake.put("line3/img_030.png", image_bytes(30))
    seventh = op.night("7 mixed")
    assert seventh.scored == 2

    # A rerun of the same command right after a success changes nothing and stays clean.
    op.night("7b rerun")
    op.report_timeline("s3")


# ---------------------------------------------------------------- local directory: three nights
def test_three_nights_on_a_local_directory(tmp_path, tiny_checkpoint) -> None:
    root = tmp_path / "lake"

    def put(rel: str, data: bytes) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def delete(rel: str) -> None:
        (root / rel).unlink()

    def live() -> dict[str, object]:
        # Local files have no etag (size + mtime tell versions apart): compare sizes.
        return {f"file://{path}": path.stat().st_size for path in sorted(root.rglob("*")) if path.is_file()}

    lake = Lake(str(root), put, delete, live, version="size_bytes")
    op = Operator(lake, str(tmp_path / "out"), tiny_checkpoint, [])
    for i in range(6):
        put(f"cam{i % 2}/frame_{i:02d}.png", image_bytes(i))
    put("cam0/corrupt.jpg", b"\xff\xd8\xff garbage")
    assert op.night("1 first scan").scored == 6
    delete("cam0/frame_00.png")
    assert op.night("2 only vanished").scored == 0
    time.sleep(1.1)  # a rewrite within the same second keeps the mtime on coarse filesystems
    put("cam1/frame_01.png", image_bytes(501, defect="scratch"))
    put("cam1/frame_09.png", image_bytes(9))
    assert op.night("3 rewritten and new").scored == 2
    op.report_timeline("local")
