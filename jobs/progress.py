"""What `vip2scan scan` shows while it runs: status lines and a progress bar with rate and ETA.

Both write to a handle on the terminal opened before the scan starts: while the Ray engine
runs, the process's own stderr (fd 2) points at the run's Ray log, so Ray's notices stay off
the terminal while ours still reach it.
"""

from __future__ import annotations

import io
import os
import sys
import time
from typing import Any, TextIO

from vip2scan.jobs.terminal import printable


def terminal_stream() -> tuple[TextIO, bool]:
    """(a stream on the terminal's stderr, whether we opened it and must close it)."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation, ValueError):
        return sys.stderr, False  # an in-process runner's stream: no descriptor to keep
    encoding = getattr(sys.stderr, "encoding", None) or "utf-8"
    return os.fdopen(os.dup(fd), "w", buffering=1, encoding=encoding, errors="replace"), True


class Terminal:
    """One line at a time to the terminal, whatever fd 2 points at meanwhile."""

    def __init__(self) -> None:
        self.stream, self._owned = terminal_stream()

    def say(self, line: str) -> None:
        self.stream.write("\n".join(printable(part) for part in line.split("\n")) + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._owned:
            self.stream.close()
            self._owned = False


def rate_and_eta(done: int, total: int, since: tuple[float, int], now: float) -> tuple[str, str]:
    """('12.3 img/s', 'ETA 0:01:05') from the rows scored since ``since`` = (time, rows)."""
    seconds, rows = now - since[0], done - since[1]
    if seconds <= 0 or rows <= 0:
        return "- img/s", "ETA -:--:--"
    rate = rows / seconds
    left = max(0, total - done) / rate
    return f"{rate:.1f} img/s", f"ETA {int(left // 3600)}:{int(left % 3600 // 60):02d}:{int(left % 60):02d}"


class ProgressBar:
    """The pipeline reports (done, total) as rows are staged; drawn with rich on the terminal.

    The rate is this attempt's average since its first rows came back (rows staged by an
    earlier attempt, and that first batch, do not count): start-up is not in it, and it does
    not jump about with batch sizes as a short window would. Not on a terminal (cron, CI),
    the bar is printed once, when the scan ends; an interrupted scan leaves no bar behind,
    only its one line.
    """

    def __init__(self, enabled: bool, terminal: Terminal) -> None:
        self.enabled = enabled
        self.terminal = terminal
        self._progress: Any = None
        self._task: Any = None
        self._since = (0.0, 0)

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or total <= 0:
            return
        now = time.monotonic()
        if self._progress is None:
            self._start(done, total, now)
            return
        rate, eta = rate_and_eta(done, total, self._since, now)
        self._progress.update(self._task, completed=done, total=total, rate=rate, eta=eta)

    def _start(self, done: int, total: int, now: float) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        # No stdout/stderr redirection: the Ray engine points sys.stderr at its log meanwhile,
        # and rich restoring its own saved stream afterwards would undo that in the wrong order.
        self._progress = Progress(
            TextColumn("scanning"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"), TextColumn("{task.fields[eta]}"),
            console=Console(file=self.terminal.stream), redirect_stdout=False,
            redirect_stderr=False)
        self._since = (now, done)
        self._task = self._progress.add_task("scanning", total=total, completed=done,
                                             rate="- img/s", eta="ETA -:--:--")
        if self._progress.console.is_terminal:
            self._progress.start()

    def close(self, keep: bool = True) -> None:
        """Stop drawing; ``keep``: leave the final bar (False after an interruption)."""
        progress, self._progress = self._progress, None
        if progress is None:
            return
        if progress.console.is_terminal:
            progress.live.transient = not keep
            progress.stop()
        elif keep:
            progress.console.print(progress)
