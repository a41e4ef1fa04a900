"""``--deadline SECONDS``, shared by the reader commands (verify, query, report, explore,
calibrate): an unattended command that stalls ends with one line and exit 1 instead of hanging
(pipeline/deadline.py). The default and the validation are ReaderSpec's (pipeline/specs.py), so
the flag, a config file's ``deadline = ...`` and the Python API agree."""

from __future__ import annotations

import contextlib
from typing import Annotated, Iterator, Optional

import typer

from vip2scan.pipeline.specs import ReaderSpec, default_of

DeadlineOption = Annotated[
    Optional[float],
    typer.Option("--deadline", metavar="SECONDS",
                 help="Stop with one line and exit 1 when one step (reading runs, a run's "
                      "rows, the snapshot, the query) lasts longer than this; 0: no deadline."),
]
DEFAULT_DEADLINE = default_of(ReaderSpec, "deadline")


@contextlib.contextmanager
def reader_deadline(command: str, seconds: Optional[float]) -> Iterator[None]:
    """Run the block under ``command``'s deadline (a bad value: InvalidSetting, exit 2)."""
    from vip2scan.pipeline.deadline import Deadline, step

    spec = ReaderSpec(deadline=seconds)
    with Deadline(command, spec.deadline), step(f"running {command}"):
        yield
