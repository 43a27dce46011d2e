"""The training DAG end to end: dag.test() in the local pod runtime against a real MLflow server on loopback."""

from __future__ import annotations

import json
import os
import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pendulum
import pytest
import yaml
from mlflow import MlflowClient

from contract import (
    CANARY_MESSAGE_TAG,
    CANARY_VERDICT_TAG,
    DECISION_TAG,
    MODEL_ID_TAG,
    PREPARED_URI_TAG,
    THRESHOLD_TAG,
)
from mlops.models import MODELS_DIR_ENV
from mlops.platform_config import PLATFORM_FILE_ENV, load_platform
from tests.conftest import free_port
from tests.helpers import CHALLENGER, CHAMPION, artifact_folder, tests_canary, write_model

ROOT = Path(__file__).resolve().parents[2]
#: The tests' own model file (the card-fraud model's, under another name and release): its DAG.
DAG_ID = "train_e2e_fraud"
MODEL = "e2e-fraud-model"
RELEASE = f"{MODEL}-api"
RELEASE_TASKS = ("deploy", "watch_rollout", "promote", "needs_rollback", "rollback", "alert")
CONF = {
    "dataset_uri": "synthetic://card-transactions?rows_per_day=1000&seed=3",
    "training_window_days": 21,
    "min_average_precision": 0.1,
    "n_estimators": 100,
    # These runs are for past weeks, which would register for the record only: release them as a person can.
    "release": "always",
}
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def dag(
    airflow_db: Path, mlflow_server: str, quick_platform: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    from airflow.dag_processing.dagbag import DagBag

    from standins.rollouts import stop

    data_root = tmp_path_factory.mktemp("data-root")
    settings = {
        "AIRFLOW_VAR_MLFLOW_TRACKING_URI": mlflow_server,
        "AIRFLOW_VAR_MLOPS_DATA_ROOT": str(data_root),
        "AIRFLOW_VAR_MLOPS_POD_RUNTIME": "local",
        PLATFORM_FILE_ENV: str(quick_platform),  # the chart's canary steps with 1 s pauses
        MODELS_DIR_ENV: str(
            write_model(tmp_path_factory.mktemp("e2e") / "models", "e2e_fraud", MODEL, free_port())
        ),
    }
    os.environ.update(settings)
    dag = DagBag(str(ROOT / "dags")).dags[DAG_ID]
    for task in dag.tasks:
        task.retries = 0  # dag.test() sleeps through retry delays; failures here must show at once
    yield dag
    stop(data_root / load_platform().release.local.state_dir / RELEASE)
    for key in settings:
        os.environ.pop(key, None)


def run(dag: Any, day: int, *, logical: bool = True, **conf: Any) -> Any:
    """Run the DAG for one day; the same day again is the same DAG run (same run_id), cleared and re-run.

    ``logical=False`` triggers as the UI and the REST API do by default: no logical date, no data interval.
    """
    when = pendulum.datetime(2026, 3, day, tz="UTC")
    return dag.test(logical_date=when if logical else None, run_after=when, run_conf={**CONF, **conf})


def states(dag_run: Any) -> dict[str, str]:
    return {ti.task_id: ti.state for ti in dag_run.get_task_instances()}


def safe(dag_run: Any) -> str:
    """The run id as its output folder names it."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", dag_run.run_id)


def keyed_runs(run_key: str) -> list[Any]:
    experiment = MlflowClient().get_experiment_by_name(DAG_ID)
    return MlflowClient().search_runs(
        [experiment.experiment_id], filter_string=f"tags.`mlops.run_key` LIKE '{run_key}%'"
    )


def versions(run_key: str | None = None) -> list[Any]:
    query = f"name = '{MODEL}'" + (f" and tags.`mlops.run_key` = '{run_key}'" if run_key else "")
    return list(MlflowClient().search_model_versions(query))


@pytest.fixture(scope="module")
def first_run(dag) -> Any:
    return run(dag, 2)


def xcom(dag_run: Any, task_id: str) -> Any:
    (ti,) = [ti for ti in dag_run.get_task_instances() if ti.task_id == task_id]
    return ti.xcom_pull(task_ids=task_id)


def champion() -> str:
    return str(MlflowClient().get_model_version_by_alias(MODEL, "champion").version)


def test_a_passing_run_logs_to_mlflow_and_registers_the_challenger(first_run, mlflow_server) -> None:
    assert first_run.state == "success", states(first_run)
    assert {t: s for t, s in states(first_run).items() if s != "success"} == {
        "tune": "skipped",  # tuning is off by default: train used the form's values
        "tune_best": "skipped",
        "rollback": "skipped",
        "alert": "skipped",
    }
    run_key = f"{DAG_ID}/{first_run.run_id}"
    (mlflow_run,) = keyed_runs(run_key)
    metrics = mlflow_run.data.metrics
    for name in ("test_average_precision", "test_roc_auc", "test_precision", "test_recall", "test_f1"):
        assert 0 <= metrics[name] <= 1, name
    assert metrics["test_average_precision"] >= CONF["min_average_precision"]
    interval = f"{first_run.data_interval_start:%Y%m%dT%H%M%S}_{first_run.data_interval_end:%Y%m%dT%H%M%S}"
    run_folder = (
        Path(os.environ["AIRFLOW_VAR_MLOPS_DATA_ROOT"]) / "prepared" / DAG_ID / interval / safe(first_run)
    )
    (published,) = run_folder.glob("*/manifest.json")  # the run's own folder, named by the data's digest
    assert mlflow_run.data.tags[PREPARED_URI_TAG] == str(published.parent)
    assert json.loads(published.read_text())["digest"].startswith(published.parent.name)
    assert mlflow_run.data.params["model_type"] == "xgboost"
    assert mlflow_run.data.params["device_used"] == "cpu"
    assert mlflow_run.data.tags[DECISION_TAG] == "pass"
    client = MlflowClient()
    plots = {a.path for a in client.list_artifacts(mlflow_run.info.run_id, "plots")}
    assert plots == {
        f"plots/{n}.png"
        for n in ("precision_recall_curve", "confusion_matrix", "feature_importance", "performance_over_time",
                  "threshold_tradeoff", "score_distribution", "calibration")
    }  # fmt: skip
    assert {a.path for a in client.list_artifacts(mlflow_run.info.run_id)} >= {
        "model_card.md",
        "evaluation.json",
    }

    (version,) = versions(run_key)
    assert client.get_model_version_by_alias(MODEL, "challenger").version == version.version
    assert float(version.tags[THRESHOLD_TAG]) == pytest.approx(metrics["decision_threshold"], abs=1e-6)
    assert version.run_id == mlflow_run.info.run_id


def test_the_first_release_serves_the_model_at_once_and_makes_it_champion(first_run) -> None:
    deployment = xcom(first_run, "deploy")
    (version,) = versions(f"{DAG_ID}/{first_run.run_id}")
    assert deployment["revision"] == 1 and deployment["previous_revision"] is None
    assert deployment["model_uri"] == f"models:/{MODEL}/{version.version}"
    verdict = xcom(first_run, "watch_rollout")
    assert (
        verdict["phase"] == "Healthy" and verdict["measurements"] == []
    )  # nothing to compare a first one to
    assert xcom(first_run, "promote")["promoted"] is True
    assert champion() == version.version


def test_the_demo_summary_reports_the_run_the_decision_and_the_registered_version(
    first_run, mlflow_server, capsys
) -> None:
    from scripts.demo import summarise

    assert summarise(first_run, mlflow_server) == 0
    out = capsys.readouterr().out
    (version,) = versions(f"{DAG_ID}/{first_run.run_id}")
    assert f"{MODEL} version {version.version} (aliases: challenger, champion)" in out
    assert "PASS" in out and re.search(r"^  average_precision +0\.\d{4}$", out, re.M), out
    # The tasks were shown as they ended: the summary names the run's outcome, and only the tasks that neither
    # succeeded nor were skipped (none here).
    outcome = re.search(r"^== Run ==\n  success \(([^)]+)\)\n\n", out, re.M)
    assert outcome and outcome.group(1) == first_run.run_id, out
    assert (
        f"helm release {RELEASE} revision 1 serves models:/{MODEL}/{version.version} (first release)" in out
    )
    assert f"champion: nothing -> v{version.version}" in out


def test_running_the_same_dag_run_again_registers_nothing_new(dag, first_run) -> None:
    before = versions()
    again = run(dag, 2)
    assert again.run_id == first_run.run_id
    assert again.state == "success", states(again)
    assert [v.version for v in versions()] == [v.version for v in before]
    runs = keyed_runs(f"{DAG_ID}/{first_run.run_id}")
    assert len(runs) == 1, "the re-run trained again instead of reusing the DAG run's model"
    assert xcom(again, "deploy")["changed"] is False and xcom(again, "deploy")["revision"] == 1
    # The re-run tells the same truth as the first run: this DAG run's release made its version the champion
    # (which a retry after a crash between the alias move and the result must report too).
    (version,) = versions(f"{DAG_ID}/{first_run.run_id}")
    promotion = xcom(again, "promote")
    assert (promotion["promoted"], promotion["previous_champion"], promotion["champion"]) == (
        True, None, version.version,
    )  # fmt: skip


def test_a_model_that_passes_the_gate_goes_through_the_canary_and_becomes_champion(
    dag, first_run, airflow_db, mlflow_server, capsys
) -> None:
    """A later week's model; the gate lets any improvement through, so the canary decides. The error budgets of the
    served champion were read first (the recording rules on the local release's Prometheus), and the demo's summary
    shows them."""
    from scripts.demo import summarise

    previous_champion = champion()
    dag_run = run(dag, 23, policy="superior", min_improvement=-1)
    assert dag_run.state == "success", states(dag_run)
    (version,) = versions(f"{DAG_ID}/{dag_run.run_id}")
    deployment = xcom(dag_run, "deploy")
    assert deployment["revision"] == 2 and deployment["previous_revision"] == 1
    checked = deployment["error_budget"]
    assert (checked["policy"], checked["source"], checked["spent"]) == (
        "enforce",
        "the local release's Prometheus",
        [],
    )
    assert [b["slo"] for b in checked["budgets"]] == ["availability", "latency"]
    capsys.readouterr()
    summarise(dag_run, mlflow_server)
    assert (
        "error budgets (the local release's Prometheus): availability 100% left, latency"
        in capsys.readouterr().out
    )
    verdict = xcom(dag_run, "watch_rollout")
    assert verdict["phase"] == "Healthy", verdict["message"]
    analysed = {
        "success-rate",
        "latency-p99",
        "latency-p99-vs-stable",
        "client-errors",
        "positive-share-shift",
    }
    assert {m["metric"] for m in verdict["measurements"]} == {*analysed, "champion-unchanged"}
    # Every pause of the chart's canary, then the champion check before the last step.
    assert {m["step"] for m in verdict["measurements"] if m["metric"] in analysed} == {1, 3, 5}
    assert {m["step"] for m in verdict["measurements"] if m["metric"] == "champion-unchanged"} == {6}
    assert all(m["phase"] == "Successful" for m in verdict["measurements"])
    # The rendered Rollout's steps reach promote, whose canary report draws the traffic weights from them.
    chart_steps = yaml.safe_load((ROOT / "k8s/helm/inference-api/values.yaml").read_text())["canary"]["steps"]
    weights = [step["setWeight"] for step in chart_steps if "setWeight" in step]
    assert [step["setWeight"] for step in verdict["steps"] if "setWeight" in step] == weights
    promotion = xcom(dag_run, "promote")
    assert (promotion["promoted"], promotion["previous_champion"]) == (True, previous_champion)
    assert champion() == version.version
    # The new champion is announced on the model's own asset, for the DAGs scheduled on it.
    registry = load_platform().registry
    with sqlite3.connect(airflow_db / "airflow.db") as db:
        rows = db.execute(
            "select e.extra from asset_event e join asset a on a.id = e.asset_id where a.name = ? order by e.id",
            (f"{MODEL}@{registry.production_alias}",),
        ).fetchall()
    announced = json.loads(rows[-1][0])
    assert (announced["model_name"], announced["version"], announced["previous_version"]) == (
        MODEL, version.version, previous_champion,
    )  # fmt: skip
    assert announced["metrics"]["average_precision"] == pytest.approx(
        xcom(dag_run, "evaluate")["metrics"]["average_precision"]
    )
    assert MlflowClient().get_model_version(MODEL, version.version).tags[CANARY_VERDICT_TAG] == "promoted"
    # The canary's report beside the version's evaluation plots.
    plots = {a.path for a in MlflowClient().list_artifacts(version.run_id, "plots")}
    assert "plots/canary_report.png" in plots


#: The release's chart values for the canary variants below (``tests.helpers.tests_canary``): the chart's sized
#: minimum makes a canary thousands of replayed requests
#: (test_a_model_that_passes_the_gate_goes_through_the_canary_and_becomes_champion runs one); what these tests check
#: does not depend on it.
FEW_REQUESTS = tests_canary()


@contextmanager
def release_values(dag: Any, path: Path, analysis: dict[str, Any]) -> Iterator[None]:
    """The release tasks' chart values with ``analysis`` over the chart's, for the block."""
    path.write_text(yaml.safe_dump({"analysis": analysis}))
    for task_id in ("deploy", "rollback"):
        dag.get_task(task_id).arguments += ["--values", str(path)]
    try:
        yield
    finally:
        for task_id in ("deploy", "rollback"):
            dag.get_task(task_id).arguments = dag.get_task(task_id).arguments[:-2]


def test_a_canary_that_fails_the_analysis_is_rolled_back_and_alerts(
    dag, first_run, mlflow_server, tmp_path, capfd
) -> None:
    """Real model, real canary; only the threshold is made unreachable (p99 under 1 microsecond). The demo's
    summary says what serves once the rollback has settled (it said the aborted model, read too early)."""
    previous_champion = champion()
    with release_values(dag, tmp_path / "strict.yaml", {**FEW_REQUESTS, "maxLatencyP99Seconds": 0.000001}):
        dag_run = run(dag, 30, policy="superior", min_improvement=-1)
    assert dag_run.state == "failed"
    result = states(dag_run)
    assert {t: result[t] for t in RELEASE_TASKS} == {
        "deploy": "success", "watch_rollout": "success", "promote": "success", "needs_rollback": "success",
        "rollback": "success", "alert": "failed",
    }  # fmt: skip
    verdict = xcom(dag_run, "watch_rollout")
    assert verdict["phase"] == "Degraded" and 'Metric "latency-p99" assessed Failed' in verdict["message"]
    rolled_back = xcom(dag_run, "rollback")
    assert rolled_back["restored_revision"] == xcom(dag_run, "deploy")["previous_revision"]
    assert rolled_back["restored_model_uri"] == f"models:/{MODEL}/{previous_champion}"
    assert champion() == previous_champion
    (version,) = versions(f"{DAG_ID}/{dag_run.run_id}")
    assert MlflowClient().get_model_version(MODEL, version.version).tags[CANARY_VERDICT_TAG] == "aborted"
    # No alert connection is configured: the notifier logs the alert in the task log.
    out = capfd.readouterr().out
    alerts = [line for line in out.splitlines() if "[mlops.notifiers.AlertNotifier]" in line]
    assert alerts, "the notifier sent no alert"
    assert "latency-p99" in alerts[-1]
    assert f"Rolled back to revision {rolled_back['restored_revision']}" in alerts[-1]
    # The candidate alias stays on the aborted version (the pipeline may move aliases, not delete them), and no
    # alias serves a version whose release failed.
    assert CHALLENGER in MlflowClient().get_model_version(MODEL, version.version).aliases
    from ml.serve.model import Unreleased, resolve

    with pytest.raises(Unreleased, match="whose release was aborted"):
        resolve(f"models:/{MODEL}@{CHALLENGER}", released_alias=CHAMPION)

    from scripts.demo import summarise

    assert summarise(dag_run, mlflow_server) == 1
    out = capfd.readouterr().out
    outcome = re.search(r"^== Run ==\n  failed \([^)]+\)\n((?:  \S+ +\S+\n)+)", out, re.M)
    assert outcome, out  # the run's outcome, then the tasks that neither succeeded nor were skipped
    listed = outcome.group(1).splitlines()
    assert all(line.split()[1] in ("failed", "upstream_failed") for line in listed), listed
    serving = [line for line in out.splitlines() if line.startswith("  serving ")]
    assert serving and serving[-1].startswith(f"  serving models:/{MODEL}/{previous_champion} at "), serving


def test_a_champion_moved_by_hand_before_promotion_is_refused_and_the_release_ends_on_the_champion(
    dag, first_run, capfd, tmp_path
) -> None:
    """A healthy canary, then a person points `champion` back at the first version just before promote: the
    comparison is stale, so the version is "refused", the release is rolled back to the revision serving the
    champion, and the alert says why."""
    first = versions(f"{DAG_ID}/{first_run.run_id}")[0].version

    def move_champion_by_hand(context: Any) -> None:
        MlflowClient().set_registered_model_alias(MODEL, "champion", first)

    promote = dag.get_task("promote")
    promote.on_execute_callback = [move_champion_by_hand]
    try:
        with release_values(dag, tmp_path / "few.yaml", FEW_REQUESTS):
            dag_run = run(dag, 13, policy="superior", min_improvement=-1)
    finally:
        promote.on_execute_callback = []
    assert dag_run.state == "failed"
    assert {t: states(dag_run)[t] for t in RELEASE_TASKS} == {
        "deploy": "success", "watch_rollout": "success", "promote": "success", "needs_rollback": "success",
        "rollback": "success", "alert": "failed",
    }  # fmt: skip
    assert xcom(dag_run, "watch_rollout")["phase"] == "Healthy"
    promotion = xcom(dag_run, "promote")
    assert (promotion["verdict"], promotion["promoted"], promotion["champion"]) == ("refused", False, first)
    rolled_back = xcom(dag_run, "rollback")
    assert (rolled_back["restored_revision"], rolled_back["restored_model_uri"]) == (
        1,
        f"models:/{MODEL}/{first}",
    )
    assert champion() == first
    (version,) = versions(f"{DAG_ID}/{dag_run.run_id}")
    tags = MlflowClient().get_model_version(MODEL, version.version).tags
    assert (
        tags[CANARY_VERDICT_TAG] == "refused"
        and "the champion moved since evaluation" in tags[CANARY_MESSAGE_TAG]
    )
    captured = capfd.readouterr()
    lines = (captured.out + captured.err).splitlines()
    refused = [line for line in lines if f"release of models:/{MODEL}/{version.version} refused" in line]
    assert refused, "no alert about the refusal"
    assert "the champion moved since evaluation" in refused[-1]
    assert f"Rolled back to revision 1 (models:/{MODEL}/{first})" in refused[-1]


def test_a_champion_that_cannot_be_loaded_fails_evaluate_after_its_retries_and_registers_nothing(
    dag, first_run, tmp_path_factory
) -> None:
    """The artifact store loses the champion's files: no decision is made. evaluate fails, is retried, fails
    again; nothing is registered and no alias moves. (A week no other test trains: whichever tests ran before, the
    candidate is not the champion whose files are lost.)"""
    client = MlflowClient()
    current = client.get_model_version_by_alias(MODEL, "champion")
    aliases = dict(client.get_registered_model(MODEL).aliases)
    stored = artifact_folder(current.tags[MODEL_ID_TAG], tmp_path_factory.getbasetemp())
    hidden = stored.with_name(stored.name + ".hidden")
    evaluate = dag.get_task("evaluate")
    evaluate.retries, evaluate.retry_delay = 1, timedelta(0)
    before = versions()
    stored.rename(hidden)
    try:
        dag_run = run(dag, 27)
    finally:
        hidden.rename(stored)
        evaluate.retries = 0
    assert dag_run.state == "failed"
    (evaluated,) = [ti for ti in dag_run.get_task_instances() if ti.task_id == "evaluate"]
    assert (evaluated.state, evaluated.try_number) == ("failed", 2)
    assert {states(dag_run)[t] for t in ("gate", "register", "deploy")} == {"upstream_failed"}
    assert len(versions()) == len(before) and dict(client.get_registered_model(MODEL).aliases) == aliases


def test_tuning_maps_workers_over_one_study_and_train_takes_the_best_trial(dag, first_run) -> None:
    from ml.tune import TRIAL_STATE_TAG

    dag_run = run(dag, 19, tuning=True, tuning_trials=4, tuning_workers=2, tuning_minutes=5, release="never")
    assert dag_run.state == "success", states(dag_run)
    workers = [ti for ti in dag_run.get_task_instances() if ti.task_id == "tune"]
    assert sorted(ti.map_index for ti in workers) == [0, 1] and {ti.state for ti in workers} == {"success"}
    best = xcom(dag_run, "tune_best")
    (mlflow_run,) = keyed_runs(f"{DAG_ID}/{dag_run.run_id}")
    assert mlflow_run.data.params["hyperparameters_from"] == "tuning"
    assert float(mlflow_run.data.params["learning_rate"]) == pytest.approx(best["params"]["learning_rate"])
    trials = MlflowClient().search_runs(
        [mlflow_run.info.experiment_id], f"tags.mlflow.parentRunId = '{mlflow_run.info.run_id}'"
    )
    assert len(trials) >= 4 and {t.data.tags[TRIAL_STATE_TAG] for t in trials} <= {"COMPLETE", "PRUNED"}


def test_a_model_below_the_gate_registers_nothing(dag, first_run, airflow_db) -> None:
    """Triggered without a logical date, as from the UI: outputs are keyed by the run id instead."""
    before = versions()
    dag_run = run(dag, 9, logical=False, min_average_precision=0.99)
    assert dag_run.state == "success", states(dag_run)
    assert dag_run.data_interval_start is None
    prepared = Path(os.environ["AIRFLOW_VAR_MLOPS_DATA_ROOT"]) / "prepared" / DAG_ID
    assert len(list((prepared / safe(dag_run)).glob("*/manifest.json"))) == 1
    assert states(dag_run)["gate"] == "success" and states(dag_run)["register"] == "skipped"
    (mlflow_run,) = keyed_runs(f"{DAG_ID}/{dag_run.run_id}")
    assert mlflow_run.data.tags[DECISION_TAG] == "fail"
    assert versions(f"{DAG_ID}/{dag_run.run_id}") == []
    assert len(versions()) == len(before)


def test_a_dataset_that_fails_validation_fails_prepare_with_the_message(
    dag, first_run, tmp_path, capfd
) -> None:
    source = tmp_path / "bad.csv"
    rng = np.random.default_rng(0)
    pd.DataFrame({"x": rng.random(300), "label": rng.integers(0, 3, 300)}).to_csv(source, index=False)
    before = versions()
    dag_run = run(dag, 16, dataset_uri=str(source), target_column="label", time_column=None, drop_columns=[])
    assert dag_run.state == "failed"
    result = states(dag_run)
    assert result["prepare"] == "failed"
    assert {result[t] for t in ("train", "evaluate", "gate", "register")} == {"upstream_failed"}
    assert "column 'label': target must have two values; found 3" in capfd.readouterr().out
    assert len(versions()) == len(before)
