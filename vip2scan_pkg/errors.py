"""The root of every error vip2scan raises on purpose, and the one error every layer shares.

Each layer has its own root below :class:`Vip2scanError` (``vip2scan.model.errors.ModelError``,
``vip2scan.pipeline.errors.PipelineError``, ``vip2scan.jobs.errors.JobError``). A setting travels
through all of them, so its validation error is defined once, here: the specs raise it whether
the value came from a flag, a config file, the Python API or the bench, and the CLI shows it as a
usage error (exit 2).
"""

from __future__ import annotations


class Vip2scanError(Exception):
    """Base of every error vip2scan raises on purpose; the message is one line without secrets."""


class InvalidSetting(Vip2scanError, ValueError):
    """A setting's value is invalid: ``setting`` is its name (the flag without dashes, e.g.
    ``map_size``), ``problem`` says what is wrong, in one line."""

    def __init__(self, setting: str, problem: str):
        self.setting = setting
        self.problem = problem
        super().__init__(f"{setting}: {problem}")

    def __reduce__(self):  # picklable across Ray workers with both arguments
        return (type(self), (self.setting, self.problem))
