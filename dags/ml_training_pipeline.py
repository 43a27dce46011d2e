"""
### ML training pipeline

Prepares a table with a binary target, trains a classifier (on a GPU node when one is there), evaluates it
against the current champion and, when it passes the quality gate, registers it in MLflow with the alias
`challenger`.

| Task | Runs | Does |
|---|---|---|
| `prepare` | pod, CPU | validates the table and writes train / validation / test Parquet for this data interval |
| `train` | pod, GPU | XGBoost (`hist`, CUDA when visible) or the RandomForest baseline; logs the run to MLflow |
| `evaluate` | pod, CPU | test-set metrics, threshold chosen on validation, comparison with `champion`, plots, model card |
| `gate` | worker | continues only on a `pass` decision; a missing or malformed evaluation fails the run |
| `register` | pod, CPU | one model version per DAG run, alias `challenger` |

**Re-runs are safe.** Outputs are keyed by the data interval and replaced whole; the MLflow run and the
model version are keyed by the DAG run, so a retried or cleared task never registers a second version.

**Settings** (Airflow Variables): `mlflow_tracking_uri`, `mlops_data_root` (a path or `s3://` prefix) and
`mlops_pod_runtime` (`local`, the default, or `kubernetes`). Images, resource presets and the quality gate's
defaults live in `plugins/mlops/platform.yaml`.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import CronDataIntervalTimetable, Param, dag, task
from airflow.sdk.exceptions import AirflowFailException
from mlops.keys import MACROS
from mlops.operators import MLStageOperator, param_arguments
from mlops.platform_config import load_platform

log = logging.getLogger(__name__)
PLATFORM = load_platform()
GATE = PLATFORM.quality_gate
TRAINING = PLATFORM.training
REGISTRY = PLATFORM.registry

RUN_KEY = "{{ mlops_run_key(dag.dag_id, run_id) }}"
PREPARED_URI = "{{ ti.xcom_pull(task_ids='prepare')['prepared_uri'] }}"
OUTPUT_URI = "{{ var.value.mlops_data_root }}/prepared/{{ dag.dag_id }}/{{ mlops_partition_key(dag_run) }}"


@dag(
    schedule=CronDataIntervalTimetable("0 3 * * 1", timezone="UTC"),  # weekly retraining, Mondays 03:00 UTC
    start_date=pendulum.datetime(2026, 1, 5, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=8),
    tags=["ml", "training", "mlflow", "kubernetes"],
    doc_md=__doc__,
    user_defined_macros=MACROS,
    default_args={
        "owner": "ml-platform",
        "retries": 2,
        "retry_delay": timedelta(minutes=1),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=20),
    },
    params={
        "dataset_uri": Param(
            "synthetic://card-transactions?rows=200000&seed=42",
            type="string",
            minLength=1,
            title="Dataset",
            description="CSV or Parquet table: a path, s3://bucket/key, or synthetic://card-transactions?rows=N&seed=S",
        ),
        "target_column": Param("is_fraud", type="string", minLength=1, title="Target column (binary)"),
        "time_column": Param(
            "timestamp",
            type=["null", "string"],
            title="Time column",
            description="Split by time on this column (train earlier, test later); empty for a stratified split",
        ),
        "drop_columns": Param(
            ["transaction_id"],
            type="array",
            items={"type": "string"},
            title="Columns to drop",
            description="Identifiers and leaky columns to leave out of the features",
        ),
        "model_type": Param(TRAINING["model_type"], enum=["xgboost", "random_forest"], title="Model"),
        "n_estimators": Param(
            TRAINING["n_estimators"], type="integer", minimum=1, maximum=5000, title="Max boosting rounds"
        ),
        "max_depth": Param(
            TRAINING["max_depth"], type="integer", minimum=1, maximum=16, title="Max tree depth"
        ),
        "learning_rate": Param(
            TRAINING["learning_rate"], type="number", exclusiveMinimum=0, maximum=1, title="Learning rate"
        ),
        "early_stopping_rounds": Param(
            TRAINING["early_stopping_rounds"],
            type="integer",
            minimum=1,
            maximum=500,
            title="Early stopping rounds",
        ),
        "scale_pos_weight": Param(
            TRAINING["scale_pos_weight"],
            type="string",
            pattern=r"^(sqrt|auto|none|[0-9]*\.?[0-9]+)$",
            title="Positive class weight",
            description="sqrt or auto (of the negative/positive ratio), none, or a number",
        ),
        "device": Param(TRAINING["device"], enum=["auto", "cpu", "cuda"], title="Training device"),
        "min_average_precision": Param(
            GATE["min_average_precision"],
            type="number",
            minimum=0,
            maximum=1,
            title="Minimum average precision",
            description="The test-set PR-AUC a model needs to be registered",
        ),
        "min_improvement": Param(
            GATE["min_improvement"],
            type="number",
            minimum=-1,
            maximum=1,
            title="Minimum improvement over champion",
            description="Required gain in average precision over the current champion (when there is one)",
        ),
        "registered_model_name": Param(
            REGISTRY["model_name"],
            type="string",
            pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
            title="Registered model",
        ),
        "seed": Param(TRAINING["seed"], type="integer", minimum=0, title="Random seed"),
    },
)
def ml_training_pipeline() -> None:
    prepare = MLStageOperator(
        stage="prepare",
        arguments=[
            "--source", "{{ params.dataset_uri }}",
            "--target", "{{ params.target_column }}",
            "--time-column", "{{ params.time_column or '' }}",
            "--drop-columns", "{{ params.drop_columns | join(',') }}",
            "--output", OUTPUT_URI,
            *param_arguments("seed"),
        ],
    )  # fmt: skip
    train = MLStageOperator(
        stage="train",
        arguments=[
            "--prepared-uri", PREPARED_URI,
            "--experiment", "{{ dag.dag_id }}",
            "--run-key", RUN_KEY,
            *param_arguments(*TRAINING),
        ],
    )  # fmt: skip
    evaluate = MLStageOperator(
        stage="evaluate",
        arguments=[
            "--prepared-uri", PREPARED_URI,
            "--model-uri", "{{ ti.xcom_pull(task_ids='train')['model_uri'] }}",
            "--run-id", "{{ ti.xcom_pull(task_ids='train')['run_id'] }}",
            *param_arguments("registered_model_name", "min_average_precision", "min_improvement"),
            "--champion-alias", REGISTRY["production_alias"],
        ],
    )  # fmt: skip

    @task.short_circuit
    def gate(evaluation: dict[str, Any] | None) -> bool:
        """Continue to registration only on a pass; fail closed on a missing or malformed evaluation."""
        if not isinstance(evaluation, dict) or "decision" not in evaluation:
            raise AirflowFailException(
                f"no usable evaluation result ({evaluation!r}): nothing will be registered"
            )
        reasons = "; ".join(evaluation.get("reasons", []))
        if evaluation["decision"] == "pass":
            log.info("PASS: %s", reasons)
            return True
        if evaluation["decision"] == "fail":
            log.info("FAIL: %s. Nothing is registered.", reasons)
            return False
        raise AirflowFailException(f"unknown decision {evaluation['decision']!r}: nothing will be registered")

    register = MLStageOperator(
        stage="register",
        arguments=[
            "--evaluation", "{{ ti.xcom_pull(task_ids='evaluate') | tojson }}",
            "--run-key", RUN_KEY,
            "--alias", REGISTRY["candidate_alias"],
        ],
    )  # fmt: skip

    prepare >> train >> evaluate
    gate(evaluate.output) >> register  # type: ignore[arg-type]  # XComArg resolves to the dict at run time


ml_training_pipeline()
