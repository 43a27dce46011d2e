"""Registered model versions for release tests: a good model and models that fail the way production models do."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from mlops.platform_config import load_platform

from ml import tracking
from ml.evaluate import THRESHOLD_TAG, evaluate
from ml.prepare import prepare
from ml.register import CHAMPION_AT_EVALUATION_TAG, register
from ml.release import helm
from ml.train import train
from tests.helpers import CHALLENGER, CHAMPION, train_config
from tests.ml.release.faulty_models import TRUSTED_TYPES, FaultyClassifier

MODEL = "release-test-model"
RELEASE = load_platform().release
CHART = Path(__file__).resolve().parents[3] / "k8s" / "helm" / "inference-api"


def _version_of(source: str, run_id: str, model_id: str, champion_at_evaluation: str, threshold: str) -> str:
    version = tracking.client().create_model_version(
        name=MODEL,
        source=source,
        run_id=run_id,
        model_id=model_id,
        tags={THRESHOLD_TAG: threshold, CHAMPION_AT_EVALUATION_TAG: champion_at_evaluation},
    )
    return str(version.version)


def _faulty(fault: str, encoder: Any, experiment: str) -> tuple[str, str, str]:
    import mlflow
    import mlflow.sklearn
    from sklearn.pipeline import Pipeline

    pipeline = Pipeline([("encode", encoder), ("model", FaultyClassifier(fault=fault).fit(None, None))])
    # Not mlflow.set_experiment: it would leave this experiment active for the other tests' runs.
    with mlflow.start_run(
        experiment_id=tracking.experiment_id(experiment), run_name=f"faulty-{fault}"
    ) as run:
        info = mlflow.sklearn.log_model(pipeline, name="model", skops_trusted_types=TRUSTED_TYPES)
    return info.model_uri, run.info.run_id, info.model_id


@pytest.fixture(scope="package")
def versions(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """v1 (the champion), v2 (a good challenger), and challengers that error or are slow, all compared to v1."""
    import mlflow.sklearn

    prepared = str(tmp_path_factory.mktemp("release") / "prepared")
    prepare("synthetic://card-transactions?rows=20000&seed=11", "is_fraud", prepared, time_column="timestamp",
            drop_columns=["transaction_id"])  # fmt: skip
    trained = train(prepared, train_config(n_estimators=40), experiment="release", run_key="release/1")
    evaluation = evaluate(prepared, trained.model_uri, trained.run_id, registered_model_name=MODEL,
                          min_average_precision=0.0, min_improvement=0.0, champion_alias=CHAMPION)  # fmt: skip
    first = register(asdict(evaluation), run_key="release/1", alias=CHALLENGER).version
    threshold = f"{evaluation.metrics.threshold:.6f}"
    good = _version_of(trained.model_uri, trained.run_id, trained.model_id, first, threshold)
    encoder = mlflow.sklearn.load_model(trained.model_uri).named_steps["encode"]
    faulty = {
        fault: _version_of(*_faulty(fault, encoder, "release"), first, "0.5") for fault in ("error", "slow")
    }
    return {"prepared": prepared, "first": first, "good": good, **faulty}


@pytest.fixture()
def target(versions: dict[str, Any], tmp_path: Path) -> Iterator[helm.LocalHelm]:
    """A local release of the chart, its controller stopped at the end; champion reset to the first version."""
    tracking.client().set_registered_model_alias(MODEL, CHAMPION, versions["first"])
    local = helm.LocalHelm(
        CHART,
        RELEASE["name"],
        RELEASE["namespace"],
        tmp_path / "releases",
        controller_settings={
            "replay_data": versions["prepared"],
            "pause_seconds": 2,
            "requests_per_second": 60,
        },
    )
    yield local
    helm.stop_controller(tmp_path / "releases", RELEASE["name"])
