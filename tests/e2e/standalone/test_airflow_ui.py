"""The Airflow UI in a real browser: a data scientist triggers the training DAG from its form, and the README's
pictures are taken from the pages a second, canaried release leaves.

Airflow runs as the session's ``airflow standalone`` (SQLite, LocalExecutor, the local pod runtime, MLflow on
loopback); Playwright drives Debian's Chromium (``make test`` installs it). Screenshots of every step are kept
under ``.local/test-artifacts/browser/`` (CI uploads them). A run triggered from the form has no logical date:
it covers the newest complete week, so it is the one that releases (after the backfill of past weeks in
``test_airflow_backfill.py``, which released nothing).

``make screenshots`` writes the README's pictures into ``docs/images/`` (``tests/e2e/conftest.py``'s
``README_PICTURES``). Each is taken only once its page has rendered what it is meant to show: the test fails
otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from contract import (
    CANARY_PROMOTED,
    CANARY_VERDICT_TAG,
    RELEASE_PLANNED,
    RELEASE_REASON_TAG,
    RELEASE_TAG,
    RUN_KEY_TAG,
    STARTED_BY_TAG,
)
from mlops.models import load_models
from mlops.platform_config import load_platform
from tests.e2e.conftest import ARTIFACTS, DAG_ID, MODEL_KEY, PICTURES, README_PICTURES, USER, Airflow

ROOT = Path(__file__).resolve().parents[3]
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
DATASET = "synthetic://card-transactions?rows_per_day=400&seed=7&fraud_rate=0.02"
RUN_TIMEOUT_S = 600
#: The README's pictures this module takes.
OWN_PICTURES = README_PICTURES[Path(__file__).stem]
#: A run for the pictures: the form's table and model (its run is the champion), released whatever its score
#: against it (this run is about the canary, not the model's quality). Another kind of model flags another share of
#: the traffic, and the canary's positive-share test stops it: an XGBoost after the form's random forest was aborted
#: at z 3.2.
CANARY_RUN_CONF = {
    "dataset_uri": DATASET,
    "model_type": "random_forest",
    "max_depth": 6,
    "min_average_precision": 0.1,
    "policy": "superior",
    "min_improvement": -1,
}
pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.scheduler]


@pytest.fixture()
def airflow(standalone: Airflow) -> Airflow:
    return standalone


@pytest.fixture()
def page(airflow: Airflow, mlflow_server: str, mlflow_root: Path) -> Iterator[Any]:
    """A Chromium page logged in to the Airflow UI, which signs in to MLflow's UI as its read-only user (the
    basic-auth app asks the browser for a user; the credentials go to MLflow's origin only)."""
    from playwright.sync_api import sync_playwright

    from standins.mlflow_server import account

    reader = account(mlflow_root, "reader")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(
            viewport={"width": 1400, "height": 1000},
            http_credentials={
                "username": reader.username,
                "password": reader.password,
                "origin": mlflow_server,
            },
        )
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
    open_section(dialog, "Data")
    dialog.locator("#element_dataset_uri").wait_for()
    return dialog


def open_section(dialog: Any, name: str) -> None:
    """Open one of the form's sections (they start collapsed)."""
    dialog.get_by_role("button", name=name, exact=True).click()


def test_an_invalid_form_value_is_refused_with_a_message(page, airflow: Airflow) -> None:
    from playwright.sync_api import expect

    runs_before = len(airflow.dag_runs())
    dialog = open_trigger_form(page, airflow)
    # The form comes in sections, each field with its description.
    for section in ("Data", "Model", "Tuning", "Quality gate", "Release"):
        expect(dialog.get_by_role("button", name=section, exact=True)).to_be_visible()
    open_section(dialog, "Model")
    expect(
        dialog.get_by_text("Stop when the validation average precision has not improved").first
    ).to_be_visible()
    # The form's pattern allows sqrt, auto, none or a number.
    dialog.locator("#element_scale_pos_weight").fill("lots")
    dialog.get_by_role("button", name="Trigger").click()
    expect(page.get_by_text("Failed to Trigger Dag").first).to_be_visible()
    page.screenshot(path=ARTIFACTS / "02-invalid-value-refused.png", full_page=True)
    expect(dialog).to_be_visible()
    assert len(airflow.dag_runs()) == runs_before


def test_a_data_scientist_triggers_a_training_run_from_the_form_and_it_succeeds(
    page, airflow: Airflow
) -> None:
    from playwright.sync_api import expect

    dialog = open_trigger_form(page, airflow)
    dialog.locator("#element_dataset_uri").fill(DATASET)
    open_section(dialog, "Model")
    dialog.get_by_role("combobox", name="Model").click()
    page.get_by_role("option", name="Random forest (baseline)").click()
    dialog.locator("input[name=element_max_depth]").fill("6")
    # A small table, so a low floor: this run is about the form and the release, not the model's quality.
    open_section(dialog, "Quality gate")
    dialog.locator("input[name=element_min_average_precision]").fill("0.1")
    page.screenshot(path=ARTIFACTS / "03-form-filled.png", full_page=True)
    dialog.get_by_role("button", name="Trigger").click()
    expect(dialog).to_be_hidden()
    # The UI opens the new run's page.
    page.wait_for_url(f"{airflow.url}/dags/{DAG_ID}/runs/**")
    run_id = page.url.rsplit("/runs/", 1)[1]
    run = airflow.api(f"/dags/{DAG_ID}/dagRuns/{run_id}")
    assert run["run_type"] == "manual"
    assert {
        key: run["conf"][key] for key in ("dataset_uri", "model_type", "max_depth", "min_average_precision")
    } == {
        "dataset_uri": DATASET,
        "model_type": "random_forest",
        "max_depth": 6,
        "min_average_precision": 0.1,
    }

    run = airflow.wait_for_run(run_id, RUN_TIMEOUT_S)
    page.reload()
    page.screenshot(path=ARTIFACTS / "04-run-finished.png", full_page=True)
    tasks = airflow.api(f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances")["task_instances"]
    assert run["state"] == "success", {task["task_id"]: task["state"] for task in tasks}
    expect(page.get_by_text("Success").first).to_be_visible()
    # The newest week's run releases: deployed, promoted, and announced on the champion's asset.
    states = {task["task_id"]: task["state"] for task in tasks}
    assert {
        states[t] for t in ("release_gate", "deploy", "watch_rollout", "promote", "announce_champion")
    } == {"success"}
    registry = load_platform().registry
    champion = MlflowClient().get_model_version_by_alias(
        load_models().get(MODEL_KEY).registered_model, registry.production_alias
    )
    assert (
        champion.tags[RELEASE_TAG] == RELEASE_PLANNED
        and "is the newest complete interval" in champion.tags[RELEASE_REASON_TAG]
    )
    assert champion.tags[RUN_KEY_TAG] == f"{DAG_ID}/{run_id}"
    assert champion.tags[STARTED_BY_TAG] == f"a manual trigger by {USER}"


def test_a_second_release_canaries_and_the_readme_pictures_show_it(page, airflow: Airflow) -> None:
    """A run triggered after the form's run canaries against its champion and is promoted; the README's pictures
    are taken from that run's pages in Airflow and MLflow."""
    registry = load_platform().registry
    client = MlflowClient()
    try:
        client.get_model_version_by_alias(
            load_models().get(MODEL_KEY).registered_model, registry.production_alias
        )
    except MlflowException:
        # Run alone: a first release, so that the next one has a champion to canary against.
        assert trigger(airflow, CANARY_RUN_CONF)["state"] == "success"
    run = trigger(airflow, CANARY_RUN_CONF)
    states = airflow.task_states(run["dag_run_id"])
    assert run["state"] == "success", states
    assert {states[t] for t in ("deploy", "watch_rollout", "promote", "announce_champion")} == {"success"}
    champion = client.get_model_version_by_alias(
        load_models().get(MODEL_KEY).registered_model, registry.production_alias
    )
    assert champion.tags[RUN_KEY_TAG] == f"{DAG_ID}/{run['dag_run_id']}"
    assert champion.tags[CANARY_VERDICT_TAG] == CANARY_PROMOTED
    assert any(a.path == "plots/canary_report.png" for a in client.list_artifacts(champion.run_id, "plots"))

    PICTURES.mkdir(parents=True, exist_ok=True)
    picture_trigger_form(page, airflow)
    picture_run(page, airflow, run["dag_run_id"])
    experiment = client.get_run(champion.run_id).info.experiment_id
    mlflow_run = f"{os.environ['MLFLOW_TRACKING_URI']}/#/experiments/{experiment}/runs/{champion.run_id}"
    picture_artifact(page, mlflow_run, "plots/threshold_tradeoff.png", "mlflow-run-plots")
    picture_artifact(page, mlflow_run, "plots/canary_report.png", "canary-report", height=1250)
    pictures = [(PICTURES / f"{name}.png").read_bytes() for name in OWN_PICTURES]
    assert len(set(pictures)) == len(pictures), "two pictures are the same page"


def trigger(airflow: Airflow, conf: dict[str, Any]) -> dict[str, Any]:
    """Trigger the training DAG through the REST API, as the form does (no logical date), and wait for the run."""
    run = airflow.api(f"/dags/{DAG_ID}/dagRuns", {"logical_date": None, "conf": conf})
    return airflow.wait_for_run(run["dag_run_id"], RUN_TIMEOUT_S)


def picture_trigger_form(page: Any, airflow: Airflow) -> None:
    from playwright.sync_api import expect

    page.set_viewport_size({"width": 1400, "height": 1000})
    dialog = open_trigger_form(page, airflow)  # its Data section open
    expect(dialog.get_by_text("CSV or Parquet table").first).to_be_visible()
    page.screenshot(path=PICTURES / "trigger-form.png")
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()


def picture_run(page: Any, airflow: Airflow, run_id: str) -> None:
    """The run's graph (every task of the DAG, coloured by its state) and its grid with the task instances."""
    from playwright.sync_api import expect

    tasks = airflow.api(f"/dags/{DAG_ID}/tasks")["total_entries"]
    # The graph is long and flat: taken at twice the pixels, so that its task names stay legible once zoomed.
    crisp = page.context.browser.new_context(
        viewport={"width": 1800, "height": 480},
        device_scale_factor=2,
        storage_state=page.context.storage_state(),
    )
    graph = crisp.new_page()
    graph.goto(f"{airflow.url}/dags/{DAG_ID}/runs/{run_id}")
    graph.get_by_role("button", name="Show Graph (Press g)").click()
    graph.get_by_role("button", name="Collapse Details Panel").click()
    expect(graph.locator(".react-flow__node")).to_have_count(tasks)
    expect(graph.locator(".react-flow__node", has_text="promote").get_by_text("success")).to_be_visible()
    graph.get_by_role("button", name="Fit View").click()
    graph.mouse.move(0, 0)  # no tooltip over the graph
    graph.screenshot(path=PICTURES / "dag-graph.png")
    crisp.close()

    page.set_viewport_size({"width": 1600, "height": 900})
    page.goto(f"{airflow.url}/dags/{DAG_ID}/runs/{run_id}")
    page.get_by_role("button", name="Show Grid (Press g)").click()
    shown = page.get_by_role("button", name="Show Details Panel")
    if shown.count():  # the panel's state is kept per browser
        shown.click()
    expect(page.get_by_text("Task Instances").first).to_be_visible()
    expect(page.get_by_role("link", name="watch_rollout").first).to_be_visible()
    page.mouse.move(0, 0)
    page.screenshot(path=PICTURES / "run-grid.png")


def picture_artifact(page: Any, run_url: str, artifact: str, name: str, height: int = 1000) -> None:
    """An image artifact in the MLflow run page's Artifacts tab, once that image has loaded. A page of its own:
    MLflow's UI is one page, and a second artifact reached by its address alone would keep showing the first."""
    from playwright.sync_api import expect

    viewer = page.context.new_page()
    viewer.set_viewport_size({"width": 1400, "height": height})
    viewer.goto(f"{run_url}/artifacts/{artifact}")
    expect(viewer.get_by_text(artifact, exact=True).first).to_be_visible()
    image = viewer.locator("img[src^='blob:']").first
    expect(image).to_be_visible()
    viewer.wait_for_function("image => image.complete && image.naturalWidth > 0", arg=image.element_handle())
    assistant = viewer.get_by_role("button", name="Close", exact=True)
    if assistant.count():  # MLflow's assistant panel takes a third of the page
        assistant.first.click()
    viewer.mouse.move(0, 0)
    viewer.screenshot(path=PICTURES / f"{name}.png")
    viewer.close()
