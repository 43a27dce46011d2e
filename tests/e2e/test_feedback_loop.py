"""The feedback loop on a real scheduler: a monitoring run that finds the champion decayed announces it on the model's
decay asset, and the scheduler starts the training DAG on that event; a monitoring run that finds it healthy starts
nothing.

Its own ``airflow standalone``, whose scheduler creates runs (the session's creates none, so that the other tests see
only the runs they start), with one model: the card-fraud model's file under another name, its retraining schedule
once a year (so that only the decay can start it in the test), its floor and the labelled frauds it needs made
to fit the session's small model. Its champion is a real model (the session's, served
to the recorder's own code): two days of its recorded predictions are written as the inference API writes them,
with labels that arrived two days later. On the first the labels agree with the model; on the second they put the
frauds where it scores lowest (a pattern that turned around).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from ml.serve.model import load
from ml.serve.recorder import Chunk, put_parquet, rows_table
from tests.conftest import free_port
from tests.e2e.conftest import (
    PICTURES,
    README_PICTURES,
    Airflow,
    launch_standalone,
    stop_standalone,
    wait_until_dag_is_listed,
)
from tests.helpers import register_champion, split_records, write_model

pytestmark = [pytest.mark.e2e, pytest.mark.scheduler]
KEY, MODEL = "loop_fraud", "loop-fraud-detector"
TRAINING, MONITORING = f"train_{KEY}", f"monitor_{KEY}"
#: The two judged days: ``STABLE`` (labels that agree with the model) and ``TURNED`` (frauds where it scores lowest).
STABLE, TURNED = (pd.Timestamp.now(tz="UTC").normalize() - pd.Timedelta(days=d) for d in (12, 9))
#: The gate's floor of average precision, for the session's small model: the monitoring judges against it.
FLOOR = 0.1
#: Long enough for a few of the scheduler's loops to create a run, if one were due.
SCHEDULER_LOOPS_S = 10


@pytest.fixture(scope="module")
def scheduler(mlflow_server, mlflow_root, tmp_path_factory) -> Iterator[Airflow]:
    home = tmp_path_factory.mktemp("airflow-loop")
    # A small test split: a floor and a count of labelled frauds it can be judged on.
    models = write_model(home / "models", KEY, MODEL, free_port(), **{
        "retraining.schedule": "0 3 1 1 *", "quality_gate.min_average_precision": FLOOR,
        "monitoring.min_labelled_positives": 5,
    })  # fmt: skip
    launch = launch_standalone(
        home, mlflow_server, mlflow_root, models,
        AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE="True", AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="True",
    )  # fmt: skip
    try:
        airflow = Airflow(launch.url, launch.home, launch.env, launch.db)
        wait_until_dag_is_listed(airflow, launch.started(), launch.log, TRAINING)
        for dag_id in (MONITORING, TRAINING):
            airflow.api(f"/dags/{dag_id}", {"is_paused": False}, method="PATCH")
        yield airflow
    finally:
        stop_standalone(launch)


@pytest.fixture(scope="module")
def recorded(scheduler: Airflow, trained_model: dict[str, Any]) -> dict[str, Any]:
    """The champion, and two days of its predictions and their labels where the model file says."""
    out, trained = trained_model["prepared"], trained_model["trained"]
    _, version = register_champion(out, trained, MODEL, run_key="loop/1")
    card, scorer = load(f"models:/{MODEL}/{version}")
    _, test, records = split_records(out)
    matrix = scorer.matrix(records)
    scores = scorer.predict(matrix)
    truth = test["is_fraud"].to_numpy().astype(int)
    assert truth.sum() >= 5
    lowest = np.argsort(scores)[: truth.sum()]
    turned = np.zeros_like(truth)
    turned[lowest] = 1
    data = scheduler.data_root
    from mlops.models import load_models
    from mlops.monitor_dag import DATA_ROOT, PREDICTIONS_DIR

    landed = Path(
        load_models(scheduler.home / "models").get(KEY).monitoring.labels.uri.replace(DATA_ROOT, str(data))
    )
    landed.mkdir(parents=True, exist_ok=True)
    for day, labels in ((STABLE, truth), (TURNED, turned)):
        ids = [f"{day:%Y%m%d}-{i}" for i in range(len(records))]
        chunk = Chunk(card, scorer.categories, len(records), matrix.shape[1])
        chunk.take((day + pd.Timedelta(hours=12)).timestamp(), ",".join(ids), matrix, scores, 0)
        put_parquet(
            f"{data}/{PREDICTIONS_DIR}/{MODEL}/date={day:%Y-%m-%d}/{version}-test-1.parquet",
            rows_table(chunk),
        )
        arrived = day + pd.Timedelta(days=2)
        pd.DataFrame({"transaction_id": ids, "is_fraud": labels, "labelled_at": arrived}).to_parquet(
            landed / f"labels-{day:%Y-%m-%d}.parquet"
        )
    return {"version": version}


def judge(airflow: Airflow, day: pd.Timestamp) -> dict[str, Any]:
    """Trigger the monitoring run that judges ``day`` (the interval ``label_delay_days`` later) and wait for it."""
    from mlops.models import load_models

    delay = load_models(airflow.home / "models").get(KEY).monitoring.label_delay_days
    # The daily interval that ends at 02:00 after the day, moved by the labels' delay: its window holds the day's noon.
    end = day + pd.Timedelta(days=1 + delay, hours=2)
    run = airflow.api(f"/dags/{MONITORING}/dagRuns", {"logical_date": end.isoformat(), "conf": {}})
    return airflow.wait_for_run(run["dag_run_id"], timeout=300, dag_id=MONITORING)


def judgement(airflow: Airflow, run: dict[str, Any]) -> dict[str, Any]:
    """The monitor stage's result in the run."""
    path = f"/dags/{MONITORING}/dagRuns/{run['dag_run_id']}/taskInstances/monitor/xcomEntries/return_value"
    value = airflow.api(path)["value"]
    return dict(json.loads(value) if isinstance(value, str) else value)


def training_runs(airflow: Airflow) -> list[dict[str, Any]]:
    return list(airflow.api(f"/dags/{TRAINING}/dagRuns")["dag_runs"])


def test_a_healthy_champion_starts_nothing_and_a_decayed_one_starts_its_training(scheduler, recorded) -> None:
    healthy = judge(scheduler, STABLE)
    assert healthy["state"] == "success"
    states = {t["task_id"]: t["state"] for t in scheduler.api(
        f"/dags/{MONITORING}/dagRuns/{healthy['dag_run_id']}/taskInstances")["task_instances"]}  # fmt: skip
    assert states == {"monitor": "success", "announce_decay": "skipped"}
    assert judgement(scheduler, healthy)["status"] == "healthy"
    time.sleep(SCHEDULER_LOOPS_S)
    assert training_runs(scheduler) == []

    decayed = judge(scheduler, TURNED)
    assert decayed["state"] == "success"
    assert judgement(scheduler, decayed)["status"] == "decayed"
    deadline = time.monotonic() + 120
    while not (started := training_runs(scheduler)) and time.monotonic() < deadline:
        time.sleep(2)
    assert [run["run_type"] for run in started] == ["asset_triggered"]
    # What started it, on the event the run was triggered by: the decay and why.
    events = scheduler.api(f"/assets/events?source_dag_id={MONITORING}")["asset_events"]
    assert [e["extra"]["version"] for e in events] == [recorded["version"]]
    assert any(reason.startswith("live AP ") for reason in events[0]["extra"]["reasons"])
    # ... and on the run: what its tasks read as the run's consumed events, which its version's mlops.started_by
    # names (mlops.intervals.started_by).
    consumed = scheduler.api(f"/dags/{TRAINING}/dagRuns/{started[0]['dag_run_id']}/upstreamAssetEvents")
    assert [e["id"] for e in consumed["asset_events"]] == [events[0]["id"]]
    # The training run itself is not this test's: stop it.
    scheduler.api(f"/dags/{TRAINING}/dagRuns/{started[0]['dag_run_id']}", {"state": "failed"}, method="PATCH")


def test_the_versions_run_shows_its_live_quality_by_day_against_the_floor(scheduler, recorded) -> None:
    """The two judged days on the champion's run, a point a day (the README's picture of it: its plot). The run is
    the session's trained model's, which other tests' versions may share and judge on other days."""
    from mlflow import MlflowClient

    client = MlflowClient()
    run_id = client.get_model_version(MODEL, recorded["version"]).run_id
    by_day = {m.step: m.value for m in client.get_metric_history(run_id, "live_average_precision")}
    stable, turned = (by_day[int(day.timestamp() // 86400)] for day in (STABLE, TURNED))
    assert stable > FLOOR > turned
    PICTURES.mkdir(parents=True, exist_ok=True)
    plot = Path(client.download_artifacts(run_id, "plots/live_quality.png", str(scheduler.home)))
    (picture,) = README_PICTURES[Path(__file__).stem]
    shutil.copyfile(plot, PICTURES / f"{picture}.png")
