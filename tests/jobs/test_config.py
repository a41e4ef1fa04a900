"""--config files (TOML and YAML): flags win over the environment, which wins over the file."""

from __future__ import annotations

import pytest
import typer

from vip2scan.jobs.cli import app
from vip2scan.jobs.config import parse_key_values
from vip2scan.jobs.errors import UsageError

TOML = """
out = "s3://bucket/from-top-level"
[storage_options]
endpoint_url = "http://127.0.0.1:9000"
anon = false
[scan]
checkpoint = "from-file-ckpt"
batch-size = 8
map_size = 128
maps = false
include = ["*.png", "*.jpg"]
actors = "1..2"
[query]
max-rows = 3
"""

YAML = """
out: s3://bucket/from-top-level
storage_options:
  endpoint_url: http://127.0.0.1:9000
scan:
  checkpoint: from-file-ckpt
  batch_size: 8
  map-size: 128
  no-maps: true
  include: ["*.png", "*.jpg"]
"""


def parse_scan(args: list[str], env: dict[str, str] | None = None, monkeypatch=None):
    """Parse `scan` with click's real machinery (eager --config callback, env vars) without running it."""
    command = typer.main.get_command(app).commands["scan"]
    for name, value in (env or {}).items():
        monkeypatch.setenv(name, value)
    return command.make_context("scan", args).params


@pytest.mark.parametrize("suffix, text", [(".toml", TOML), (".yaml", YAML)])
def test_file_values_fill_unset_options(tmp_path, monkeypatch, suffix, text) -> None:
    monkeypatch.delenv("VIP2SCAN_CHECKPOINT", raising=False)
    path = tmp_path / f"vip2scan{suffix}"
    path.write_text(text)
    params = parse_scan(["s3://lake/", "--config", str(path)], monkeypatch=monkeypatch)
    assert params["checkpoint"] == "from-file-ckpt"
    assert params["out"] == "s3://bucket/from-top-level"  # top-level keys reach every command
    assert params["batch_size"] == 8 and params["map_size"] == 128
    from vip2scan.jobs.scan import parse_maps_mode

    # `maps = false` (the old switch) and `no-maps = true` both mean `--maps none`
    assert params["no_maps"] or parse_maps_mode(params["maps"]) == "none"
    assert parse_maps_mode(params["maps"]) == "none" if suffix == ".toml" else params["no_maps"]
    assert list(params["include"]) == ["*.png", "*.jpg"]
    assert "endpoint_url=http://127.0.0.1:9000" in params["storage_option"]


def test_precedence_flag_then_environment_then_file_then_default(tmp_path, monkeypatch) -> None:
    path = tmp_path / "scan.toml"
    path.write_text(TOML)
    params = parse_scan(["s3://lake/", "--config", str(path), "--batch-size", "4"],
                        env={"VIP2SCAN_CHECKPOINT": "from-env-ckpt"}, monkeypatch=monkeypatch)
    assert params["batch_size"] == 4  # flag beats file
    assert params["checkpoint"] == "from-env-ckpt"  # environment beats file
    assert params["map_size"] == 128  # file beats default
    assert params["image_threshold"] is None  # default
    flag = parse_scan(["s3://lake/", "--config", str(path), "--checkpoint", "from-flag"],
                      env={"VIP2SCAN_CHECKPOINT": "from-env-ckpt"}, monkeypatch=monkeypatch)
    assert flag["checkpoint"] == "from-flag"  # flag beats environment


def test_config_file_can_come_from_the_environment(tmp_path, monkeypatch) -> None:
    path = tmp_path / "scan.toml"
    path.write_text(TOML)
    monkeypatch.delenv("VIP2SCAN_CHECKPOINT", raising=False)
    params = parse_scan(["s3://lake/"], env={"VIP2SCAN_CONFIG": str(path)}, monkeypatch=monkeypatch)
    assert params["batch_size"] == 8


def test_unknown_key_in_a_command_section_is_a_usage_error(cli, tmp_path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[scan]\nbatchsize = 8\n")
    ran = cli("scan", "lake/", "--config", str(path))
    assert ran.exit_code == 2
    assert "unknown option 'batchsize' in section [scan]" in ran.stderr
    assert len(ran.stderr.strip().splitlines()) == 1


def test_unparseable_config_is_a_usage_error(cli, tmp_path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[scan\n")
    ran = cli("query", "out", "SELECT 1", "--config", str(path))
    assert ran.exit_code == 2 and "cannot parse" in ran.stderr


def test_key_value_options_are_typed() -> None:
    assert parse_key_values(["anon=true", "max_concurrency=8", "endpoint_url=http://h:9000", "x=1.5"]) == {
        "anon": True, "max_concurrency": 8, "endpoint_url": "http://h:9000", "x": 1.5}
    with pytest.raises(UsageError):
        parse_key_values(["=value"])
