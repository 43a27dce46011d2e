"""Rendering the chart exactly as Helm does, through Helm's own Go SDK (``helm-python-sdk``).

The same template engine, values coalescing and ``values.schema.json`` validation as the ``helm`` CLI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


class RenderError(Exception):
    """The values break the chart's schema or a template failed; the message is Helm's."""


def render(
    chart_dir: Path, values: dict[str, Any], *, release: str, namespace: str, revision: int = 1
) -> list[dict[str, Any]]:
    """Render the chart with ``values`` over its defaults into Kubernetes objects, as an upgrade to ``revision``
    (``.Release.Revision``) would."""
    import helm_python

    try:
        with helm_python.Chart.load(chart_dir) as chart:
            manifests = chart.render(
                values, name=release, namespace=namespace, revision=revision, is_upgrade=revision > 1
            )
    except helm_python.HelmError as err:
        raise RenderError(f"rendering {chart_dir} failed: {err}") from err
    documents: list[Any] = []
    for path in sorted(manifests):
        if path.endswith((".yaml", ".yml")):
            documents.extend(yaml.safe_load_all(manifests[path]))
    return [doc for doc in documents if doc]
