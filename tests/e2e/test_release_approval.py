"""A person approves each release (``release.approval.required``), end to end: dag.test() in the local pod runtime
against a real MLflow server, the answer given through Airflow's own REST API (its FastAPI app, in this process, on
the same metadata database), and a timeout resolved by the scheduler's own sweep of parked tasks.

Three runs of the training DAG: approved (released, promoted), rejected with a comment (refused before anything is
installed, recorded on the version, no alert: a person's decision), and left unanswered (the timeout rejects it, and
the run alerts)."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pendulum
import pytest
from mlflow import MlflowClient

from contract import APPROVAL_NOBODY, APPROVAL_TAG, APPROVE, CANARY_MESSAGE_TAG, CANARY_VERDICT_TAG, REJECT
from mlops.models import MODELS_DIR_ENV
from mlops.platform_config import PLATFORM_FILE_ENV, load_platform
from tests.conftest import free_port
from tests.helpers import write_model

ROOT = Path(__file__).resolve().parents[2]
#: The tests' own model file, with approvals on: its DAG.
DAG_ID = "train_e2e_approval"
MODEL = "e2e-approval-model"
APPROVER = "risk-officer"
#: The approval's time: long enough to answer in, short enough to time out within the test.
TIMEOUT_HOURS = 20 / 3600
CONF = {
    "dataset_uri": "synthetic://card-transactions?rows_per_day=600&seed=5",
    "training_window_days": 14,
    "min_average_precision": 0.05,
    "policy": "superior",
    "min_improvement": -1.0,
    "n_estimators": 40,
    "release": "always",
}
pytestmark = [pytest.mark.e2e, pytest.mark.long]


@pytest.fixture(scope="module")
def dag(
    airflow_db: Path, mlflow_server: str, quick_platform: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    from airflow.dag_processing.dagbag import DagBag

    from standins.rollouts import stop

    approval = {"required": True, "timeout_hours": TIMEOUT_HOURS, "approvers": [APPROVER]}
    models = write_model(tmp_path_factory.mktemp("approval") / "models", "e2e_approval", MODEL, free_port(),
                         **{"release.approval": approval})  # fmt: skip
    data_root = tmp_path_factory.mktemp("data-root")
    settings = {
        "AIRFLOW_VAR_MLFLOW_TRACKING_URI": mlflow_server,
        "AIRFLOW_VAR_MLOPS_DATA_ROOT": str(data_root),
        "AIRFLOW_VAR_MLOPS_POD_RUNTIME": "local",
        PLATFORM_FILE_ENV: str(quick_platform),
        MODELS_DIR_ENV: str(models),
    }
    os.environ.update(settings)
    dag = DagBag(str(ROOT / "dags")).dags[DAG_ID]
    for task in dag.tasks:
        task.retries = 0
    yield dag
    stop(data_root / load_platform().release.local.state_dir / f"{MODEL}-api")
    for key in settings:
        os.environ.pop(key, None)


class RestApi:
    """Airflow's public REST API (its FastAPI app in this process), as the approver: a JWT of the auth manager."""

    def __init__(self, user: str) -> None:
        from airflow.api_fastapi.app import create_app, get_auth_manager
        from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
        from fastapi.testclient import TestClient

        self.client = TestClient(create_app("core"))
        token = get_auth_manager().generate_jwt(SimpleAuthManagerUser(username=user, role="admin"))
        self.client.headers["Authorization"] = f"Bearer {token}"

    def hitl(self, run_id: str) -> str:
        return f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/approve/-1/hitlDetails"

    def waiting(self, timeout_s: float = 300) -> dict[str, Any]:
        """The approval request of the run waiting for one (after its prepare, train, evaluate and register)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            answer = self.client.get(
                "/api/v2/dags/~/dagRuns/~/hitlDetails", params={"response_received": False}
            )
            waiting = [
                d for d in answer.json().get("hitl_details", []) if d["task_instance"]["dag_id"] == DAG_ID
            ]
            if waiting:
                return dict(waiting[0])
            time.sleep(1)
        raise AssertionError("no run came to wait for its approval")


def run_answered(
    dag: Any, day: int, respond: Callable[[RestApi, dict[str, Any]], None]
) -> tuple[Any, dict[str, Any]]:
    """Run the DAG for a day (dag.test() needs the main thread), answering its approval from another thread as a
    person would from the UI. If answering fails, the request is rejected anyway, so that the run ends, and the
    failure is raised after it."""
    api = RestApi(APPROVER)
    seen: dict[str, Any] = {}

    def answer() -> None:
        try:
            seen["request"] = api.waiting()
            respond(api, seen["request"])
        except BaseException as err:
            seen["error"] = err
            if "request" in seen:
                api.client.patch(api.hitl(seen["request"]["task_instance"]["dag_run_id"]),
                                 json={"chosen_options": [REJECT]})  # fmt: skip

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    when = pendulum.datetime(2026, 3, day, tz="UTC")
    run = dag.test(logical_date=when, run_after=when, run_conf=CONF)
    thread.join(timeout=60)
    if "error" in seen:
        raise seen["error"]
    return run, {
        "request": seen["request"],
        "states": {ti.task_id: ti.state for ti in run.get_task_instances()},
    }


def reply(option: str, comment: str = "") -> Callable[[RestApi, dict[str, Any]], None]:
    def respond(api: RestApi, request: dict[str, Any]) -> None:
        run_id = request["task_instance"]["dag_run_id"]
        body = {"chosen_options": [option], "params_input": {"comment": comment}}
        answer = api.client.patch(api.hitl(run_id), json=body)
        assert answer.status_code == 200, answer.text

    return respond


def xcom(run: Any, task_id: str) -> Any:
    (ti,) = [ti for ti in run.get_task_instances() if ti.task_id == task_id]
    return ti.xcom_pull(task_ids=task_id)


def tags(version: str) -> dict[str, str]:
    return dict(MlflowClient().get_model_version(MODEL, version).tags)


@pytest.fixture(scope="module")
def approved(dag: Any) -> tuple[Any, dict[str, Any]]:
    return run_answered(dag, 2, reply(APPROVE, "ok"))


def test_the_approver_sees_the_model_card_summary(approved) -> None:
    request = approved[1]["request"]
    assert request["subject"] == f"Release {MODEL} v1 to production?"
    assert (
        "| Average precision (PR-AUC) |" in request["body"] and "against champion (none)" in request["body"]
    )
    assert request["options"] == [APPROVE, REJECT] and request["defaults"] == [REJECT]


def test_an_approved_release_is_deployed_and_promoted_and_the_answer_recorded(approved) -> None:
    run, seen = approved
    states = seen["states"]
    assert states["approve"] == states["deploy"] == states["promote"] == "success", states
    assert xcom(run, "promote")["verdict"] == "promoted"
    answer = json.loads(tags(xcom(run, "register")["version"])[APPROVAL_TAG])
    assert (answer["approved"], answer["by"], answer["comment"]) == (True, APPROVER, "ok")


def test_a_rejected_release_installs_nothing_records_the_verdict_and_does_not_alert(dag, approved) -> None:
    run, seen = run_answered(dag, 9, reply(REJECT, "holiday freeze"))
    states = seen["states"]

    deployment = xcom(run, "deploy")
    print(f"deploy: {deployment['refused']}")
    assert deployment["refused"] == f"rejected by {APPROVER}: holiday freeze; the release is not started"
    assert not deployment["changed"] and deployment["revision"] == xcom(approved[0], "deploy")["revision"]
    version = xcom(run, "register")["version"]
    assert tags(version)[CANARY_VERDICT_TAG] == "refused"
    assert f"rejected by {APPROVER}" in tags(version)[CANARY_MESSAGE_TAG]
    assert states["alert"] == "skipped" and states["rollback"] == "skipped"
    assert run.state == "success"


def test_no_answer_in_time_rejects_the_release_and_alerts(dag, approved, capfd) -> None:
    def time_out(api: RestApi, request: dict[str, Any]) -> None:
        from airflow.jobs.job import Job
        from airflow.jobs.scheduler_job_runner import SchedulerJobRunner

        time.sleep(TIMEOUT_HOURS * 3600 + 1)
        SchedulerJobRunner(job=Job()).check_awaiting_input_timeouts()  # the scheduler's own sweep

    run, seen = run_answered(dag, 16, time_out)
    assert xcom(run, "approve")["chosen_options"] == [REJECT]
    refused = xcom(run, "deploy")["refused"]
    assert refused.startswith("nobody approved the release in time")
    assert json.loads(tags(xcom(run, "register")["version"])[APPROVAL_TAG])["by"] == APPROVAL_NOBODY
    assert seen["states"]["alert"] == "failed" and run.state == "failed"
    # No alert connection is configured: the notifier logs each alert in the task log. The approver was told.
    out = capfd.readouterr().out
    alerts = out.split("ALERT (no connection 'mlops_alerts' configured, so it is only logged): ")[1:]
    assert alerts[0].startswith(f"Release of {MODEL} awaits approval")
    assert "within 20 seconds (no answer rejects it)" in alerts[0]
    assert "nobody approved the release in time" in alerts[-1]
