"""Rendering the chart exactly as Helm does: the ``helm`` CLI when it is on PATH, else Helm's Go SDK.

``helm-python-sdk`` binds Helm's own Go SDK, so both paths run the same template engine, the same values
coalescing and the same ``values.schema.json`` validation.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

from ml.errors import StageError


def render(
    chart_dir: Path,
    values: dict[str, Any],
    *,
    release: str,
    namespace: str,
    values_files: tuple[Path, ...] = (),
) -> list[dict[str, Any]]:
    """Render the chart with ``values`` (over ``values_files``, over its defaults) into Kubernetes objects.

    Raises:
        StageError: if the values break the chart's schema or a template fails (Helm's message included).
    """
    merged: dict[str, Any] = {}
    for path in values_files:
        merged = merge(merged, yaml.safe_load(Path(path).read_text()) or {})
    merged = merge(merged, values)
    helm = shutil.which("helm")
    documents = (
        _render_cli(helm, chart_dir, merged, release, namespace)
        if helm
        else _render_sdk(chart_dir, merged, release, namespace)
    )
    return [doc for doc in documents if doc]


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Merge ``override`` into ``base`` as Helm coalesces values: maps deeply, everything else replaced."""
    result = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merge(result[key], value)
        else:
            result[key] = value
    return result


def _render_cli(
    helm: str, chart_dir: Path, values: dict[str, Any], release: str, namespace: str
) -> list[Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".json") as values_file:
        json.dump(values, values_file)
        values_file.flush()
        done = subprocess.run(
            [
                helm,
                "template",
                release,
                str(chart_dir),
                "--namespace",
                namespace,
                "--values",
                values_file.name,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
    if done.returncode != 0:
        raise StageError(f"helm template of {chart_dir} failed: {done.stderr.strip()}")
    return list(yaml.safe_load_all(done.stdout))


def _render_sdk(chart_dir: Path, values: dict[str, Any], release: str, namespace: str) -> list[Any]:
    import helm_python

    try:
        with helm_python.Chart.load(chart_dir) as chart:
            manifests = chart.render(values, name=release, namespace=namespace, is_upgrade=True)
    except helm_python.HelmError as err:
        raise StageError(f"rendering {chart_dir} failed: {err}") from err
    documents: list[Any] = []
    for path in sorted(manifests):
        if path.endswith(".yaml") or path.endswith(".yml"):
            documents.extend(yaml.safe_load_all(manifests[path]))
    return documents


def find(objects: list[dict[str, Any]], kind: str) -> dict[str, Any] | None:
    """The first rendered object of ``kind``, or None."""
    return next((obj for obj in objects if obj.get("kind") == kind), None)


def workload(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The object that runs the pods: the Argo Rollout, or the Deployment."""
    found = find(objects, "Rollout") or find(objects, "Deployment")
    if found is None:
        raise StageError("the chart rendered neither a Rollout nor a Deployment")
    return found
