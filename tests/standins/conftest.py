"""Registered model versions for release tests (a good model and models that fail the way production models
do), and a release kept by the local ``helm`` stand-in, driven by the release stage's own ``Helm``."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from contract import CHAMPION_AT_EVALUATION_TAG, LOCAL_RELEASES_ENV, PREPARED_URI_TAG, THRESHOLD_TAG
from ml import tracking
from ml.release import helm
from ml.train import pip_requirements
from mlops.models import load_models
from mlops.platform_config import PLATFORM_FILE_ENV, load_platform
from standins import rollouts
from tests.helpers import CHAMPION, register_evaluated, tests_canary
from tests.standins.faulty_models import TRUSTED_TYPES, FaultyClassifier

MODEL = "release-test-model"
RELEASE = load_models().get("card_fraud").release
ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / load_platform().release.chart
STAND_IN_TOOLS = ROOT / "standins" / "bin"


def _version_of(source: str, run_id: str, model_id: str, champion_at_evaluation: str, threshold: str) -> str:
    version = tracking.client().create_model_version(
        name=MODEL,
        source=source,
        run_id=run_id,
        model_id=model_id,
        tags={THRESHOLD_TAG: threshold, CHAMPION_AT_EVALUATION_TAG: champion_at_evaluation},
    )
    return str(version.version)


#: The input the ``narrow`` challenger was trained without (its data's ``drop_columns``).
NARROW_WITHOUT = "distance_from_home_km"


def _faulty(fault: str, encoder: Any, experiment: str, prepared: str) -> tuple[str, str, str]:
    """A model that fails as ``fault`` says; ``contract``: a new required input the clients do not send (every
    request is a 422); ``narrow``: trained without an input the clients send (``NARROW_WITHOUT``, left out of its
    prepared data), so it refuses their requests as having an unknown field."""
    import copy

    import mlflow
    import mlflow.sklearn
    from sklearn.pipeline import Pipeline

    if fault == "contract":
        encoder = copy.deepcopy(encoder)
        encoder.features = [*encoder.features, "merchant_risk_score"]
    if fault == "narrow":
        encoder = copy.deepcopy(encoder)
        encoder.features = [f for f in encoder.features if f != NARROW_WITHOUT]
    classifier = FaultyClassifier(fault="low" if fault in ("contract", "narrow") else fault).fit(None, None)
    pipeline = Pipeline([("encode", encoder), ("model", classifier)])
    # Not mlflow.set_experiment: it would leave this experiment active for the other tests' runs.
    with mlflow.start_run(
        experiment_id=tracking.experiment_id(experiment), run_name=f"faulty-{fault}"
    ) as run:
        # As the train stage does: the data the model learnt from, which the local canary replays.
        mlflow.set_tag(PREPARED_URI_TAG, prepared)
        info = mlflow.sklearn.log_model(pipeline, name="model", skops_trusted_types=TRUSTED_TYPES,
                                        pip_requirements=pip_requirements("random_forest"))  # fmt: skip
    return info.model_uri, run.info.run_id, info.model_id


@pytest.fixture(scope="package")
def versions(trained_model: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """v1 (the champion), v2 (a good challenger), and challengers that error, are slow, changed their input
    contract, flag everything or were trained without an input, all compared to v1."""
    import mlflow.sklearn

    from ml.prepare import prepare

    prepared, trained = trained_model["prepared"], trained_model["trained"]
    evaluation, first = register_evaluated(prepared, trained, MODEL, run_key="release/1")
    threshold = f"{evaluation.metrics.threshold:.6f}"
    good = _version_of(trained.model_uri, trained.run_id, trained.model_id, first, threshold)
    encoder = mlflow.sklearn.load_model(trained.model_uri).named_steps["encode"]
    faulty = {
        fault: _version_of(*_faulty(fault, encoder, "release", prepared), first, "0.5")
        for fault in ("error", "slow", "contract", "high")
    }
    narrow = str(tmp_path_factory.mktemp("narrow") / "prepared")
    prepare("synthetic://card-transactions?rows=3000&seed=8", "is_fraud", narrow, time_column="timestamp",
            drop_columns=["transaction_id", NARROW_WITHOUT])  # fmt: skip
    faulty["narrow"] = _version_of(*_faulty("narrow", encoder, "release", narrow), first, "0.5")
    return {"prepared": prepared, "first": first, "good": good, **faulty}


@pytest.fixture()
def local_helm(
    versions: dict[str, Any], quick_platform: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """What the local pod runtime gives the release stage: the stand-in first on PATH and a folder for releases.
    Yields the release's folder; its controller is stopped at the end and champion reset to the first version."""
    tracking.client().set_registered_model_alias(MODEL, CHAMPION, versions["first"])
    monkeypatch.setenv(
        "PATH", os.pathsep.join([str(STAND_IN_TOOLS), str(Path(sys.executable).parent), os.environ["PATH"]])
    )
    monkeypatch.setenv(LOCAL_RELEASES_ENV, str(tmp_path / "releases"))
    monkeypatch.setenv(PLATFORM_FILE_ENV, str(quick_platform))
    release_dir = tmp_path / "releases" / RELEASE.name
    yield release_dir
    rollouts.stop(release_dir)


#: The local canary tests' analysis (``tests.helpers.tests_canary``) and its requests per model and measurement.
CANARY = tests_canary()
MIN_REQUESTS = CANARY["minRequests"]


@pytest.fixture()
def target(local_helm: Path) -> helm.Helm:
    """The release stage's ``Helm`` on the inference API's chart, answered by the local stand-in, with the tests'
    canary."""
    values = local_helm.parent.parent / "canary-tests.yaml"
    values.write_text(yaml.safe_dump({"analysis": CANARY}))
    return helm.Helm(CHART, RELEASE.name, RELEASE.namespace, (values,))
