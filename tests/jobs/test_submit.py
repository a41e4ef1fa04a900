"""submit / jobs status / jobs logs against a real `ray start --head` with token authentication
(tests/helpers/local_servers.py: its own --temp-dir and ports, stopped without `ray stop`)."""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.helpers.cli_runner import VENV_BIN
from tests.helpers.local_servers import ray_head_process

pytestmark = pytest.mark.slow


@dataclass
class RayHead:
    address: str
    token: str
    client_env: dict  # what a user's shell would have: the token file's location, no explicit mode


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    token = secrets.token_hex(32)
    token_path = tmp_path_factory.mktemp("ray-auth") / "auth_token"
    token_path.write_text(token)
    token_path.chmod(0o600)
    temp_dir = tempfile.mkdtemp(prefix="v2s-ray-", dir="/tmp")  # short: Ray's socket paths are length-limited
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    env.update({"PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}", "RAY_AUTH_MODE": "token",
                "RAY_AUTH_TOKEN_PATH": str(token_path), "RAY_USAGE_STATS_ENABLED": "0"})
    with ray_head_process(Path(temp_dir), env) as head:
        yield RayHead(head.dashboard, token, {"RAY_ADDRESS": None, "RAY_AUTH_MODE": None,
                                              "RAY_AUTH_TOKEN": None,
                                              "RAY_AUTH_TOKEN_PATH": str(token_path)})


def test_submit_runs_a_scan_as_a_ray_job(cli_subprocess, ray_head, converted_checkpoint, tmp_path) -> None:
    from vip2scan.model.data.synthetic import write_lake

    lake, out = tmp_path / "lake", tmp_path / "out"
    write_lake(str(lake), 8, seed=2)
    job_id = f"vip2scan-test-{secrets.token_hex(4)}"
    submitted = cli_subprocess(
        "submit", "--address", ray_head.address, "--job-id", job_id, "--wait", "--",
        "scan", str(lake), "--out", str(out), "--checkpoint", converted_checkpoint.checkpoint, "--no-progress",
        env=ray_head.client_env, timeout=500)
    assert submitted.exit_code == 0, submitted.stderr[-3000:] + submitted.stdout[-3000:]
    assert submitted.stdout.splitlines()[0] == job_id
    assert f"{job_id}: SUCCEEDED" in submitted.stderr

    status = cli_subprocess("jobs", "status", job_id, "--address", ray_head.address, env=ray_head.client_env)
    assert status.exit_code == 0 and "SUCCEEDED" in status.stdout
    logs = cli_subprocess("jobs", "logs", job_id, "--address", ray_head.address, env=ray_head.client_env)
    assert logs.exit_code == 0 and "listed 8" in logs.stdout and "vip2scan query" in logs.stdout

    records = list((out / "runs").glob("*.json"))
    assert len(records) == 1
    assert json.loads(records[0].read_text())["counts"]["scored"] == 8
    for ran in (submitted, status, logs):
        assert ray_head.token not in ran.stdout + ran.stderr


def test_a_wrong_token_is_a_one_line_error_that_does_not_echo_it(cli_subprocess, ray_head) -> None:
    wrong = secrets.token_hex(32)
    ran = cli_subprocess("jobs", "status", "raysubmit_none", "--address", ray_head.address,
                         env={**ray_head.client_env, "RAY_AUTH_TOKEN": wrong, "RAY_AUTH_TOKEN_PATH": None})
    assert ran.exit_code == 1
    assert len(ran.error_lines) == 1, ran.stderr
    assert wrong not in ran.stdout + ran.stderr and ray_head.token not in ran.stdout + ran.stderr


@pytest.mark.slow
def test_submit_without_a_cluster_names_the_address_it_tried(cli, monkeypatch) -> None:
    import vip2scan.jobs.submit as submit_module

    # Nothing listens on port 9: the default dashboard stands in for a machine without Ray.
    monkeypatch.setattr(submit_module, "DEFAULT_DASHBOARD", "http://127.0.0.1:9")
    ran = cli("submit", "--", "scan", "lake/", "--out", "o", "--checkpoint", "c", env={"RAY_ADDRESS": None})
    assert ran.exit_code == 1 and len(ran.error_lines) == 1, ran.stderr
    assert "http://127.0.0.1:9 (the default; set --address or $RAY_ADDRESS)" in ran.error_lines[0]
    from_env = cli("jobs", "status", "raysubmit_x", env={"RAY_ADDRESS": "http://127.0.0.1:9"})
    assert from_env.exit_code == 1 and "http://127.0.0.1:9 ($RAY_ADDRESS)" in from_env.stderr


def test_submit_refuses_an_invalid_command_before_contacting_the_cluster(cli) -> None:
    ran = cli("submit", "--address", "http://127.0.0.1:9", "--", "scan", "lake/", "--out", "o", "--bacth-size", "2")
    assert ran.exit_code == 2 and "No such option: --bacth-size" in ran.stderr


@pytest.mark.parametrize("args, says", [
    (["--", "scan", "lake/", "--out", "o", "-s", "secret=hunter2hunter2"], "secret"),
    (["--env", "AWS_SECRET_ACCESS_KEY=hunter2hunter2", "--", "query", "out", "SELECT 1"], "AWS_SECRET_ACCESS_KEY"),
])
def test_submit_refuses_to_put_credentials_in_the_job(cli, args, says) -> None:
    ran = cli("submit", "--address", "http://127.0.0.1:9", *args)
    assert ran.exit_code == 2 and says in ran.stderr and "hunter2hunter2" not in ran.stderr
