"""The Dask cluster of the train stage's ``distributed: dask`` in the cluster, from the platform settings.

The train pod asks the Dask Kubernetes operator for a ``DaskCluster`` (``ml/distributed.py``) as the JSON object in
``$MLOPS_DASK_CLUSTER`` describes it: how many workers, how long to wait for them, and the pods of the workers and
the scheduler, built as the stage pods are: the ML stage image, the preset's requests and limits, node group and
priority class (the workers on the GPU preset: one GPU each, on the GPU nodes), the pods' service account without an
API token, and the "restricted" Pod Security Standard of the pods' namespace (a read-only root file system with a
writable ``/tmp``).
"""

from __future__ import annotations

from typing import Any

from kubernetes.client import ApiClient

from mlops.operators import POD_ENV, pod_parts
from mlops.platform_config import Platform


def dask_cluster(platform: Platform) -> dict[str, Any]:
    """``$MLOPS_DASK_CLUSTER`` of the train stage: the DaskCluster's workers and pods."""
    settings = platform.dask
    workers = platform.preset(settings.worker_preset)
    return {
        "workers": settings.workers,
        # A worker waits for a node (the GPU group scales from zero) and its image as a stage pod does.
        "wait_seconds": workers.schedule_timeout_seconds + workers.startup_timeout_seconds,
        "idle_timeout_seconds": settings.idle_timeout_seconds,
        "labels": {"app.kubernetes.io/part-of": "airflow-mlops", "app.kubernetes.io/component": "train-dask"},
        "worker": _pod(platform, settings.worker_preset),
        "scheduler": _pod(platform, settings.scheduler_preset),
    }


def _pod(platform: Platform, preset_name: str) -> dict[str, Any]:
    """A role's pod spec (less its container) and its container's image, resources and security: the stage pods'
    parts (``pod_parts``) as the Kubernetes API spells them, on the pods' service account without an API token."""
    parts = ApiClient().sanitize_for_serialization(pod_parts(preset_name))
    pod: dict[str, Any] = {
        "serviceAccountName": platform.kubernetes.service_account,
        "automountServiceAccountToken": False,
        "securityContext": parts["security_context"],
        "volumes": parts["volumes"],
    }
    if parts["node_selector"]:
        pod["nodeSelector"] = parts["node_selector"]
    if parts["tolerations"]:
        pod["tolerations"] = parts["tolerations"]
    if parts["priority_class_name"]:
        pod["priorityClassName"] = parts["priority_class_name"]
    container = {
        "image": platform.images.ml_stage,
        "resources": parts["container_resources"],
        "securityContext": parts["container_security_context"],
        "volumeMounts": parts["volume_mounts"],
    }
    return {"pod": pod, "container": container, "env": dict(POD_ENV)}
