"""A ``helm``-compatible command for the local pod runtime: ``standins/bin/helm`` runs ``python -m standins.helm``.

It answers the subcommands the release stage uses, with Helm's flags, JSON outputs and exit codes:

    helm history RELEASE --max N --output json
    helm get values RELEASE --revision N --output json
    helm get manifest RELEASE --revision N
    helm upgrade --install RELEASE CHART --reset-then-reuse-values --values F ... --set K=V ... \\
        --set-string K=V ... --set-json K=JSON ... --history-max N --description D --output json
    helm rollback RELEASE REVISION --history-max N

Releases live in files under ``$MLOPS_LOCAL_RELEASES/<release>/`` (``release_store``); the chart is rendered by
Helm's own Go SDK as the revision it becomes (``.Release.Revision``), and ``--set*`` values are parsed by Helm's own
parser, merged in Helm's order: values files, then ``--set-json``, ``--set``, ``--set-string``. Wherever a cluster
would act on a release (an upgrade, a rollback, or any look at an existing release, as a cluster is always up), the
release's local Argo Rollouts controller is started if it is not running.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import yaml

from contract import (
    LOCAL_CONTROLLER_LOG,
    LOCAL_CONTROLLER_MODULE,
    LOCAL_RELEASE_PORT_ENV,
    LOCAL_RELEASES_ENV,
    PLUGINS_FOLDER_ENV,
)
from ml.release.chart import merge
from ml.release.helm import Revision
from standins import rollouts
from standins.release_store import ConcurrentRelease, ReleaseStore, UnreadableRelease
from standins.render import RenderError, render
from standins.rollouts import PROMETHEUS_INSTALL_HINT

#: Where ``standins`` and ``ml`` are imported from.
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def controller_pythonpath() -> str:
    """The project, and the plugins folder whose platform settings the controller reads (the local pod runtime
    names it; this repository's by default), before what the caller had."""
    plugins = os.environ.get(PLUGINS_FOLDER_ENV) or str(PROJECT_ROOT / "plugins")
    return os.pathsep.join(filter(None, [str(PROJECT_ROOT), plugins, os.environ.get("PYTHONPATH")]))


class HelmError(Exception):
    """Printed as Helm prints its errors (``Error: ...``), with exit code 1."""


def _fail(message: str) -> NoReturn:
    raise HelmError(message)


def releases_root() -> Path:
    root = os.environ.get(LOCAL_RELEASES_ENV)
    if not root:
        _fail(f"the local helm keeps releases under ${LOCAL_RELEASES_ENV}, which is not set")
    if "://" in root:
        _fail(f"the local helm keeps releases on this machine's disk, not at {root}")
    return Path(root)


def _store(release: str) -> ReleaseStore:
    return ReleaseStore(releases_root(), release)


def _revision(store: ReleaseStore, number: int | None) -> Revision:
    found = store.get(number) if number else store.deployed()
    if found is None:
        _fail(f"release: not found (revision {number})" if number else "release: not found")
    return found


def require_prometheus() -> None:
    """The controller's analysis runs on Prometheus: without one, say so at once, before a release is recorded."""
    if shutil.which("prometheus") is None:
        _fail(f"the local rollouts controller needs Prometheus: install {PROMETHEUS_INSTALL_HINT}")


def ensure_controller(store: ReleaseStore, namespace: str) -> None:
    """Start the release's local rollouts controller unless it runs, and wait until it does."""
    if rollouts.running_pid(store.path) is not None:
        return
    require_prometheus()
    store.path.mkdir(parents=True, exist_ok=True)
    log_path = store.path / LOCAL_CONTROLLER_LOG
    with log_path.open("a") as log_file:
        subprocess.Popen(
            [sys.executable, "-m", LOCAL_CONTROLLER_MODULE, "run", "--state-dir", str(store.path.parent),
             "--release", store.release, "--port", os.environ.get(LOCAL_RELEASE_PORT_ENV) or "0",
             "--namespace", namespace],
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": controller_pythonpath()},
            start_new_session=True,  # outlives the command that started it, like a controller in the cluster
        )  # fmt: skip
    deadline = time.monotonic() + 30
    while rollouts.running_pid(store.path) is None:
        if time.monotonic() > deadline:
            _fail(f"the local rollouts controller did not start; see {log_path}")
        time.sleep(0.1)


def history(args: argparse.Namespace) -> str:
    store = _store(args.release)
    revisions = store.history()
    if not revisions:
        _fail("release: not found")
    ensure_controller(store, args.namespace)
    entries = [
        {"revision": r.revision, "updated": r.updated, "status": r.status, "description": r.description}
        for r in revisions[-args.max :]
    ]
    return json.dumps(entries) if args.output == "json" else _table(entries)


def get_values(args: argparse.Namespace) -> str:
    values = _revision(_store(args.release), args.revision).values
    return json.dumps(values) if args.output == "json" else yaml.safe_dump(values, sort_keys=False)


def get_manifest(args: argparse.Namespace) -> str:
    return yaml.safe_dump_all(_revision(_store(args.release), args.revision).objects, sort_keys=False)


def upgrade(args: argparse.Namespace) -> str:
    store = _store(args.release)
    require_prometheus()
    current = store.deployed()
    if current is None and not args.install:
        _fail(f'UPGRADE FAILED: "{args.release}" has no deployed releases')
    values: dict[str, Any] = current.values if current and args.reset_then_reuse_values else {}
    for given in _given_values(args):
        values = merge(values, given)
    number = store.next_number()
    try:
        objects = render(args.chart, values, release=args.release, namespace=args.namespace, revision=number)
    except RenderError as err:
        _fail(f"UPGRADE FAILED: {err}")
    try:
        revision = store.record(
            values,
            objects,
            args.description or ("Upgrade complete" if current else "Install complete"),
            number,
        )
    except ConcurrentRelease as err:
        _fail(f"UPGRADE FAILED: {err}")
    store.prune(args.history_max)
    ensure_controller(store, args.namespace)
    released = {
        "name": args.release,
        "namespace": args.namespace,
        "version": revision.revision,
        "info": {"status": revision.status, "description": revision.description},
        "config": revision.values,
        "manifest": yaml.safe_dump_all(objects, sort_keys=False),
    }
    return json.dumps(released) if args.output == "json" else f'Release "{args.release}" has been upgraded.'


def _given_values(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The values the command line gives, in the order Helm merges them: the files, then each kind of ``--set``
    (parsed by Helm's own parser, so a list, an escaped comma or a typed value mean what they mean to Helm)."""
    import helm_python

    given = [yaml.safe_load(Path(path).read_text()) or {} for path in args.values]
    parsers = (
        (args.set_json, helm_python.parse_set_json),
        (args.set, helm_python.parse_set_string),
        (args.set_string, helm_python.parse_set_string_values),
    )
    for expressions, parse in parsers:
        for expression in expressions:
            try:
                given.append(parse(expression))
            except helm_python.HelmError as err:
                _fail(f"failed parsing --set data {expression!r}: {err}")
    return given


def rollback(args: argparse.Namespace) -> str:
    store = _store(args.release)
    deployed = _revision(store, None)
    number = args.revision or max(
        (r.revision for r in store.history() if r.revision < deployed.revision), default=0
    )
    restored = _revision(store, number)
    store.record(restored.values, restored.objects, f"Rollback to {restored.revision}")
    store.prune(args.history_max)
    ensure_controller(store, args.namespace)
    return "Rollback was a success! Happy Helming!"


def _table(entries: list[dict[str, Any]]) -> str:
    lines = ["REVISION\tUPDATED\tSTATUS\tDESCRIPTION"]
    lines += [f"{e['revision']}\t{e['updated']}\t{e['status']}\t{e['description']}" for e in entries]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="helm", description=__doc__.splitlines()[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-n", "--namespace", default="default")
    commands = parser.add_subparsers(dest="command", required=True)

    command = commands.add_parser("history", parents=[common])
    command.add_argument("release")
    command.add_argument("--max", type=int, default=256)
    command.add_argument("-o", "--output", choices=("table", "json"), default="table")
    command.set_defaults(run=history)

    get = commands.add_parser("get").add_subparsers(dest="what", required=True)
    for name, run in (("values", get_values), ("manifest", get_manifest)):
        command = get.add_parser(name, parents=[common])
        command.add_argument("release")
        command.add_argument("--revision", type=int)
        command.set_defaults(run=run)
    get.choices["values"].add_argument("-o", "--output", choices=("yaml", "json"), default="yaml")

    command = commands.add_parser("upgrade", parents=[common])
    command.add_argument("release")
    command.add_argument("chart", type=Path)
    command.add_argument("-i", "--install", action="store_true")
    command.add_argument("--reset-then-reuse-values", action="store_true")
    command.add_argument("-f", "--values", action="append", default=[])
    command.add_argument("--set", action="append", default=[])
    command.add_argument("--set-string", action="append", default=[])
    command.add_argument("--set-json", action="append", default=[])
    command.add_argument("--history-max", type=int, default=10)
    command.add_argument("--description", default="")
    command.add_argument("-o", "--output", choices=("table", "json"), default="table")
    command.set_defaults(run=upgrade)

    command = commands.add_parser("rollback", parents=[common])
    command.add_argument("release")
    command.add_argument("revision", type=int, nargs="?", default=0)
    command.add_argument("--history-max", type=int, default=10)
    command.set_defaults(run=rollback)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        output = args.run(args)
    except (HelmError, UnreadableRelease) as err:
        print(f"Error: {err}", file=sys.stderr)  # noqa: T201 - the command's output, as Helm's
        return 1
    print(output)  # noqa: T201 - the command's output, as Helm's
    return 0


if __name__ == "__main__":
    sys.exit(main())
