"""Which data interval a run covers, and whether it may release.

Every run trains on its own window of data, cut from its data interval. A run triggered without a logical date
(the UI's and the REST API's default) has no data interval: it covers the latest complete interval of the
retraining schedule before it was triggered.

Only the newest interval releases, in the spirit of Airflow's latest-only semantics: a backfill, a catch-up run
or a re-run of an old interval trains, evaluates and registers its version for the record, and skips the
release, so that an old model never reaches production. A person triggering a run can force (``always``) or
forbid (``never``) the release in the form; a backfill never releases.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import pendulum
from croniter import croniter

from mlops.assets import PARTITION_KEY_FORMAT, PARTITION_PERIOD

AUTO, ALWAYS, NEVER = "auto", "always", "never"
RELEASE_CHOICES = (AUTO, ALWAYS, NEVER)
#: DagRunType values (strings, so the plugin needs nothing from Airflow's core).
BACKFILL = "backfill"
SCHEDULED, MANUAL, OPERATOR_TRIGGERED = "scheduled", "manual", "operator_triggered"


@dataclass(frozen=True)
class Interval:
    start: datetime
    end: datetime

    def __str__(self) -> str:
        return f"{self.start:%Y-%m-%d %H:%M} to {self.end:%Y-%m-%d %H:%M} {self.end:%Z}".strip()


@dataclass(frozen=True)
class ReleasePlan:
    """Whether a run releases its model, why, and the interval it covers (what the version is tagged with)."""

    release: bool
    reason: str
    interval: list[str]


def latest_complete(schedule: str, timezone: str, now: datetime) -> Interval:
    """The last interval of a cron schedule that ended at or before ``now``."""
    moment = pendulum.instance(now).in_timezone(timezone).replace(second=0, microsecond=0)
    end = moment if croniter.match(schedule, moment) else croniter(schedule, moment).get_prev(datetime)
    start = croniter(schedule, end).get_prev(datetime)
    return Interval(pendulum.instance(start).in_timezone("UTC"), pendulum.instance(end).in_timezone("UTC"))


def run_interval(dag_run: Any, schedule: str, timezone: str) -> Interval:
    """The interval a run covers: its data interval; for a run on a partitioned asset, the period its partition
    key starts; for a run without either, the latest complete interval of the schedule before it was triggered.
    """
    if _has_interval(dag_run):
        return Interval(
            pendulum.instance(dag_run.data_interval_start), pendulum.instance(dag_run.data_interval_end)
        )
    if _partitioned(dag_run):
        partition = getattr(dag_run, "partition_date", None)
        if partition is None:  # Airflow could not map the key to a date: never guess another week
            raise ValueError(
                f"partition key {dag_run.partition_key!r} names no date ({PARTITION_KEY_FORMAT})"
            )
        first = pendulum.instance(partition).in_timezone("UTC")
        return Interval(first, first + PARTITION_PERIOD)
    return latest_complete(schedule, timezone, dag_run.run_after)


def _partitioned(dag_run: Any) -> bool:
    """Whether the run's interval comes from its partition key (an asset-triggered run of the asset schedule)."""
    return bool(getattr(dag_run, "partition_key", None)) and not _has_interval(dag_run)


def _has_interval(dag_run: Any) -> bool:
    """Whether the run has a data interval of its own (an asset schedule gives start == end: none)."""
    start, end = dag_run.data_interval_start, dag_run.data_interval_end
    return start is not None and end is not None and bool(start < end)


def release_plan(
    *, run_type: str, interval: Interval, now: datetime, newest_end: datetime, choice: str
) -> ReleasePlan:
    """Decide whether a run releases (see the module's docstring); the reason says why in words.

    ``newest_end`` is where the newest complete interval ends: an interval ending before it is old, one ending
    after ``now`` is not complete.
    """
    bounds = [interval.start.isoformat(), interval.end.isoformat()]
    if getattr(run_type, "value", run_type) == BACKFILL:  # the SDK's DagRunType is a str enum
        return ReleasePlan(
            False, f"a backfill run (interval {interval}) registers for the record, never releases", bounds
        )
    if choice == NEVER:
        return ReleasePlan(False, "the run's form says release: never", bounds)
    if choice == ALWAYS:
        return ReleasePlan(True, f"the run's form says release: always (interval {interval})", bounds)
    if choice != AUTO:
        raise ValueError(f"release must be one of {RELEASE_CHOICES}, got {choice!r}")
    if interval.end > now:
        return ReleasePlan(
            False, f"interval {interval} is not complete yet: its data is still arriving", bounds
        )
    if interval.end < newest_end:
        return ReleasePlan(
            False,
            f"interval {interval} is older than the newest complete interval: an old interval registers for "
            "the record and is not released",
            bounds,
        )
    return ReleasePlan(True, f"interval {interval} is the newest complete interval", bounds)


def started_by(dag_run: Any) -> str:
    """What started a run, in words: its schedule, a backfill, a person (named where Airflow knows them), another
    DAG, or the asset events it consumed (a decayed champion's, with the monitoring's reasons)."""
    events = getattr(dag_run, "consumed_asset_events", None) or []
    if events:
        return "; ".join(_event(event) for event in events)
    run_type = getattr(dag_run.run_type, "value", dag_run.run_type)
    user = getattr(dag_run, "triggering_user_name", None)
    return {
        BACKFILL: "a backfill",
        SCHEDULED: "its schedule",
        MANUAL: f"a manual trigger by {user}" if user else "a manual trigger",
        OPERATOR_TRIGGERED: "another DAG's trigger",
    }.get(run_type, str(run_type))


def _event(event: Any) -> str:
    """An asset event in words: its asset, where it came from and, for a decay, the version and the reasons."""
    extra = dict(getattr(event, "extra", None) or {})
    said = f"an event on {event.asset.name}"
    if getattr(event, "source_dag_id", None):
        said += f" from {event.source_dag_id}"
    if extra.get("version") and extra.get("reasons"):
        said += f" (version {extra['version']}: {'; '.join(map(str, extra['reasons']))})"
    return said


def macros(schedule: str, timezone: str) -> dict[str, Any]:
    """Template macros of a DAG on this retraining schedule: ``mlops_interval(dag_run)`` (an Interval) and
    ``mlops_release_plan(dag_run, params)`` (the plan as the dict the register stage records, with what started
    the run)."""

    def mlops_interval(dag_run: Any) -> Interval:
        return run_interval(dag_run, schedule, timezone)

    def mlops_release_plan(dag_run: Any, params: Any) -> dict[str, Any]:
        interval, now = run_interval(dag_run, schedule, timezone), pendulum.now("UTC")
        # A week of partitions is the newest until the next week's is complete; otherwise the schedule says.
        newest_end = (
            now - PARTITION_PERIOD if _partitioned(dag_run) else latest_complete(schedule, timezone, now).end
        )
        plan = release_plan(
            run_type=dag_run.run_type,
            interval=interval,
            now=now,
            newest_end=newest_end,
            choice=params["release"],
        )
        return {**asdict(plan), "started_by": started_by(dag_run)}

    return {"mlops_interval": mlops_interval, "mlops_release_plan": mlops_release_plan}
