"""Data windows: which rows of a table a run trains on and is evaluated on, from the run's data interval.

The evaluation window is the data interval itself, or the last ``evaluation_days`` before its end; the training
window is the ``training_days`` before the evaluation window, and its latest part is the validation split. An
interval of a day or more is cut at whole UTC days (each bound moves back to midnight): a weekly run at 03:00 on
a Monday is judged on Monday to Sunday, whose daily partitions are complete when it runs. So a
weekly run trains on the eight weeks before its week and is judged on its week, and a backfill of an old week
sees only what was known then.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import pandas as pd

from contract import MAX_WINDOW_DAYS
from ml.errors import StageError


@dataclass(frozen=True)
class Window:
    """Rows with ``start <= time < end`` (UTC)."""

    start: pd.Timestamp
    end: pd.Timestamp

    def days(self) -> list[date]:
        """The UTC days the window touches."""
        first, last = self.start.date(), (self.end - pd.Timedelta(1, "ns")).date()
        return [first + timedelta(days=i) for i in range((last - first).days + 1)]

    def bounds(self) -> list[str]:
        return [self.start.isoformat(), self.end.isoformat()]

    def __str__(self) -> str:
        return f"[{self.start:%Y-%m-%d %H:%M}, {self.end:%Y-%m-%d %H:%M})"


@dataclass(frozen=True)
class Windows:
    """The data interval of a run and the two windows cut from it."""

    interval: Window
    training: Window
    evaluation: Window

    @property
    def whole(self) -> Window:
        """Everything a run reads: the training window's start to the evaluation window's end."""
        return Window(self.training.start, self.evaluation.end)

    def as_dict(self) -> dict[str, list[str]]:
        return {"interval": self.interval.bounds(), "training": self.training.bounds(),
                "evaluation": self.evaluation.bounds()}  # fmt: skip


@dataclass(frozen=True)
class Minimums:
    """What a window must hold for a run to learn and to be judged; fewer fails ``prepare``."""

    training_rows: int = 1
    evaluation_rows: int = 1
    evaluation_positives: int = 1


def timestamp(value: str, what: str) -> pd.Timestamp:
    """An ISO-8601 date or time as a UTC timestamp (naive values are UTC), or a StageError naming ``what``."""
    try:
        stamp = pd.Timestamp(value)
    except ValueError as err:
        raise StageError(f"{what} '{value}' is not an ISO-8601 date or time") from err
    if pd.isna(stamp):
        raise StageError(f"{what} is empty")
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def plan(start: str, end: str, *, training_days: int, evaluation_days: int = 0) -> Windows:
    """Cut the training and evaluation windows from a data interval (``evaluation_days`` 0: the interval)."""
    interval = Window(timestamp(start, "the interval's start"), timestamp(end, "the interval's end"))
    if interval.start >= interval.end:
        raise StageError(f"the data interval {interval} is empty: its start must be before its end")
    whole_days = interval.end - interval.start >= pd.Timedelta(days=1)
    cut = Window(interval.start.floor("D"), interval.end.floor("D")) if whole_days else interval
    if not (1 <= training_days <= MAX_WINDOW_DAYS and 0 <= evaluation_days <= MAX_WINDOW_DAYS):
        raise StageError(
            f"the training window needs 1 to {MAX_WINDOW_DAYS} days (got {training_days}) and the evaluation "
            f"window 0 to {MAX_WINDOW_DAYS} (got {evaluation_days}; 0 is the data interval)"
        )
    evaluation = Window(cut.end - pd.Timedelta(days=evaluation_days), cut.end) if evaluation_days else cut
    training = Window(evaluation.start - pd.Timedelta(days=training_days), evaluation.start)
    return Windows(interval=interval, training=training, evaluation=evaluation)


#: No minimum beyond one row and one positive in the evaluation window.
ANY_SIZE = Minimums()
