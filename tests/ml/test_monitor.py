"""The monitor stage on a real model, served by the real inference API with its prediction record on, and labels that
arrive later: live quality per version, drift against the version's training split, and the champion's status."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from sklearn.metrics import average_precision_score

from ml import tracking
from ml.monitor import DECAYED, HEALTHY, INCONCLUSIVE, monitor
from ml.serve.app import create_app
from ml.serve.settings import Settings
from ml.windows import Window
from tests.helpers import CHAMPION, register_champion, split_records

MODEL = "monitored-model"
ROWS, LATE = 2000, 100


@pytest.fixture(scope="module")
def served(trained_model: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The model served for a while: ``ROWS`` test rows scored with their ids; their labels arrive, all but the last
    ``LATE``, before the day ends."""
    out, trained = trained_model["prepared"], trained_model["trained"]
    _, version = register_champion(out, trained, MODEL, run_key="monitor/1")
    _, test, records = split_records(out, ROWS)
    ids = [f"tx-{i}" for i in range(ROWS)]
    root = tmp_path_factory.mktemp("monitored")
    client = TestClient(
        create_app(Settings(model_uri=f"models:/{MODEL}@{CHAMPION}", record_uri=str(root / "p")))
    )
    client.__enter__()
    while client.get("/ready").status_code != 200:
        time.sleep(0.2)
    scores: list[float] = []
    for start in range(0, ROWS, 500):
        answer = client.post("/predict", json={"instances": records[start : start + 500]},
                             headers={"X-Request-ID": ",".join(ids[start : start + 500])})  # fmt: skip
        scores += [p["probability"] for p in answer.json()["predictions"]]
    client.__exit__(None, None, None)
    now = pd.Timestamp.now(tz="UTC")
    interval = Window(now.normalize(), now.normalize() + pd.Timedelta(days=1))
    arrived = [now] * (ROWS - LATE) + [interval.end + pd.Timedelta(hours=1)] * LATE
    labels = root / "labels"
    labels.mkdir()
    pd.DataFrame(
        {"transaction_id": ids, "is_fraud": test["is_fraud"].astype(int), "labelled_at": arrived}
    ).to_parquet(labels / "labels-0.parquet")
    return {"root": root, "interval": interval, "labels": test["is_fraud"].to_numpy(), "scores": np.array(scores),
            "version": version}  # fmt: skip


def judged(served: dict[str, Any], **settings: Any) -> Any:
    root = served["root"]
    return monitor(**{
        "registered_model": MODEL, "predictions": str(root / "p"), "labels": str(root / "labels"),
        "id_column": "transaction_id", "label_column": "is_fraud", "arrived_column": "labelled_at",
        "interval": served["interval"], "label_delay_days": 0, "champion_alias": CHAMPION,
        "min_average_precision": 0.0, "psi_threshold": 10.0, "min_labelled_positives": 1, **settings,
    })  # fmt: skip


def test_live_quality_is_measured_on_the_labels_that_arrived_in_time(served) -> None:
    judgement = judged(served)
    (figures,) = judgement.versions
    arrived = slice(0, ROWS - LATE)
    truth, scores = served["labels"][arrived], served["scores"][arrived]
    assert (figures.version, figures.predictions, figures.labelled) == (served["version"], ROWS, ROWS - LATE)
    assert figures.labelled_positives == truth.sum() > 0
    assert figures.average_precision == pytest.approx(average_precision_score(truth, scores), abs=1e-6)
    assert figures.observed_rate == pytest.approx(truth.mean(), abs=1e-6)
    # The test split against the training split of the same stream: little drift.
    assert figures.score_psi is not None and figures.score_psi < 0.25
    assert figures.feature_psi and max(figures.feature_psi.values()) < 0.25
    assert (judgement.status, judgement.champion) == (HEALTHY, served["version"])


def test_the_champion_decays_below_the_floor_and_too_few_labels_decide_nothing(served) -> None:
    decayed = judged(served, min_average_precision=0.99)
    assert decayed.status == DECAYED and decayed.decayed
    assert any(
        reason.startswith("live AP ") and "< the gate's floor 0.99" in reason for reason in decayed.reasons
    )
    unsure = judged(served, min_average_precision=0.99, min_labelled_positives=10**6)
    assert unsure.status == INCONCLUSIVE and not unsure.decayed
    no_labels_yet = judged(served, min_average_precision=0.99, labels=str(served["root"] / "not-landed-yet"))
    assert no_labels_yet.status == INCONCLUSIVE and no_labels_yet.versions[0].labelled == 0
    drifted = judged(served, psi_threshold=0.0, min_labelled_positives=10**6)  # drift decides without labels
    assert drifted.status == DECAYED and any("PSI" in reason for reason in drifted.reasons)


def test_figures_are_logged_on_the_versions_run_once_per_day(served) -> None:
    judged(served)
    judged(served)  # a re-run of the interval
    run_id = tracking.client().get_model_version(MODEL, served["version"]).run_id
    history = tracking.client().get_metric_history(run_id, "live_average_precision")
    assert len({(m.step, m.value) for m in history}) == 1
    assert len(history) == 1
    artifacts = {a.path for a in tracking.client().list_artifacts(run_id, "plots")}
    assert "plots/live_quality.png" in artifacts


def test_labels_that_are_not_0_1_need_the_models_positive_label(tmp_path) -> None:
    from ml.errors import StageError
    from ml.monitor import labels_until

    now = pd.Timestamp.now(tz="UTC")
    pd.DataFrame({"id": [1, 2], "outcome": ["fraud", "genuine"], "at": [now, now]}).to_parquet(
        tmp_path / "l.parquet"
    )
    since, until = now - pd.Timedelta(days=1), now + pd.Timedelta(days=1)
    with pytest.raises(StageError, match=r"dataset\.positive_label"):
        labels_until(str(tmp_path), "id", "outcome", "at", since, until)
    assert labels_until(str(tmp_path), "id", "outcome", "at", since, until, positive_label="fraud").to_dict() == {
        "1": 1, "2": 0,
    }  # fmt: skip
