"""The local canary, end to end: the release stage's own ``Helm`` runs the ``helm`` stand-in, which renders the
chart with Helm's engine and keeps the history in files; the stable and new inference APIs run on loopback behind
the weighted router, judged by the chart's own analysis."""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from contract import CANARY_MESSAGE_TAG, CANARY_VERDICT_TAG, INCONCLUSIVE_PAUSE
from ml import tracking
from ml.errors import StageError
from ml.promote import promote
from ml.release import budget, helm
from mlops.platform_config import PLATFORM_FILE_ENV
from standins import rollouts
from standins.rollouts.traffic import Traffic
from tests.helpers import CHALLENGER, CHAMPION, write_platform
from tests.standins.conftest import CHART, MIN_REQUESTS, MODEL, ROOT

IMAGE_TAG = "0.1.0"
METRICS = ("success-rate", "latency-p99", "latency-p99-vs-stable", "client-errors", "positive-share-shift")


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
    """The pipeline's release (the champion check armed), its promotion, then CI/CD's image upgrade of the same
    release: the image's canary must not inherit the model release's champion check (after the promotion it would
    compare the new champion with the one the model was compared with, and abort a good rollout)."""
    assert served_version(local_helm, first_release["record"]) == versions["first"]
    deployment = helm.deploy(
        target, model_uri=uri(versions["good"]), image_tag=IMAGE_TAG, champion=check(versions["first"])
    )
    assert (deployment.revision, deployment.previous_revision) == (2, 1)
    result = outcome(local_helm, deployment.revision)

    assert result["phase"] == "Healthy", result["message"]
    steps = result["steps"]
    assert [s.get("setWeight") for s in steps if "setWeight" in s] == [10, 30, 60, 100]
    measured = {(m["step"], m["metric"]) for m in result["measurements"]}
    pauses = [i for i, s in enumerate(steps) if "pause" in s]
    checked = [i for i, s in enumerate(steps) if "analysis" in s]
    assert measured == {(i, metric) for i in pauses for metric in METRICS} | {
        (checked[0], "champion-unchanged")
    }
    # Every measurement saw the template's minimum of requests to the new model, even at 10 % of the traffic.
    assert all(m["phase"] == "Successful" for m in result["measurements"])
    assert all(m["requests"] >= MIN_REQUESTS for m in result["measurements"] if m["metric"] in METRICS)
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

    # A retry (after a crash that lost the first result) tells the same truth: its earlier attempt moved it.
    again = promote(name=MODEL, version=versions["good"], alias=CHAMPION, verdict=result)
    assert (again.promoted, again.previous_champion, champion()) == (
        True,
        versions["first"],
        versions["good"],
    )
    redeploy = helm.deploy(
        target, model_uri=uri(versions["good"]), image_tag=IMAGE_TAG, champion=check(versions["first"])
    )
    assert (redeploy.revision, redeploy.changed) == (2, False)

    ci_cd_image_upgrade(target, image_tag="ci-sha-1234")
    upgraded = outcome(local_helm, 3)
    assert upgraded["phase"] == "Healthy", upgraded["message"]
    assert "champion-unchanged" not in {m["metric"] for m in upgraded["measurements"]}
    assert helm.model_of(target.history()[-1]) == (uri(versions["good"]), "ci-sha-1234")
    assert served_version(local_helm, first_release["record"]) == versions["good"]


class Clients:
    """Clients calling the release's endpoint (the router) without pause, from two threads: what they were
    answered, by status."""

    def __init__(self, endpoint: str, record: dict[str, Any]) -> None:
        self.endpoint, self.record = endpoint, record
        self.statuses: dict[int, int] = {}
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._call) for _ in range(2)]

    def __enter__(self) -> Clients:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join()

    def _call(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self.stopping.is_set():
                status = client.post(f"{self.endpoint}/predict", json=self.record).status_code
                self.statuses[status] = self.statuses.get(status, 0) + 1


def ci_cd_image_upgrade(target: helm.Helm, image_tag: str) -> None:
    """The CI/CD workflow's own `helm upgrade` step (.github/workflows/ci-cd.yaml), run as it is written, through
    the `helm` first on PATH (the stand-in here), over the releases its step before lists (`make -s model-releases`:
    "<release> <namespace>" per model; here the release under test)."""
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "ci-cd.yaml").read_text())
    (script,) = [
        step["run"] for step in workflow["jobs"]["deploy"]["steps"] if step.get("name") == "helm upgrade"
    ]
    with tempfile.TemporaryDirectory() as runner_temp:
        (Path(runner_temp) / "releases").write_text(f"{target.release} {target.namespace}\n")
        env = {**os.environ, "INFERENCE_API_IMAGE": "ghcr.io/example/inference-api", "GITHUB_SHA": image_tag,
               "RUNNER_TEMP": runner_temp}  # fmt: skip
        done = subprocess.run(
            ["bash", "-eu", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True
        )
    assert done.returncode == 0, done.stderr


#: What an all-5xx canary does to its latency is its error path's speed under the machine's load (a traceback
#: logged per request): its latency measurements may fail beside the success rate (they did on a loaded CI run,
#: 2x the stable model's p99), and need not.
ERROR_PATH_LATENCY = {"latency-p99", "latency-p99-vs-stable"}


@pytest.mark.parametrize(
    ("fault", "failed_metrics", "may_fail"),
    [
        ("error", {"success-rate"}, ERROR_PATH_LATENCY),  # every request a 500
        # Over the SLO's p99, and far slower than the stable model.
        pytest.param("slow", {"latency-p99", "latency-p99-vs-stable"}, set(), marks=pytest.mark.long),
        ("contract", {"client-errors"}, set()),  # a new required input: every request a 422, no 5xx at all
        # Scores shifted high: every transaction flagged, every answer a 200.
        pytest.param("high", {"positive-share-shift"}, set(), marks=pytest.mark.long),
    ],
)
def test_a_failing_canary_is_aborted_rolled_back_and_champion_stays(
    target, local_helm, versions, first_release, fault, failed_metrics, may_fail, tmp_path
) -> None:
    """Each fault fails the measurements meant to catch it and no other (``may_fail``: what it does to them is not
    the model's). Clients calling the release all along never see the router fail to reach the canary (502): at
    the abort, traffic goes back to stable before the canary stops (it stopped first: 22 x 502 within 175 ms). A
    model that raises while scoring ("error") makes its server close the connection after the 500, which the
    router answers 502 on its own; only the others show the abort's order."""
    release = target
    if fault == "slow":  # it answers one request at a time: a smaller minimum keeps the window short
        values = tmp_path / "few.yaml"
        values.write_text("analysis:\n  minRequests: 10\n")
        release = helm.Helm(
            target.chart_dir, target.release, target.namespace, (*target.values_files, values)
        )
    with Clients(rollouts.read_status(local_helm)["endpoint"], first_release["record"]) as clients:
        deployment = helm.deploy(release, model_uri=uri(versions[fault]), image_tag=IMAGE_TAG)
        result = outcome(local_helm, deployment.revision)
        time.sleep(1.5)  # past the abort, while the canary drains and stops
    assert fault == "error" or clients.statuses.get(502, 0) == 0, clients.statuses
    assert clients.statuses.get(200, 0) > 50, clients.statuses

    assert result["phase"] == "Degraded" and result["abort"] is True
    assert all(f'Metric "{metric}" assessed Failed' in result["message"] for metric in failed_metrics)
    failed = {m["metric"] for m in result["measurements"] if m["phase"] == "Failed"}
    assert failed_metrics <= failed <= failed_metrics | may_fail
    assert result["currentStepIndex"] == 1  # aborted at the first analysed pause, at 10 % of the traffic
    assert served_version(local_helm, first_release["record"]) == versions["first"]

    rollback = helm.rollback(target, revision=deployment.revision)
    assert (rollback.revision, rollback.restored_revision, rollback.changed) == (3, 1, True)
    assert rollback.restored_model_uri == uri(versions["first"])
    assert outcome(local_helm, rollback.revision)["phase"] == "Healthy"
    again = helm.rollback(target, revision=deployment.revision)
    assert (again.revision, again.changed) == (3, False)
    assert [r.status for r in target.history()] == ["superseded", "superseded", "deployed"]

    tracking.client().set_registered_model_alias(MODEL, CHALLENGER, versions[fault])  # as register set it
    recorded = promote(name=MODEL, version=versions[fault], alias=CHAMPION, verdict=result)
    assert (recorded.promoted, recorded.verdict, champion()) == (False, "aborted", versions["first"])
    aborted = tracking.client().get_model_version(MODEL, versions[fault])
    assert aborted.tags[CANARY_VERDICT_TAG] == "aborted"
    # The candidate alias stays (the pipeline may not delete aliases); the verdict keeps it from serving.
    assert CHALLENGER in aborted.aliases


def test_the_canary_replays_what_the_stable_models_clients_send(
    target, local_helm, versions, first_release
) -> None:
    """A challenger trained without an input its clients send (accepted on purpose as incomparable) is judged on
    production's traffic, which the stable model serves: it refuses every request, and is aborted. Replaying the
    challenger's own test split instead made the stable model refuse every request: client-errors measured -1.0
    and passed, positive-share-shift had no stable decisions (Inconclusive), and the rollout paused at 10 %."""
    deployment = helm.deploy(target, model_uri=uri(versions["narrow"]), image_tag=IMAGE_TAG)
    result = outcome(local_helm, deployment.revision)

    assert result["phase"] == "Degraded", result["message"]
    (failed,) = [m for m in result["measurements"] if m["phase"] == "Failed"]
    assert (failed["metric"], failed["value"]) == ("client-errors", 1.0)
    assert served_version(local_helm, first_release["record"]) == versions["first"]


# Long: make test keeps its kin, a champion moved before the release started (refused) and one moved by hand
# before promotion (tests/e2e/test_training_pipeline.py).
@pytest.mark.long
def test_a_champion_moved_during_the_canary_stops_it_before_full_traffic_and_the_release_ends_on_it(
    target, local_helm, versions, first_release
) -> None:
    """The deploy step arms the chart's champion check; a person moves `champion` while the canary runs: the
    analysis before the last step aborts it, promote says "refused", the rollback restores the champion's revision."""
    deployment = helm.deploy(
        target, model_uri=uri(versions["good"]), image_tag=IMAGE_TAG, champion=check(versions["first"])
    )
    wait_for_step(local_helm, 1)
    tracking.client().set_registered_model_alias(MODEL, CHAMPION, versions["slow"])  # by hand, mid-canary
    result = outcome(local_helm, deployment.revision)

    assert (
        result["phase"] == "Degraded" and 'Metric "champion-unchanged" assessed Failed' in result["message"]
    )
    assert result["canaryWeight"] == 0 and max(s.get("setWeight", 0) for s in result["steps"]) == 100
    assert result["currentStepIndex"] == len(result["steps"]) - 2  # the check before the last setWeight
    promotion = promote(name=MODEL, version=versions["good"], alias=CHAMPION, verdict=result)
    assert (promotion.verdict, promotion.promoted, promotion.champion) == ("refused", False, versions["slow"])
    assert "the champion moved since evaluation" in promotion.reason
    tags = tracking.client().get_model_version(MODEL, versions["good"]).tags
    assert tags[CANARY_VERDICT_TAG] == "refused"
    rollback = helm.rollback(target, revision=deployment.revision, to_model_uri=uri(versions["slow"]))
    # The champion (moved by hand to a version never deployed) has no revision: the model before this release.
    assert rollback.restored_model_uri == uri(versions["first"])
    assert served_version(local_helm, first_release["record"]) == versions["first"]


def test_a_release_whose_champion_moved_before_it_started_is_refused_without_a_change(
    target, local_helm, versions, first_release
) -> None:
    tracking.client().set_registered_model_alias(MODEL, CHAMPION, versions["slow"])
    moved = check(versions["first"])
    refused = helm.deploy(target, model_uri=uri(versions["good"]), image_tag=IMAGE_TAG, champion=moved)
    assert refused.refused.startswith("the champion moved since evaluation") and not refused.changed
    assert refused.revision == 1 and [r.revision for r in target.history()] == [1]
    # The watch's verdict on a refused release, then promote: the refusal is said once on the version.
    verdict = {
        "phase": "Refused",
        "model_uri": uri(versions["good"]),
        "message": refused.refused,
        "measurements": [],
    }
    assert promote(name=MODEL, version=versions["good"], alias=CHAMPION, verdict=verdict).verdict == "refused"
    message = tracking.client().get_model_version(MODEL, versions["good"]).tags[CANARY_MESSAGE_TAG]
    assert message.count(refused.refused) == 1, message


# Long: make test keeps its kin, the budget read on the local Prometheus in the pipeline's second release
# (tests/e2e/test_training_pipeline.py) and the policy against Prometheus (tests/ml/release/test_budget.py).
@pytest.mark.long
def test_a_spent_error_budget_refuses_the_release_until_a_person_overrides_it(
    target, local_helm, versions
) -> None:
    """The stable model answers 500s: the availability budget of the local API is spent, so the deploy stage
    refuses the next release (nothing installed, the figures on the version); the form's override releases it.
    A person's rejection refuses it before any of that."""
    import json

    from contract import APPROVAL_TAG, ERROR_BUDGET_TAG, REJECT
    from ml.release.__main__ import main as release

    first = helm.deploy(target, model_uri=uri(versions["error"]), image_tag=IMAGE_TAG)
    assert outcome(local_helm, first.revision)["phase"] == "Healthy"
    endpoint = rollouts.read_status(local_helm)["endpoint"]
    record = Traffic.from_prepared(versions["prepared"], 1).records[0]
    # Monitoring lags the traffic: the release's Prometheus scrapes and records every second. Its first sample of a
    # counter is its baseline, so the errors count only once it has seen the new pod's counters at 0.
    prometheus = rollouts.read_status(local_helm)["prometheus"]
    baseline = 'http_requests_total{path="/predict",status="500"} == 0'
    deadline = time.monotonic() + 30
    while not httpx.get(f"{prometheus}/api/v1/query", params={"query": baseline}).json()["data"]["result"]:
        assert time.monotonic() < deadline, "the release's Prometheus never scraped the new pod"
        time.sleep(0.5)
    assert [httpx.post(f"{endpoint}/predict", json=record, timeout=10).status_code for _ in range(3)] == [
        500
    ] * 3
    days = yaml.safe_load((CHART / "values.yaml").read_text())["monitoring"]["slo"]["windowDays"]
    recorded = f"{budget.record_name('errors', days)} > 0"
    deadline = time.monotonic() + 30
    while not httpx.get(f"{prometheus}/api/v1/query", params={"query": recorded}).json()["data"]["result"]:
        assert time.monotonic() < deadline, "the release's Prometheus never recorded the errors"
        time.sleep(0.5)
    arguments = [
        "deploy", "--release", target.release, "--namespace", target.namespace, "--chart", str(target.chart_dir),
        "--model-name", MODEL, "--model-version", versions["good"], "--image-tag", IMAGE_TAG,
        "--requested-by", "ana",
    ]  # fmt: skip

    # A person's rejection comes first: nothing is read or installed, the answer is on the version.
    rejection = json.dumps({"chosen_options": [REJECT], "params_input": {"comment": "freeze"},
                            "responded_at": "2026-11-27T10:00:00+00:00", "responded_by_user": {"id": "bob", "name": "bob"}})  # fmt: skip
    rejected = release([*arguments, "--error-budget", "enforce", "--approval", rejection])
    assert rejected["refused"] == "rejected by bob: freeze; the release is not started"
    assert rejected["error_budget"] == {} and [r.revision for r in target.history()] == [1]
    tags = tracking.client().get_model_version(MODEL, versions["good"]).tags
    assert json.loads(tags[APPROVAL_TAG])["by"] == "bob" and ERROR_BUDGET_TAG not in tags

    refused = release([*arguments, "--error-budget", "enforce"])
    print(f"deploy refused: {refused['refused']}")
    assert refused["refused"].startswith(
        "the error budget is spent (availability: 100.000% of requests failed"
    )
    assert "1,000x the budget used, SPENT" in refused["refused"] and not refused["changed"]
    assert [r.revision for r in target.history()] == [1]
    tag = json.loads(tracking.client().get_model_version(MODEL, versions["good"]).tags[ERROR_BUDGET_TAG])
    assert (tag["policy"], tag["spent"], tag["overridden"]) == ("enforce", ["availability"], False)

    released = release([*arguments, "--error-budget", "override"])
    assert (released["revision"], released["changed"], released["refused"]) == (2, True, "")
    tag = json.loads(tracking.client().get_model_version(MODEL, versions["good"]).tags[ERROR_BUDGET_TAG])
    assert (tag["policy"], tag["overridden"], tag["requested_by"]) == ("override", True, "ana")
    assert tag["budgets"][0]["bad_ratio"] == 1.0


#: The most requests a window of the local canary sends in ``small_windows`` (far fewer than the platform's).
SMALL_WINDOW = 2_000


@pytest.fixture()
def small_windows(
    local_helm: Path, quick_platform: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> int:
    """The tests' platform settings with analysis windows of at most ``SMALL_WINDOW`` requests, for the controller
    that the release's first ``helm`` command starts (a test asks for it before ``first_release``)."""
    platform = write_platform(
        tmp_path / "small-windows.yaml", quick_platform, max_window_requests=SMALL_WINDOW
    )
    monkeypatch.setenv(PLATFORM_FILE_ENV, str(platform))
    return SMALL_WINDOW


def test_a_measurement_with_too_little_traffic_pauses_the_rollout_for_a_person(
    target, local_helm, versions, small_windows, first_release, tmp_path
) -> None:
    """More requests per measurement than the local traffic can give (it sends no more than the platform's most
    requests per window): Inconclusive, so the rollout pauses with the canary at its weight, and writes no verdict;
    a rollback (what a person may decide) ends the pause."""
    quiet = tmp_path / "quiet.yaml"
    quiet.write_text("analysis:\n  minRequests: 1000000\n")
    local = helm.Helm(target.chart_dir, target.release, target.namespace, (*target.values_files, quiet))
    deployment = helm.deploy(local, model_uri=uri(versions["good"]), image_tag=IMAGE_TAG)
    status = wait_for(local_helm, lambda s: s.get("pauseConditions"))
    assert status["phase"] == "Paused" and status["pauseConditions"] == [{"reason": INCONCLUSIVE_PAUSE}]
    assert status["canaryWeight"] == 10 and "Inconclusive" in status["message"]
    assert {m["phase"] for m in status["measurements"]} == {"Inconclusive"}
    # The replay stopped at the window's most requests: about a tenth of them reached the new model.
    assert {m["requests"] for m in status["measurements"]} <= set(range(1, small_windows // 5))
    assert rollouts.read_result(local_helm, deployment.revision) is None  # no verdict: a person decides
    rollback = helm.rollback(local, revision=deployment.revision)
    assert outcome(local_helm, deployment.revision)["phase"] == "Superseded"
    assert outcome(local_helm, rollback.revision)["phase"] == "Healthy"


def check(expected: str) -> helm.ChampionCheck:
    """The deploy step's champion check, read from the registry as the release stage reads it."""
    from ml.promote import current_alias

    return helm.ChampionCheck(alias=CHAMPION, expected=expected, current=current_alias(MODEL, CHAMPION))


def wait_for(release_dir: Path, condition: Any, timeout_s: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while not condition(status := rollouts.read_status(release_dir) or {}):
        assert time.monotonic() < deadline, status
        time.sleep(0.2)
    return status


def wait_for_step(release_dir: Path, step: int) -> None:
    wait_for(release_dir, lambda s: (s.get("currentStepIndex") or 0) >= step)


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
    [
        # Long: make test keeps the deployment's switch here and the blue-green objects' checks (tests/k8s).
        pytest.param("workload:\n  strategy: blueGreen\n", {0}, marks=pytest.mark.long),
        ("workload:\n  kind: deployment\n", set()),
    ],
    ids=["blue-green", "deployment"],
)
def test_blue_green_analyses_the_preview_and_a_deployment_switches_when_ready(
    target, local_helm, versions, tmp_path, values, measured_steps
) -> None:
    """The other strategies of the chart: the preview is analysed before the switch; a Deployment just rolls."""
    values_file = tmp_path / "strategy.yaml"
    values_file.write_text(values)
    local = helm.Helm(target.chart_dir, target.release, target.namespace, (*target.values_files, values_file))
    first = helm.deploy(local, model_uri=uri(versions["first"]), image_tag=IMAGE_TAG)
    assert outcome(local_helm, first.revision)["phase"] == "Healthy"
    deployment = helm.deploy(local, model_uri=uri(versions["good"]), image_tag=IMAGE_TAG)
    result = outcome(local_helm, deployment.revision)
    assert result["phase"] == "Healthy", result["message"]
    assert {m["step"] for m in result["measurements"]} == measured_steps
    assert all(m["phase"] == "Successful" for m in result["measurements"])
    record = Traffic.from_prepared(versions["prepared"], 1).records[0]
    assert served_version(local_helm, record) == versions["good"]


# A drill: the controller stopped between two releases, as `make release-down` or a reboot stops it (the other
# stops and kills: tests/standins/test_crash_safety.py).
@pytest.mark.drill
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
