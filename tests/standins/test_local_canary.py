"""The local canary, end to end: the release stage's own ``Helm`` runs the ``helm`` stand-in, which renders the
chart with Helm's engine and keeps the history in files; the stable and new inference APIs run on loopback behind
the weighted router, judged by the chart's own analysis."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from contract import CANARY_VERDICT_TAG
from ml import tracking
from ml.errors import StageError
from ml.promote import promote
from ml.release import helm
from standins import rollouts
from standins.rollouts.traffic import Traffic
from tests.helpers import CHAMPION
from tests.standins.conftest import MODEL

IMAGE_TAG = "0.1.0"


def uri(version: str) -> str:
    return f"models:/{MODEL}/{version}"


def outcome(release_dir: Path, revision: int, timeout_s: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while (result := rollouts.read_result(release_dir, revision)) is None:
        assert time.monotonic() < deadline, rollouts.read_status(release_dir)
        time.sleep(0.3)
    return result


def served_version(release_dir: Path, record: dict[str, Any]) -> str:
    endpoint = rollouts.read_status(release_dir)["endpoint"]
    answer = httpx.post(f"{endpoint}/predict", json=record, timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-served-by"] == "stable"
    return str(answer.json()["model_version"])


def champion() -> str:
    return str(dict(tracking.client().get_registered_model(MODEL).aliases)[CHAMPION])


@pytest.fixture()
def first_release(target: helm.Helm, local_helm: Path, versions: dict[str, Any]) -> dict[str, Any]:
    """The champion deployed as the release's first revision: stable at once, no steps (as Argo does)."""
    deployment = helm.deploy(target, model_uri=uri(versions["first"]), image_tag=IMAGE_TAG)
    result = outcome(local_helm, deployment.revision)
    assert (deployment.revision, deployment.changed, deployment.previous_revision) == (1, True, None)
    assert (deployment.workload_kind, deployment.workload_name) == ("Rollout", target.release)
    assert result["phase"] == "Healthy" and result["measurements"] == []
    traffic = Traffic.from_prepared(versions["prepared"], 1)
    return {"record": traffic.records[0]}


def test_a_good_canary_follows_the_charts_steps_and_is_promoted(
    target, local_helm, versions, first_release
) -> None:
    assert served_version(local_helm, first_release["record"]) == versions["first"]
    deployment = helm.deploy(target, model_uri=uri(versions["good"]), image_tag=IMAGE_TAG)
    assert (deployment.revision, deployment.previous_revision) == (2, 1)
    result = outcome(local_helm, deployment.revision)

    assert result["phase"] == "Healthy", result["message"]
    steps = result["steps"]
    assert [s.get("setWeight") for s in steps if "setWeight" in s] == [10, 30, 60, 100]
    measured = {(m["step"], m["metric"]) for m in result["measurements"]}
    pauses = [i for i, s in enumerate(steps) if "pause" in s]
    assert measured == {(i, metric) for i in pauses for metric in ("success-rate", "latency-p99")}
    assert all(m["phase"] == "Successful" and m["requests"] > 0 for m in result["measurements"])
    assert {m["condition"] for m in result["measurements"]} == {"result[0] >= 0.99", "result[0] <= 0.25"}
    assert served_version(local_helm, first_release["record"]) == versions["good"]

    promotion = promote(name=MODEL, version=versions["good"], alias=CHAMPION, verdict=result)
    assert (promotion.promoted, promotion.previous_champion, champion()) == (
        True,
        versions["first"],
        versions["good"],
    )
    tags = tracking.client().get_model_version(MODEL, versions["good"]).tags
    assert tags[CANARY_VERDICT_TAG] == "promoted"
    assert any(key.startswith("mlops.canary.latency-p99.step") for key in tags)

    again = promote(name=MODEL, version=versions["good"], alias=CHAMPION, verdict=result)
    assert (again.promoted, champion()) == (False, versions["good"])
    redeploy = helm.deploy(target, model_uri=uri(versions["good"]), image_tag=IMAGE_TAG)
    assert (redeploy.revision, redeploy.changed) == (2, False)


@pytest.mark.parametrize(("fault", "failed_metric"), [("error", "success-rate"), ("slow", "latency-p99")])
def test_a_failing_canary_is_aborted_rolled_back_and_champion_stays(
    target, local_helm, versions, first_release, fault, failed_metric
) -> None:
    deployment = helm.deploy(target, model_uri=uri(versions[fault]), image_tag=IMAGE_TAG)
    result = outcome(local_helm, deployment.revision)

    assert result["phase"] == "Degraded" and result["abort"] is True
    assert f'Metric "{failed_metric}" assessed Failed' in result["message"]
    assert result["currentStepIndex"] == 1  # aborted at the first analysed pause, at 10 % of the traffic
    assert served_version(local_helm, first_release["record"]) == versions["first"]

    rollback = helm.rollback(target, revision=deployment.revision)
    assert (rollback.revision, rollback.restored_revision, rollback.changed) == (3, 1, True)
    assert rollback.restored_model_uri == uri(versions["first"])
    assert outcome(local_helm, rollback.revision)["phase"] == "Healthy"
    again = helm.rollback(target, revision=deployment.revision)
    assert (again.revision, again.changed) == (3, False)
    assert [r.status for r in target.history()] == ["superseded", "superseded", "deployed"]

    recorded = promote(name=MODEL, version=versions[fault], alias=CHAMPION, verdict=result)
    assert (recorded.promoted, recorded.verdict, champion()) == (False, "aborted", versions["first"])
    assert tracking.client().get_model_version(MODEL, versions[fault]).tags[CANARY_VERDICT_TAG] == "aborted"


def test_promotion_refuses_when_champion_moved_since_evaluation(target, versions) -> None:
    # Someone moved the alias by hand after the good model was evaluated against the first.
    tracking.client().set_registered_model_alias(MODEL, CHAMPION, versions["slow"])
    tags_before = tracking.client().get_model_version(MODEL, versions["good"]).tags
    verdict = {"phase": "Healthy", "model_uri": uri(versions["good"]), "measurements": []}
    with pytest.raises(
        StageError,
        match=rf"compared against v{versions['first']}, but {CHAMPION} now points at v{versions['slow']}",
    ):
        promote(name=MODEL, version=versions["good"], alias=CHAMPION, verdict=verdict)
    assert champion() == versions["slow"]
    assert tracking.client().get_model_version(MODEL, versions["good"]).tags == tags_before


def test_a_verdict_about_another_model_is_refused(versions) -> None:
    verdict = {"phase": "Healthy", "model_uri": uri(versions["first"]), "measurements": []}
    with pytest.raises(StageError, match="refusing to act on it"):
        promote(name=MODEL, version=versions["good"], alias=CHAMPION, verdict=verdict)


def test_rolling_back_a_first_release_is_refused(target, versions) -> None:
    deployment = helm.deploy(target, model_uri=uri(versions["first"]), image_tag=IMAGE_TAG)
    with pytest.raises(StageError, match="no earlier revision with another model"):
        helm.rollback(target, revision=deployment.revision)


@pytest.mark.parametrize(
    ("values", "measured_steps"),
    [("workload:\n  strategy: blueGreen\n", {0}), ("workload:\n  kind: deployment\n", set())],
    ids=["blue-green", "deployment"],
)
def test_blue_green_analyses_the_preview_and_a_deployment_switches_when_ready(
    target, local_helm, versions, tmp_path, values, measured_steps
) -> None:
    """The other strategies of the chart: the preview is analysed before the switch; a Deployment just rolls."""
    values_file = tmp_path / "strategy.yaml"
    values_file.write_text(values)
    local = helm.Helm(target.chart_dir, target.release, target.namespace, (values_file,))
    first = helm.deploy(local, model_uri=uri(versions["first"]), image_tag=IMAGE_TAG)
    assert outcome(local_helm, first.revision)["phase"] == "Healthy"
    deployment = helm.deploy(local, model_uri=uri(versions["good"]), image_tag=IMAGE_TAG)
    result = outcome(local_helm, deployment.revision)
    assert result["phase"] == "Healthy", result["message"]
    assert {m["step"] for m in result["measurements"]} == measured_steps
    assert all(m["phase"] == "Successful" for m in result["measurements"])
    record = Traffic.from_prepared(versions["prepared"], 1).records[0]
    assert served_version(local_helm, record) == versions["good"]


def test_a_restarted_controller_restores_stable_and_still_canaries_the_next_model(
    target, local_helm, versions
) -> None:
    """`make release-down` (or a reboot) between two releases must not turn the next one into a first release."""
    first = helm.deploy(target, model_uri=uri(versions["first"]), image_tag=IMAGE_TAG)
    assert outcome(local_helm, first.revision)["phase"] == "Healthy"
    assert rollouts.stop(local_helm) is True
    deployment = helm.deploy(target, model_uri=uri(versions["error"]), image_tag=IMAGE_TAG)
    result = outcome(local_helm, deployment.revision)
    assert result["phase"] == "Degraded", result["message"]
    assert result["stableRevision"] == first.revision
