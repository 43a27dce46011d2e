"""Two models on one platform, on a real scheduler: their runs and canaries at the same time.

Runs on the session's ``airflow standalone`` with the shipped model files: the card-fraud model (the synthetic
stream) and the income model (UCI Adult, as Parquet under the data root, where ``make demo`` writes it). Both
DAGs are triggered together twice: first releases, then canaries against those champions. Each model's runs
register, deploy, promote and announce only its own model: the histories of the two releases, the aliases and the
versions' tags never mention the other.
"""

from __future__ import annotations

from typing import Any

import pytest
from mlflow import MlflowClient

from benchmarks.bench_quality import adult_table
from contract import RUN_KEY_TAG
from mlops.models import load_models
from mlops.platform_config import load_platform
from standins.release_store import ReleaseStore
from standins.rollouts import read_result

pytestmark = [pytest.mark.e2e, pytest.mark.scheduler]
MODELS = [load_models().get("card_fraud"), load_models().get("adult_income")]
#: Small and quick runs, released whatever the week (the form's choice) and whatever the champion scores.
CONF = {
    "card_fraud": {
        "dataset_uri": "synthetic://card-transactions?rows_per_day=300&seed=21&fraud_rate=0.02",
        "training_window_days": 14,
        "min_average_precision": 0.05,
    },
    "adult_income": {},
}
COMMON = {"n_estimators": 30, "policy": "superior", "min_improvement": -1.0, "release": "always"}


def trigger_both(standalone) -> dict[str, dict[str, Any]]:
    """Trigger both models' DAGs at once (as two people would from the form); wait for both runs to end."""
    started = {
        model.key: standalone.api(
            f"/dags/{model.training_dag_id}/dagRuns",
            {"logical_date": None, "conf": {**CONF[model.key], **COMMON}},
        )["dag_run_id"]
        for model in MODELS
    }
    return {
        model.key: standalone.wait_for_run(started[model.key], timeout=900, dag_id=model.training_dag_id)
        for model in MODELS
    }


@pytest.fixture(scope="module")
def two_rounds(standalone) -> list[dict[str, dict[str, Any]]]:
    table = standalone.data_root / "tables"
    table.mkdir(parents=True, exist_ok=True)
    adult_table(table)
    return [trigger_both(standalone), trigger_both(standalone)]


def test_both_models_release_side_by_side_and_each_is_promoted(standalone, two_rounds) -> None:
    client, alias = MlflowClient(), load_platform().registry.production_alias
    for model in MODELS:
        for round_ in two_rounds:
            run = round_[model.key]
            assert run["state"] == "success", (
                model.key, standalone.task_states(run["dag_run_id"], model.training_dag_id)
            )  # fmt: skip
        last = two_rounds[-1][model.key]["dag_run_id"]
        champion = client.get_model_version_by_alias(model.registered_model, alias)
        assert champion.tags[RUN_KEY_TAG] == f"{model.training_dag_id}/{last}"


def test_each_release_history_serves_only_its_own_model(standalone, two_rounds) -> None:
    state_dir = standalone.data_root / load_platform().release.local.state_dir
    for model in MODELS:
        history = ReleaseStore(state_dir, model.release.name).history()
        served = {revision.values["model"]["uri"] for revision in history}
        assert served and all(uri.startswith(f"models:/{model.registered_model}/") for uri in served), served
        # Its newest revision was a canary against the one before (its own), analysed, and ended Healthy.
        newest = history[-1].revision
        result = read_result(state_dir / model.release.name, newest) or {}
        assert result.get("phase") == "Healthy" and result.get("measurements"), (model.key, result)
        assert {m["phase"] for m in result["measurements"]} == {"Successful"}


def test_no_version_of_one_model_was_registered_by_the_others_dag(standalone, two_rounds) -> None:
    client = MlflowClient()
    for model in MODELS:
        versions = client.search_model_versions(f"name = '{model.registered_model}'")
        assert versions
        for version in versions:
            assert version.tags[RUN_KEY_TAG].startswith(f"{model.training_dag_id}/"), version.tags
