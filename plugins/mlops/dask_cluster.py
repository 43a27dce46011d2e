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

from mlops.platform_config import Platform

#: The containers' security context: what the "restricted" Pod Security Standard requires (as the stage pods').
RESTRICTED_CONTAINER = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "seccompProfile": {"type": "RuntimeDefault"},
}


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
    """A role's pod spec (less its container) and its container's image, resources and security, as the
    platform builds a stage pod on ``preset_name``."""
    preset = platform.preset(preset_name)
    node_group = platform.node_group_of(preset)
    cluster = platform.kubernetes
    pod: dict[str, Any] = {
        "serviceAccountName": cluster.service_account,
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": cluster.run_as_user,
            "runAsGroup": cluster.run_as_group,
            "fsGroup": cluster.run_as_group,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "16Gi"}}],
    }
    if node_group is not None:
        pod["nodeSelector"] = dict(node_group.node_selector)
        pod["tolerations"] = [t.model_dump(exclude_none=True) for t in node_group.tolerations]
    if preset.priority_class:
        pod["priorityClassName"] = preset.priority_class
    container = {
        "image": platform.images.ml_stage,
        "resources": {"requests": dict(preset.requests), "limits": dict(preset.limits)},
        "securityContext": RESTRICTED_CONTAINER,
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    return {"pod": pod, "container": container, "env": {"HOME": "/tmp", "PYTHONUNBUFFERED": "1"}}
