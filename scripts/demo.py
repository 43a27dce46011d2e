"""Run the training DAG once, end to end, on the embedded defaults and print what happened.

Expects the environment that ``make demo`` sets: AIRFLOW_HOME with a migrated database, the MLflow server
running, and the Airflow Variables (``AIRFLOW_VAR_*``) that point the pipeline at it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

DAG_ID = "ml_training_pipeline"
STAGE_TASKS = ("prepare", "train", "evaluate", "gate", "register")


def run_dag(conf: dict[str, Any], dags_folder: Path) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(str(dags_folder))
    if bag.import_errors:
        raise SystemExit(f"DAG import errors: {bag.import_errors}")
    dag = bag.dags[DAG_ID]
    return dag.test(run_conf=conf)


def summarise(dag_run: Any, tracking_uri: str) -> int:
    from mlflow import MlflowClient
    from mlops.keys import run_key

    from ml import tracking

    print("\n== Tasks ==")
    states = {ti.task_id: ti.state for ti in dag_run.get_task_instances()}
    for task_id in STAGE_TASKS:
        print(f"  {task_id:<10} {states.get(task_id)}")
    print(f"  DAG run    {dag_run.state}  ({dag_run.run_id})")

    client = MlflowClient(tracking_uri)
    dag_run_key = run_key(DAG_ID, dag_run.run_id)
    run = tracking.find_keyed_run(DAG_ID, dag_run_key)
    if run is None:
        print("\nNo MLflow run was recorded for this DAG run.")
        return 1
    print("\n== MLflow run ==")
    print(f"  {tracking_uri}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}")
    print(
        f"  model type {run.data.params.get('model_type')}, trained on {run.data.params.get('device_used')}"
    )
    print("\n== Test metrics ==")
    for metric in sorted(
        k for k in run.data.metrics if k.startswith(("test_", "champion_test_", "decision_"))
    ):
        print(f"  {metric:<32} {run.data.metrics[metric]:.4f}")
    print("\n== Decision ==")
    evaluation = json.loads(Path(client.download_artifacts(run.info.run_id, "evaluation.json")).read_text())
    print(f"  {evaluation['decision'].upper()}")
    for reason in evaluation["reasons"]:
        print(f"  - {reason}")
    print("\n== Registry ==")
    name = evaluation["registered_model_name"]
    version = tracking.find_keyed_version(name, dag_run_key)
    if version is None:
        print("  nothing registered by this run")
        return 0 if dag_run.state == "success" else 1
    aliases = ", ".join(client.get_model_version(name, version.version).aliases) or "none"
    print(f"  {name} version {version.version} (aliases: {aliases})")
    print(f"  {tracking_uri}/#/models/{name}/versions/{version.version}")
    return 0 if dag_run.state == "success" else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000, help="rows of the synthetic dataset")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--conf", default="{}", help="extra DAG run conf as JSON")
    args = parser.parse_args()
    conf = {
        "dataset_uri": f"synthetic://card-transactions?rows={args.rows}&seed={args.seed}",
        **json.loads(args.conf),
    }
    dags_folder = Path(os.environ.get("AIRFLOW__CORE__DAGS_FOLDER", "dags"))
    tracking_uri = os.environ["AIRFLOW_VAR_MLFLOW_TRACKING_URI"]
    os.environ.setdefault("MLFLOW_TRACKING_URI", tracking_uri)
    print(f"Running {DAG_ID} with {json.dumps(conf)}")
    started = time.perf_counter()
    dag_run = run_dag(conf, dags_folder)
    print(f"\nFinished in {time.perf_counter() - started:.0f}s")
    sys.exit(summarise(dag_run, tracking_uri))


if __name__ == "__main__":
    main()
