"""jobs/errors.OUTCOMES is the one place that maps an error's class to the CLI's exit code and line.

Each row is exercised through the real CLI: `vip2scan query` with its first library call
(``Outputs.connect``) made to raise an error of that class.
"""

from __future__ import annotations

import pytest
import typer

from vip2scan.errors import InvalidSetting, Vip2scanError
from vip2scan.jobs.errors import OUTCOMES, JobError, UsageError, click, outcome_of
from vip2scan.model.errors import ConfigError, ModelError
from vip2scan.model.weights import CheckpointError
from vip2scan.pipeline.errors import PipelineError, ScanError
from vip2scan.pipeline.output.calibration import CalibrationError
from vip2scan.pipeline.output.verify import VerifyError
from vip2scan.pipeline.run.lock import LeaseLost, OutputLocked
from vip2scan.pipeline.storage.retries import StoreUnavailable

HINT = " (run with --debug for the traceback)"

# (error raised inside the command, exit code, the one stderr line)
CASES = [
    (UsageError("bad SQL"), 2, "usage error: bad SQL (see 'vip2scan query --help')"),
    (InvalidSetting("memory_limit", "expected a size such as 4GB"), 2,
     "usage error: Invalid value for '--memory-limit': expected a size such as 4GB (see 'vip2scan query --help')"),
    (click.ClickException("refused"), 1, "error: refused"),
    (typer.Abort(), 1, "error: aborted"),
    (OutputLocked("OUT is locked by run r1 (pid 7): wait for it (--wait)"), 1,
     "error: OUT is locked by run r1 (pid 7): wait for it (--wait)"),
    (JobError("image.png is gone: write the map alone"), 1, "error: image.png is gone: write the map alone"),
    (ScanError("run r1 failed: store down"), 1, "error: run r1 failed: store down" + HINT),
    (StoreUnavailable("s3://lake answered only errors"), 1, "error: s3://lake answered only errors" + HINT),
    (LeaseLost("lost the lease on OUT"), 1, "error: lost the lease on OUT" + HINT),
    (VerifyError("no such output"), 1, "error: no such output" + HINT),
    (CalibrationError("calibration.json is damaged"), 1, "error: calibration.json is damaged" + HINT),
    (CheckpointError("ckpt: not a torch checkpoint"), 1, "error: ckpt: not a torch checkpoint" + HINT),
    (ConfigError("unknown backbone 'x'"), 1, "error: unknown backbone 'x'" + HINT),
    (RuntimeError("boom"), 1, "error: boom" + HINT),
    (KeyError("k"), 1, "error: KeyError: 'k'" + HINT),
]


@pytest.mark.parametrize("error, code, line", CASES, ids=[type(case[0]).__name__ for case in CASES])
def test_each_class_gets_its_exit_code_and_line_through_the_cli(cli, monkeypatch, tmp_path, error, code, line):
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr("vip2scan.pipeline.output.views.Outputs.connect", fail)
    ran = cli("query", str(tmp_path), "SELECT 1")
    assert ran.exit_code == code, ran.stderr
    assert ran.stdout == ""
    assert ran.stderr.splitlines() == [line]


def test_an_interrupt_inside_a_command_exits_130(cli, monkeypatch, tmp_path):
    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("vip2scan.pipeline.output.views.Outputs.connect", fail)
    assert cli("query", str(tmp_path), "SELECT 1").exit_code == 130


def test_debug_adds_the_traceback_to_every_runtime_row(cli, monkeypatch, tmp_path):
    def fail(*args, **kwargs):
        raise OutputLocked("OUT is locked")

    monkeypatch.setattr("vip2scan.pipeline.output.views.Outputs.connect", fail)
    ran = cli("--debug", "query", str(tmp_path), "SELECT 1")
    assert ran.exit_code == 1
    assert "Traceback" in ran.stderr and ran.stderr.splitlines()[-1] == "error: OUT is locked"


def test_every_row_is_reachable_and_every_class_resolves():
    """First match wins: a row below one of its base classes would never be used."""
    classes = [row.error_class() for row in OUTCOMES]
    for i, earlier in enumerate(classes):
        for later in classes[i + 1:]:
            assert not issubclass(later, earlier), f"{later.__name__} is shadowed by {earlier.__name__}"
    assert classes[-1] is Exception


def test_layer_roots_sit_under_the_one_root():
    for root in (ModelError, PipelineError, JobError, InvalidSetting):
        assert issubclass(root, Vip2scanError)
    assert outcome_of(ConfigError("x")).error is Vip2scanError
    assert outcome_of(ScanError("x")).error is Vip2scanError
    assert outcome_of(JobError("x")).error is JobError
    # existing except clauses keep matching
    assert issubclass(ScanError, RuntimeError) and issubclass(OutputLocked, RuntimeError)
    assert issubclass(CheckpointError, ValueError) and issubclass(ConfigError, ValueError)
    assert issubclass(InvalidSetting, ValueError)
