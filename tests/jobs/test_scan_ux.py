"""What a person at the terminal sees from `vip2scan scan`: the engine it picked and why, a
quiet Ray start-up (Ray's notices in a log file), progress with rate and ETA, Ctrl-C and the
resume that follows, config typos, malformed -s values, and --help at 80 columns.

Ray start-up and Ctrl-C run the installed script in a real subprocess (a fresh process, as a
shell user gets); the rest goes through typer's CliRunner.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from tests.helpers.cli_runner import VENV_BIN, VIP2SCAN, run_cli

RAY_NOTICES = ("Token authentication", "core_worker", "Progress bars disabled", "streaming_executor",
               "Execution plan")
INTERRUPTED = re.compile(r"^interrupted: run (\S+) has (\d+) rows staged; "
                         r"rerun the same command to resume it$")


def tiny_lake(root: Path, n: int) -> str:
    from vip2scan.model.data.synthetic import write_lake

    write_lake(str(root), n, defect_fraction=0.25, size=48, seed=5)
    return str(root)


def fresh_env(tmp_path: Path) -> dict:
    """No cluster address (auto must decide on its own), logs under the test's folder."""
    return {"RAY_ADDRESS": None, "VIP2SCAN_LOG_DIR": str(tmp_path / "logs")}


def record_of(out: Path) -> dict:
    (path,) = (out / "runs").glob("*.json")
    return json.loads(path.read_text())


def scored_uris(out: Path) -> list[str]:
    import pyarrow.parquet as pq

    table = pq.read_table(out / "scores")
    return sorted(table.column("image_uri").to_pylist())


# ------------------------------------------------------------------ engine choice, progress
@pytest.mark.slow  # the installed script in a fresh process
def test_a_small_night_runs_on_the_local_engine_and_says_why(tmp_path, tiny_checkpoint) -> None:
    lake, out = tiny_lake(tmp_path / "lake", 3), tmp_path / "out"
    ran = run_cli("scan", lake, "--out", str(out), "--checkpoint", tiny_checkpoint, "--batch-size", "1",
                  env={**fresh_env(tmp_path), "COLUMNS": "100"})
    assert ran.exit_code == 0, ran.stderr[-2000:]
    assert "engine local (auto: 3 images to score, fewer than 300, and no Ray cluster given)" in ran.stdout
    assert "ray log" not in ran.stdout
    assert "starting the local engine" in ran.stderr
    # The final frame of the bar: rows, rate and time left (rich draws it once when not a tty).
    assert re.search(r"3/3 \d+\.\d img/s ETA 0:00:00", ran.stderr), ran.stderr
    config = record_of(out)["config"]
    assert (config["engine_requested"], config["engine"]) == ("auto", "local")
    assert "fewer than 300" in config["engine_reason"]
    assert len(scored_uris(out)) == 3


def test_the_engine_rule(monkeypatch) -> None:
    from vip2scan.pipeline.engines import AUTO_LOCAL_MAX_IMAGES, choose_engine

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr("vip2scan.pipeline.engines.ray_running_here", lambda: False)
    assert choose_engine("auto", AUTO_LOCAL_MAX_IMAGES - 1, None).name == "local"
    assert choose_engine("auto", AUTO_LOCAL_MAX_IMAGES, None).name == "ray"
    assert choose_engine("auto", 3, "ray://head:10001").name == "ray"
    assert choose_engine("local", 10_000, "ray://head:10001").name == "local"
    monkeypatch.setenv("RAY_ADDRESS", "head:6379")
    assert choose_engine("auto", 3, None).reason == "auto: a Ray cluster was given (RAY_ADDRESS)"


def test_an_unknown_engine_is_a_usage_error(cli) -> None:
    ran = cli("scan", "lake/", "--out", "o/", "--checkpoint", "c", "--engine", "spark")
    assert ran.exit_code == 2
    assert ran.stderr.strip().splitlines() == [
        "usage error: Invalid value for '--engine': expected one of auto, ray, local, got 'spark' "
        "(see 'vip2scan scan --help')"]


# ------------------------------------------------------------------ Ray: a quiet start-up
@pytest.mark.slow  # a Ray scan in a fresh process
def test_ray_notices_go_to_the_log_named_in_the_summary(tmp_path, tiny_checkpoint) -> None:
    lake, out = tiny_lake(tmp_path / "lake", 3), tmp_path / "out"
    ran = run_cli("scan", lake, "--out", str(out), "--checkpoint", tiny_checkpoint, "--engine", "ray",
                  env=fresh_env(tmp_path))
    assert ran.exit_code == 0, ran.stderr[-2000:]
    assert ran.stderr.splitlines()[0] == "starting Ray (local) and 1 inference actor..."
    for notice in RAY_NOTICES:
        assert notice not in ran.stderr and notice not in ran.stdout, notice
    assert "engine ray (--engine ray)" in ran.stdout
    (log_line,) = [line for line in ran.stdout.splitlines() if line.startswith("  ray log: ")]
    log = Path(log_line.split(": ", 1)[1])
    assert log.parent == tmp_path / "logs"
    assert "Execution plan of Dataset" in log.read_text()  # Ray Data's own notes landed here
    assert record_of(out)["config"]["engine_log"] == str(log)


# ------------------------------------------------------------------ Ctrl-C and the resume
def start_scan(args: list[str], env: dict) -> subprocess.Popen:
    full_env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    for name, value in env.items():
        if value is None:
            full_env.pop(name, None)
        else:
            full_env[name] = value
    # Its own process group: Ctrl-C at a terminal reaches the scan and the Ray processes it started.
    return subprocess.Popen([VIP2SCAN, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=full_env, start_new_session=True)


@pytest.mark.slow  # two Ray scans in fresh processes
def test_ctrl_c_says_how_to_resume_and_the_rerun_resumes(tmp_path, tiny_checkpoint) -> None:
    lake, out = tiny_lake(tmp_path / "lake", 12), tmp_path / "out"
    args = ["scan", lake, "--out", str(out), "--checkpoint", tiny_checkpoint, "--batch-size", "2"]
    proc = start_scan([*args, "--engine", "ray"], fresh_env(tmp_path))
    try:
        first = proc.stderr.readline()  # blocks until the plan is saved and Ray is starting
        assert first == "starting Ray (local) and 1 inference actor...\n", first
        # Soon after: on a quick machine Ray starts and scores 12 tiny images in about 2 s,
        # and a Ctrl-C after the scan ended would test nothing (it once did, in CI).
        time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, stderr
    assert stdout == ""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    said = INTERRUPTED.match(lines[0])
    assert said, lines[0]
    run_id, staged = said.group(1), int(said.group(2))

    dry = run_cli(*args, "--dry-run", env=fresh_env(tmp_path))
    assert dry.exit_code == 0, dry.stderr
    assert f"pending: run {run_id} was interrupted with {staged} of 12 rows staged" in dry.stdout

    rerun = run_cli(*args, env=fresh_env(tmp_path))  # auto: 12 left, so the local engine finishes it
    assert rerun.exit_code == 0, rerun.stderr[-2000:]
    assert rerun.stderr.splitlines()[0] == f"resuming run {run_id} ({staged} of 12 rows already staged)"
    assert f"run {run_id}: complete" in rerun.stdout
    assert scored_uris(out) == sorted(set(scored_uris(out))) and len(scored_uris(out)) == 12
    assert record_of(out)["attempts"] == 2


# ------------------------------------------------------------------ config typos
@pytest.mark.parametrize("text, says", [
    ("[scna]\nbatch-size = 8\n", "unknown section [scna] (sections are command names); did you mean [scan]?"),
    ('ot = "elsewhere"\n', "unknown top-level option 'ot' (no command has it); did you mean 'out'?"),
    ("[scan]\nbatchsize = 8\n", "unknown option 'batchsize' in section [scan]; did you mean 'batch-size'?"),
], ids=["section", "top-level", "in-section"])
def test_config_typos_are_usage_errors_with_a_suggestion(cli, tmp_path, text, says) -> None:
    path = tmp_path / "vip2scan.toml"
    path.write_text(text)
    ran = cli("scan", "lake/", "--out", "o/", "--checkpoint", "c", "--config", str(path))
    assert ran.exit_code == 2
    lines = ran.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], ran.stderr


def test_other_commands_keys_and_sections_are_accepted(cli, tmp_path, tiny_checkpoint) -> None:
    path = tmp_path / "vip2scan.toml"
    path.write_text('max-rows = 5\n[query]\nmax-rows = 3\n[storage_options]\nanon = false\n'
                    '[scan]\nbatch-size = 4\n')
    (tmp_path / "lake").mkdir()
    ran = cli("scan", str(tmp_path / "lake"), "--out", str(tmp_path / "out"), "--checkpoint", tiny_checkpoint,
              "--dry-run", "--config", str(path))
    assert ran.exit_code == 0, ran.stderr
    assert "dry run" in ran.stdout


# ------------------------------------------------------------------ -s values
@pytest.mark.parametrize("value, says", [
    # Half a credential pair used to end in "source bucket s3://lake does not exist".
    ("secret=sentinel-77", "secret=... needs key=... too"),
    ("key=sentinel-77", "key=... needs secret=... too"),
    ("endpoint_url=", "got 'endpoint_url=' (no value)"),
    ("=sentinel-77", "got '=' and a value without its key name"),
    ("sentinel-77", "expected KEY=VALUE, got a value without '=' (not shown)"),
])
def test_malformed_storage_options_are_usage_errors(cli, value, says) -> None:
    ran = cli("scan", "s3://lake", "--out", "s3://out", "--checkpoint", "c", "-s", value)
    assert ran.exit_code == 2, ran.stderr
    lines = ran.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("usage error: ") and says in lines[0], ran.stderr
    assert "sentinel-77" not in lines[0]  # the value may be a secret: never echoed


# ------------------------------------------------------------------ --help at 80 columns
def test_scan_help_reads_at_80_columns(cli) -> None:
    from vip2scan.pipeline import ScanOptions

    ran = cli("scan", "--help", env={"COLUMNS": "80"})
    assert ran.exit_code == 0
    lines = ran.stdout.splitlines()
    assert len(lines) < 100, len(lines)
    assert all(len(line) <= 80 for line in lines), [line for line in lines if len(line) > 80]
    text = ran.stdout
    assert "<bool>" not in text and "…" not in text
    for flag in ("--pixel-threshold", "--max-image-pixels", "--retry-errors", "--engine auto|ray|local"):
        assert flag in text, flag
    joined = " ".join(text.split())
    # --help shows the specs' own defaults, so the flag and the API cannot disagree
    defaults = ScanOptions()
    assert f"Images per inference batch. [default: {defaults.engine_spec.batch_size}]" in joined
    assert f"[default: {defaults.limit_spec.max_image_pixels}]" in joined
    assert f"[default: {defaults.map_spec.map_size}]" in joined
