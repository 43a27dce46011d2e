"""Which interval a run covers and whether it releases: the newest interval only, never a backfill."""

from __future__ import annotations

from types import SimpleNamespace

import pendulum
import pytest

from mlops.intervals import Interval, latest_complete, macros, release_plan, run_interval, started_by
from mlops.platform_config import load_platform

WEEKLY = "0 3 * * 1"


def at(*args: int) -> pendulum.DateTime:
    return pendulum.datetime(*args, tz="UTC")


def week_ending(*args: int) -> Interval:
    end = at(*args, 3)
    return Interval(end.subtract(weeks=1), end)


@pytest.mark.parametrize(
    ("now", "end"),
    [
        (at(2026, 11, 27, 4), at(2026, 11, 23, 3)),  # a Friday: the week that ended on Monday
        (at(2026, 11, 23, 3), at(2026, 11, 23, 3)),  # exactly at the boundary: that week is complete
        (at(2026, 11, 23, 2, 59), at(2026, 11, 16, 3)),
        (at(2026, 11, 23, 3, 0, 30), at(2026, 11, 23, 3)),  # seconds into the cron's minute
    ],
)
def test_the_latest_complete_interval_of_the_schedule(now, end) -> None:
    assert latest_complete(WEEKLY, "UTC", now) == Interval(end.subtract(weeks=1), end)


def test_a_run_without_a_logical_date_covers_the_latest_complete_interval() -> None:
    manual = SimpleNamespace(data_interval_start=None, data_interval_end=None, run_after=at(2026, 11, 27, 4))
    assert run_interval(manual, WEEKLY, "UTC") == week_ending(2026, 11, 23)
    scheduled = SimpleNamespace(
        data_interval_start=at(2026, 3, 2), data_interval_end=at(2026, 3, 9), run_after=None
    )
    assert run_interval(scheduled, WEEKLY, "UTC") == Interval(at(2026, 3, 2), at(2026, 3, 9))


NEWEST = week_ending(2026, 11, 23)
OLD = week_ending(2026, 11, 2)


@pytest.mark.parametrize(
    ("run_type", "interval", "choice", "release", "why"),
    [
        ("scheduled", NEWEST, "auto", True, "is the newest complete interval"),
        ("manual", NEWEST, "auto", True, "is the newest complete interval"),
        ("scheduled", OLD, "auto", False, "is older than the newest complete interval"),
        ("manual", OLD, "auto", False, "an old interval registers for the record and is not released"),
        ("manual", OLD, "always", True, "release: always"),
        ("manual", NEWEST, "never", False, "release: never"),
        ("backfill", OLD, "auto", False, "a backfill run"),
        ("backfill", NEWEST, "always", False, "never releases"),
    ],
)
def test_only_the_newest_interval_releases_and_never_a_backfill(
    run_type, interval, choice, release, why
) -> None:
    plan = release_plan(run_type=run_type, interval=interval, now=at(2026, 11, 27, 4), newest_end=NEWEST.end,
                        choice=choice)  # fmt: skip
    assert plan.release is release and why in plan.reason
    assert plan.interval == [interval.start.isoformat(), interval.end.isoformat()]


def test_an_interval_not_yet_complete_never_releases() -> None:
    current = Interval(at(2026, 11, 23, 3), at(2026, 11, 30, 3))
    plan = release_plan(run_type="manual", interval=current, now=at(2026, 11, 27, 4), newest_end=NEWEST.end,
                        choice="auto")  # fmt: skip
    assert plan.release is False and "is not complete yet" in plan.reason


def test_a_run_on_weekly_partitions_covers_the_week_its_key_starts() -> None:
    moment = at(2026, 11, 20)
    asset_run = SimpleNamespace(data_interval_start=moment, data_interval_end=moment, partition_key="2026-11-16",
                                partition_date=at(2026, 11, 16))  # fmt: skip
    assert run_interval(asset_run, WEEKLY, "UTC") == Interval(at(2026, 11, 16), at(2026, 11, 23))
    unmapped = SimpleNamespace(data_interval_start=None, data_interval_end=None, partition_key="last week",
                               partition_date=None)  # fmt: skip
    with pytest.raises(ValueError, match="partition key 'last week' names no date"):
        run_interval(unmapped, WEEKLY, "UTC")


def test_the_macros_follow_the_platforms_schedule() -> None:
    retraining = load_platform().retraining
    bound = macros(retraining.schedule, retraining.timezone)
    backfill = SimpleNamespace(
        run_type="backfill", data_interval_start=at(2026, 3, 2), data_interval_end=at(2026, 3, 9)
    )
    assert bound["mlops_interval"](backfill) == Interval(at(2026, 3, 2), at(2026, 3, 9))
    plan = bound["mlops_release_plan"](backfill, {"release": "auto"})
    assert plan["release"] is False and plan["interval"][0].startswith("2026-03-02T00:00:00")
    assert plan["started_by"] == "a backfill"


def sdk_run(run_type: str, **fields: object) -> object:
    """A run as the Task SDK gives it to a task's templates (Airflow's own model, validated)."""
    from airflow.sdk.api.datamodels._generated import DagRun

    return DagRun.model_validate({
        "dag_id": "train_card_fraud", "run_id": f"{run_type}__1", "logical_date": None,
        "data_interval_start": None, "data_interval_end": None, "run_after": "2026-11-27T04:00:00Z",
        "start_date": None, "end_date": None, "run_type": run_type, "state": "running",
        "consumed_asset_events": [], "partition_key": None, **fields,
    })  # fmt: skip


def test_the_run_says_what_started_it() -> None:
    assert started_by(sdk_run("scheduled")) == "its schedule"
    assert started_by(sdk_run("backfill")) == "a backfill"
    assert started_by(sdk_run("manual", triggering_user_name="ana")) == "a manual trigger by ana"
    assert started_by(sdk_run("manual")) == "a manual trigger"
    decay = {
        "asset": {"name": "card-fraud-detector/decayed", "uri": "mlops://card-fraud-detector/decayed", "extra": {}},
        "extra": {"registered_model": "card-fraud-detector", "version": "2",
                  "reasons": ["live AP 0.002 < the gate's floor 0.3 (20,000 labelled, 91 positive)"]},
        "source_task_id": "announce_decay", "source_dag_id": "monitor_card_fraud", "source_run_id": "r",
        "source_map_index": -1, "source_aliases": [], "timestamp": "2026-11-27T02:05:00Z",
    }  # fmt: skip
    assert started_by(sdk_run("asset_triggered", consumed_asset_events=[decay])) == (
        "an event on card-fraud-detector/decayed from monitor_card_fraud (version 2: live AP 0.002 < the gate's "
        "floor 0.3 (20,000 labelled, 91 positive))"
    )
