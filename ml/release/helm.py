"""Helm releases of the inference API: deploy a model version, roll back to the model before it.

Two targets implement the same four operations (history, deployed revision, upgrade, rollback):

- ``HelmCli``: the ``helm`` binary against the cluster of the pod's service account (production);
- ``LocalHelm``: the chart rendered by Helm's engine, revisions kept by ``ReleaseStore``, and the local Argo
  Rollouts stand-in (``ml.release.local_rollouts``) acting on each new revision.

``deploy`` and ``rollback`` are idempotent: deploying what is already deployed, or rolling back what is already
rolled back, changes nothing and reports the revision in place.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml

from ml.errors import StageError
from ml.release import chart
from ml.release.store import DEPLOYED, ReleaseStore, Revision

log = logging.getLogger(__name__)

HISTORY_MAX = 20
#: Where ``ml`` is importable from: the controller and its API servers run ``python -m`` from here.
PROJECT_ROOT = Path(__file__).resolve().parents[2]


class Target(Protocol):
    release: str
    namespace: str

    def history(self) -> list[Revision]: ...

    def upgrade(self, values: dict[str, Any], description: str) -> Revision: ...

    def rollback(self, revision: int, description: str) -> Revision: ...

    def objects(self, revision: int) -> list[dict[str, Any]]: ...


def deployed(target: Target) -> Revision | None:
    return next((r for r in reversed(target.history()) if r.status == DEPLOYED), None)


def model_of(revision: Revision) -> tuple[str | None, str | None]:
    """The (model URI, image tag) a revision runs: what tells one rollout from another."""
    return revision.values.get("model", {}).get("uri"), revision.values.get("image", {}).get("tag")


@dataclass
class Deployment:
    """The deploy step's result: which revision now carries the model, and what it replaced."""

    release: str
    namespace: str
    revision: int
    previous_revision: int | None
    model_uri: str
    image_tag: str | None  # None: the chart's default image
    changed: bool
    workload_kind: str
    workload_name: str


def deploy(target: Target, *, model_uri: str, image_tag: str | None = None) -> Deployment:
    """Upgrade the release to serve ``model_uri``, unless it already does.

    The pipeline ships models and CI/CD ships images: an upgrade keeps the values of the deployed revision
    (Helm's ``--reset-then-reuse-values``) and changes the model URI, and the image tag only when one is given.
    A first install gets the chart's default image.
    """
    values: dict[str, Any] = {"model": {"uri": model_uri}}
    if image_tag:
        values["image"] = {"tag": image_tag}
    current = deployed(target)
    if current is not None and chart.merge(current.values, values) == current.values:
        log.info("revision %s already serves %s: nothing to deploy", current.revision, model_uri)
        revision, changed = current, False
    else:
        revision = target.upgrade(
            values, f"deploy {model_uri}" + (f" (image {image_tag})" if image_tag else "")
        )
        log.info("revision %s of %s serves %s", revision.revision, target.release, model_uri)
        changed = True
    previous = rollback_target(target.history(), revision.revision)
    workload = chart.workload(revision.objects or target.objects(revision.revision))
    return Deployment(
        release=target.release,
        namespace=target.namespace,
        revision=revision.revision,
        previous_revision=previous.revision if previous else None,
        model_uri=model_uri,
        image_tag=model_of(revision)[1],
        changed=changed,
        workload_kind=workload["kind"],
        workload_name=workload["metadata"]["name"],
    )


def rollback_target(history: list[Revision], revision: int) -> Revision | None:
    """The newest revision before ``revision`` that ran another model: what a rollback restores."""
    by_number = {r.revision: r for r in history}
    if revision not in by_number:
        raise StageError(f"revision {revision} is not in the release's history {sorted(by_number)}")
    model = model_of(by_number[revision])
    earlier = [r for r in history if r.revision < revision and model_of(r) != model and r.status != "failed"]
    return earlier[-1] if earlier else None


@dataclass
class Rollback:
    """The rollback step's result."""

    release: str
    namespace: str
    revision: int
    restored_revision: int
    restored_model_uri: str | None
    changed: bool


def rollback(target: Target, *, revision: int) -> Rollback:
    """Restore the model that ``revision`` replaced; a no-op when it is already back."""
    history = target.history()
    restore = rollback_target(history, revision)
    if restore is None:
        raise StageError(
            f"revision {revision} of {target.release} has no earlier revision with another model to roll back "
            "to (a first release has no canary to abort)"
        )
    current = deployed(target)
    if current is not None and model_of(current) == model_of(restore):
        log.info("revision %s already serves %s: already rolled back", current.revision, model_of(restore)[0])
        result, changed = current, False
    else:
        result = target.rollback(
            restore.revision, f"Rollback to {restore.revision}: canary of revision {revision} aborted"
        )
        changed = True
    return Rollback(
        release=target.release,
        namespace=target.namespace,
        revision=result.revision,
        restored_revision=restore.revision,
        restored_model_uri=model_of(restore)[0],
        changed=changed,
    )


class HelmCli:
    """The ``helm`` binary against the cluster (in-cluster service account, or the kubeconfig)."""

    def __init__(
        self, chart_dir: Path, release: str, namespace: str, values_files: tuple[Path, ...] = ()
    ) -> None:
        self.chart_dir, self.release, self.namespace, self.values_files = (
            chart_dir,
            release,
            namespace,
            values_files,
        )
        helm = shutil.which("helm")
        if helm is None:
            raise StageError(
                "the kubernetes release target needs the helm binary on PATH (the release image has it)"
            )
        self.helm = helm

    def _run(self, *args: str) -> str:
        done = subprocess.run(
            [self.helm, *args, "--namespace", self.namespace], capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise StageError(f"helm {args[0]} {self.release} failed: {done.stderr.strip()}")
        return done.stdout

    def history(self) -> list[Revision]:
        try:
            entries = json.loads(
                self._run("history", self.release, "--max", str(HISTORY_MAX), "--output", "json")
            )
        except StageError as err:
            if "not found" in str(err):
                return []
            raise
        revisions = []
        for entry in entries:
            number = int(entry["revision"])
            values = json.loads(
                self._run("get", "values", self.release, "--revision", str(number), "--output", "json")
            )
            revisions.append(
                Revision(
                    revision=number,
                    status=entry["status"],
                    description=entry.get("description", ""),
                    values=values or {},
                    updated=entry.get("updated", ""),
                )
            )
        return revisions

    def upgrade(self, values: dict[str, Any], description: str) -> Revision:
        with tempfile.NamedTemporaryFile("w", suffix=".json") as values_file:
            json.dump(values, values_file)
            values_file.flush()
            files = [arg for path in self.values_files for arg in ("--values", str(path))]
            out = self._run(
                "upgrade", "--install", self.release, str(self.chart_dir), "--reset-then-reuse-values",
                *files, "--values", values_file.name,
                "--history-max", str(HISTORY_MAX), "--description", description, "--output", "json",
            )  # fmt: skip
        released = json.loads(out)
        return Revision(
            revision=int(released["version"]),
            status=released["info"]["status"],
            description=description,
            values=released.get("config") or values,
            objects=[doc for doc in yaml.safe_load_all(released.get("manifest", "")) if doc],
        )

    def objects(self, revision: int) -> list[dict[str, Any]]:
        manifest = self._run("get", "manifest", self.release, "--revision", str(revision))
        return [doc for doc in yaml.safe_load_all(manifest) if doc]

    def rollback(self, revision: int, description: str) -> Revision:
        self._run("rollback", self.release, str(revision), "--history-max", str(HISTORY_MAX))
        current = deployed(self)
        if current is None:
            raise StageError(f"helm rollback of {self.release} left no deployed revision")
        return current


class LocalHelm:
    """Helm's engine and a file-kept history, with the local Argo Rollouts stand-in acting on each revision."""

    def __init__(
        self,
        chart_dir: Path,
        release: str,
        namespace: str,
        state_dir: Path,
        values_files: tuple[Path, ...] = (),
        controller_settings: dict[str, Any] | None = None,
    ) -> None:
        self.chart_dir, self.release, self.namespace, self.values_files = (
            chart_dir,
            release,
            namespace,
            values_files,
        )
        self.store = ReleaseStore(state_dir, release)
        self.controller_settings = controller_settings or {}

    def history(self) -> list[Revision]:
        return self.store.history()

    def upgrade(self, values: dict[str, Any], description: str) -> Revision:
        current = deployed(self)
        # As Helm's --reset-then-reuse-values: the deployed revision's values, then the new ones.
        values = chart.merge(current.values, values) if current else values
        objects = chart.render(
            self.chart_dir,
            values,
            release=self.release,
            namespace=self.namespace,
            values_files=self.values_files,
        )
        revision = self.store.record(values, objects, description)
        self.ensure_controller()
        return revision

    def objects(self, revision: int) -> list[dict[str, Any]]:
        found = self.store.get(revision)
        return found.objects if found else []

    def rollback(self, revision: int, description: str) -> Revision:
        restored = self.store.get(revision)
        if restored is None:
            raise StageError(f"revision {revision} of {self.release} does not exist")
        result = self.store.record(restored.values, restored.objects, description)
        self.ensure_controller()
        return result

    def ensure_controller(self) -> None:
        """Start the local rollouts controller for this release unless one is running."""
        from ml.release import local_rollouts

        settings_file = self.store.path / local_rollouts.SETTINGS_FILE
        settings_file.write_text(json.dumps(self.controller_settings))
        if local_rollouts.running_pid(self.store.path) is not None:
            return
        log_file = (self.store.path / "controller.log").open("a")
        subprocess.Popen(
            [sys.executable, "-m", "ml.release.local_rollouts", "--state-dir", str(self.store.path.parent),
             "--release", self.release],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))},
            start_new_session=True,  # outlives the step that started it, like a controller in the cluster
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while local_rollouts.running_pid(self.store.path) is None:
            if time.monotonic() > deadline:
                raise StageError(f"the local rollouts controller did not start; see {log_file.name}")
            time.sleep(0.1)
        log.info("started the local rollouts controller for %s (log: %s)", self.release, log_file.name)


def stop_controller(state_dir: Path, release: str, timeout_s: float = 30) -> bool:
    """Stop the release's local controller and the servers it runs; False if none was running."""
    from ml.release import local_rollouts

    path = Path(state_dir) / release
    pid = local_rollouts.running_pid(path)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while local_rollouts.running_pid(path) is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    if local_rollouts.running_pid(path) is not None:
        os.killpg(pid, signal.SIGKILL)
    return True
