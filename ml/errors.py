"""Errors a stage reports to its caller as a clear message and a non-zero exit, not a traceback."""

from __future__ import annotations


class StageError(Exception):
    """A problem with a stage's input or configuration that the user must fix."""


class DataValidationError(StageError):
    """The input table breaks a rule; the message names the column and the problem."""

    def __init__(self, column: str | None, problem: str) -> None:
        self.column = column
        self.problem = problem
        super().__init__(f"column '{column}': {problem}" if column else problem)
