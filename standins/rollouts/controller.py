"""The controller's reconcile loop: each newly deployed revision of the release is rolled out once.

A first release, a rollback to the stable pod template or to one of the last ``rollbackWindow`` stable ones, and
a plain Deployment switch at once; a Rollout's canary or blue-green strategy runs in ``strategies``. The outcome of each revision is final once written to
``results/<revision>.json``: Healthy (the new model is stable and serving), Degraded (aborted, traffic back on
stable) or Superseded (a newer revision was deployed first).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from contract import (
    DEGRADED,
    HEALTHY,
    LOCAL_PID_FILE,
    LOCAL_STATUS_FILE,
    SUPERSEDED,
    local_result_path,
    write_json,
)
from ml.release import chart
from ml.release.helm import Revision, model_of
from standins.release_store import ReleaseStore
from standins.rollouts import read_result, strategies
from standins.rollouts.router import Router
from standins.rollouts.server import NotReady, Server, port_or_free
from standins.rollouts.state import Aborted, Pace, Status, Superseded
from standins.rollouts.traffic import Traffic

log = logging.getLogger(__name__)
#: Variables of the chart's ConfigMap that name cluster services: the local pods keep this machine's.
LOCAL_ENVIRONMENT = ("MLFLOW_TRACKING_URI", "HOME")


def model_uri_of(revision: Revision) -> str:
    return model_of(revision)[0] or ""


def template_of(workload: dict[str, Any]) -> str:
    """The pod template as a comparable string: what tells a new revision from the stable one."""
    return json.dumps(workload["spec"]["template"], sort_keys=True)


def strategy_of(workload: dict[str, Any]) -> str:
    strategy = workload["spec"].get("strategy", {})
    return next((name for name in ("canary", "blueGreen") if name in strategy), "rollingUpdate")


class Controller:
    """Rolls out the release's revisions one by one; the stable API serves behind the router meanwhile."""

    def __init__(self, state_dir: Path, release: str, pace: Pace) -> None:
        self.store = ReleaseStore(state_dir, release)
        self.path = self.store.path
        self.pace = pace
        self.stop_requested = threading.Event()
        self.stable: Server | None = None
        self.stable_template: str | None = None
        self.recent_stable: list[str] = []  # templates that were stable, newest last (Argo's rollbackWindow)
        self.router = Router(port_or_free(pace.port))
        self.status = Status(release=release, endpoint=self.router.url)

    def run(self) -> None:
        """The reconcile loop, until ``stop_requested``: then the router and the stable API stop too."""
        (self.path / LOCAL_PID_FILE).write_text(str(os.getpid()))
        self.router.start()
        log.info("local rollouts controller for %s; router on %s", self.store.release, self.router.url)
        try:
            self.restore_stable()
            while not self.stop_requested.is_set():
                self.reconcile()
                self.stop_requested.wait(0.5)
        finally:
            self.router.stop()
            if self.stable is not None:
                self.stable.stop()
            (self.path / LOCAL_PID_FILE).unlink(missing_ok=True)
            log.info("stopped")

    def reconcile(self) -> None:
        """One pass: roll out the deployed revision if it is not the one observed last."""
        revision = self.store.deployed()
        if revision is not None and revision.revision != self.status.observedRevision:
            self.roll_out(revision)

    def roll_out(self, revision: Revision) -> None:
        workload = chart.workload(revision.objects)
        self.status = Status(
            release=self.store.release,
            observedRevision=revision.revision,
            stableRevision=self.status.stableRevision,
            stableModelUri=self.status.stableModelUri,
            kind=workload["kind"],
            strategy=strategy_of(workload),
            steps=workload["spec"].get("strategy", {}).get("canary", {}).get("steps", []),
            endpoint=self.router.url,
        )
        try:
            self.promote(revision, template_of(workload), self._next_stable(revision, workload))
            self.finish(revision, HEALTHY, f"revision {revision.revision} is stable and serving")
        except Aborted as err:
            self.router.send_all_to_stable()
            self.status.abort, self.status.canaryWeight = True, 0
            message = f"RolloutAborted: Rollout aborted update to revision {revision.revision}: {err}"
            self.finish(revision, DEGRADED, message)
        except Superseded:
            self.router.send_all_to_stable()
            if self.stop_requested.is_set():  # stopped, not replaced: no verdict; a restart runs it again
                self.write_status(f"stopped during the rollout of revision {revision.revision}")
                return
            self.finish(
                revision, SUPERSEDED, f"revision {revision.revision} was replaced before it completed"
            )

    def _next_stable(self, revision: Revision, workload: dict[str, Any]) -> Server | None:
        """The server that becomes stable: None when the stable template is already live (a rollback)."""
        if self.stable is None:
            return self.start(revision, workload)  # a first release skips the steps, as Argo does
        if template_of(workload) == self.stable_template:
            return None
        window = int(workload["spec"].get("rollbackWindow", {}).get("revisions", 0))
        if window and template_of(workload) in self.recent_stable[-window:]:
            return self.start(revision, workload)  # a rollback within the window: no steps, as Argo does
        if workload["kind"] == "Rollout" and self.status.strategy == "canary":
            return strategies.canary(self, revision, workload)
        if workload["kind"] == "Rollout" and self.status.strategy == "blueGreen":
            return strategies.blue_green(self, revision, workload)
        return self.start(revision, workload)

    def restore_stable(self) -> None:
        """After a restart, serve the last revision that became stable again, so the next one is a canary.

        Without this, a controller started after ``stop`` would take the next revision for a first release and
        skip its analysis.
        """
        for revision in reversed(self.store.history()):
            result = read_result(self.path, revision.revision)
            if result is None or result["phase"] != HEALTHY:
                continue
            workload = chart.workload(revision.objects)
            try:
                server = self.start(revision, workload)
            except Aborted as err:
                log.warning("could not restore stable revision %s: %s", revision.revision, err)
                return
            self.promote(revision, template_of(workload), server)
            if revision.revision == (self.store.deployed() or revision).revision:
                self.status.observedRevision = revision.revision
            self.status.phase = HEALTHY
            self.write_status(f"restored stable revision {revision.revision} after a restart")
            return

    # -- what the strategies use ----------------------------------------------------------------------------

    def start(self, revision: Revision, workload: dict[str, Any]) -> Server:
        """Start the revision's API (a pod) and wait for it to be ready, within the progress deadline."""
        server = Server(
            revision.revision, model_uri_of(revision), self._pod_env(revision), self.path / "servers"
        )
        try:
            server.wait_ready(float(workload["spec"].get("progressDeadlineSeconds", 600)))
        except NotReady as err:
            server.stop()
            raise Aborted(str(err)) from err
        return server

    def traffic(self, revision: Revision) -> Traffic | None:
        return Traffic.for_model(model_uri_of(revision), self.pace.requests_per_second)

    def check_superseded(self, revision: Revision) -> None:
        current = self.store.deployed()
        if self.stop_requested.is_set() or (current is not None and current.revision != revision.revision):
            raise Superseded()

    def promote(self, revision: Revision, template: str, server: Server | None) -> None:
        previous = self.stable
        if server is not None:
            self.stable, self.stable_template = server, template
            self.router.stable = server.url
        self.recent_stable = [t for t in self.recent_stable if t != template] + [template]
        self.router.send_all_to_stable()
        if previous is not None and previous is not self.stable:
            previous.stop()
        self.status.stableRevision = revision.revision
        self.status.stableModelUri = self.stable.model_uri if self.stable else None
        self.status.canaryWeight = 0

    def finish(self, revision: Revision, phase: str, message: str) -> None:
        self.status.phase = phase
        self.write_status(message)
        result = {**asdict(self.status), "revision": revision.revision, "model_uri": model_uri_of(revision)}
        write_json(local_result_path(self.path, revision.revision), result)
        log.info("revision %s: %s (%s)", revision.revision, phase, message)

    def write_status(self, message: str) -> None:
        self.status.message = message
        self.status.updated = datetime.now(UTC).isoformat(timespec="seconds")
        write_json(self.path / LOCAL_STATUS_FILE, asdict(self.status))
        log.info("%s", message)

    def local_url(self, url: str, revision: Revision) -> str:
        """A URL of the cluster's MLflow (the chart's ConfigMap names it) as this machine's MLflow serves it."""
        config_map = chart.find(revision.objects, "ConfigMap") or {}
        cluster, local = (
            config_map.get("data", {}).get("MLFLOW_TRACKING_URI"),
            os.environ.get("MLFLOW_TRACKING_URI"),
        )
        if cluster and local and url.startswith(cluster):
            return local.rstrip("/") + url[len(cluster) :]
        return url

    def _pod_env(self, revision: Revision) -> dict[str, str]:
        """The pod's environment: the rendered ConfigMap over this process's, except what must stay this
        machine's (its MLflow instead of the cluster's, its ``HOME``)."""
        config_map = chart.find(revision.objects, "ConfigMap") or {}
        env = {**os.environ, **{k: str(v) for k, v in config_map.get("data", {}).items()}}
        for name in LOCAL_ENVIRONMENT:
            if name in os.environ:
                env[name] = os.environ[name]
        return env
