"""The stage operator in the cluster: the provider's real pod-operator code and the real Kubernetes client, against
a fake Kubernetes API on loopback (``fake_kubernetes_api``: no cluster runs here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from contract import EXIT_INVALID_INPUT, EXIT_TRANSIENT
from mlops.operators import MLStageOperator
from mlops.platform_config import load_platform
from tests.plugins.fake_kubernetes_api import FakeCluster, fake_kubernetes_api, pod_named

NAMESPACE = load_platform().kubernetes.namespace
SIDECAR_DONE = {
    "name": "airflow-xcom-sidecar",
    "state": {"terminated": {"exitCode": 0, "reason": "Completed"}},
}


class TaskInstance:
    """What the operator reads of the running task, and the XComs it pushes."""

    dag_id, task_id, run_id, try_number, map_index = "ml_training_pipeline", "train", "manual__1", 1, -1

    def __init__(self) -> None:
        self.pushed: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[key] = value


def context() -> dict[str, Any]:
    ti = TaskInstance()
    return {"ti": ti, "task_instance": ti, "run_id": ti.run_id, "dag_run": None, "dag": None}


def stage(kubeconfig: Path, name: str = "train", **kwargs: Any) -> MLStageOperator:
    return MLStageOperator(
        stage=name, arguments=["--flag"], config_file=str(kubeconfig), kubernetes_conn_id=None, **kwargs
    )


def ended(exit_code: int, message: str) -> dict[str, Any]:
    """The status of a pod whose stage container exited ``exit_code`` with this termination message."""
    return {
        "phase": "Failed" if exit_code else "Succeeded",
        "containerStatuses": [
            {"name": "base", "state": {"terminated": {"exitCode": exit_code, "reason": "Error", "message": message}}},
            SIDECAR_DONE,
        ],
    }  # fmt: skip


def resume_after(cluster: FakeCluster, tmp_path: Path, event_status: str, **kwargs: Any) -> None:
    """The task's re-entry from the triggerer for a pod the trigger saw end (the deferred path in the cluster)."""
    cluster.pod = pod_named("ml-prepare-abc", NAMESPACE, cluster.status)
    with fake_kubernetes_api(cluster, tmp_path) as kubeconfig:
        operator = stage(kubeconfig, "prepare", **kwargs)
        operator.trigger_reentry(
            context(),
            {
                "status": event_status,
                "name": "ml-prepare-abc",
                "namespace": NAMESPACE,
                "message": "Container failed",
            },
        )


def test_exit_2_in_the_cluster_fails_without_retry_with_the_termination_message_fake_api(
    tmp_path: Path,
) -> None:
    cluster = FakeCluster(status=ended(EXIT_INVALID_INPUT, "column 'amount': entirely null"), log="reading\n")
    with pytest.raises(
        AirflowFailException, match=r"^stage prepare rejected its input: column 'amount': entirely null$"
    ):
        resume_after(cluster, tmp_path, "failed")


def test_exit_2_with_the_log_as_termination_message_picks_the_stages_error_line_fake_api(
    tmp_path: Path,
) -> None:
    # FallbackToLogsOnError: a stage that could not write the termination log leaves its log's tail there.
    tail = "step 1\nERROR: --target 'label' is not a column\nTraceback (most recent call last):\n  ..."
    cluster = FakeCluster(status=ended(EXIT_INVALID_INPUT, tail))
    with pytest.raises(AirflowFailException, match=r"rejected its input: --target 'label' is not a column$"):
        resume_after(cluster, tmp_path, "failed")


@pytest.mark.parametrize(
    ("exit_code", "says"),
    [
        (1, r"failed with exit code 1: MemoryError"),
        (EXIT_TRANSIENT, r"found a service unavailable \(will retry\)"),
    ],
)
def test_other_exits_in_the_cluster_stay_retryable_with_the_stages_message_fake_api(
    tmp_path: Path, exit_code: int, says: str
) -> None:
    cluster = FakeCluster(status=ended(exit_code, "MemoryError"))
    with pytest.raises(AirflowException, match=says) as raised:
        resume_after(cluster, tmp_path, "failed")
    assert not isinstance(raised.value, AirflowFailException)


def test_a_succeeded_pod_is_cleaned_up_as_the_provider_does_and_raises_nothing_fake_api(
    tmp_path: Path,
) -> None:
    # (The XCom sidecar's read is a websocket exec, which the fake does not speak: the cleanup step alone.)
    cluster = FakeCluster(status=ended(0, ""))
    cluster.pod = pod_named("ml-prepare-abc", NAMESPACE, cluster.status)
    with fake_kubernetes_api(cluster, tmp_path) as kubeconfig:
        operator = stage(kubeconfig, "prepare")
        pod = operator.hook.get_pod("ml-prepare-abc", NAMESPACE)
        operator.cleanup(pod, pod, context=context())
    assert ("DELETE", f"/api/v1/namespaces/{NAMESPACE}/pods/ml-prepare-abc") in cluster.requests


UNSCHEDULABLE = "0/5 nodes are available: 2 Insufficient nvidia.com/gpu, 3 node(s) had untolerated taint {node-role: system}."


def pending(scheduled: dict[str, Any]) -> dict[str, Any]:
    return {
        "phase": "Pending",
        "conditions": [scheduled],
        "containerStatuses": [],
    }


def test_a_pod_that_no_node_takes_logs_the_schedulers_events_and_fails_with_them_fake_api(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster = FakeCluster(
        status=pending(
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": UNSCHEDULABLE}
        ),
        events=[
            ("Warning", "FailedScheduling", UNSCHEDULABLE),
            ("Normal", "NotTriggerScaleUp", "pod didn't trigger scale-up: 1 max node group size reached"),
        ],
    )
    with fake_kubernetes_api(cluster, tmp_path) as kubeconfig:
        operator = stage(
            kubeconfig, deferrable=False, schedule_timeout_seconds=2, startup_check_interval_seconds=1
        )
        with pytest.raises(AirflowException) as raised:
            operator.execute_sync(context())
    message, task_log = (
        str(raised.value),
        capsys.readouterr().out,
    )  # Airflow's task logger writes to stdout here
    assert not isinstance(raised.value, AirflowFailException)  # a node may come up: retrying can help
    assert (
        message.startswith("stage train: pod ml-train-")
        and "was not scheduled (its preset allows 2s)" in message
    )
    assert "Insufficient nvidia.com/gpu" in message and "untolerated taint" in message
    assert message.endswith("(the pod was deleted)") and cluster.deleted()
    # While it waited, the task log showed what the scheduler and the autoscaler said.
    assert f"The Pod has an Event: {UNSCHEDULABLE}" in task_log
    assert "pod didn't trigger scale-up" in task_log


def test_a_scheduled_pod_that_cannot_start_names_the_containers_wait_fake_api(tmp_path: Path) -> None:
    cluster = FakeCluster(
        status={
            "phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "True"}],
            "containerStatuses": [
                {
                    "name": "base",
                    "state": {
                        "waiting": {"reason": "ImagePullBackOff", "message": 'Back-off pulling image "stage"'}
                    },
                }
            ],
        }
    )
    with fake_kubernetes_api(cluster, tmp_path) as kubeconfig:
        operator = stage(
            kubeconfig, deferrable=False, startup_timeout_seconds=1, startup_check_interval_seconds=1
        )
        with pytest.raises(
            AirflowException,
            match=r"was scheduled but did not start \(its preset allows 1s\): ImagePullBackOff",
        ):
            operator.execute_sync(context())
    assert cluster.deleted()


def test_the_presets_timeouts_and_the_log_interval_reach_the_provider() -> None:
    platform = load_platform()
    train, prepare = (
        MLStageOperator(stage="train", arguments=[]),
        MLStageOperator(stage="prepare", arguments=[]),
    )
    gpu, cpu = platform.preset("gpu"), platform.preset(platform.stage("prepare").preset)
    assert (train.schedule_timeout_seconds, train.startup_timeout_seconds) == (
        gpu.schedule_timeout_seconds, gpu.startup_timeout_seconds,
    )  # fmt: skip
    assert (prepare.schedule_timeout_seconds, prepare.startup_timeout_seconds) == (
        cpu.schedule_timeout_seconds, cpu.startup_timeout_seconds,
    )  # fmt: skip
    # A node group that scales from zero takes longer than the provider's default of 120 s.
    assert gpu.schedule_timeout_seconds > cpu.schedule_timeout_seconds >= 120
    assert train.logging_interval == platform.kubernetes.log_interval_seconds
    assert train.log_events_on_startup and train.log_events_on_failure
