"""One real Airflow for the end-to-end tests that need a scheduler: ``airflow standalone`` (SQLite,
LocalExecutor, the local pod runtime, the session's MLflow on loopback), started once per session."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DAG_ID = "ml_training_pipeline"
USER = "data-scientist"
STARTUP_TIMEOUT_S = 300


class Airflow:
    """A running ``airflow standalone``: its REST API as the test's user, its CLI and its database."""

    def __init__(self, url: str, password: str, home: Path, env: dict[str, str]) -> None:
        self.url, self.password, self.home, self.env = url, password, home, env
        self.db = home / "airflow.db"
        self.data_root = Path(env["AIRFLOW_VAR_MLOPS_DATA_ROOT"])
        self._token: str | None = None

    def api(self, path: str) -> Any:
        if self._token is None:
            response = httpx.post(
                f"{self.url}/auth/token", json={"username": USER, "password": self.password}, timeout=60
            )
            response.raise_for_status()
            self._token = response.json()["access_token"]
        # Generous: on 2 busy cores, standalone Airflow can take a while to answer while the run's pods work.
        response = httpx.get(
            f"{self.url}/api/v2{path}", headers={"Authorization": f"Bearer {self._token}"}, timeout=60
        )
        response.raise_for_status()
        return response.json()

    def dag_runs(self) -> list[dict[str, Any]]:
        return list(self.api(f"/dags/{DAG_ID}/dagRuns")["dag_runs"])

    def cli(self, *args: str) -> str:
        """Run an ``airflow`` command. On SQLite a write can meet the scheduler's and fail "database is locked"
        (the command's transaction is rolled back): it is tried again, as an operator would, up to three times."""
        for _ in range(3):
            done = subprocess.run([str(BIN / "airflow"), *args], env=self.env, capture_output=True, text=True)
            if done.returncode == 0 or "database is locked" not in done.stderr:
                break
            time.sleep(2)
        assert done.returncode == 0, f"airflow {' '.join(args)}: {done.stderr[-2000:]}"
        return done.stdout

    def runs(self) -> list[dict[str, Any]]:
        """The training DAG's runs from the database, oldest interval first."""
        with sqlite3.connect(self.db) as db:
            db.row_factory = sqlite3.Row
            rows = db.execute(
                "select run_id, run_type, state, data_interval_start from dag_run where dag_id = ? "
                "order by data_interval_start", (DAG_ID,),
            ).fetchall()  # fmt: skip
        return [dict(row) for row in rows]

    def task_states(self, run_id: str) -> dict[str, str]:
        with sqlite3.connect(self.db) as db:
            rows = db.execute(
                "select task_id, state from task_instance where dag_id = ? and run_id = ?", (DAG_ID, run_id)
            ).fetchall()
        return dict(rows)

    def wait(self, done: Any, what: str, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, f"{what} did not finish in {timeout}s: {self.runs()}"
            time.sleep(1)


def _wait_until_dag_is_listed(airflow: Airflow, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"airflow standalone exited with {process.returncode}; see {log}")
        try:
            if airflow.api(f"/dags/{DAG_ID}")["dag_id"] == DAG_ID:
                return
        except httpx.HTTPError:
            pass
        time.sleep(2)
    raise TimeoutError(f"{DAG_ID} not served after {STARTUP_TIMEOUT_S}s; see {log}")


class Launch:
    """``airflow standalone`` being started in the background: the database migrated, the pools created, the
    process spawned, while the other tests run."""

    def __init__(self, home: Path, password: str, url: str, env: dict[str, str]) -> None:
        self.home, self.password, self.url, self.env = home, password, url, env
        self.log = home / "standalone.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._start, name="airflow-standalone", daemon=True)
        self.thread.start()

    def _start(self) -> None:
        try:
            subprocess.run(
                [str(BIN / "airflow"), "db", "migrate"], env=self.env, check=True, capture_output=True
            )
            subprocess.run(
                [sys.executable, "-m", "mlops.pools"], env=self.env, check=True, capture_output=True
            )
            with open(self.log, "ab") as output:
                self.process = subprocess.Popen([str(BIN / "airflow"), "standalone"], env=self.env, stdout=output,
                                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        except BaseException as err:  # reported to the test that waits for it
            self.error = err

    def started(self) -> subprocess.Popen[bytes]:
        self.thread.join()
        if self.error is not None or self.process is None:
            raise RuntimeError(f"airflow standalone could not start: {self.error}") from self.error
        return self.process


@pytest.fixture(scope="session")
def standalone_launch(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launch]:
    """Start ``airflow standalone`` (in the background) on a free port, with its own AIRFLOW_HOME, a known
    password for the user, and the pools ``make airflow-ui`` creates; stop it at the end of the session."""
    home = tmp_path_factory.mktemp("airflow-standalone")
    password = os.urandom(12).hex()
    (home / "passwords.json").write_text(json.dumps({USER: password}))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        # What `make airflow-ui` sets, on this session's own home, port and MLflow server.
        "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")]),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{url}/execution/",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        # Only the runs the tests start: the DAGs are unpaused (backfill runs start only on an unpaused DAG),
        # and their schedules create none.
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
        "AIRFLOW_VAR_MLFLOW_TRACKING_URI": mlflow_server,
        "AIRFLOW_VAR_MLOPS_DATA_ROOT": str(home / "data"),
        "AIRFLOW_VAR_MLOPS_POD_RUNTIME": "local",
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins")]),
    }
    launch = Launch(home, password, url, env)
    yield launch
    launch.thread.join()
    if launch.process is not None:
        os.killpg(launch.process.pid, signal.SIGTERM)
        try:
            launch.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(launch.process.pid, signal.SIGKILL)
            launch.process.wait(timeout=30)
    from mlops.platform_config import load_platform
    from standins.rollouts import stop

    release = load_platform().release
    stop(home / "data" / release.local.state_dir / release.name)


@pytest.fixture(scope="session", autouse=True)
def _boot_airflow_early(request: pytest.FixtureRequest) -> None:
    """With the first end-to-end test, start the Airflow that the last ones need (``pytest_collection_modifyitems``
    in ``tests/conftest.py`` puts them last): its start overlaps the other tests instead of adding to them."""
    if any("standalone" in getattr(item, "fixturenames", ()) for item in request.session.items):
        request.getfixturevalue("standalone_launch")


@pytest.fixture(scope="session")
def standalone(standalone_launch: Launch) -> Airflow:
    """The running ``airflow standalone``, once it serves the training DAG."""
    launch = standalone_launch
    running = Airflow(launch.url, launch.password, launch.home, launch.env)
    _wait_until_dag_is_listed(running, launch.started(), launch.log)
    return running
