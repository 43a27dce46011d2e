"""The monitoring DAG of a model, built for each model file by ``dags/model_dags.py`` as ``monitor_<key>``.

Each data interval (daily by default, ``monitoring`` in the model file over ``platform.yaml``'s), the ``monitor``
stage (``ml/monitor.py``) joins the predictions the inference API recorded with the labels that have arrived, logs
each served version's live quality and drift on its MLflow run, and judges the champion. A decayed champion is
announced on the model's decay asset (``<registered model>/decayed``), with the reasons, and alerted (the model's
alert connection, with the runbook): the model's training DAG runs on its schedule **or** that event. Runs are per interval and backfillable: a re-run reads the same predictions
and the same labels (those that arrived by the interval's end).
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import DAG, CronDataIntervalTimetable, dag, task
from airflow.sdk.exceptions import AirflowSkipException

from mlops.assets import decay_asset
from mlops.models import Model
from mlops.notifiers import alerts
from mlops.operators import MLStageOperator
from mlops.platform_config import load_platform

log = logging.getLogger(__name__)

#: Where the inference API records every row it scores (``ml.serve.recorder``): the release sets it, the monitoring
#: DAG reads it.
PREDICTIONS_DIR = "predictions"
PREDICTIONS_URI = f"{{{{ var.value.mlops_data_root }}}}/{PREDICTIONS_DIR}"
#: What to do when a model decayed (the alert links it).
RUNBOOK = "docs/runbooks/ModelDecayed.md"
#: A URI of a model file that names a place under the platform's data root.
DATA_ROOT = "{data_root}"


def in_data_root(uri: str) -> str:
    """A model file's URI as a template: ``{data_root}`` becomes the platform's data root (an Airflow Variable)."""
    return uri.replace(DATA_ROOT, "{{ var.value.mlops_data_root }}")


def monitor_arguments(model: Model) -> list[str]:
    """The monitor stage's arguments for the model: its labels, the gate's floor, the interval of the run."""
    monitoring, labels, platform = model.monitoring, model.monitoring.labels, load_platform()
    label_arguments = (
        ["--labels", in_data_root(labels.uri), "--id-column", labels.id_column,
         "--arrived-column", labels.arrived_column, "--label-column", model.dataset.target,
         *(["--positive-label", model.dataset.positive_label] if model.dataset.positive_label else [])]
        if labels else []
    )  # fmt: skip
    return [
        "--registered-model", model.registered_model,
        "--predictions", PREDICTIONS_URI,
        *label_arguments,
        # A run triggered without a logical date (the UI's Trigger) judges the day before it was triggered.
        "--start", "{{ (data_interval_start or dag_run.run_after - macros.timedelta(days=1)).isoformat() }}",
        "--end", "{{ (data_interval_end or dag_run.run_after).isoformat() }}",
        "--label-delay-days", str(monitoring.label_delay_days),
        "--champion-alias", platform.registry.production_alias,
        "--min-average-precision", str(model.quality_gate.min_average_precision),
        "--psi-threshold", str(monitoring.psi_threshold),
        "--min-labelled-positives", str(monitoring.min_labelled_positives),
    ]  # fmt: skip


@task
def announce_decay(judgement: Any, *, outlets: Any = None, outlet_events: Any = None) -> None:
    """Announce a decayed champion on the model's decay asset (the task's outlet): its retraining runs on it."""
    if not judgement["decayed"]:
        raise AirflowSkipException(
            f"{judgement['status']}: {'; '.join(judgement['reasons']) or 'nothing to say'}"
        )
    outlet_events[outlets[0]].extra = {
        "registered_model": judgement["registered_model"],
        "version": judgement["champion"],
        "window": judgement["window"],
        "reasons": judgement["reasons"],
    }
    log.warning("%s v%s decayed: %s", judgement["registered_model"], judgement["champion"],
                "; ".join(judgement["reasons"]))  # fmt: skip


def monitoring_dag(model: Model) -> DAG:
    """The model's monitoring DAG (see the module's docstring)."""
    monitoring = model.monitoring

    @dag(
        dag_id=model.monitoring_dag_id,
        schedule=CronDataIntervalTimetable(monitoring.schedule, timezone=monitoring.timezone),
        start_date=pendulum.datetime(2026, 1, 5, tz="UTC"),
        catchup=False,
        max_active_runs=1,
        tags=["ml", "monitoring", f"model:{model.key}"],
        description=f"{model.registered_model} in production: live quality and drift, decay starts retraining",
        doc_md=__doc__,
        default_args={
            "owner": ", ".join(model.owners),
            "retries": 2,
            "retry_delay": timedelta(minutes=1),
            "retry_exponential_backoff": True,
        },
    )
    def monitor() -> None:
        judged = MLStageOperator(stage="monitor", arguments=monitor_arguments(model))
        announce_decay.override(
            outlets=[decay_asset(model.registered_model)],
            on_success_callback=alerts(
                model,
                title=f"{model.registered_model} decayed in production: retraining starts",
                message="v{{ ti.xcom_pull(task_ids='monitor')['champion'] }}, predictions "
                "{{ ti.xcom_pull(task_ids='monitor')['window'] | join(' to ') }}: "
                "{{ ti.xcom_pull(task_ids='monitor')['reasons'] | join('; ') }}. "
                f"Runbook: {RUNBOOK}",
            ),
        )(judged.output)

    built: DAG = monitor()
    return built
