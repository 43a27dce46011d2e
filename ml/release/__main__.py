"""Deploy a model version with the inference API's chart, or roll the release back.

    python -m ml.release deploy --release inference-api --namespace ml-serving \\
        --chart k8s/helm/inference-api --model-name card-fraud-detector --model-version 7
    python -m ml.release rollback --release inference-api --namespace ml-serving \\
        --chart k8s/helm/inference-api --revision 12

Both run ``helm`` from PATH: the cluster's in a pod, the stand-in in the local pod runtime.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ml.errors import StageError
from ml.release import helm


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ml.release", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("deploy", "rollback"):
        command = commands.add_parser(name)
        command.add_argument("--release", required=True, help="Helm release name")
        command.add_argument("--namespace", required=True)
        command.add_argument("--chart", type=Path, required=True, help="folder of the chart")
        command.add_argument("--values", action="append", default=[], help="extra values file (repeatable)")
    deploy = commands.choices["deploy"]
    deploy.add_argument("--model-name", required=True, help="registered model")
    deploy.add_argument("--model-version", required=True, help="version to serve")
    deploy.add_argument(
        "--image-tag",
        help="inference API image tag; by default the deployed one (the chart's on a first install)",
    )
    commands.choices["rollback"].add_argument(
        "--revision", type=int, required=True, help="the revision whose canary failed"
    )
    return parser


def _helm(args: argparse.Namespace) -> helm.Helm:
    values_files = tuple(Path(path) for path in args.values)
    for path in values_files:
        if not path.is_file():
            raise StageError(f"values file {path} does not exist")
    if not (args.chart / "Chart.yaml").is_file():
        raise StageError(f"{args.chart} is not a Helm chart (no Chart.yaml)")
    return helm.Helm(args.chart, args.release, args.namespace, values_files)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = _parser().parse_args(argv)
    if args.command == "deploy":
        if not args.model_version.isdigit():
            raise StageError(f"--model-version must be a version number, got {args.model_version!r}")
        model_uri = f"models:/{args.model_name}/{args.model_version}"
        return asdict(helm.deploy(_helm(args), model_uri=model_uri, image_tag=args.image_tag))
    return asdict(helm.rollback(_helm(args), revision=args.revision))


if __name__ == "__main__":
    from ml.runtime import run_stage

    run_stage(main)
