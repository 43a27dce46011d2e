"""Errors a stage reports to its caller as a clear message and an exit code that says whether to retry."""

from __future__ import annotations


class StageError(Exception):
    """A problem with a stage's input or configuration that the user must fix: retrying cannot help."""


class DataValidationError(StageError):
    """The input table breaks a rule; the message names the column and the problem."""

    def __init__(self, column: str | None, problem: str) -> None:
        self.column = column
        self.problem = problem
        super().__init__(f"column '{column}': {problem}" if column else problem)


class TransientError(Exception):
    """A service the stage needs stayed unavailable through the stage's own retries: the task is retried."""
