"""The local rollouts controller's command: run one for a release, show its status, or stop it.

    python -m standins.rollouts run --state-dir .local/data/releases --release inference-api
    python -m standins.rollouts status --state-dir .local/data/releases --release inference-api
    python -m standins.rollouts stop --state-dir .local/data/releases --release inference-api
    python -m standins.rollouts stop --state-dir .local/data/releases     # every release (make release-down)

``run`` is what the ``helm`` stand-in starts; the pace of the canary comes from ``release.local`` in the platform
settings, the router's port from the model file (the release stage's environment hands it to ``helm``; 0 or
taken: any free port).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from standins.rollouts import read_status, running_pid, stop


def run(state_dir: Path, release: str, port: int = 0, namespace: str = "default") -> None:
    from mlops.platform_config import load_platform
    from standins.rollouts.controller import AlreadyRunning, Controller
    from standins.rollouts.state import Pace

    if running_pid(state_dir / release) is not None:
        logging.info("a controller for %s is already running", release)
        return
    local = load_platform().release.local
    pace = Pace(pause_seconds=local.pause_seconds, requests_per_second=local.requests_per_second, port=port,
                max_window_requests=local.max_window_requests)  # fmt: skip
    controller = Controller(state_dir, release, pace, namespace)
    signal.signal(signal.SIGTERM, lambda *_: controller.stop_requested.set())
    signal.signal(signal.SIGINT, lambda *_: controller.stop_requested.set())
    try:
        controller.run()
    except AlreadyRunning as err:
        logging.info("%s", err)


def local_folder(value: str) -> Path:
    """A folder on this machine's disk: checked on the text, before ``Path`` folds ``s3://b`` into ``s3:/b``."""
    if "://" in value:
        raise argparse.ArgumentTypeError(
            f"the local release keeps its state on this machine's disk, not at {value}"
        )
    return Path(value)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m standins.rollouts", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("run", "status", "stop"))
    parser.add_argument(
        "--state-dir", type=local_folder, required=True, help="folder of the local release histories"
    )
    parser.add_argument("--release", help="the release (stop: all of them when not given)")
    parser.add_argument(
        "--port", type=int, default=0, help="run: the loopback port to serve on (0: any free one)"
    )
    parser.add_argument(
        "--namespace", default="default", help="run: the release's namespace (a label of its APIs' series)"
    )
    args = parser.parse_args(argv)
    if args.release is None and args.command != "stop":
        parser.error(f"{args.command} needs --release")
    if args.command == "stop" and args.release is None:
        folders = sorted(p for p in args.state_dir.iterdir() if p.is_dir()) if args.state_dir.is_dir() else []
        halted = [folder.name for folder in folders if stop(folder)]
        said = f"stopped the local releases {', '.join(halted)}" if halted else "no local release was running"
        print(said)  # noqa: T201
        return 0
    if args.command == "run":
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout
        )
        run(args.state_dir, args.release, args.port, args.namespace)
    elif args.command == "status":
        print(json.dumps(read_status(args.state_dir / args.release) or {}, indent=2))  # noqa: T201
    else:
        stopped = stop(args.state_dir / args.release)
        print(f"stopped the local release {args.release}" if stopped else "no local release was running")  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
