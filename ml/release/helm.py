"""Helm releases of the inference API: deploy a model version, roll back to the model before it.

``Helm`` drives the ``helm`` command on PATH (the cluster's, or the local runtime's stand-in) through the four
operations the logic needs (history with each revision's values, upgrade, rollback, a revision's objects).
``deploy`` and ``rollback`` are idempotent: deploying what is already deployed, or rolling back what is already
rolled back, changes nothing and reports the revision in place.

``deploy`` takes the compare-and-set of the production alias with it (``ChampionCheck``): it refuses to start a
release whose champion moved since evaluation, and it sets the chart's ``championCheck`` values so that the canary
checks again before its last step.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ml import faults
from ml.errors import StageError, TransientError
from ml.release import budget, chart

log = logging.getLogger(__name__)

HISTORY_MAX = 20
#: Commands that only read the release: retried (``HELM_READ_ATTEMPTS`` in all) through a busy API server.
READ_COMMANDS = frozenset({"history", "get", "status"})
HELM_READ_ATTEMPTS = 4
#: Helm's status of the one revision of a release that is live, and of the revisions it replaced.
DEPLOYED = "deployed"
SUPERSEDED = "superseded"


@dataclass
class Revision:
    """One revision of a release, as ``helm history`` and ``helm get`` describe it."""

    revision: int
    status: str
    description: str
    values: dict[str, Any]
    objects: list[dict[str, Any]] = field(default_factory=list)
    updated: str = ""


def deployed(history: list[Revision]) -> Revision | None:
    """The revision of a release's history that is live, if any."""
    return next((r for r in reversed(history) if r.status == DEPLOYED), None)


def next_revision(history: list[Revision]) -> int:
    """The number Helm gives the next revision of a release: its newest revision's plus one."""
    return max((r.revision for r in history), default=0) + 1


def model_of(revision: Revision) -> tuple[str | None, str | None]:
    """The (model URI, image tag) a revision runs: what tells one rollout from another."""
    return revision.values.get("model", {}).get("uri"), revision.values.get("image", {}).get("tag")


def registered_name(model_uri: str | None) -> str | None:
    """The registered model of a ``models:/<name>/<version>`` or ``models:/<name>@<alias>`` URI (else None)."""
    if not model_uri or not model_uri.startswith("models:/"):
        return None
    return model_uri.removeprefix("models:/").split("@")[0].rsplit("/", 1)[0] or None


@dataclass(frozen=True)
class ChampionCheck:
    """The production alias and the version the deployed model was compared with at evaluation ("none")."""

    alias: str
    expected: str
    current: str | None  # where the alias points now

    @property
    def moved(self) -> bool:
        return (self.current or "none") != self.expected

    def refusal(self, model_uri: str) -> str:
        return (
            f"the champion moved since evaluation: {model_uri} was compared with "
            f"{'no champion' if self.expected == 'none' else 'v' + self.expected}, but {self.alias} now "
            f"points at {'v' + self.current if self.current else 'nothing'}"
        )

    def values(self, revision: int) -> dict[str, Any]:
        """The chart's ``championCheck`` values, armed for the release revision ``revision`` only (a later upgrade
        that reuses them runs no check); empty (no check in the canary) when there was no champion."""
        expected = "" if self.expected == "none" else self.expected
        return {
            "championCheck": {
                "alias": self.alias if expected else "",
                "expectedVersion": expected,
                "revision": revision if expected else 0,
            }
        }


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
    #: Why the release was refused before it started (the champion moved since evaluation, or the error budget is
    #: spent); empty otherwise.
    refused: str = ""
    #: The error budgets read before the release (``budget.BudgetCheck.record``); empty when not read.
    error_budget: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Release:
    """What a deploy sets: the model, the image (None: the deployed one), the champion check it arms."""

    model_uri: str
    image_tag: str | None
    champion: ChampionCheck | None

    def values(self, revision: int) -> dict[str, Any]:
        """The values it sets as revision ``revision`` of the release (the one its champion check is armed for)."""
        wanted: dict[str, Any] = {
            "model": {"uri": self.model_uri},
            **(self.champion.values(revision) if self.champion else {}),
        }
        if self.image_tag:
            wanted["image"] = {"tag": self.image_tag}
        return wanted

    def upgrade(self, target: Helm, armed: int) -> Revision:
        """``helm upgrade`` to it as revision ``armed``, the release's next."""
        description = f"deploy {self.model_uri}" + (f" (image {self.image_tag})" if self.image_tag else "")
        revision = target.upgrade(self.values(armed), description)
        log.info("revision %s of %s serves %s", revision.revision, target.release, self.model_uri)
        if self.champion is not None and revision.revision != armed:
            log.warning(
                "the champion check was armed for revision %s, but the release became revision %s (another "
                "upgrade came first): the canary runs without it; promote's compare-and-set still guards %s",
                armed, revision.revision, self.champion.alias,
            )  # fmt: skip
        return revision


def deploy(
    target: Helm,
    *,
    model_uri: str,
    image_tag: str | None = None,
    rejection: str = "",
    champion: ChampionCheck | None = None,
    error_budget: str = budget.OFF,
    requested_by: str = "",
    record_budgets: Callable[[dict[str, Any]], None] | None = None,
) -> Deployment:
    """Upgrade the release to serve ``model_uri``, unless it already does, a person rejected it (``rejection``
    says why), ``champion`` moved since evaluation, or the error budget policy (``error_budget``:
    ``budget.POLICIES``) stops it. The budgets read go to ``record_budgets`` before anything is decided on them, so
    that what a release (or a refusal) was based on is recorded before it happens.

    The pipeline ships models and CI/CD ships images: an upgrade keeps the values of the deployed revision
    (Helm's ``--reset-then-reuse-values``) and changes the model URI, and the image tag only when one is given.
    A first install gets the chart's default image.
    """
    history = target.history()
    current = deployed(history)
    budgets = None
    if current is None or model_of(current)[0] != model_uri:  # a release would start: may it?
        refusal = rejection or (
            champion.refusal(model_uri) if champion is not None and champion.moved else ""
        )
        if not refusal:  # the budgets are read only when nothing else refused already
            budgets = _read_budgets(target, current, error_budget, requested_by, record_budgets)
            refusal = budgets.reason() if budgets is not None and budgets.refuses else ""
        if refusal:
            return _refused(target, history, model_uri, refusal, budgets.record() if budgets else None)
    _one_registered_model(target, current, model_uri)
    wanted = Release(model_uri, image_tag, champion)
    if current is not None and chart.merge(current.values, wanted.values(current.revision)) == current.values:
        log.info("revision %s already serves %s: nothing to deploy", current.revision, model_uri)
        revision, changed = current, False
    else:
        revision = wanted.upgrade(target, next_revision(history))
        history, changed = [*history, revision], True
    previous = rollback_target(history, revision.revision)
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
        error_budget=budgets.record() if budgets else {},
    )


def _one_registered_model(target: Helm, current: Revision | None, model_uri: str) -> None:
    serving = registered_name(model_of(current)[0]) if current is not None else None
    if current is not None and serving is not None and serving != registered_name(model_uri):
        raise StageError(
            f"release {target.release} serves the registered model '{serving}' (revision {current.revision}), "
            f"not '{registered_name(model_uri)}': one release serves one registered model, so {model_uri} is "
            "not deployed into it (release it under its own release name, or register it under that name)"
        )


def _read_budgets(
    target: Helm,
    current: Revision | None,
    policy: str,
    requested_by: str,
    record: Callable[[dict[str, Any]], None] | None,
) -> budget.BudgetCheck | None:
    """The error budgets of the deployed release, under ``policy`` (None: not read), recorded at once."""
    if policy == budget.OFF:
        return None
    found = budget.check(
        target.chart_dir, target.release, target.namespace,
        current.values if current else {}, target.objects(current.revision) if current else [],
        policy=policy, requested_by=requested_by,
    )  # fmt: skip
    log.info("error budget (%s): %s", found.source, found.figures())
    if record is not None:
        record(found.record())
    if found.overridden:
        log.warning(
            "released by override%s: %s", f" of {requested_by}" if requested_by else "", found.reason()
        )
    return found


def _refused(
    target: Helm,
    history: list[Revision],
    model_uri: str,
    reason: str,
    error_budget: dict[str, Any] | None = None,
) -> Deployment:
    """The result of a release that does not start: the live revision stays, the reason is reported."""
    current = deployed(history)
    log.warning("%s: the release of %s is not started", reason, model_uri)
    workload: dict[str, Any] = (
        chart.workload(target.objects(current.revision))
        if current
        else {"kind": "", "metadata": {"name": ""}}
    )
    return Deployment(
        release=target.release,
        namespace=target.namespace,
        revision=current.revision if current else 0,
        previous_revision=None,
        model_uri=model_uri,
        image_tag=model_of(current)[1] if current else None,
        changed=False,
        workload_kind=workload["kind"],
        workload_name=workload["metadata"]["name"],
        refused=f"{reason}; the release is not started",
        error_budget=error_budget or {},
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


def serving(history: list[Revision], model_uri: str, *, unlike: Revision | None = None) -> Revision | None:
    """The newest revision of the history that served ``model_uri`` (and did not fail), other than ``unlike``
    and any revision that ran what it runs (the same model and image)."""
    return next(
        (
            r
            for r in reversed(history)
            if model_of(r)[0] == model_uri
            and r.status != "failed"
            and (unlike is None or (r.revision != unlike.revision and model_of(r) != model_of(unlike)))
        ),
        None,
    )


def rollback(target: Helm, *, revision: int, to_model_uri: str | None = None) -> Rollback:
    """Restore the champion's revision (the newest that served ``to_model_uri``), or else the model that
    ``revision`` replaced; a no-op when it is already back. The revision being rolled back is never the one
    restored, nor one that ran the same model and image (an image's canary serves the champion's model too)."""
    history = target.history()
    failed = next((r for r in history if r.revision == revision), None)
    restore = serving(history, to_model_uri, unlike=failed) if to_model_uri else None
    if to_model_uri and restore is None:
        log.warning("no revision of %s ever served %s: restoring the model before revision %s instead",
                    target.release, to_model_uri, revision)  # fmt: skip
    restore = restore or rollback_target(history, revision)
    if restore is None:
        raise StageError(
            f"revision {revision} of {target.release} has no earlier revision with another model to roll back "
            "to (a first release has no canary to abort)"
        )
    current = deployed(history)
    if current is not None and model_of(current) == model_of(restore):
        log.info("revision %s already serves %s: already rolled back", current.revision, model_of(restore)[0])
        result, changed = current, False
    else:
        log.info("canary of revision %s aborted: rolling back to revision %s", revision, restore.revision)
        result, changed = target.rollback(restore.revision), True
    return Rollback(
        release=target.release,
        namespace=target.namespace,
        revision=result.revision,
        restored_revision=restore.revision,
        restored_model_uri=model_of(restore)[0],
        changed=changed,
    )


class Helm:
    """The ``helm`` command on PATH: the cluster's (in-cluster service account, or the kubeconfig), or the local
    runtime's stand-in."""

    def __init__(
        self,
        chart_dir: Path,
        release: str,
        namespace: str,
        values_files: tuple[Path, ...] = (),
        model_values: dict[str, Any] | None = None,
    ) -> None:
        self.chart_dir, self.release, self.namespace, self.values_files = (
            chart_dir,
            release,
            namespace,
            values_files,
        )
        #: The model file's values of the chart: over the values files, under what each upgrade sets.
        self.model_values = model_values or {}
        helm = shutil.which("helm")
        if helm is None:
            raise StageError("the release stage needs helm on PATH (the ML stage image has it)")
        self.helm = helm

    def _run(self, *args: str) -> str:
        """Run ``helm <args>``: a read is retried through a busy or unreachable API server; a change is not (a
        timed-out upgrade may have been applied: the task's retry decides again from the release's history)."""
        if args[0] in READ_COMMANDS:
            return faults.retry(
                lambda: self._once(*args),
                what=f"helm {args[0]} {self.release}",
                transient=lambda err: isinstance(err, TransientError),
                attempts=HELM_READ_ATTEMPTS,
            )
        return self._once(*args)

    def _once(self, *args: str) -> str:
        done = subprocess.run(
            [self.helm, *args, "--namespace", self.namespace], capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            message = f"helm {args[0]} {self.release} failed: {done.stderr.strip()}"
            # A busy or unreachable cluster is worth another try; a refusal (a template error, a forbidden
            # request, a release not found) is not.
            raise (
                TransientError(message) if faults.HELM_TRANSIENT.search(done.stderr) else StageError(message)
            )
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
        with (
            tempfile.NamedTemporaryFile("w", suffix=".json") as model_file,
            tempfile.NamedTemporaryFile("w", suffix=".json") as values_file,
        ):
            json.dump(self.model_values, model_file)
            model_file.flush()
            json.dump(values, values_file)
            values_file.flush()
            files = [arg for path in self.values_files for arg in ("--values", str(path))]
            if self.model_values:
                files += ["--values", model_file.name]
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

    def rollback(self, revision: int) -> Revision:
        self._run("rollback", self.release, str(revision), "--history-max", str(HISTORY_MAX))
        current = deployed(self.history())
        if current is None:
            raise StageError(f"helm rollback of {self.release} left no deployed revision")
        return current
