"""Secret sentinels: credentials never reach logs, run records, Parquet, reports or messages.

Every credential variable (AWS keys and tokens, the Ray token, Azure keys) holds a unique
sentinel value, explicit `-s key=/secret=` storage options hold others, and then scan,
report, verify and submit run for real against moto: scan, report and verify in this process
on the shared local Ray (every log record captured at DEBUG), submit as a Ray job on a head
with token authentication whose logs land in a temp dir we own. Afterwards every command's
output, every log record, every object under OUT (Parquet decoded, not just its compressed
bytes) and every file of both Ray instances' log folders are searched for each sentinel.
"""

from __future__ import annotations

import io
import json
import logging
import os
import secrets
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.hostile_files import small_png
from tests.helpers.local_servers import ray_head_process

VENV_BIN = Path(sys.executable).parent


def _sentinels() -> dict[str, str]:
    """{variable: unique value}; values are easy to grep and never occur by chance."""
    tag = secrets.token_hex(4)
    return {
        "AWS_ACCESS_KEY_ID": f"AKIASNTNL{tag.upper()}01",
        "AWS_SECRET_ACCESS_KEY": f"sntnl-aws-secret-{tag}-{secrets.token_hex(8)}",
        "AWS_SESSION_TOKEN": f"sntnl-aws-session-{tag}-{secrets.token_hex(8)}",
        "AWS_SECURITY_TOKEN": f"sntnl-aws-security-{tag}-{secrets.token_hex(8)}",
        "AZURE_STORAGE_KEY": f"sntnl-azure-key-{tag}-{secrets.token_hex(8)}",
        "AZURE_STORAGE_SAS_TOKEN": f"sntnl-azure-sas-{tag}-{secrets.token_hex(8)}",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),  # Ray's own format; the head requires it
    }


@dataclass
class Head:
    gcs: str  # host:port for ray.init / --ray-address
    dashboard: str  # http://host:port for submit
    temp_dir: Path
    env: dict[str, str]  # a client's environment: sentinels, token mode


def run_cli(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "vip2scan"), *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


@pytest.fixture(scope="module")
def head(s3_server) -> Head:
    """`ray start --head` with token auth and sentinel credentials in its environment."""
    sentinels = _sentinels()
    temp_dir = Path(tempfile.mkdtemp(prefix="v2s-sec-", dir="/tmp"))  # short: socket paths
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",)}
    env.update(sentinels)
    env.update({"PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}", "RAY_AUTH_MODE": "token",
                "RAY_USAGE_STATS_ENABLED": "0", "AWS_ENDPOINT_URL_S3": s3_server.endpoint_url})
    with ray_head_process(temp_dir, env) as started:
        yield Head(started.gcs, started.dashboard, temp_dir, env)


def _secret_values(env: dict[str, str], extra: list[str]) -> dict[str, str]:
    named = {k: env[k] for k in _sentinels()}
    return {**named, **{f"storage option {i}": v for i, v in enumerate(extra)}}


def _leaks(text: str, secret_values: dict[str, str], where: str) -> list[str]:
    return [f"{name} in {where}" for name, value in secret_values.items() if value in text]


def _object_texts(fs, root: str):
    """(key, text) for every object under root: raw bytes, and Parquet decoded."""
    import pyarrow.parquet as pq

    fs.invalidate_cache()
    for key in fs.find(root):
        data = fs.cat_file(key)
        yield key, data.decode("latin-1")
        if key.endswith(".parquet"):
            table = pq.read_table(io.BytesIO(data))
            meta = {k.decode("latin-1"): v.decode("latin-1")
                    for k, v in (table.schema.metadata or {}).items()}
            yield f"{key} (decoded)", json.dumps(table.to_pylist(), default=str) + json.dumps(meta)


class _Records(logging.Handler):
    """Every log record that reaches the root logger, formatted, with its logger's name."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(f"{record.name}: {self.format(record)}")
        except Exception:  # noqa: BLE001 - a record that cannot format is not a leak
            pass


def _ray_logs_dir() -> Path | None:
    """The shared local Ray's log folder (its workers' output), if Ray runs in this process."""
    import ray._private.worker as worker

    node = getattr(worker, "_global_node", None)
    return Path(node.get_logs_dir_path()) if node is not None else None


@pytest.mark.slow
def test_no_credential_reaches_any_output_or_log(head, s3_server, ray_for_faults, tiny_checkpoint,
                                                 monkeypatch):
    """scan, report and verify run in this process (on the shared Ray, with every log record
    captured at DEBUG), submit as a real job on the head; all with sentinel credentials."""
    from typer.testing import CliRunner

    from vip2scan.jobs.cli import app

    fs = s3_server.filesystem()
    bucket = s3_server.make_bucket(f"secrets-{int(time.time() * 1000) % 10**8}")
    for i in range(4):
        fs.pipe_file(f"{bucket}/lake/img{i}.png", small_png(i))
    fs.pipe_file(f"{bucket}/lake/broken.png", b"not an image")
    explicit = [f"AKIASNTNLOPT{secrets.token_hex(3).upper()}",
                f"sntnl-option-secret-{secrets.token_hex(8)}"]
    storage = ["-s", f"endpoint_url={s3_server.endpoint_url}"]
    with_secrets = storage + ["-s", f"key={explicit[0]}", "-s", f"secret={explicit[1]}"]
    lake, out = f"s3://{bucket}/lake", f"s3://{bucket}/out"
    for name, value in head.env.items():  # the Ray token stays out: this process's Ray uses its own
        if name in _sentinels() and name != "RAY_AUTH_TOKEN":
            monkeypatch.setenv(name, value)
    # Our loggers at DEBUG, libraries at WARNING: what a user sees, plus all our own debug
    # lines (retries, lease). Libraries' DEBUG is not ours to promise: botocore's DEBUG log
    # prints request headers, whose SigV4 Authorization header names the access key id.
    records = _Records()
    root, ours = logging.getLogger(), logging.getLogger("vip2scan")
    old_levels = root.level, ours.level
    root.addHandler(records)
    root.setLevel(logging.WARNING)
    ours.setLevel(logging.DEBUG)
    logging.getLogger("vip2scan.pipeline.canary").debug("capture works")
    runner = CliRunner()
    try:
        ran = {"scan": runner.invoke(app, ["scan", lake, "--out", out, "--checkpoint",
                                           tiny_checkpoint, "--no-progress", "--batch-size", "4",
                                           *with_secrets])}
        assert ran["scan"].exit_code == 0, ran["scan"].stderr[-3000:]
        ran["report"] = runner.invoke(app, ["report", out, "--top", "2", *with_secrets])
        ran["verify"] = runner.invoke(app, ["verify", out, *with_secrets])
        ran["verify missing"] = runner.invoke(app, ["verify", f"s3://{bucket}-missing/out",
                                                    *with_secrets])
    finally:
        root.removeHandler(records)
        root.setLevel(old_levels[0])
        ours.setLevel(old_levels[1])
    assert ran["report"].exit_code == 0, ran["report"].stderr[-2000:]
    assert ran["verify"].exit_code == 0 and "consistent" in ran["verify"].stdout
    assert ran["verify missing"].exit_code == 1
    job_id = f"v2s-secrets-{secrets.token_hex(3)}"
    submitted = run_cli("submit", "--address", head.dashboard, "--job-id", job_id, "--wait",
                        "--", "verify", out, *storage, env=head.env)
    assert submitted.returncode == 0, submitted.stderr[-2000:]
    assert "consistent" in submitted.stdout  # --wait follows the job's logs: verify ran there

    secret_values = _secret_values(head.env, explicit)
    leaks: list[str] = []
    for name, result in ran.items():
        leaks += _leaks(result.stdout + result.stderr, secret_values, f"`{name}` output")
    leaks += _leaks(submitted.stdout + submitted.stderr, secret_values, "`submit` output")
    assert any(line.startswith("vip2scan.pipeline.canary") for line in records.lines)
    leaks += _leaks("\n".join(records.lines), secret_values, "log records")
    keys = []
    for key, text in _object_texts(fs, f"{bucket}/out"):
        keys.append(key)
        leaks += _leaks(text, secret_values, key)
    assert any(k.endswith(".parquet") for k in keys) and any("report.html" in k for k in keys)
    assert any("/runs/" in k and k.endswith(".json") for k in keys)
    log_dirs = [head.temp_dir] + [d for d in [_ray_logs_dir()] if d is not None]
    ray_files = [p for d in log_dirs for p in d.rglob("*") if p.is_file() and not p.is_symlink()]
    assert any(p.suffix in (".log", ".out", ".err") for p in ray_files)
    for path in ray_files:
        try:
            text = path.read_bytes().decode("latin-1")
        except OSError:
            continue
        leaks += _leaks(text, secret_values, str(path))
    assert leaks == []


@pytest.mark.parametrize("command", [
    ("scan", "https://admin:sntnl-url-password@127.0.0.1:9/lake", "--out", "OUT",
     "--checkpoint", "CKPT"),
    ("scan", "LAKE", "--out", "s3://bucket/out?X-Amz-Security-Token=sntnl-url-token",
     "--checkpoint", "CKPT"),
    ("verify", "https://admin:sntnl-url-password@127.0.0.1:9/out"),
    ("report", "https://admin:sntnl-url-password@127.0.0.1:9/out"),
])
def test_urls_with_secrets_never_appear_in_error_messages(command, tmp_path, tiny_checkpoint):
    (tmp_path / "lake").mkdir()
    args = [a.replace("OUT", str(tmp_path / "out")).replace("CKPT", tiny_checkpoint)
            .replace("LAKE", str(tmp_path / "lake")) for a in command]
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    ran = run_cli(*args, env=env, timeout=120)
    assert ran.returncode != 0
    assert "sntnl" not in ran.stdout + ran.stderr, ran.stderr
    assert "error" in ran.stderr.lower()


@pytest.mark.slow
def test_submit_keeps_explicit_secrets_out_of_the_cluster(head, s3_server):
    """A secret given as `-s secret=...` to a submitted command would travel in the Ray job's
    entrypoint, which Ray shows in its dashboard and writes to its logs: submit refuses it."""
    bucket = s3_server.make_bucket(f"subsec-{int(time.time() * 1000) % 10**8}")
    s3_server.filesystem().pipe_file(f"{bucket}/out/runs/.keep", b"")
    secret = f"sntnl-submit-secret-{secrets.token_hex(8)}"
    job_id = f"v2s-subsec-{secrets.token_hex(3)}"
    ran = run_cli("submit", "--address", head.dashboard, "--job-id", job_id, "--wait", "--",
                  "verify", f"s3://{bucket}/out", "-s", f"endpoint_url={s3_server.endpoint_url}",
                  "-s", f"secret={secret}", "-s", "key=AKIASNTNLSUBMIT1", env=head.env)
    assert ran.returncode == 2 and "would store credentials" in ran.stderr, ran.stderr
    status = run_cli("jobs", "status", job_id, "--address", head.dashboard, env=head.env)
    assert status.returncode == 1  # never submitted
    texts = [ran.stdout, ran.stderr, status.stdout, status.stderr]
    texts += [p.read_bytes().decode("latin-1") for p in head.temp_dir.rglob("*")
              if p.is_file() and not p.is_symlink()]
    assert not any(secret in text for text in texts)


def test_library_debug_logs_do_not_carry_credentials(s3_server):
    """botocore logs every request's headers at DEBUG, the session token among them. With
    library DEBUG logging switched on, neither a registered credential nor one this process
    never saw by value (an instance-role token) reaches any handler."""
    import s3fs

    from vip2scan.pipeline.storage.location import Location

    registered = f"sntnl-registered-token-{secrets.token_hex(8)}"
    unknown = f"sntnl-unknown-token-{secrets.token_hex(8)}"
    bucket = s3_server.make_bucket(f"logs-{int(time.time() * 1000) % 10**8}")
    captured = io.StringIO()
    handler = logging.StreamHandler(captured)
    handler.setLevel(logging.DEBUG)
    loggers = [logging.getLogger(name) for name in ("botocore", "aiobotocore", "s3fs", "urllib3")]
    levels = [lg.level for lg in loggers]
    root = logging.getLogger()
    root.addHandler(handler)
    for lg in loggers:
        lg.setLevel(logging.DEBUG)
    try:
        out = Location.of(f"s3://{bucket}/out", {**s3_server.storage_options, "token": registered})
        out.write_bytes(b"hello", "a.txt")
        assert out.read_bytes("a.txt") == b"hello"
        # Credentials the process never registered, used by a client of its own.
        direct = s3fs.S3FileSystem(key=s3_server.key, secret=s3_server.secret, token=unknown,
                                   endpoint_url=s3_server.endpoint_url, skip_instance_cache=True)
        assert direct.cat_file(f"{bucket}/out/a.txt") == b"hello"
    finally:
        root.removeHandler(handler)
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
    text = captured.getvalue()
    assert "X-Amz-Security-Token" in text  # the headers were logged: the test saw them
    assert registered not in text and unknown not in text
