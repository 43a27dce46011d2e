"""The batch-scoring DAG of a model's champion (an example consumer), built for each model file by
``dags/model_dags.py`` as ``score_<key>``.

It runs each time the model's training DAG moves its production alias (``champion``), and reads the new champion
from the asset event's extra (model name, version, model URI, test metrics, decision threshold).
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import DAG, dag, task

from mlops.assets import champion_asset
from mlops.models import Model
from mlops.platform_config import load_platform

log = logging.getLogger(__name__)

DOC = """
### Champion batch scoring of {name} (example consumer)

An example of a DAG scheduled on a served model: it runs each time `{training}` moves the model's production
alias (`{alias}`), and reads the new champion from the asset event's extra (model name, version, model URI, test
metrics, decision threshold). A batch-scoring job would load `model_uri` here (for example with
`mlflow.pyfunc.load_model`, or as a pod of the ML stage image) and score the day's table with the recorded
threshold; this example only says what it would score with.
"""


@task
def new_champion(champion: str, *, triggering_asset_events: Any = None) -> dict[str, Any]:
    """The champion announced by the latest event on the model's champion asset (several: the last one wins)."""
    events = [event for asset, found in (triggering_asset_events or {}).items() if asset.name == champion
              for event in found]  # fmt: skip
    if not events:
        raise ValueError(f"no event on {champion}: this DAG runs when the training pipeline moves it")
    extra = dict(events[-1].extra)
    log.info("scoring with %s (version %s), threshold %.4f, test metrics %s",
             extra["model_uri"], extra["version"], extra["threshold"], extra["metrics"])  # fmt: skip
    return extra


def scoring_dag(model: Model) -> DAG:
    """The model's scoring DAG, scheduled on its champion asset."""
    alias = load_platform().registry.production_alias
    champion = champion_asset(model.registered_model, alias)

    @dag(
        dag_id=model.scoring_dag_id,
        schedule=[champion],
        start_date=pendulum.datetime(2026, 1, 5, tz="UTC"),
        catchup=False,
        max_active_runs=1,
        tags=["ml", "scoring", "example", f"model:{model.key}"],
        doc_md=DOC.format(name=model.registered_model, training=model.training_dag_id, alias=alias),
        default_args={"owner": ", ".join(model.owners), "retries": 1, "retry_delay": timedelta(minutes=1)},
    )
    def scoring() -> None:
        new_champion(champion.name)

    return scoring()
