"""Retraining over time with a real scheduler: a backfill of four past weeks next to a run for the newest week.

Airflow's scheduler, its Execution API server (the task workers' way back to the metadata database) and the
LocalExecutor run on a SQLite database of their own; stage pods run in the local pod runtime against the
session's real MLflow server. As an operator would, the test starts ``airflow backfill create`` over four
weeks and triggers a run for the newest complete week at the same time, then clears and re-runs one week.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pendulum
import pytest
from mlflow import MlflowClient

from contract import INTERVAL_TAG, RELEASE_PLANNED, RELEASE_SKIPPED, RELEASE_TAG
from mlops.intervals import latest_complete
from mlops.platform_config import load_platform
from tests.conftest import free_port

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DAG_ID = "ml_training_pipeline"
CONSUMER = "champion_batch_scoring"
MODEL = "backfill-fraud-model"
PLATFORM = load_platform()
CONF = {
    "dataset_uri": "synthetic://card-transactions?rows_per_day=400&seed=11&fraud_rate=0.02",
    "training_window_days": 14,
    "n_estimators": 40,
    "registered_model_name": MODEL,
    "min_average_precision": 0.05,
}
NEWEST = latest_complete(PLATFORM.retraining.schedule, PLATFORM.retraining.timezone, pendulum.now("UTC"))
#: The four weeks before the newest, oldest first (their logical dates are their starts).
WEEKS = [NEWEST.start.subtract(weeks=k) for k in (4, 3, 2, 1)]
RELEASE_TASKS = (
    "deploy",
    "watch_rollout",
    "promote",
    "canary_failed",
    "rollback",
    "alert",
    "announce_champion",
)


class Airflow:
    """Scheduler and Execution API server on a database of their own; ``cli`` runs an ``airflow`` command."""

    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.home, self.env = home, env
        self.db = home / "airflow.db"
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, *commands: list[str], env: dict[str, str] | None = None) -> None:
        for command in commands:
            log = (self.home / f"{command[0]}.log").open("ab")
            self.processes.append(subprocess.Popen([str(BIN / "airflow"), *command], env=env or self.env,
                                                   start_new_session=True, stdout=log, stderr=subprocess.STDOUT))  # fmt: skip

    def stop(self, *processes: subprocess.Popen[bytes]) -> None:
        chosen = list(processes) or list(self.processes)
        for process in chosen:
            os.killpg(process.pid, signal.SIGTERM)
        for process in chosen:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
            self.processes.remove(process)

    def cli(self, *args: str) -> str:
        done = subprocess.run([str(BIN / "airflow"), *args], env=self.env, capture_output=True, text=True)
        assert done.returncode == 0, f"airflow {' '.join(args)}: {done.stderr[-2000:]}"
        return done.stdout

    def runs(self, dag_id: str = DAG_ID) -> list[dict[str, Any]]:
        with sqlite3.connect(self.db) as db:
            db.row_factory = sqlite3.Row
            rows = db.execute(
                "select run_id, run_type, state, data_interval_start from dag_run where dag_id = ? "
                "order by data_interval_start", (dag_id,),
            ).fetchall()  # fmt: skip
        return [dict(row) for row in rows]

    def task_states(self, run_id: str) -> dict[str, str]:
        with sqlite3.connect(self.db) as db:
            rows = db.execute(
                "select task_id, state from task_instance where dag_id = ? and run_id = ?", (DAG_ID, run_id)
            ).fetchall()
        return dict(rows)

    def wait(self, done: Any, what: str, timeout: float = 420) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, f"{what} did not finish in {timeout}s: {self.runs()}"
            time.sleep(1)


def finished(runs: list[dict[str, Any]], count: int) -> bool:
    return len(runs) >= count and all(r["state"] in ("success", "failed") for r in runs)


@pytest.fixture(scope="module")
def airflow(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Airflow]:
    home = tmp_path_factory.mktemp("airflow-scheduler")
    port = free_port()
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'plugins'}",
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__API_AUTH__JWT_SECRET": "a-secret-for-this-test-only",
        # Backfill runs start only on an unpaused DAG; no scheduled run besides what the test starts (which
        # also holds back asset-triggered runs until `consumer` lets the scheduler create them).
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
        "AIRFLOW_VAR_MLFLOW_TRACKING_URI": mlflow_server,
        "AIRFLOW_VAR_MLOPS_DATA_ROOT": str(home / "data"),
        "AIRFLOW_VAR_MLOPS_POD_RUNTIME": "local",
    }
    airflow = Airflow(home, env)
    airflow.cli("db", "migrate")
    airflow.cli("dags", "reserialize")  # what the DAG processor would do; the scheduler needs serialized DAGs
    subprocess.run([sys.executable, "-m", "mlops.pools"], env=env, check=True, capture_output=True)
    airflow.start(["api-server", "--apps", "execution", "-w", "1"], ["scheduler"])
    try:
        deadline = time.monotonic() + 90
        while not _healthy(port):
            assert time.monotonic() < deadline, (home / "api-server.log").read_text()[-3000:]
            time.sleep(0.5)
        yield airflow
    finally:
        airflow.stop()
        from standins.rollouts import stop

        stop(home / "data" / PLATFORM.release.local.state_dir / PLATFORM.release.name)


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/execution/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def backfilled(airflow: Airflow) -> dict[str, Any]:
    """A backfill of four past weeks and, at the same time, a run for the newest complete week."""
    airflow.cli(
        "backfill", "create", "--dag-id", DAG_ID, "--dag-run-conf", json.dumps(CONF),
        "--from-date", WEEKS[0].isoformat(), "--to-date", WEEKS[-1].isoformat(),
    )  # fmt: skip
    airflow.cli(
        "dags", "trigger", DAG_ID, "--logical-date", NEWEST.end.isoformat(), "--conf", json.dumps(CONF)
    )
    airflow.wait(lambda: finished(airflow.runs(), 5), "the backfill and the newest week's run")
    return {"runs": airflow.runs(), "versions": versions()}


@pytest.fixture(scope="module")
def consumer(airflow: Airflow, backfilled: dict[str, Any]) -> list[dict[str, Any]]:
    """The runs of the champion's consumer DAG once the scheduler may create runs (the others paused)."""
    for dag_id in (DAG_ID, "terraform_drift_check"):
        airflow.cli("dags", "pause", dag_id)
    (scheduler,) = [p for p in airflow.processes if p.args[1] == "scheduler"]  # type: ignore[index]
    airflow.stop(scheduler)
    airflow.start(["scheduler"], env={**airflow.env, "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "True"})
    airflow.wait(lambda: finished(airflow.runs(CONSUMER), 1), "the champion's consumer DAG", timeout=120)
    return airflow.runs(CONSUMER)


def versions() -> list[Any]:
    return sorted(MlflowClient().search_model_versions(f"name = '{MODEL}'"), key=lambda v: int(v.version))


def manifest(airflow: Airflow, run: dict[str, Any]) -> dict[str, Any]:
    folders = list((airflow.home / "data" / "prepared" / DAG_ID).glob("*/manifest.json"))
    start = pendulum.parse(run["data_interval_start"]).strftime("%Y%m%dT%H%M%S")
    (path,) = [p for p in folders if p.parent.name.startswith(start)]
    return dict(json.loads(path.read_text()))


def test_each_backfilled_week_trains_on_its_own_window_and_registers_without_releasing(
    airflow, backfilled
) -> None:
    backfills = [r for r in backfilled["runs"] if r["run_type"] == "backfill"]
    assert [pendulum.parse(r["data_interval_start"]) for r in backfills] == WEEKS
    assert {r["state"] for r in backfills} == {"success"}, backfills
    manifests = [manifest(airflow, r) for r in backfills]
    assert len({m["windows"]["evaluation"][0] for m in manifests}) == 4
    assert len({m["digest"] for m in manifests}) == 4
    for run, m in zip(backfills, manifests, strict=True):
        assert pendulum.parse(m["windows"]["evaluation"][0]) == pendulum.parse(run["data_interval_start"])
        assert pendulum.parse(m["windows"]["training"][1]) == pendulum.parse(m["windows"]["evaluation"][0])
        states = airflow.task_states(run["run_id"])
        assert states["register"] == "success" and states["release_gate"] == "success"
        assert {states[t] for t in RELEASE_TASKS} == {"skipped"}, states
    skipped = [v for v in backfilled["versions"] if v.tags[RELEASE_TAG] == RELEASE_SKIPPED]
    assert len(skipped) == 4
    assert sorted(v.tags[INTERVAL_TAG].split("/")[0] for v in skipped) == [
        m["windows"]["interval"][0] for m in manifests
    ]
    assert all("a backfill run" in v.tags["mlops.release_reason"] and not v.aliases for v in skipped)


def test_only_the_newest_week_is_deployed_and_becomes_champion(airflow, backfilled) -> None:
    (newest,) = [r for r in backfilled["runs"] if r["run_type"] == "manual"]
    assert newest["state"] == "success", airflow.task_states(newest["run_id"])
    assert pendulum.parse(newest["data_interval_start"]) == NEWEST.start
    (released,) = [v for v in backfilled["versions"] if v.tags[RELEASE_TAG] == RELEASE_PLANNED]
    assert MlflowClient().get_model_version_by_alias(MODEL, "champion").version == released.version
    from standins.release_store import ReleaseStore

    store = ReleaseStore(airflow.home / "data" / PLATFORM.release.local.state_dir, PLATFORM.release.name)
    assert [r.values["model"]["uri"] for r in store.history()] == [f"models:/{MODEL}/{released.version}"]


def test_clearing_and_re_running_a_week_registers_nothing_new(airflow, backfilled) -> None:
    week = WEEKS[1]
    airflow.cli(
        "tasks", "clear", DAG_ID, "--start-date", week.isoformat(), "--end-date", week.isoformat(), "--yes"
    )
    run_id = next(r["run_id"] for r in backfilled["runs"] if pendulum.parse(r["data_interval_start"]) == week)
    airflow.wait(lambda: airflow.task_states(run_id).get("register") == "success" and finished(airflow.runs(), 5),
                 "the cleared week")  # fmt: skip
    assert [v.version for v in versions()] == [v.version for v in backfilled["versions"]]
    assert next(r for r in airflow.runs() if r["run_id"] == run_id)["state"] == "success"


# Last: it pauses the training DAG.
def test_the_new_champion_triggers_the_dags_scheduled_on_it(airflow, backfilled, consumer) -> None:
    (run,) = consumer
    assert run["run_type"] == "asset_triggered" and run["state"] == "success"
    with sqlite3.connect(airflow.db) as db:
        (extra,) = db.execute(
            "select e.extra from asset_event e join asset a on a.id = e.asset_id where a.name = ?",
            ("card-fraud-detector@champion",),
        ).fetchone()
    announced = json.loads(extra)
    (released,) = [v for v in backfilled["versions"] if v.tags[RELEASE_TAG] == RELEASE_PLANNED]
    assert (announced["model_name"], announced["version"]) == (MODEL, released.version)
    assert (
        announced["model_uri"] == f"models:/{MODEL}/{released.version}"
        and "average_precision" in announced["metrics"]
    )
