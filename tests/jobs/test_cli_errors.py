"""Exit codes and one-line messages: usage errors 2, runtime errors 1, --help examples."""

from __future__ import annotations

import pytest

from vip2scan.jobs.cli import parse_command_line
from vip2scan.jobs.errors import UsageError

COMMANDS_WITH_HELP = [
    [], ["scan"], ["query"], ["report"], ["convert"], ["submit"], ["demo"], ["jobs"], ["jobs", "status"],
    ["jobs", "logs"],
]


@pytest.mark.parametrize("command", COMMANDS_WITH_HELP, ids=lambda c: " ".join(c) or "root")
def test_every_command_help_shows_an_example(cli, command) -> None:
    ran = cli(*command, "--help")
    assert ran.exit_code == 0
    assert "Example" in ran.stdout
    assert "vip2scan " + " ".join(command) in " ".join(ran.stdout.split()) or not command


@pytest.mark.parametrize(
    "args, says",
    [
        (["nosuchcommand"], "No such command"),
        (["query"], "Missing argument"),
        (["query", "--bogus", "out", "SELECT 1"], "No such option: --bogus"),
        (["scan", "lake/"], "Missing option '--out'"),
        (["scan", "lake/", "--out", "o/"], "vip2scan convert"),  # missing checkpoint says how to get one
        (["scan", "lake/", "--out", "o/", "--checkpoint", "c", "--actors", "3..1"], "MIN <= MAX"),
        (["scan", "lake/", "--out", "o/", "--checkpoint", "c", "--batch-size", "zero"], "--batch-size"),
        (["scan", "lake/", "--out", "o/", "--checkpoint", "c", "-s", "no-equals-sign"], "KEY=VALUE"),
        (["query", "out/", "SELECT 1", "--format", "parquet"], "--to"),
        (["submit", "--", "scan", "lake/", "--bogus"], "No such option: --bogus"),
        (["submit"], "Missing argument"),
        (["scan", "lake/", "--config", "/nonexistent/vip2scan.toml"], "config file not found"),
    ],
)
def test_usage_errors_exit_2_with_one_line(cli, args, says, tmp_path) -> None:
    ran = cli(*args, env={"VIP2SCAN_CHECKPOINT": None})
    assert ran.exit_code == 2, ran.stderr
    assert ran.stdout == ""
    lines = ran.stderr.strip().splitlines()
    assert len(lines) == 1, ran.stderr
    assert lines[0].startswith("usage error: ")
    assert says in lines[0]


def test_missing_checkpoint_message_names_every_way_to_get_one(cli) -> None:
    ran = cli("scan", "lake/", "--out", "o/", env={"VIP2SCAN_CHECKPOINT": None})
    message = ran.stderr
    assert ran.exit_code == 2
    for way in ("vip2scan train", "vip2scan convert", "vip2scan demo", "VIP2SCAN_CHECKPOINT"):
        assert way in message


def test_runtime_error_is_one_line_exit_1_and_debug_shows_the_traceback(cli, tmp_path) -> None:
    missing = str(tmp_path / "no-such-out")
    ran = cli("query", missing, "SELECT count(*) FROM scores")
    assert ran.exit_code == 1
    assert ran.stdout == ""
    assert len(ran.stderr.strip().splitlines()) == 1
    assert ran.stderr.startswith("error: ") and "no-such-out" in ran.stderr
    assert "Traceback" not in ran.stderr

    debug = cli("--debug", "query", missing, "SELECT 1")
    assert debug.exit_code == 1
    assert "Traceback" in debug.stderr


def test_usage_lines_name_every_argument_in_capitals(cli) -> None:
    import re

    named = {}
    for command in (["scan"], ["query"], ["map"], ["verify"], ["convert"], ["jobs", "status"]):
        usage = cli(*command, "--help").stdout.splitlines()[0]
        named[" ".join(command)] = [n for n in re.findall(r"[{\[]([A-Za-z_]+)[}\]]", usage) if n != "OPTIONS"]
    assert named["query"] == ["OUT", "SQL"] and named["map"] == ["OUT", "IMAGE_URI"], named
    assert all(name == name.upper() for names in named.values() for name in names), named


@pytest.mark.parametrize("group", [[], ["jobs"]], ids=["root", "jobs"])
def test_command_lists_fit_80_columns_without_cut_sentences(cli, group) -> None:
    ran = cli(*group, "--help", env={"COLUMNS": "80"})
    listed = ran.stdout.split("Commands:", 1)[1].split("\n\n", 1)[0].splitlines()[1:]
    assert len(listed) >= 2, ran.stdout
    for line in listed:
        assert len(line) <= 80 and not line.rstrip().endswith("...") and line.rstrip().endswith("."), line


def test_debug_after_the_command_shows_the_traceback_too(cli, tmp_path) -> None:
    # Every error line says "run with --debug": where a user adds it, at the end, it works.
    missing = str(tmp_path / "no-such-out")
    debug = cli("query", missing, "SELECT 1", "--debug")
    assert debug.exit_code == 1 and "No such option" not in debug.stderr
    assert "Traceback" in debug.stderr
    # After `--` it is the submitted command's own argument, not ours.
    submitted = cli("submit", "--", "scan", "lake/", "--debug")
    assert submitted.exit_code == 2 and "No such option: --debug" in submitted.stderr


def test_error_messages_never_show_secret_values(cli, tmp_path) -> None:
    secret = "sentinel-secret-value-4242"
    ran = cli("query", str(tmp_path / secret), "SELECT 1", env={"MY_SERVICE_TOKEN": secret})
    assert ran.exit_code == 1
    assert secret not in ran.stderr
    assert "***" in ran.stderr


def test_python_dash_m_runs_the_same_cli(cli_subprocess) -> None:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "vip2scan.jobs", "query"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("usage error: Missing argument")


def test_parse_command_line_checks_flags_without_running_anything() -> None:
    ctx = parse_command_line(["scan", "s3://lake/", "--out", "s3://out/", "--checkpoint", "ckpt",
                              "--batch-size", "16", "--no-maps", "--config", "/only/on/the/cluster.toml"])
    assert ctx.info_name == "scan"
    assert ctx.params["batch_size"] == 16 and ctx.params["no_maps"] is True
    assert parse_command_line(["jobs", "logs", "raysubmit_1", "--follow"]).params["follow"] is True
    with pytest.raises(UsageError):
        parse_command_line(["scan", "s3://lake/", "--out", "o", "--batchsize", "16"])
    with pytest.raises(UsageError):
        parse_command_line(["jobs"])
