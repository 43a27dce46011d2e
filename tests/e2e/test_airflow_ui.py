"""The Airflow UI in a real browser: a data scientist triggers the training DAG from its form.

Airflow runs as ``airflow standalone`` (SQLite, LocalExecutor, the local pod runtime, MLflow on loopback);
Playwright drives Debian's Chromium (``make test`` installs it). Screenshots of every step are kept under
``.local/test-artifacts/browser/`` (CI uploads them). The test knows the DAG's form, not its task list: it waits
for the run as a whole to succeed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
DAG_ID = "ml_training_pipeline"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = ROOT / ".local" / "test-artifacts" / "browser"
USER = "data-scientist"
DATASET = "synthetic://card-transactions?rows=20000&seed=7"
STARTUP_TIMEOUT_S = 300
RUN_TIMEOUT_S = 600
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.browser,
    pytest.mark.timeout(STARTUP_TIMEOUT_S + RUN_TIMEOUT_S + 120),
]


class Airflow:
    """A running ``airflow standalone`` and a REST client logged in as the test's user."""

    def __init__(self, url: str, password: str) -> None:
        self.url = url
        self.password = password
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


@pytest.fixture(scope="module")
def airflow(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Airflow]:
    """``airflow standalone`` on a free port, with its own AIRFLOW_HOME and a known password for the user."""
    home = tmp_path_factory.mktemp("airflow-ui-home")
    password = os.urandom(12).hex()
    (home / "passwords.json").write_text(json.dumps({USER: password}))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        # What `make airflow-ui` sets, on this test's own home, port and MLflow server.
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{url}/execution/",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        # Only the runs this test triggers: the DAG is unpaused, and its weekly schedule creates none.
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
        "AIRFLOW_VAR_MLFLOW_TRACKING_URI": mlflow_server,
        "AIRFLOW_VAR_MLOPS_DATA_ROOT": str(tmp_path_factory.mktemp("ui-data-root")),
        "AIRFLOW_VAR_MLOPS_POD_RUNTIME": "local",
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins")]),
    }
    log = home / "standalone.log"
    with open(log, "ab") as output:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "airflow"), "standalone"],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        running = Airflow(url, password)
        _wait_until_dag_is_listed(running, process, log)
        yield running
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


@pytest.fixture()
def page(airflow: Airflow) -> Iterator[Any]:
    """A Chromium page logged in to the Airflow UI."""
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        page.set_default_timeout(60_000)
        page.goto(airflow.url)
        page.get_by_label("Username").fill(USER)
        page.get_by_label("Password").fill(airflow.password)
        page.screenshot(path=ARTIFACTS / "01-login.png")
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(f"{airflow.url}/")
        try:
            yield page
        finally:
            page.screenshot(path=ARTIFACTS / "99-last.png", full_page=True)
            browser.close()


def open_trigger_form(page: Any, airflow: Airflow) -> Any:
    page.goto(f"{airflow.url}/dags/{DAG_ID}")
    page.get_by_role("button", name="Trigger").first.click()
    dialog = page.get_by_role("dialog")
    dialog.locator("#element_dataset_uri").wait_for()
    return dialog


def test_an_invalid_form_value_is_refused_with_a_message(page, airflow: Airflow) -> None:
    from playwright.sync_api import expect

    runs_before = len(airflow.dag_runs())
    dialog = open_trigger_form(page, airflow)
    # The form's pattern allows sqrt, auto, none or a number.
    dialog.locator("#element_scale_pos_weight").fill("lots")
    dialog.get_by_role("button", name="Trigger").click()
    expect(page.get_by_text("Failed to Trigger Dag")).to_be_visible()
    page.screenshot(path=ARTIFACTS / "02-invalid-value-refused.png", full_page=True)
    expect(dialog).to_be_visible()
    assert len(airflow.dag_runs()) == runs_before


def test_a_data_scientist_triggers_a_training_run_from_the_form_and_it_succeeds(
    page, airflow: Airflow
) -> None:
    from playwright.sync_api import expect

    dialog = open_trigger_form(page, airflow)
    dialog.locator("#element_dataset_uri").fill(DATASET)
    dialog.get_by_role("combobox", name="Model").click()
    page.get_by_role("option", name="random_forest").click()
    dialog.locator("input[name=element_max_depth]").fill("6")
    page.screenshot(path=ARTIFACTS / "03-form-filled.png", full_page=True)
    dialog.get_by_role("button", name="Trigger").click()
    expect(dialog).to_be_hidden()
    # The UI opens the new run's page.
    page.wait_for_url(f"{airflow.url}/dags/{DAG_ID}/runs/**")
    run_id = page.url.rsplit("/runs/", 1)[1]
    run = airflow.api(f"/dags/{DAG_ID}/dagRuns/{run_id}")
    assert run["run_type"] == "manual"
    assert {key: run["conf"][key] for key in ("dataset_uri", "model_type", "max_depth")} == {
        "dataset_uri": DATASET,
        "model_type": "random_forest",
        "max_depth": 6,
    }

    deadline = time.monotonic() + RUN_TIMEOUT_S
    while run["state"] not in ("success", "failed") and time.monotonic() < deadline:
        time.sleep(3)
        run = airflow.api(f"/dags/{DAG_ID}/dagRuns/{run_id}")
    page.reload()
    page.screenshot(path=ARTIFACTS / "04-run-finished.png", full_page=True)
    tasks = airflow.api(f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances")["task_instances"]
    assert run["state"] == "success", {task["task_id"]: task["state"] for task in tasks}
    expect(page.get_by_text("Success").first).to_be_visible()
