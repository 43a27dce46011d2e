"""Render the inference API chart into the objects a release installs, for the scanners (`make k8s-check`).

The release's own renderer (Helm's engine, ``standins.render``) with ``--set`` values over the chart's defaults.
Helm puts every object of a release in the release's namespace: the objects printed here carry it, as the
cluster would see them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from ml.release.chart import merge
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


def rendered(assignments: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The chart's objects with the values given, each in the release's namespace."""
    release = load_platform().release
    values: dict[str, Any] = {}
    for assignment in assignments:
        values = merge(values, assignment)
    objects = render(ROOT / release.chart, values, release=release.name, namespace=release.namespace)
    for obj in objects:
        obj["metadata"].setdefault("namespace", release.namespace)
    return objects


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--set", dest="values", type=parse_set, action="append", default=[], metavar="KEY=VALUE"
    )
    args = parser.parse_args(argv)
    yaml.safe_dump_all(rendered(args.values), sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
