"""Deploy a model version with the inference API's chart, or roll the release back.

    python -m ml.release deploy --release inference-api --namespace ml-serving \\
        --chart k8s/helm/inference-api --model-name card-fraud-detector --model-version 7
    python -m ml.release rollback --release inference-api --namespace ml-serving \\
        --chart k8s/helm/inference-api --revision 12

Both run ``helm`` from PATH: the cluster's in a pod, the stand-in in the local pod runtime.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from contract import APPROVAL_TAG, ERROR_BUDGET_TAG
from ml.errors import StageError
from ml.release import budget, helm
from ml.release.approval import Answer
from ml.runtime import ArgumentParser


def _parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m ml.release", doc=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    described = {
        "deploy": "helm upgrade of the release to a model version, unless refused (approval, champion, error budget)",
        "rollback": "helm rollback to the revision that served the champion (else the one before)",
    }
    for name, what in described.items():
        command = commands.add_parser(name, help=what, description=what)
        command.add_argument("--release", required=True, help="Helm release name")
        command.add_argument("--namespace", required=True)
        command.add_argument("--chart", type=Path, required=True, help="folder of the chart")
        command.add_argument("--values", action="append", default=[], help="extra values file (repeatable)")
        command.add_argument(
            "--values-json",
            type=_values_object,
            default={},
            help="the model's values (a JSON object), over the values files",
        )
    deploy = commands.choices["deploy"]
    deploy.add_argument("--model-name", required=True, help="registered model")
    deploy.add_argument("--model-version", required=True, help="version to serve")
    deploy.add_argument(
        "--image-tag",
        help="inference API image tag; by default the deployed one (the chart's on a first install)",
    )
    deploy.add_argument(
        "--champion-alias",
        help="the production alias: refuse to start if it moved since the version was evaluated, and have the "
        "canary check it again before its last step (reads the version's tags in MLflow)",
    )
    deploy.add_argument(
        "--error-budget",
        choices=budget.POLICIES,
        default=budget.OFF,
        help="read the SLOs' error budgets first: enforce refuses the release while one is spent (or unreadable), "
        "override releases anyway and records it on the version, off does not read them (default: %(default)s)",
    )
    deploy.add_argument(
        "--approval",
        help="the answer of the release's approval task (JSON; with approvals on): a rejection or a timeout refuses "
        "the release before anything is installed, and the version records the answer either way",
    )
    deploy.add_argument(
        "--requested-by", default="", help="who asked for this release (recorded with an override)"
    )
    rollback = commands.choices["rollback"]
    rollback.add_argument("--revision", type=int, required=True, help="the revision whose release failed")
    rollback.add_argument("--model-name", help="registered model (with --to-model-version)")
    rollback.add_argument(
        "--to-model-version", default="", help="restore the revision that served this version (the champion)"
    )
    return parser


def _values_object(text: str) -> dict[str, Any]:
    try:
        values = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not JSON: {err}") from None
    if not isinstance(values, dict):
        raise argparse.ArgumentTypeError(
            f"must be a JSON object of chart values, got {type(values).__name__}"
        )
    return values


def _helm(args: argparse.Namespace) -> helm.Helm:
    values_files = tuple(Path(path) for path in args.values)
    for path in values_files:
        if not path.is_file():
            raise StageError(f"values file {path} does not exist")
    if not (args.chart / "Chart.yaml").is_file():
        raise StageError(f"{args.chart} is not a Helm chart (no Chart.yaml)")
    return helm.Helm(args.chart, args.release, args.namespace, values_files, args.values_json)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = _parser().parse_args(argv)
    if args.command == "deploy":
        if not args.model_version.isdigit():
            raise StageError(f"--model-version must be a version number, got {args.model_version!r}")
        model_uri = f"models:/{args.model_name}/{args.model_version}"
        answer = Answer.parse(args.approval) if args.approval is not None else None
        if answer is not None:
            _record(args.model_name, args.model_version, APPROVAL_TAG, answer.record())
        champion = _champion_check(args.model_name, args.model_version, args.champion_alias)
        deployment = helm.deploy(
            _helm(args),
            model_uri=model_uri,
            image_tag=args.image_tag,
            rejection=answer.refusal() if answer else "",
            champion=champion,
            error_budget=args.error_budget,
            requested_by=args.requested_by,
            record_budgets=lambda found: _record(
                args.model_name, args.model_version, ERROR_BUDGET_TAG, found
            ),
        )
        return {**asdict(deployment), "approval": answer.record() if answer else None}
    if args.to_model_version and not (args.model_name and args.to_model_version.isdigit()):
        raise StageError("--to-model-version needs a version number and --model-name")
    to_model_uri = f"models:/{args.model_name}/{args.to_model_version}" if args.to_model_version else None
    return asdict(helm.rollback(_helm(args), revision=args.revision, to_model_uri=to_model_uri))


def _record(name: str, version: str, tag: str, record: dict[str, Any]) -> None:
    """What the release decision read (the approval, the error budgets), on the version."""
    from ml import tracking

    tracking.client().set_model_version_tag(name, version, tag, json.dumps(record))


def _champion_check(name: str, version: str, alias: str | None) -> helm.ChampionCheck | None:
    """What the version was compared with at evaluation and where ``alias`` points now (None: no check)."""
    if not alias:
        return None
    from contract import CHAMPION_AT_EVALUATION_TAG
    from ml import tracking
    from ml.promote import current_alias

    expected = tracking.client().get_model_version(name, version).tags.get(CHAMPION_AT_EVALUATION_TAG)
    if expected is None:
        raise StageError(
            f"{name} v{version} has no {CHAMPION_AT_EVALUATION_TAG} tag (not registered by the pipeline): deploy "
            "it without --champion-alias to skip the champion check"
        )
    return helm.ChampionCheck(alias=alias, expected=expected, current=current_alias(name, alias))


if __name__ == "__main__":
    from ml.runtime import run_stage

    run_stage(main)
