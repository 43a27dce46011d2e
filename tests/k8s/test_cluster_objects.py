"""k8s/: the cluster objects validate against the Kubernetes schema and agree with plugins/mlops/platform.yaml.

No cluster runs in the test environment; the objects are checked against the Kubernetes 1.33 OpenAPI schema
(strict), and the Role against what the installed KubernetesPodOperator really calls.
"""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes.utils import parse_quantity

from mlops.models import load_models
from mlops.platform_config import load_platform
from tests.helpers import dask_operator_chart

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES_VERSION = "1.33.0"
# Kubernetes objects; k8s/kind holds kind's own configuration and k8s/helm the chart (tested with the chart).
MANIFESTS = sorted((ROOT / "k8s" / "cluster").glob("*.yaml"))
KIND_CONFIG = ROOT / "k8s" / "kind" / "cluster.yaml"
PLATFORM = load_platform()
MODELS = load_models()
#: The namespaces the models release into (their files): the cluster objects must grant the deployer each one.
SERVING = sorted({model.release.namespace for model in MODELS})
#: Airflow's own service account, which launches the pods (and watches the inference API's rollout).
LAUNCHER = "airflow-pod-launcher"

#: What KubernetesPodOperator needs in the pods' namespace, and nothing more.
POD_LAUNCHER_PERMISSIONS = {
    ("", "pods"): {"create", "get", "list", "watch", "delete", "patch"},
    ("", "pods/log"): {"get"},
    ("", "pods/exec"): {"create", "get"},
    ("", "events"): {"list", "watch"},
}
#: CoreV1Api methods -> the permission each needs (the exec websocket needs create and get on pods/exec).
API_CALLS = {
    "create_namespaced_pod": [("pods", "create")],
    "read_namespaced_pod": [("pods", "get")],
    "list_namespaced_pod": [("pods", "list"), ("pods", "watch")],
    "patch_namespaced_pod": [("pods", "patch")],
    "delete_namespaced_pod": [("pods", "delete")],
    "read_namespaced_pod_log": [("pods/log", "get")],
    "connect_get_namespaced_pod_exec": [("pods/exec", "create"), ("pods/exec", "get")],
    "list_namespaced_event": [("events", "list"), ("events", "watch")],
}


def objects() -> list[dict[str, Any]]:
    return [doc for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text()) if doc]


def one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects() if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_validates_against_the_kubernetes_schema(path: Path) -> None:
    documents = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    assert documents
    for document in documents:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_the_schema_check_rejects_an_unknown_field() -> None:
    role = {**one("Role", LAUNCHER), "rulez": []}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(role, KUBERNETES_VERSION, strict=True)


def test_the_pod_namespace_and_service_account_are_the_platforms() -> None:
    cluster = PLATFORM.kubernetes
    one("Namespace", cluster.namespace)
    account = one("ServiceAccount", cluster.service_account)
    assert account["metadata"]["namespace"] == cluster.namespace
    assert account["automountServiceAccountToken"] is False
    namespaced = [o for o in objects() if o["kind"] not in ("Namespace", "PriorityClass")]
    # Everything lives in the pipeline's namespace, but the release's access to the serving namespace.
    assert {o["metadata"]["namespace"] for o in namespaced} == {cluster.namespace, *SERVING}
    for serving in SERVING:
        assert {o["metadata"]["name"] for o in namespaced if o["metadata"]["namespace"] == serving} == {
            PLATFORM.stage("release").service_account,
            "rollout-watcher",
        }, f"a model releases into {serving}: the deployer and the watcher need their Roles there"


def test_every_namespace_enforces_the_restricted_pod_security_standard() -> None:
    namespaces = [o for o in objects() if o["kind"] == "Namespace"]
    assert len(namespaces) >= 2
    for namespace in namespaces:
        labels = namespace["metadata"]["labels"]
        for mode in ("enforce", "audit", "warn"):
            assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted", namespace["metadata"]["name"]


def granted(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    permissions: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, "no resourceNames or nonResourceURLs"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                permissions.setdefault((group, resource), set()).update(rule["verbs"])
    return permissions


def test_the_pod_launcher_role_grants_nothing_beyond_what_the_operator_needs() -> None:
    permissions = granted(one("Role", LAUNCHER))
    assert permissions == POD_LAUNCHER_PERMISSIONS
    assert not any("*" in key or "*" in verbs for key, verbs in permissions.items())
    assert not [o for o in objects() if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]


def test_the_role_covers_every_call_the_installed_pod_operator_makes() -> None:
    import airflow.providers.cncf.kubernetes as provider

    package = Path(provider.__file__).parent
    sources = [
        package / "operators" / "pod.py",
        package / "utils" / "pod_manager.py",
        package / "triggers" / "pod.py",
        package / "hooks" / "kubernetes.py",
    ]
    calls = set()
    for source in sources:
        calls |= set(
            re.findall(
                r"\.((?:create|read|list|patch|delete|connect_\w+?)_namespaced_\w+)\(", source.read_text()
            )
        )
    # The hook also serves the Job, Deployment and custom-object operators, which this project does not use.
    calls = {c for c in calls if re.search(r"_namespaced_(pod|event)", c) and "job" not in c}
    assert calls, "no Kubernetes API calls found: has the provider moved its code?"
    unknown = calls - set(API_CALLS)
    assert not unknown, f"the provider makes calls this test does not know: {unknown}"
    permissions = granted(one("Role", LAUNCHER))
    for call in calls:
        for resource, verb in API_CALLS[call]:
            assert verb in permissions.get(("", resource), set()), f"{call} needs {verb} on {resource}"


def test_the_role_is_bound_to_airflows_pod_launcher_only() -> None:
    role = one("Role", LAUNCHER)
    binding = one("RoleBinding", LAUNCHER)
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    launcher = one("ServiceAccount", binding["subjects"][0]["name"])
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": launcher["metadata"]["name"],
            "namespace": launcher["metadata"]["namespace"],
        }
    ]
    assert launcher["metadata"]["name"] != PLATFORM.kubernetes.service_account, "the pods get no API access"


def quantity(resources: dict[str, Any], name: str) -> Any:
    return parse_quantity(resources.get(name, 0))


def test_every_preset_fits_the_limit_range_and_the_quota() -> None:
    from airflow.providers.cncf.kubernetes.utils.xcom_sidecar import PodDefaults

    bounds = one("LimitRange")["spec"]["limits"][0]
    quota = one("ResourceQuota")["spec"]["hard"]
    sidecar = PodDefaults.SIDECAR_CONTAINER.resources.requests
    for name in PLATFORM.resource_presets:
        preset = PLATFORM.preset(name)
        for resource in ("cpu", "memory"):
            assert quantity(bounds["max"], resource) >= quantity(preset.limits, resource), (name, resource)
            assert quantity(bounds["min"], resource) <= quantity(preset.requests, resource), (
                name,
                resource,
            )
            assert quantity(bounds["min"], resource) <= parse_quantity(sidecar[resource]), (
                "sidecar",
                resource,
            )
            # The sidecar has no limits of its own: the LimitRange's default applies.
            pod_limit = quantity(preset.limits, resource) + quantity(bounds["default"], resource)
            assert quantity(quota, f"limits.{resource}") >= pod_limit, (name, resource)
            assert quantity(quota, f"requests.{resource}") >= quantity(preset.requests, resource), (
                name,
                resource,
            )
        gpus = quantity(preset.requests, "nvidia.com/gpu")
        assert quantity(quota, "requests.nvidia.com/gpu") >= gpus


#: What dask-kubernetes' KubeCluster calls to create, wait for and delete one DaskCluster, and nothing more.
TRAINER_PERMISSIONS = {
    ("kubernetes.dask.org", "daskclusters"): {"create", "get", "delete"},
    ("kubernetes.dask.org", "daskworkergroups"): {"get"},
    ("", "pods"): {"get", "list"},
    ("", "pods/log"): {"get"},
    ("", "services"): {"get"},
}


def test_the_train_stage_may_create_dask_clusters_in_its_namespace_and_nothing_else() -> None:
    trainer = PLATFORM.stage("train").service_account
    assert trainer and trainer != PLATFORM.kubernetes.service_account
    account = one("ServiceAccount", trainer)
    assert account["automountServiceAccountToken"] is False  # the train pod mounts it, no other pod
    role = one("Role", trainer)
    assert role["metadata"]["namespace"] == PLATFORM.kubernetes.namespace
    assert granted(role) == TRAINER_PERMISSIONS
    assert one("RoleBinding", trainer)["subjects"] == [
        {"kind": "ServiceAccount", "name": trainer, "namespace": PLATFORM.kubernetes.namespace}
    ]


def test_the_dask_operator_renders_with_our_values_and_acts_on_the_pipelines_namespace_only() -> None:
    """The operator's chart, as the installed dask-kubernetes ships it (the version the Makefile installs), with
    k8s/dask-operator/values.yaml: valid objects, its pod restricted and watching ml-pipelines alone."""
    from standins.render import render

    chart = dask_operator_chart()
    values = yaml.safe_load((ROOT / "k8s" / "dask-operator" / "values.yaml").read_text())
    rendered = render(chart, values, release="dask-operator", namespace="dask-operator")
    for obj in rendered:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    (deployment,) = [o for o in rendered if o["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert f"--namespace={PLATFORM.kubernetes.namespace}" in container["args"]
    assert not [arg for arg in container["args"] if arg in ("--all-namespaces", "-A")]
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["resources"]["limits"]


def test_the_quota_holds_a_distributed_training_next_to_a_cpu_stage() -> None:
    """The train pod, its Dask workers and scheduler (platform.yaml's ``dask``) and a CPU stage of another run,
    each stage pod with its XCom sidecar (the LimitRange's default limits)."""
    quota = one("ResourceQuota")["spec"]["hard"]
    default = one("LimitRange")["spec"]["limits"][0]["default"]
    dask = PLATFORM.dask
    pods = [
        (PLATFORM.preset(PLATFORM.stage("train").preset), True),
        *[(PLATFORM.preset(dask.worker_preset), False)] * dask.workers,
        (PLATFORM.preset(dask.scheduler_preset), False),
        (PLATFORM.preset("cpu-large"), True),
    ]
    for resource in ("cpu", "memory"):
        requests = sum(quantity(preset.requests, resource) for preset, _ in pods)
        limits = sum(quantity(preset.limits, resource) + (sidecar and parse_quantity(default[resource]))
                     for preset, sidecar in pods)  # fmt: skip
        assert quantity(quota, f"requests.{resource}") >= requests, resource
        assert quantity(quota, f"limits.{resource}") >= limits, resource
    gpus = sum(quantity(preset.requests, "nvidia.com/gpu") for preset, _ in pods)
    assert quantity(quota, "requests.nvidia.com/gpu") >= gpus == 1 + dask.workers


def test_gpu_training_runs_with_the_gpu_priority_class() -> None:
    from airflow.dag_processing.dagbag import DagBag

    priority_class = one("PriorityClass")
    assert (
        PLATFORM.preset(PLATFORM.stage("train").preset).priority_class == priority_class["metadata"]["name"]
    )
    assert priority_class["globalDefault"] is False
    dag = DagBag(str(ROOT / "dags")).dags["train_card_fraud"]
    assert dag.get_task("train").priority_class_name == priority_class["metadata"]["name"]
    assert dag.get_task("prepare").priority_class_name is None


def test_the_kind_cluster_has_a_node_labelled_and_tainted_like_the_gpu_node_group() -> None:
    config = yaml.safe_load(KIND_CONFIG.read_text())
    gpu = PLATFORM.node_groups["gpu"]
    gpu_nodes = [n for n in config["nodes"] if n.get("labels") == gpu.node_selector]
    assert len(gpu_nodes) == 1 and gpu_nodes[0]["role"] == "worker"
    patches = [yaml.safe_load(p) for p in gpu_nodes[0]["kubeadmConfigPatches"]]
    taints = next(p for p in patches if p["kind"] == "JoinConfiguration")["nodeRegistration"]["taints"]
    for toleration in gpu.tolerations:
        assert toleration.operator == "Exists"
        assert any(t["key"] == toleration.key and t["effect"] == toleration.effect for t in taints)
    assert any(n["role"] == "worker" and "labels" not in n for n in config["nodes"]), "a CPU worker too"


def test_make_kind_up_uses_these_names_and_pinned_versions() -> None:
    makefile = (ROOT / "Makefile").read_text()
    settings = dict(re.findall(r"^([A-Z_]+) := (.+)$", makefile, re.MULTILINE))
    assert settings["KIND_CLUSTER"] == yaml.safe_load(KIND_CONFIG.read_text())["name"]
    assert settings["POD_LAUNCHER"] == one("RoleBinding", LAUNCHER)["subjects"][0]["name"]
    assert settings["POD_LAUNCHER"] == LAUNCHER
    for serving in SERVING:
        one("Namespace", serving)
    assert re.fullmatch(r"kindest/node:v[\d.]+@sha256:[0-9a-f]{64}", settings["KIND_NODE_IMAGE"])
    for key in ("KIND_VERSION", "KUBECTL_VERSION", "HELM_VERSION", "ARGO_ROLLOUTS_VERSION"):
        assert re.fullmatch(r"v\d+\.\d+\.\d+", settings[key]), key
    assert re.fullmatch(r"\d+\.\d+\.\d+", settings["KUBE_PROMETHEUS_STACK_VERSION"])
    # The Dask operator's chart is the version of the dask-kubernetes the train stage creates clusters with.
    assert settings["DASK_OPERATOR_VERSION"] == version("dask-kubernetes")


def test_the_release_stage_may_manage_every_object_the_chart_renders_and_nothing_else() -> None:
    """The deployer's Role covers each kind of each strategy's render of each model's release, in the serving
    namespace only."""
    from ml.release.chart import merge
    from standins.render import render

    chart = ROOT / PLATFORM.release.chart
    deployer = PLATFORM.stage("release").service_account
    role = one("Role", deployer)
    assert [role["metadata"]["namespace"]] == SERVING
    binding = one("RoleBinding", deployer)
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": deployer, "namespace": PLATFORM.kubernetes.namespace}
    ]
    one("ServiceAccount", deployer)
    permissions = granted(role)
    rendered = set()
    strategies = ({}, {"workload": {"strategy": "blueGreen"}}, {"workload": {"kind": "deployment"}})
    for model, strategy in ((model, strategy) for model in MODELS for strategy in strategies):
        values, release = merge(dict(model.release.values), strategy), model.release
        for obj in render(chart, values, release=release.name, namespace=release.namespace):
            group = obj["apiVersion"].rpartition("/")[0]
            kind = obj["kind"].lower()
            plural = kind[:-1] + "ies" if kind.endswith("y") else kind + ("es" if kind.endswith("s") else "s")
            rendered.add((group, plural))
    writes = {"get", "list", "watch", "create", "update", "patch", "delete"}
    for key in rendered | {("", "secrets")}:  # Secrets: Helm's release history
        assert permissions.get(key) == writes, key
    assert set(permissions) == rendered | {("", "secrets")}


def test_the_rollout_watcher_only_reads_the_workload_and_its_analysis() -> None:
    role = one("Role", "rollout-watcher")
    assert [role["metadata"]["namespace"]] == SERVING
    assert granted(role) == {
        ("argoproj.io", "rollouts"): {"get", "list"},
        ("argoproj.io", "analysisruns"): {"get", "list"},
        ("apps", "deployments"): {"get"},
    }
    assert one("RoleBinding", "rollout-watcher")["subjects"][0]["name"] == LAUNCHER
