"""The keys that make re-runs safe: each DAG run's outputs in a folder of its own, a week's runs side by side."""

from __future__ import annotations

from types import SimpleNamespace

import pendulum

from mlops.keys import output_key

WEEK = (pendulum.datetime(2026, 11, 16, 3, tz="UTC"), pendulum.datetime(2026, 11, 23, 3, tz="UTC"))


def run(run_id: str, start: object = WEEK[0], end: object = WEEK[1]) -> SimpleNamespace:
    return SimpleNamespace(run_id=run_id, data_interval_start=start, data_interval_end=end)


def test_two_runs_of_one_interval_publish_in_folders_of_their_own() -> None:
    """They shared the interval's folder, so the second replaced what the first run's version learnt from."""
    scheduled, by_hand = run("scheduled__2026-11-16T03:00:00+00:00"), run("manual__2026-11-23T09:12:00+00:00")
    assert output_key(scheduled) != output_key(by_hand)
    assert output_key(scheduled) == "20261116T030000_20261123T030000/scheduled__2026-11-16T03_00_00_00_00"
    week = output_key(scheduled).split("/")[0]
    assert output_key(by_hand).split("/")[0] == week  # the week's runs list together
    assert output_key(scheduled) == output_key(run(scheduled.run_id))  # a retry: the same run's folder


def test_a_run_without_an_interval_is_keyed_by_its_run_id_alone() -> None:
    assert (
        output_key(run("manual__2026-11-23T09:12:00+00:00", None, None))
        == "manual__2026-11-23T09_12_00_00_00"
    )
