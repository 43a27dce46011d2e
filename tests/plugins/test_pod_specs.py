"""Every stage pod, built by the provider's own code, is a valid Kubernetes Pod with the right scheduling."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from kubernetes.client import ApiClient

from mlops.operators import MLStageOperator
from mlops.platform_config import load_platform

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES_VERSION = "1.33.0"
STAGES = ("prepare", "train", "evaluate", "register")


@pytest.fixture(scope="module")
def pods() -> dict[str, dict[str, Any]]:
    """Pods as KubernetesPodOperator would submit them (dry run: no cluster is contacted)."""
    from airflow.dag_processing.dagbag import DagBag

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(
            "AIRFLOW_CONN_KUBERNETES_DEFAULT", '{"conn_type": "kubernetes", "extra": {"in_cluster": false}}'
        )
        dag = DagBag(str(ROOT / "dags")).dags["train_card_fraud"]
        built = {}
        for stage in STAGES:
            task = dag.get_task(stage)
            assert isinstance(task, MLStageOperator)
            built[stage] = ApiClient().sanitize_for_serialization(task.build_pod_request_obj(dry_run=True))
    return built


@pytest.mark.parametrize("stage", STAGES)
def test_pod_validates_against_the_kubernetes_schema(pods, stage: str) -> None:
    kubernetes_validate.validate(pods[stage], KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("stage", STAGES)
def test_pod_runs_the_stage_entrypoint_from_the_platform_image(pods, stage: str) -> None:
    base = next(c for c in pods[stage]["spec"]["containers"] if c["name"] == "base")
    assert base["image"] == load_platform().images.ml_stage
    assert base["command"] == ["python", "-m", f"ml.{stage}"]
    assert {"name": "MLFLOW_TRACKING_URI", "value": "{{ var.value.mlflow_tracking_uri }}"} in base["env"]
    deadline = load_platform().stage(stage).timeout_minutes * 60
    assert pods[stage]["spec"]["activeDeadlineSeconds"] == deadline


@pytest.mark.parametrize("stage", STAGES)
def test_pod_writes_its_result_where_the_xcom_sidecar_reads_it(pods, stage: str) -> None:
    """A pod names the sidecar's folder: a stage without it writes where a person running it by hand reads."""
    from airflow.providers.cncf.kubernetes.utils.xcom_sidecar import PodDefaults

    from contract import XCOM_DIR_ENV

    base = next(c for c in pods[stage]["spec"]["containers"] if c["name"] == "base")
    assert {"name": XCOM_DIR_ENV, "value": PodDefaults.XCOM_MOUNT_PATH} in base["env"]
    assert any(c["name"] == PodDefaults.SIDECAR_CONTAINER_NAME for c in pods[stage]["spec"]["containers"])


def test_training_pod_requests_a_gpu_tolerates_the_taint_and_selects_the_gpu_nodes(pods) -> None:
    spec = pods["train"]["spec"]
    base = next(c for c in spec["containers"] if c["name"] == "base")
    assert base["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert base["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert spec["nodeSelector"] == load_platform().node_groups["gpu"].node_selector


@pytest.mark.parametrize("stage", ["prepare", "evaluate", "register"])
def test_cpu_stages_ask_for_no_gpu_and_no_gpu_nodes(pods, stage: str) -> None:
    spec = pods[stage]["spec"]
    base = next(c for c in spec["containers"] if c["name"] == "base")
    assert "nvidia.com/gpu" not in base["resources"]["requests"]
    assert not spec.get("tolerations") and not spec.get("nodeSelector")


@pytest.mark.parametrize("stage", STAGES)
def test_every_container_meets_the_restricted_pod_security_standard(pods, stage: str) -> None:
    spec = pods[stage]["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    # Only the train pod talks to the Kubernetes API (it creates Dask clusters), with its own service account.
    assert spec["automountServiceAccountToken"] is (stage == "train")
    platform = load_platform()
    assert spec["serviceAccountName"] == (
        platform.stage(stage).service_account or platform.kubernetes.service_account
    )
    containers = spec["containers"]
    assert {c["name"] for c in containers} == {"base", "airflow-xcom-sidecar"}
    for container in containers:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert context["runAsNonRoot"] is True
        assert context["readOnlyRootFilesystem"] is True


def test_in_the_cluster_the_wait_for_a_pod_is_deferred_to_the_triggerer() -> None:
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(str(ROOT / "dags")).dags["train_card_fraud"]
    assert all(dag.get_task(stage).deferrable for stage in STAGES)
