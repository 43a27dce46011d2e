"""Reading a rollout's verdict: Argo Rollout and Deployment states, AnalysisRun figures, slow against broken.

No cluster runs here: the workload objects below have the shape the Kubernetes API returns (taken from Argo
Rollouts' status fields), and the trigger's API client is a fake that serves them. The local runtime's watch
reads real files, as the local rollouts controller writes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from contract import (
    INCONCLUSIVE_PAUSE,
    LOCAL_CONTROLLER_LOG,
    LOCAL_CONTROLLER_MODULE,
    LOCAL_PID_FILE,
    LOCAL_RESULTS_DIR,
    LOCAL_STATUS_FILE,
    local_result_path,
    runs_module,
)
from mlops.platform_config import load_platform
from mlops.rollout import (
    MODEL_ANNOTATION,
    RolloutTrigger,
    RolloutWatchOperator,
    analysis_measurements,
    interpret,
)

MODEL = "models:/card-fraud-detector/7"
STEPS = [{"setWeight": 10}, {"pause": {"duration": "5m"}}, {"setWeight": 100}]


def rollout_object(phase: str, **status: Any) -> dict[str, Any]:
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Rollout",
        "metadata": {"name": "inference-api", "generation": 4},
        "spec": {
            "template": {"metadata": {"annotations": {MODEL_ANNOTATION: MODEL}}},
            "strategy": {"canary": {"steps": STEPS}},
        },
        "status": {
            "phase": phase,
            "observedGeneration": "4",
            "stableRS": "6d8f",
            "currentPodHash": "6d8f",
            **status,
        },
    }


ANALYSIS_RUN = {
    "metadata": {"name": "inference-api-6d8f-2", "creationTimestamp": "2026-11-26T10:00:00Z"},
    "spec": {"metrics": [{"name": "latency-p99", "successCondition": "result[0] <= 0.25"}]},
    "status": {
        "metricResults": [
            {
                "name": "latency-p99",
                "measurements": [
                    {"value": "[0.012]", "phase": "Successful"},
                    {"value": "[0.61]", "phase": "Failed"},
                ],
            }
        ]
    },
}


def test_a_settled_rollout_of_the_model_is_healthy() -> None:
    assert interpret("Rollout", rollout_object("Healthy"), MODEL)[0] == "Healthy"


@pytest.mark.parametrize(
    ("status", "phase"),
    [
        ({"phase": "Paused", "currentStepIndex": 1, "message": "CanaryPauseStep"}, "Progressing"),
        ({"phase": "Progressing", "currentPodHash": "77aa"}, "Progressing"),  # new ReplicaSet not yet stable
        ({"phase": "Healthy", "observedGeneration": "3"}, "Progressing"),  # status of the previous spec
        ({"phase": "Degraded", "abort": True, "message": 'Metric "latency-p99" assessed Failed'}, "Degraded"),
        ({"phase": "Paused", "abort": True}, "Degraded"),
        # Too little traffic: Argo pauses on the inconclusive analysis run; a person decides.
        ({"phase": "Paused", "pauseConditions": [{"reason": INCONCLUSIVE_PAUSE}]}, "Inconclusive"),
    ],
)
def test_rollout_states(status: dict[str, Any], phase: str) -> None:
    state, message = interpret("Rollout", rollout_object(**status), MODEL)
    assert state == phase
    if "message" in status and phase == "Degraded":
        assert message == status["message"]


def test_a_workload_running_another_model_gives_no_verdict_about_this_one() -> None:
    workload = rollout_object("Healthy")
    workload["spec"]["template"]["metadata"]["annotations"][MODEL_ANNOTATION] = (
        "models:/card-fraud-detector/6"
    )
    state, message = interpret("Rollout", workload, MODEL)
    assert state == "Superseded" and "rolled back or replaced" in message


def deployment(**status: Any) -> dict[str, Any]:
    obj = copy.deepcopy(rollout_object("Healthy"))
    obj["kind"], obj["spec"]["replicas"] = "Deployment", 3
    obj["status"] = {
        "observedGeneration": 4,
        "replicas": 3,
        "updatedReplicas": 3,
        "availableReplicas": 3,
        **status,
    }
    return obj


def test_deployment_states() -> None:
    assert interpret("Deployment", deployment(), MODEL)[0] == "Healthy"
    assert interpret("Deployment", deployment(updatedReplicas=1), MODEL)[0] == "Progressing"
    stuck = deployment(
        updatedReplicas=1,
        conditions=[
            {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "x"}
        ],
    )
    assert interpret("Deployment", stuck, MODEL) == ("Degraded", "x")


def test_analysis_runs_become_the_verdicts_measurements() -> None:
    assert analysis_measurements([ANALYSIS_RUN]) == [
        {
            "step": 0,
            "metric": "latency-p99",
            "value": 0.012,
            "condition": "result[0] <= 0.25",
            "phase": "Successful",
        },
        {
            "step": 1,
            "metric": "latency-p99",
            "value": 0.61,
            "condition": "result[0] <= 0.25",
            "phase": "Failed",
        },
    ]


class FakeCustomObjects:
    """Serves a sequence of Rollout states and the AnalysisRuns, as the Kubernetes API would (mock: no cluster)."""

    states: list[dict[str, Any]] = []

    def __init__(self, api: Any) -> None:
        pass

    async def get_namespaced_custom_object(self, group, version, namespace, plural, name) -> dict[str, Any]:
        assert (group, plural, namespace, name) == ("argoproj.io", "rollouts", "ml-serving", "inference-api")
        return self.states.pop(0) if len(self.states) > 1 else self.states[0]

    async def list_namespaced_custom_object(
        self, group, version, namespace, plural, label_selector
    ) -> dict[str, Any]:
        assert plural == "analysisruns" and label_selector == "rollouts-pod-template-hash=6d8f"
        return {"items": [ANALYSIS_RUN]}


def run_trigger(
    monkeypatch: pytest.MonkeyPatch, states: list[dict[str, Any]], deadline: float
) -> dict[str, Any]:
    """Mock of the cluster: the hook's connection and the custom objects API are fakes."""
    from airflow.providers.cncf.kubernetes.hooks.kubernetes import AsyncKubernetesHook
    from kubernetes_asyncio import client as async_client

    @contextlib.asynccontextmanager
    async def connection(self: Any) -> Any:
        yield object()

    monkeypatch.setattr(AsyncKubernetesHook, "get_conn", connection)
    monkeypatch.setattr(async_client, "CustomObjectsApi", FakeCustomObjects)
    FakeCustomObjects.states = states
    trigger = RolloutTrigger(
        kind="Rollout", name="inference-api", namespace="ml-serving", model_uri=MODEL,
        deadline=deadline, poll_seconds=0.01, kubernetes_conn_id="kubernetes_default",
    )  # fmt: skip

    async def first_event() -> dict[str, Any]:
        async for event in trigger.run():
            return dict(event.payload)
        raise AssertionError("the trigger ended without an event")

    return asyncio.run(first_event())


def test_the_trigger_waits_through_pauses_and_reports_an_abort_with_the_figures(monkeypatch) -> None:
    """Mock of the cluster (none runs here): the Rollout pauses twice, then Argo aborts it."""
    paused = rollout_object("Paused", currentStepIndex=1)
    aborted = rollout_object("Degraded", abort=True, message='Metric "latency-p99" assessed Failed')
    event = run_trigger(monkeypatch, [paused, paused, aborted], deadline=time.time() + 60)
    assert event["phase"] == "Degraded" and "latency-p99" in event["message"]
    assert [m["phase"] for m in event["measurements"]] == ["Successful", "Failed"]
    assert event["steps"] == STEPS  # for promote's canary report


def test_the_trigger_calls_a_rollout_still_progressing_at_the_deadline_slow(monkeypatch) -> None:
    """Mock of the cluster (none runs here): the Rollout never leaves its pause."""
    event = run_trigger(
        monkeypatch, [rollout_object("Paused", currentStepIndex=3)], deadline=time.time() + 0.05
    )
    assert event["phase"] == "Slow"


def test_the_trigger_survives_serialisation() -> None:
    trigger = RolloutTrigger(
        kind="Rollout", name="n", namespace="ns", model_uri=MODEL, deadline=1.0, poll_seconds=5,
        kubernetes_conn_id="k",
    )  # fmt: skip
    path, kwargs = trigger.serialize()
    assert path == "mlops.rollout.RolloutTrigger"
    assert RolloutTrigger(**kwargs).serialize() == (path, kwargs)


DEPLOYMENT = {
    "release": "inference-api", "namespace": "ml-serving", "revision": 2, "model_uri": MODEL,
    "workload_kind": "Rollout", "workload_name": "inference-api",
}  # fmt: skip


def watcher(minutes: float = 1) -> RolloutWatchOperator:
    return RolloutWatchOperator(
        task_id="watch", deployment=DEPLOYMENT, timeout=timedelta(minutes=minutes), poll_seconds=0.05
    )


@pytest.fixture()
def controller_process() -> Iterator[subprocess.Popen[bytes]]:
    """A real process whose command line is a local controller's (it only sleeps): what the watch sees of one."""
    process = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)", "-m", LOCAL_CONTROLLER_MODULE]
    )
    # Right after the fork the kernel may show an empty command line for an instant: wait for the exec.
    deadline = time.monotonic() + 10
    while not runs_module(process.pid, LOCAL_CONTROLLER_MODULE) and time.monotonic() < deadline:
        time.sleep(0.01)
    yield process
    process.kill()
    process.wait()


def test_slow_is_a_failure_that_rolls_nothing_back_and_superseded_is_final() -> None:
    operator = watcher()
    with pytest.raises(
        AirflowException, match="slow, not broken: revision 2 of inference-api is still progressing"
    ):
        operator._verdict({"phase": "Slow", "message": "Paused at step 3"})
    with pytest.raises(AirflowFailException, match="no verdict for models:/card-fraud-detector/7"):
        operator._verdict({"phase": "Superseded", "message": "rolled back"})
    verdict = operator._verdict(
        {"phase": "Degraded", "message": "aborted", "measurements": [], "steps": STEPS}
    )
    assert verdict == {
        "phase": "Degraded",
        "message": "aborted",
        "revision": 2,
        "model_uri": MODEL,
        "measurements": [],
        "steps": STEPS,
    }


def test_the_local_watch_reads_the_revisions_result_and_times_out_as_slow(
    tmp_path, monkeypatch, controller_process
) -> None:
    """The files are the local controller's (``standins.rollouts``), at the contract's paths."""
    monkeypatch.setenv("AIRFLOW_VAR_MLOPS_DATA_ROOT", str(tmp_path))
    release_dir = tmp_path / load_platform().release.local.state_dir / "inference-api"
    (release_dir / LOCAL_RESULTS_DIR).mkdir(parents=True)
    operator = watcher(minutes=0.001)
    with pytest.raises(AirflowException, match="no local rollouts controller is running"):
        operator._watch_locally(operator._deployment(), deadline=time.time() + 5)
    (release_dir / LOCAL_PID_FILE).write_text(str(controller_process.pid))
    (release_dir / LOCAL_STATUS_FILE).write_text(json.dumps({"phase": "Paused", "message": "step 1: pause"}))
    operator = watcher(minutes=0.001)
    deployment = operator._deployment()
    assert operator._watch_locally(deployment, deadline=time.time() + 0.1)["phase"] == "Slow"
    result = {"phase": "Healthy", "message": "stable", "model_uri": MODEL, "measurements": []}
    local_result_path(release_dir, 2).write_text(json.dumps(result))
    assert operator._watch_locally(deployment, deadline=time.time() + 5) == result
    other = {**result, "model_uri": "models:/card-fraud-detector/6"}
    local_result_path(release_dir, 2).write_text(json.dumps(other))
    assert operator._watch_locally(deployment, deadline=time.time() + 5)["phase"] == "Superseded"


def test_a_deploy_result_missing_fields_fails_the_watch() -> None:
    operator = watcher()
    operator.deployment = {"release": "inference-api"}
    with pytest.raises(AirflowFailException, match="lacks"):
        operator._deployment()


def test_an_inconclusive_analysis_needs_a_person_and_a_refused_deploy_is_a_verdict_without_a_watch(
    tmp_path, monkeypatch, controller_process
) -> None:
    with pytest.raises(AirflowFailException, match=r"needs a person: the rollout of revision 2 .* is paused"):
        watcher()._verdict({"phase": "Inconclusive", "message": "too few requests"})
    monkeypatch.setenv("AIRFLOW_VAR_MLOPS_DATA_ROOT", str(tmp_path))
    release_dir = tmp_path / load_platform().release.local.state_dir / "inference-api"
    release_dir.mkdir(parents=True)
    (release_dir / LOCAL_PID_FILE).write_text(str(controller_process.pid))
    paused = {"phase": "Paused", "observedRevision": 2, "message": "inconclusive",
              "pauseConditions": [{"reason": INCONCLUSIVE_PAUSE}]}  # fmt: skip
    (release_dir / LOCAL_STATUS_FILE).write_text(json.dumps(paused))
    operator = watcher()
    assert (
        operator._watch_locally(operator._deployment(), deadline=time.time() + 5)["phase"] == "Inconclusive"
    )

    refused = watcher()
    refused.deployment = {**DEPLOYMENT, "refused": "the champion moved since evaluation"}
    verdict = refused.execute(context={})  # type: ignore[arg-type]
    assert (verdict["phase"], verdict["message"]) == ("Refused", "the champion moved since evaluation")


def test_the_local_watch_fails_at_once_with_the_last_words_of_a_controller_that_died_mid_rollout(
    tmp_path, monkeypatch, controller_process
) -> None:
    """The controller is killed (SIGKILL) while the rollout progresses: the watch fails within a poll, quoting the
    end of the controller's log, not at the rollout's deadline (an hour here)."""
    monkeypatch.setenv("AIRFLOW_VAR_MLOPS_DATA_ROOT", str(tmp_path))
    release_dir = tmp_path / load_platform().release.local.state_dir / "inference-api"
    release_dir.mkdir(parents=True)
    (release_dir / LOCAL_PID_FILE).write_text(str(controller_process.pid))
    (release_dir / LOCAL_STATUS_FILE).write_text(json.dumps({"phase": "Paused", "message": "step 1: pause"}))
    (release_dir / LOCAL_CONTROLLER_LOG).write_text(
        "".join(f"line {n}\n" for n in range(40)) + "ERROR the controller failed: OSError: disk full\n"
    )
    os.kill(controller_process.pid, signal.SIGKILL)
    controller_process.wait()
    operator = watcher(minutes=60)
    started = time.monotonic()
    with pytest.raises(AirflowException, match="died before revision 2 had a verdict") as failure:
        operator._watch_locally(operator._deployment(), deadline=time.time() + 3600)
    assert time.monotonic() - started < 5
    assert "ERROR the controller failed: OSError: disk full" in str(failure.value)
    assert "line 39" in str(failure.value) and "line 10\n" not in str(failure.value)  # its last lines only
