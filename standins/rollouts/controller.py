"""The controller's reconcile loop: each newly deployed revision of the release is rolled out once.

A first release, a rollback to the stable pod template or to one of the last ``rollbackWindow`` stable ones, and
a plain Deployment switch at once; a Rollout's canary or blue-green strategy runs in ``strategies``. The outcome of each revision is final once written to
``results/<revision>.json``: Healthy (the new model is stable and serving), Degraded (aborted, traffic back on
stable) or Superseded (a newer revision was deployed first).

A fault of the controller itself never takes the stable API down: an unreadable release record leaves the last
good state in place until the next tick; an unexpected error during a rollout sends all traffic back to stable
and retries the revision on the next tick (it is aborted after ``ATTEMPTS`` tries); an error that ends the
controller leaves the router and the servers running, for the next controller to take over. Only an explicit
stop (``python -m standins.rollouts stop``: SIGTERM) stops them.
"""

from __future__ import annotations

import fcntl
import hashlib
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
    replacing,
    runs_module,
    write_json,
)
from ml.release import chart
from ml.release.helm import Revision, model_of
from standins.release_store import ReleaseStore, UnreadableRelease
from standins.rollouts import (
    PROCESSES_FILE,
    ROUTER_COMMAND,
    SERVER_COMMAND,
    read_processes,
    read_result,
    strategies,
    terminate,
)
from standins.rollouts.prometheus import Prometheus, Target
from standins.rollouts.router import Router
from standins.rollouts.server import NotReady, Server, port_or_free
from standins.rollouts.state import Aborted, Pace, Status, Superseded
from standins.rollouts.traffic import Traffic

log = logging.getLogger(__name__)
#: Variables of the chart's ConfigMap that name cluster services: the local pods keep this machine's.
LOCAL_ENVIRONMENT = ("MLFLOW_TRACKING_URI", "HOME")
#: How many times an unexpected error of the controller may interrupt one revision's rollout before it is aborted.
ATTEMPTS = 3


class AlreadyRunning(Exception):
    """Another controller holds the release."""


def model_uri_of(revision: Revision) -> str:
    return model_of(revision)[0] or ""


def template_of(workload: dict[str, Any]) -> str:
    """The pod template as a comparable string: what tells a new revision from the stable one."""
    return json.dumps(workload["spec"]["template"], sort_keys=True)


def template_hash(workload: dict[str, Any]) -> str:
    """The pod template's hash, as Argo Rollouts labels a revision's pods (``rollouts-pod-template-hash``)."""
    return hashlib.sha256(template_of(workload).encode()).hexdigest()[:10]


def metrics_service(objects: list[dict[str, Any]]) -> str:
    """The chart's Service that its ServiceMonitor scrapes: its name is the ``service`` label of the series."""
    return next(
        (o["metadata"]["name"] for o in objects if o.get("kind") == "Service"
         and o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "metrics"),
        "",
    )  # fmt: skip


def strategy_of(workload: dict[str, Any]) -> str:
    strategy = workload["spec"].get("strategy", {})
    return next((name for name in ("canary", "blueGreen") if name in strategy), "rollingUpdate")


class Controller:
    """Rolls out the release's revisions one by one; the stable API serves behind the router meanwhile."""

    def __init__(self, state_dir: Path, release: str, pace: Pace, namespace: str = "default") -> None:
        self.store = ReleaseStore(state_dir, release)
        self.namespace = namespace  # the release's, as its series are labelled in the cluster
        self.prometheus: Prometheus | None = None
        self.service = ""  # the deployed revision's metrics Service (its series' ``service`` label)
        self.path = self.store.path
        self.pace = pace
        self.stop_requested = threading.Event()
        self.stable: Server | None = None
        self.stable_template: str | None = None
        self.recent_stable: list[str] = []  # templates that were stable, newest last (Argo's rollbackWindow)
        self.servers: list[Server] = []  # every server this controller started (the live ones are recorded)
        self.leftover_servers: list[dict[str, Any]] = []  # a previous controller's, until stable is restored
        self.router = Router(self.path, 0)
        self.status = Status(release=release)
        self.restored = False
        self.last_deployed: Revision | None = None  # the last release history read whole
        self.unreadable = ""  # the last problem reading it, logged once
        self.attempts: dict[int, int] = {}  # revision -> rollouts an error of the controller interrupted
        self._recorded: dict[str, Any] = {}

    def run(self) -> None:
        """The reconcile loop, until ``stop_requested``: then the router and the servers stop too. Any other end
        (an error, a kill) leaves them serving: a controller started later takes them over."""
        self.path.mkdir(parents=True, exist_ok=True)
        with (self.path / ".controller.lock").open("a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held until this process ends, however
            except BlockingIOError:
                raise AlreadyRunning(f"another controller runs the release {self.store.release}") from None
            with replacing(self.path / LOCAL_PID_FILE) as partial:
                partial.write_text(str(os.getpid()))
            try:
                leftovers = read_processes(self.path)  # read once: each start below records what runs
                self.start_prometheus(leftovers)
                self.start_router(leftovers)
                while not self.stop_requested.is_set():
                    self.tick()
                    self.stop_requested.wait(0.5)
            except BaseException:
                log.exception("the controller failed: the router and the servers keep serving")
                raise
            self.shut_down()

    def start_router(self, leftovers: dict[str, Any]) -> None:
        """Take over the router a previous controller left serving, or start one."""
        self.leftover_servers = [
            server
            for server in leftovers.get("servers", [])
            if runs_module(int(server["pid"]), SERVER_COMMAND)
        ]
        leftover = leftovers.get("router") or {}
        if leftover and runs_module(int(leftover["pid"]), ROUTER_COMMAND):
            self.router = Router(self.path, int(leftover["port"]))
            self.router.adopt(int(leftover["pid"]))
            log.info("took over the router (pid %s) on %s", self.router.pid, self.router.url)
            if self.router.canary is not None:
                # The dead controller's canary has nobody judging it: its share goes back to stable at once, and
                # its revision is rolled out again from the start (it was not observed to an end).
                log.warning("the last controller left %s%% of traffic on a canary: all of it back to stable",
                            self.router.weight)  # fmt: skip
                self.router.send_all_to_stable()
        else:
            self.router = Router(self.path, port_or_free(self.pace.port))
            self.router.start()
            log.info("local rollouts controller for %s; router on %s", self.store.release, self.router.url)
        self.status.endpoint = self.router.url
        self.record_processes()

    def start_prometheus(self, leftovers: dict[str, Any]) -> None:
        """Take over the Prometheus a previous controller left running, or start one."""
        leftover = leftovers.get("prometheus") or {}
        folder = self.path / "prometheus"
        if leftover:
            adopted = Prometheus(folder, int(leftover["port"]), int(leftover["pid"]))
            if adopted.alive():
                self.prometheus = adopted
                log.info("took over prometheus (pid %s) on %s", adopted.pid, adopted.url)
        if self.prometheus is None:
            self.prometheus = Prometheus(folder, port_or_free(0))
            self.prometheus.start()
        self.status.prometheus = self.prometheus.url

    def tick(self) -> None:
        """One pass of the loop; an error is logged and the next tick tries again, with everything serving."""
        try:
            if not self.restored:
                if not self.restore_stable():
                    return  # the last controller's servers keep serving; the next tick tries again
                self.restored = True
                for server in self.leftover_servers:  # the last controller's, replaced now
                    terminate(int(server["pid"]), SERVER_COMMAND)
                self.leftover_servers = []
            self.reconcile()
        except Exception:
            log.exception("controller error: the last good state stays and serves; retrying on the next tick")
        finally:
            self.record_processes()

    def shut_down(self) -> None:
        """The explicit stop: the router and every server stop, and the release has no controller."""
        self.router.stop()
        if self.prometheus is not None:
            self.prometheus.stop()
        for server in self.servers:
            server.stop()
        for leftover in self.leftover_servers:
            terminate(int(leftover["pid"]), SERVER_COMMAND)
        (self.path / PROCESSES_FILE).unlink(missing_ok=True)
        (self.path / LOCAL_PID_FILE).unlink(missing_ok=True)
        log.info("stopped")

    def record_processes(self) -> None:
        """Record the router and the live servers, so that ``stop`` and a later controller find them."""
        self.servers = [server for server in self.servers if server.process.poll() is None]
        servers = [
            {"pid": s.process.pid, "revision": s.revision, "url": s.url, "hash": s.template_hash}
            for s in self.servers
        ] + self.leftover_servers
        processes = {
            "router": {"pid": self.router.pid, "port": self.router.port} if self.router.pid else None,
            "prometheus": self.prometheus.record() if self.prometheus else None,
            "servers": servers,
        }
        if processes != self._recorded:
            write_json(self.path / PROCESSES_FILE, processes)
            self._recorded = processes
            self.update_targets(servers)

    def update_targets(self, servers: list[dict[str, Any]]) -> None:
        """What Prometheus scrapes: each live API, labelled as the cluster labels its pod's series."""
        if self.prometheus is None:
            return
        self.prometheus.set_targets([
            Target(server["url"], {
                "namespace": self.namespace,
                "service": self.service,
                "pod": f"{self.store.release}-{server.get('hash', '')}-{server['pid']}",
                "rollouts_pod_template_hash": server.get("hash", ""),
            })
            for server in servers
        ])  # fmt: skip

    def load_rules(self, revision: Revision) -> None:
        """The revision's PrometheusRule into Prometheus, and its metrics Service's name onto the series, as the
        upgrade applies them in the cluster."""
        self.service = metrics_service(revision.objects) or self.service
        rule = chart.find(revision.objects, "PrometheusRule")
        if self.prometheus is not None:
            self.prometheus.set_rules(rule["spec"].get("groups", []) if rule else [])
        self._recorded = {}  # the labels may have changed: the targets are written again
        self.record_processes()

    def deployed(self) -> Revision | None:
        """The deployed revision; the last one read whole while the history cannot be read (logged once)."""
        try:
            self.last_deployed, self.unreadable = self.store.deployed(), ""
        except UnreadableRelease as err:
            if str(err) != self.unreadable:
                log.warning("%s: keeping the last good state, reading it again on the next tick", err)
            self.unreadable = str(err)
        return self.last_deployed

    def reconcile(self) -> None:
        """One pass: roll out the deployed revision if it is not the one observed last."""
        revision = self.deployed()
        if revision is not None and revision.revision != self.status.observedRevision:
            self.roll_out(revision)

    def roll_out(self, revision: Revision) -> None:
        observed = self.status.observedRevision
        try:
            self._roll_out(revision)
        except Exception as err:  # a fault of the controller or of the record, not a verdict on the model
            self.interrupted(revision, err, observed)

    def _roll_out(self, revision: Revision) -> None:
        workload = chart.workload(revision.objects)
        self.load_rules(revision)
        self.status = Status(
            release=self.store.release,
            observedRevision=revision.revision,
            stableRevision=self.status.stableRevision,
            stableModelUri=self.status.stableModelUri,
            kind=workload["kind"],
            strategy=strategy_of(workload),
            steps=workload["spec"].get("strategy", {}).get("canary", {}).get("steps", []),
            endpoint=self.router.url,
            prometheus=self.status.prometheus,
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

    def interrupted(self, revision: Revision, err: Exception, observed: int) -> None:
        """All traffic back to stable; the revision is tried again on the next tick, or aborted after
        ``ATTEMPTS`` interrupted tries."""
        self.router.send_all_to_stable()
        self.status.canaryWeight = 0
        attempts = self.attempts[revision.revision] = self.attempts.get(revision.revision, 0) + 1
        log.error("the rollout of revision %s failed (%s of %s tries)", revision.revision, attempts, ATTEMPTS,
                  exc_info=err)  # fmt: skip
        if attempts >= ATTEMPTS:
            self.status.observedRevision, self.status.abort = revision.revision, True
            message = (f"RolloutAborted: the local controller failed {attempts} times rolling out revision "
                       f"{revision.revision}: {type(err).__name__}: {err}")  # fmt: skip
            self.finish(revision, DEGRADED, message)
            return
        self.status.observedRevision = observed  # not observed: the next tick rolls it out again
        self.write_status(f"controller error during revision {revision.revision} ({err}): trying again")

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

    def restore_stable(self) -> bool:
        """After a restart, serve the last revision that became stable again, so the next one is a canary.

        Without this, a controller started after ``stop`` would take the next revision for a first release and
        skip its analysis. False when that revision could not be started (the registry is away, say): the
        servers a dead controller left must then keep serving.
        """
        for revision in reversed(self.store.history()):
            try:
                result = read_result(self.path, revision.revision)
            except ValueError as err:
                log.warning("the outcome of revision %s is unreadable (%s): not restoring it", revision.revision,
                            err)  # fmt: skip
                continue
            if result is None or result["phase"] != HEALTHY:
                continue
            workload = chart.workload(revision.objects)
            self.load_rules(revision)
            try:
                server = self.start(revision, workload)
            except Aborted as err:
                log.warning("could not restore stable revision %s: %s", revision.revision, err)
                return False
            self.promote(revision, template_of(workload), server)
            if revision.revision == (self.deployed() or revision).revision:
                self.status.observedRevision = revision.revision
            self.status.phase = HEALTHY
            self.write_status(f"restored stable revision {revision.revision} after a restart")
            return True
        return True  # no revision ever became stable: nothing to restore

    # -- what the strategies use ----------------------------------------------------------------------------

    def start(self, revision: Revision, workload: dict[str, Any]) -> Server:
        """Start the revision's API (a pod) and wait for it to be ready, within the progress deadline."""
        server = Server(revision.revision, model_uri_of(revision), self._pod_env(revision), self.path / "servers",
                        template_hash(workload))  # fmt: skip
        self.servers.append(server)
        self.record_processes()
        try:
            server.wait_ready(float(workload["spec"].get("progressDeadlineSeconds", 600)))
        except NotReady as err:
            server.stop()
            raise Aborted(str(err)) from err
        return server

    def traffic(self, revision: Revision) -> Traffic | None:
        """What the release's clients send, shaped as production traffic is: records for the stable model (from
        the data it learnt from), which the new model must serve too; the new model's own only without one."""
        model_uri = self.stable.model_uri if self.stable is not None else model_uri_of(revision)
        return Traffic.for_model(model_uri, self.pace.requests_per_second)

    def retire(self, server: Server) -> None:
        """Take a server that will not become stable out of service, in Argo's order: all traffic back to stable
        first, then the server stops once what the router already sent it is answered (Argo scales an aborted
        canary down after ``abortScaleDownDelaySeconds``; the local pace waits one pause). Stopping it first made
        the router answer 502 to what it still sent there."""
        self.router.send_all_to_stable()
        self.status.canaryWeight = 0
        drain = threading.Timer(self.pace.pause_seconds, server.stop)
        drain.daemon = True
        drain.start()

    def check_superseded(self, revision: Revision) -> None:
        current = self.deployed()
        if self.stop_requested.is_set() or (current is not None and current.revision != revision.revision):
            raise Superseded()

    def promote(self, revision: Revision, template: str, server: Server | None) -> None:
        self.router.apply_ingress(revision.objects)  # bodies are held to the stable revision's Ingress limit
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
