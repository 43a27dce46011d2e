"""What the release stage reads in a chart's values and rendered objects."""

from __future__ import annotations

from typing import Any

from ml.errors import StageError


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Merge ``override`` into ``base`` as Helm coalesces values: maps deeply, everything else replaced."""
    result = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merge(result[key], value)
        else:
            result[key] = value
    return result


def find(objects: list[dict[str, Any]], kind: str) -> dict[str, Any] | None:
    """The first rendered object of ``kind``, or None."""
    return next((obj for obj in objects if obj.get("kind") == kind), None)


def workload(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The object that runs the pods: the Argo Rollout, or the Deployment."""
    found = find(objects, "Rollout") or find(objects, "Deployment")
    if found is None:
        raise StageError("the chart rendered neither a Rollout nor a Deployment")
    return found
