"""MLflow helpers shared by the stages: runs keyed by the orchestrator's run, and model scoring.

Every stage of one DAG run logs into one MLflow run, found by the tag ``mlops.run_key`` (``<dag_id>/<run_id>``),
so a retried or cleared task reuses its run instead of scattering attempts across new ones.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from contract import RUN_KEY_TAG, SUPERSEDED_TAG
from ml.errors import StageError

log = logging.getLogger(__name__)


def client() -> Any:
    from mlflow import MlflowClient

    return MlflowClient()


def quoted(value: str) -> str:
    if "'" in value or "\\" in value:
        raise StageError(f"run key {value!r} must not contain quotes or backslashes")
    return f"'{value}'"


def experiment_id(name: str) -> str:
    """Return the id of the named experiment, creating it if needed (safe against a concurrent create)."""
    from mlflow.exceptions import MlflowException

    mlflow_client = client()
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is not None:
        return str(experiment.experiment_id)
    try:
        return str(mlflow_client.create_experiment(name))
    except MlflowException:
        experiment = mlflow_client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return str(experiment.experiment_id)


def find_keyed_run(experiment: str, run_key: str) -> Any | None:
    """Return the live MLflow run tagged with ``run_key`` in ``experiment``, or None."""
    runs = client().search_runs(
        [experiment_id(experiment)],
        filter_string=f"tags.`{RUN_KEY_TAG}` = {quoted(run_key)}",
        max_results=1,
        order_by=["attributes.start_time DESC"],
    )
    return runs[0] if runs else None


def find_keyed_version(name: str, run_key: str) -> Any | None:
    """Return the version of registered model ``name`` that the run ``run_key`` registered, or None."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client().search_model_versions(
            f"name = {quoted(name)} and tags.`{RUN_KEY_TAG}` = {quoted(run_key)}"
        )
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    return versions[0] if versions else None


def create_keyed_run(experiment: str, run_key: str, run_name: str) -> Any:
    return client().create_run(experiment_id(experiment), run_name=run_name, tags={RUN_KEY_TAG: run_key})


def supersede(run: Any, reason: str) -> None:
    """Take a run out of its key so that a new run can carry it; the old run stays for the record."""
    mlflow_client = client()
    old_key = run.data.tags.get(RUN_KEY_TAG, "")
    mlflow_client.set_tag(run.info.run_id, RUN_KEY_TAG, f"{old_key}#superseded-{int(time.time())}")
    mlflow_client.set_tag(run.info.run_id, SUPERSEDED_TAG, reason)
    log.info("superseded MLflow run %s: %s", run.info.run_id, reason)


def log_metric_series(run_id: str, key: str, values: list[float]) -> None:
    """Log one value per step in batches (one HTTP call per 1,000 points instead of one per point)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(key, float(v), now, step) for step, v in enumerate(values)]
    mlflow_client = client()
    for start in range(0, len(metrics), 1000):
        mlflow_client.log_batch(run_id, metrics=metrics[start : start + 1000])


def positive_scores(model: Any, features: Any) -> np.ndarray:
    """Return the positive-class probability from a pyfunc model that predicts probabilities."""
    predictions = model.predict(features)
    scores = np.asarray(getattr(predictions, "values", predictions), dtype=np.float64)
    if scores.ndim == 2:
        scores = scores[:, -1]
    return scores
