"""Deploy a model version with the inference API's chart, or roll the release back.

    python -m ml.release deploy --target kubernetes --release inference-api --namespace ml-serving \
        --chart k8s/helm/inference-api --model-name card-fraud-detector --model-version 7
    python -m ml.release rollback --target kubernetes --release inference-api --namespace ml-serving \
        --chart k8s/helm/inference-api --revision 12
    python -m ml.release status --state-dir .local/data/releases --release inference-api
    python -m ml.release stop --state-dir .local/data/releases --release inference-api

``--target kubernetes`` runs ``helm`` against the cluster; ``--target local`` keeps the release in
``--state-dir`` and lets the local rollouts controller run the canary on loopback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ml.errors import StageError
from ml.release import helm

TARGETS = ("kubernetes", "local")


def _target(args: argparse.Namespace) -> helm.Target:
    values_files = tuple(Path(path) for path in args.values)
    for path in values_files:
        if not path.is_file():
            raise StageError(f"values file {path} does not exist")
    if not (args.chart / "Chart.yaml").is_file():
        raise StageError(f"{args.chart} is not a Helm chart (no Chart.yaml)")
    if args.target == "kubernetes":
        return helm.HelmCli(args.chart, args.release, args.namespace, values_files)
    if args.state_dir is None or "://" in str(args.state_dir):
        raise StageError(f"the local release target needs a local --state-dir, got {args.state_dir}")
    settings = {
        "tracking_uri": os.environ.get("MLFLOW_TRACKING_URI"),
        "replay_data": getattr(args, "replay_data", None),
        "pause_seconds": args.local_pause_seconds,
        "requests_per_second": args.local_requests_per_second,
        "port": args.local_port,
    }
    return helm.LocalHelm(args.chart, args.release, args.namespace, args.state_dir, values_files, settings)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m ml.release", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("deploy", "rollback"):
        command = commands.add_parser(name)
        command.add_argument("--target", choices=TARGETS, required=True, help="where the release lives")
        command.add_argument("--release", required=True, help="Helm release name")
        command.add_argument("--namespace", required=True)
        command.add_argument("--chart", type=Path, required=True, help="folder of the chart")
        command.add_argument("--values", action="append", default=[], help="extra values file (repeatable)")
        command.add_argument("--state-dir", help="local target: folder of the release histories")
        command.add_argument("--local-pause-seconds", type=float, default=3.0,
                             help="local target: seconds of replayed traffic per pause step")  # fmt: skip
        command.add_argument("--local-requests-per-second", type=float, default=100.0,
                             help="local target: replayed traffic rate")  # fmt: skip
        command.add_argument("--local-port", type=int, default=0, help="local target: router port (0: any)")
    deploy = commands.choices["deploy"]
    deploy.add_argument("--model-name", required=True, help="registered model")
    deploy.add_argument("--model-version", required=True, help="version to serve")
    deploy.add_argument(
        "--image-tag",
        help="inference API image tag; by default the deployed one (the chart's on a first install)",
    )
    deploy.add_argument("--replay-data", help="local target: prepared data whose test split is replayed")
    rollback = commands.choices["rollback"]
    rollback.add_argument("--revision", type=int, required=True, help="the revision whose canary failed")
    for name in ("status", "stop"):
        command = commands.add_parser(name)
        command.add_argument("--state-dir", type=Path, required=True)
        command.add_argument("--release", required=True)
    args = parser.parse_args(argv)
    if args.command in ("deploy", "rollback") and args.state_dir is not None:
        args.state_dir = Path(args.state_dir)

    if args.command == "deploy":
        if not args.model_version.isdigit():
            raise StageError(f"--model-version must be a version number, got {args.model_version!r}")
        model_uri = f"models:/{args.model_name}/{args.model_version}"
        target = _target(args)
        deployment = helm.deploy(target, model_uri=model_uri, image_tag=args.image_tag)
        if isinstance(target, helm.LocalHelm):
            target.ensure_controller()  # a re-run deploy restarts a stopped controller, as a cluster would be up
        return asdict(deployment)
    if args.command == "rollback":
        return asdict(helm.rollback(_target(args), revision=args.revision))
    if args.command == "status":
        # Only here: the local controller needs packages the release image does not carry (httpx).
        from ml.release import local_rollouts

        status = local_rollouts.read_status(args.state_dir / args.release) or {}
        print(json.dumps(status, indent=2))  # noqa: T201 - the command's output
        return status
    return {"stopped": helm.stop_controller(args.state_dir, args.release)}


if __name__ == "__main__":
    from ml.runtime import run_stage

    if len(sys.argv) > 1 and sys.argv[1] in ("status", "stop"):
        main()
    else:
        run_stage(main)
