"""A model's Airflow assets: the table it reads, the prepared windows and the champion it serves.

- its source (the model file's ``dataset.asset``, ``transactions`` for card fraud): the ``prepare`` task's inlet.
  With ``retraining.trigger: asset`` the model's training DAG is scheduled on it instead of the cron: an
  ingestion job marks each day it lands as a partition (key ``YYYY-MM-DD``), and once all seven days of a week
  are in, the DAG runs for that week (its partition key is the Monday; ``mlops.intervals`` turns it into the
  run's data interval).
- ``<dag_id>/prepared``: one event per ``prepare`` run, its extra naming the windows read, the inputs, the
  rows and the digest of the splits.
- ``<registered model>@<production alias>``: one event each time the production alias moves, its extra naming
  the model, the version and its test metrics, so that downstream DAGs (batch scoring) run on a new champion.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Asset, PartitionedAssetTimetable, RollupMapper, StartOfWeekMapper, WeekWindow

#: The interval an asset-triggered run covers, from its partition key (the Monday of the week).
PARTITION_PERIOD = timedelta(weeks=1)
PARTITION_KEY_FORMAT = "%Y-%m-%d"


def source_asset(name: str) -> Asset:
    return Asset(name=name)


def prepared_asset(dag_id: str) -> Asset:
    return Asset(name=f"{dag_id}/prepared")


def champion_asset(model_name: str, alias: str) -> Asset:
    return Asset(name=f"{model_name}@{alias}")


def decay_asset(model_name: str) -> Asset:
    """Announced by the model's monitoring DAG when its champion decayed; its training DAG runs on it."""
    return Asset(name=f"{model_name}/decayed")


def weekly_partitions_of(asset: Asset, timezone: str) -> PartitionedAssetTimetable:
    """Run once per week of daily partitions of ``asset``, when all seven days have landed."""
    return PartitionedAssetTimetable(
        assets=asset,
        default_partition_mapper=RollupMapper(
            upstream_mapper=StartOfWeekMapper(
                timezone=timezone, input_format=PARTITION_KEY_FORMAT, output_format=PARTITION_KEY_FORMAT
            ),
            window=WeekWindow(),
        ),
    )
