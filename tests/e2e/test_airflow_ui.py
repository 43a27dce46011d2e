"""The Airflow UI in a real browser: a data scientist triggers the training DAG from its form.

Airflow runs as the session's ``airflow standalone`` (SQLite, LocalExecutor, the local pod runtime, MLflow on
loopback); Playwright drives Debian's Chromium (``make test`` installs it). Screenshots of every step are kept
under ``.local/test-artifacts/browser/`` (CI uploads them). A run triggered from the form has no logical date:
it covers the newest complete week, so it is the one that releases (after the backfill of past weeks in
``test_airflow_backfill.py``, which released nothing).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from contract import RELEASE_PLANNED, RELEASE_REASON_TAG, RELEASE_TAG, RUN_KEY_TAG
from mlops.platform_config import load_platform
from tests.e2e.conftest import DAG_ID, USER, Airflow

ROOT = Path(__file__).resolve().parents[2]
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
DATASET = "synthetic://card-transactions?rows_per_day=400&seed=7&fraud_rate=0.02"
RUN_TIMEOUT_S = 600
pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.scheduler]


@pytest.fixture()
def airflow(standalone: Airflow) -> Airflow:
    return standalone


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

    deadline = time.monotonic() + RUN_TIMEOUT_S
    while run["state"] not in ("success", "failed") and time.monotonic() < deadline:
        time.sleep(3)
        run = airflow.api(f"/dags/{DAG_ID}/dagRuns/{run_id}")
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
    champion = MlflowClient().get_model_version_by_alias(registry.model_name, registry.production_alias)
    assert (
        champion.tags[RELEASE_TAG] == RELEASE_PLANNED
        and "is the newest complete interval" in champion.tags[RELEASE_REASON_TAG]
    )
    assert champion.tags[RUN_KEY_TAG] == f"{DAG_ID}/{run_id}"
