"""
### Champion batch scoring (example consumer)

An example of a DAG scheduled on the served model: it runs each time the training pipeline moves the
production alias (`champion`), and reads the new champion from the asset event's extra (model name, version,
model URI, test metrics, decision threshold). A batch-scoring job would load `model_uri` here (for example
with `mlflow.pyfunc.load_model`, or as a pod of the ML stage image) and score the day's table with the
recorded threshold; this example only says what it would score with.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import dag, task

from mlops.assets import champion_asset
from mlops.platform_config import load_platform

log = logging.getLogger(__name__)
REGISTRY = load_platform().registry
CHAMPION = champion_asset(REGISTRY.model_name, REGISTRY.production_alias)


@task
def new_champion(*, triggering_asset_events: Any = None) -> dict[str, Any]:
    """The champion announced by the latest event on the asset (several events: the last one wins)."""
    events = list(triggering_asset_events[CHAMPION]) if triggering_asset_events else []
    if not events:
        raise ValueError(f"no event on {CHAMPION.name}: this DAG runs when the training pipeline moves it")
    extra = dict(events[-1].extra)
    log.info("scoring with %s (version %s), threshold %.4f, test metrics %s",
             extra["model_uri"], extra["version"], extra["threshold"], extra["metrics"])  # fmt: skip
    return extra


@dag(
    schedule=[CHAMPION],
    start_date=pendulum.datetime(2026, 1, 5, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["ml", "scoring", "example"],
    doc_md=__doc__,
    default_args={"owner": "ml-platform", "retries": 1, "retry_delay": timedelta(minutes=1)},
)
def champion_batch_scoring() -> None:
    new_champion()


champion_batch_scoring()
