"""Render the inference API chart into the objects a release installs, for the scanners (`make k8s-check`).

The release's own renderer (Helm's engine, ``standins.render``) with a model's release (``--model``, by default the
first model file) and its values, then ``--set`` values, over the chart's defaults. Helm puts every object of a
release in the release's namespace: the objects printed here carry it, as the cluster would see them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from ml.release.chart import merge
from mlops.models import load_models
from mlops.platform_config import load_platform
from standins.render import render

ROOT = Path(__file__).resolve().parents[1]


def parse_set(assignment: str) -> dict[str, Any]:
    """``a.b=value`` as nested values (the value read as YAML, as ``helm --set`` reads it)."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--set wants KEY=VALUE, got {assignment!r}")
    value: Any = yaml.safe_load(raw)
    for part in reversed(key.split(".")):
        value = {part: value}
    return value  # type: ignore[no-any-return]


def rendered(assignments: Sequence[dict[str, Any]], model_key: str | None = None) -> list[dict[str, Any]]:
    """The chart's objects for a model's release with the values given, each in the release's namespace."""
    models = load_models()
    release = (models.get(model_key) if model_key else models.models[0]).release
    values: dict[str, Any] = dict(release.values)
    for assignment in assignments:
        values = merge(values, assignment)
    chart = ROOT / load_platform().release.chart
    objects = render(chart, values, release=release.name, namespace=release.namespace)
    for obj in objects:
        obj["metadata"].setdefault("namespace", release.namespace)
    return objects


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--set", dest="values", type=parse_set, action="append", default=[], metavar="KEY=VALUE"
    )
    parser.add_argument("--model", help="the model file's key whose release to render (default: the first)")
    args = parser.parse_args(argv)
    yaml.safe_dump_all(rendered(args.values, args.model), sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
