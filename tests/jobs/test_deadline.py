"""`--deadline` of the reader commands (jobs/deadline.py): a stalled read ends the command with
one line naming the step and exit 1; a bad value is a usage error (exit 2), as for any setting."""

from __future__ import annotations

import threading

import pytest

import vip2scan.pipeline.deadline as deadline_module
from tests.helpers.hand_made_runs import Night
from vip2scan.pipeline.storage.location import Location

_released = threading.Event()


class _Stalling:
    """An fs wrapper whose listings hang until released, like a read that never returns."""

    def __init__(self, fs):
        self._fs = fs

    def ls(self, *args, **kwargs):
        _released.wait(30)
        return self._fs.ls(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._fs, name)


def stalling(fs):
    return _Stalling(fs)


@pytest.fixture()
def out(tmp_path) -> str:
    night = Night(Location.of(str(tmp_path / "out")))
    night.commit(1, "m1", {"a.png": 1, "b.png": 2})
    night.commit(2, "m1", {"b.png": 20}, vanished=["a.png"])
    return str(tmp_path / "out")


@pytest.mark.parametrize("command", [["verify"], ["query", "--format", "csv"]])
def test_a_stalled_read_ends_the_command_with_one_line_and_exit_1(cli, out, command,
                                                                  monkeypatch) -> None:
    codes: list[int] = []

    def fake_exit(code: int) -> None:  # the real os._exit would end pytest too
        codes.append(code)
        _released.set()

    _released.clear()
    monkeypatch.setattr(deadline_module, "exit_process", fake_exit)
    args = [command[0], out, *(["SELECT count(*) AS n FROM latest"] if command[0] == "query"
                               else []), *command[1:], "--deadline", "0.5"]
    ran = cli(*args, env={"VIP2SCAN_FS_WRAPPER": f"{__name__}:stalling"})
    assert codes == [1]
    assert ran.error_lines == [f"error: {command[0]} stalled in 'reading run records' for 0.5 s "
                               "(deadline; --deadline to change)"]


def test_a_bad_deadline_is_a_usage_error(cli, out, tmp_path) -> None:
    ran = cli("verify", out, "--deadline", "-1")
    assert ran.exit_code == 2
    assert ran.error_lines == ["usage error: Invalid value for '--deadline': expected a number "
                               "at least 0, got -1 (see 'vip2scan verify --help')"]
    config = tmp_path / "v.toml"
    config.write_text("[query]\ndeadline = -5\n")
    ran = cli("query", out, "SELECT 1", "--config", str(config))
    assert ran.exit_code == 2 and "'--deadline'" in ran.error_lines[0]


def test_the_default_deadline_lets_a_normal_run_finish(cli, out) -> None:
    ran = cli("verify", out)
    assert ran.exit_code == 0 and "consistent" in ran.stdout
    ran = cli("query", out, "SELECT count(*) AS n FROM latest", "--format", "csv",
              "--deadline", "0")
    assert ran.exit_code == 0 and ran.stdout.splitlines() == ['"n"', "1"]


def test_explore_serve_reads_the_lake_under_the_deadline(cli, out, monkeypatch) -> None:
    """A server whose start-up hangs on the store must end like the other readers. (Once
    released, the start-up goes on; the port is taken so the server then stops instead of
    serving forever.)"""
    import socket

    codes: list[int] = []

    def fake_exit(code: int) -> None:
        codes.append(code)
        _released.set()

    _released.clear()
    monkeypatch.setattr(deadline_module, "exit_process", fake_exit)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ran = cli("explore", out, "--serve", "--port", str(taken.getsockname()[1]), "--deadline", "0.5",
                  env={"VIP2SCAN_FS_WRAPPER": f"{__name__}:stalling"})
    assert codes == [1]
    assert ran.error_lines[0] == ("error: explore stalled in \"reading the lake's state\" for 0.5 s "
                                  "(deadline; --deadline to change)")
