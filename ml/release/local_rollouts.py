"""A local stand-in for Argo Rollouts: it acts on each new revision of a locally kept Helm release.

One controller process per release watches the release history (``ml.release.store``). For each newly deployed
revision it does what the Argo Rollouts controller does with the rendered Rollout:

- the first revision, or one whose pod template equals the stable one (a rollback), becomes stable at once;
- a canary starts the new model's inference API on loopback, then follows the Rollout's steps: ``setWeight``
  moves the weighted router's share, each ``pause`` replays traffic from the test split through the router, and
  from ``startingStep`` on, each pause is one measurement of the AnalysisTemplate's metrics on the new model's
  own ``/metrics``. A measurement failing more often than ``failureLimit`` aborts: the share goes back to 0,
  the new server stops, the phase is ``Degraded``. After the last step the new model becomes stable;
- blue-green analyses the preview (traffic sent to it directly) before switching; a plain Deployment switches
  as soon as the new server is ready.

The stable API stays up behind the router (``endpoint`` in the status) until the controller is stopped:
``python -m ml.release stop``. Status goes to ``rollout.json`` (the Rollout's ``status``) and each revision's
outcome to ``results/<revision>.json``, which the pipeline's watch reads.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from ml.errors import StageError
from ml.release import DEGRADED, HEALTHY, PAUSED, PROGRESSING, SUPERSEDED, analysis, chart
from ml.release.store import ReleaseStore, Revision
from ml.runtime import write_json

log = logging.getLogger(__name__)

SETTINGS_FILE = "controller.json"
STATUS_FILE = "rollout.json"
RESULTS_DIR = "results"
PID_FILE = "controller.pid"


def running_pid(release_dir: Path) -> int | None:
    """The pid of the release's controller if it is alive (and really is the controller), else None."""
    try:
        pid = int((Path(release_dir) / PID_FILE).read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None
    return pid if b"ml.release.local_rollouts" in cmdline else None


def read_result(release_dir: Path, revision: int) -> dict[str, Any] | None:
    """The outcome of a revision's rollout once it is final, else None."""
    path = Path(release_dir) / RESULTS_DIR / f"{revision}.json"
    return json.loads(path.read_text()) if path.exists() else None


def read_status(release_dir: Path) -> dict[str, Any] | None:
    path = Path(release_dir) / STATUS_FILE
    return json.loads(path.read_text()) if path.exists() else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_or_free(port: int) -> int:
    """``port`` if it can be bound on loopback, else any free port (the status names the one in use)."""
    if port:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
                return port
            except OSError:
                log.warning("port %s is taken: serving on another free port", port)
    return _free_port()


class Server:
    """One inference API process (a pod of one revision) on a loopback port."""

    def __init__(self, revision: Revision, env: dict[str, str], log_dir: Path) -> None:
        self.revision = revision.revision
        self.model_uri = revision.values.get("model", {}).get("uri", "")
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"revision-{self.revision}-{self.port}.log"
        with self.log_path.open("w") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "ml.serve.app:create_app", "--factory",
                 "--host", "127.0.0.1", "--port", str(self.port), "--no-access-log"],
                env=env, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise StageError(f"the API for revision {self.revision} exited: {self._log_tail()}")
            try:
                answer = httpx.get(f"{self.url}/ready", timeout=2)
                if answer.status_code == 200:
                    return
                last = str(answer.json().get("detail"))
                if last != "model is loading":  # loading failed: the probe would fail until the deadline
                    raise StageError(f"the API for revision {self.revision} cannot load its model: {last}")
            except httpx.HTTPError as err:
                last = str(err)
            time.sleep(0.3)
        raise StageError(
            f"the API for revision {self.revision} was not ready within {timeout_s:.0f}s: {last}"
        )

    def scrape(self) -> analysis.Scrape:
        return analysis.parse(httpx.get(f"{self.url}/metrics", timeout=5).text)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()

    def _log_tail(self) -> str:
        return " | ".join(self.log_path.read_text().strip().splitlines()[-3:])


class Router:
    """The ingress: sends each request to the canary with the current weight's probability, else to stable."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.stable: str | None = None
        self.canary: str | None = None
        self.weight = 0
        self._server: Any = None

    def start(self) -> None:
        import uvicorn
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import Response
        from starlette.routing import Route

        client = httpx.AsyncClient(timeout=30)

        async def proxy(request: Request) -> Response:
            to_canary = self.canary is not None and random.uniform(0, 100) < self.weight
            backend = self.canary if to_canary else self.stable
            if backend is None:
                return Response("no revision is serving yet", status_code=503)
            try:
                answer = await client.request(
                    request.method,
                    f"{backend}{request.url.path}",
                    params=request.query_params,
                    content=await request.body(),
                    headers={
                        k: v
                        for k, v in request.headers.items()
                        if k.lower() not in ("host", "content-length")
                    },
                )
            except httpx.HTTPError as err:
                return Response(f"upstream error: {err}", status_code=502)
            headers = {"x-served-by": "canary" if to_canary else "stable"}
            if "content-type" in answer.headers:
                headers["content-type"] = answer.headers["content-type"]
            return Response(answer.content, status_code=answer.status_code, headers=headers)

        app = Starlette(routes=[Route("/{path:path}", proxy, methods=["GET", "POST"])])
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False)
        self._server = uvicorn.Server(config)
        threading.Thread(target=self._server.run, name="router", daemon=True).start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if time.monotonic() > deadline:
                raise StageError(f"the router did not start on port {self.port}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True


class Traffic:
    """Replays records (the test split's features) as single-record /predict calls at a steady rate."""

    def __init__(self, records: list[dict[str, Any]], requests_per_second: float, clients: int = 4) -> None:
        self.records = records
        self.rate = requests_per_second
        self.clients = clients
        self._cursor = 0

    @classmethod
    def from_prepared(cls, prepared_uri: str, requests_per_second: float) -> Traffic:
        """The test split's features, typed as clients send them (``ml.schema.to_model_input``)."""
        from ml.schema import to_model_input
        from ml.storage import read_manifest, read_published_table

        manifest = read_manifest(prepared_uri)
        table = read_published_table(prepared_uri, "test.parquet")[manifest["features"]].head(5000)
        frame = to_model_input(table, manifest["categorical"])
        records = json.loads(frame.to_json(orient="records"))  # NaN becomes null, numpy types plain JSON
        if not records:
            raise StageError(f"the test split of {prepared_uri} has no rows to replay")
        return cls(records, requests_per_second)

    def replay(self, url: str, seconds: float, should_stop: threading.Event) -> int:
        """Send ``rate * seconds`` requests to ``url`` over ``seconds``; returns how many were answered."""
        total = max(1, int(self.rate * seconds))
        interval = self.clients / self.rate
        answered = [0] * self.clients

        def client(index: int) -> None:
            with httpx.Client(timeout=10) as http:
                started = time.monotonic()
                for n in range(index, total, self.clients):
                    if should_stop.is_set():
                        return
                    record = self.records[(self._cursor + n) % len(self.records)]
                    try:
                        http.post(f"{url}/predict", json=record)
                        answered[index] += 1
                    except httpx.HTTPError:
                        pass
                    pause = started + (n // self.clients + 1) * interval - time.monotonic()
                    if pause > 0:
                        time.sleep(pause)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(self.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self._cursor += total
        return sum(answered)


@dataclass
class Status:
    """The Rollout's status as the local controller keeps it (field names follow Argo's)."""

    release: str
    phase: str = PROGRESSING
    message: str = ""
    abort: bool = False
    observedRevision: int = 0  # Argo's field names (camelCase)
    stableRevision: int | None = None
    stableModelUri: str | None = None
    kind: str = ""
    strategy: str = ""
    currentStepIndex: int | None = None
    canaryWeight: int = 0
    steps: list[dict[str, Any]] = field(default_factory=list)
    measurements: list[dict[str, Any]] = field(default_factory=list)
    endpoint: str = ""
    updated: str = ""


class Aborted(Exception):
    """The new revision failed (analysis, readiness): traffic goes back to stable."""


class Superseded(Exception):
    """A newer revision was deployed while this one was rolling out."""


class Controller:
    def __init__(self, state_dir: Path, release: str) -> None:
        self.store = ReleaseStore(state_dir, release)
        self.path = self.store.path
        self.stop_requested = threading.Event()
        self.stable: Server | None = None
        self.stable_template: str | None = None
        self.status = Status(release=release)
        settings = self._settings()
        self.router = Router(_port_or_free(int(settings.get("port") or 0)))
        self.status.endpoint = self.router.url

    def _settings(self) -> dict[str, Any]:
        path = self.path / SETTINGS_FILE
        return json.loads(path.read_text()) if path.exists() else {}

    def run(self) -> None:
        (self.path / PID_FILE).write_text(str(os.getpid()))
        self.router.start()
        log.info("local rollouts controller for %s; router on %s", self.store.release, self.router.url)
        try:
            self._restore_stable()
            while not self.stop_requested.is_set():
                revision = self.store.deployed()
                if revision is not None and revision.revision != self.status.observedRevision:
                    self.reconcile(revision)
                self.stop_requested.wait(0.5)
        finally:
            self.router.stop()
            if self.stable is not None:
                self.stable.stop()
            (self.path / PID_FILE).unlink(missing_ok=True)
            log.info("stopped")

    def _restore_stable(self) -> None:
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
                server = self._start(revision, workload)
            except Aborted as err:
                log.warning("could not restore stable revision %s: %s", revision.revision, err)
                return
            self._promote(revision, json.dumps(workload["spec"]["template"], sort_keys=True), server)
            if revision.revision == (self.store.deployed() or revision).revision:
                self.status.observedRevision = revision.revision
            self.status.phase = HEALTHY
            self._write_status(f"restored stable revision {revision.revision} after a restart")
            return

    # -- one revision -------------------------------------------------------------------------------------

    def reconcile(self, revision: Revision) -> None:
        workload = chart.workload(revision.objects)
        template = json.dumps(workload["spec"]["template"], sort_keys=True)
        strategy = workload["spec"].get("strategy", {})
        self.status = Status(
            release=self.store.release,
            observedRevision=revision.revision,
            stableRevision=self.status.stableRevision,
            stableModelUri=self.status.stableModelUri,
            kind=workload["kind"],
            strategy="canary"
            if "canary" in strategy
            else "blueGreen"
            if "blueGreen" in strategy
            else "rollingUpdate",
            steps=strategy.get("canary", {}).get("steps", []),
            endpoint=self.router.url,
        )
        try:
            if self.stable is None or template == self.stable_template:
                # A first release skips the steps (as Argo does); the stable template (a rollback) is already live.
                self._promote(
                    revision, template, self._start(revision, workload) if self.stable is None else None
                )
            elif self.status.kind == "Rollout" and self.status.strategy == "canary":
                self._canary(revision, workload, template)
            elif self.status.kind == "Rollout":
                self._blue_green(revision, workload, template)
            else:
                self._promote(revision, template, self._start(revision, workload))
            self._finish(revision, HEALTHY, f"revision {revision.revision} is stable and serving")
        except Aborted as err:
            self.router.weight, self.router.canary = 0, None
            self.status.abort = True
            self._finish(revision, DEGRADED, f"RolloutAborted: Rollout aborted update to revision "
                                             f"{revision.revision}: {err}")  # fmt: skip
        except Superseded:
            self.router.weight, self.router.canary = 0, None
            if self.stop_requested.is_set():  # stopped, not replaced: no verdict; a restart runs it again
                self._write_status(f"stopped during the rollout of revision {revision.revision}")
                return
            self._finish(
                revision, SUPERSEDED, f"revision {revision.revision} was replaced before it completed"
            )

    def _start(self, revision: Revision, workload: dict[str, Any]) -> Server:
        server = Server(revision, self._pod_env(revision), self.path / "servers")
        try:
            server.wait_ready(float(workload["spec"].get("progressDeadlineSeconds", 600)))
        except StageError as err:
            server.stop()
            raise Aborted(str(err)) from err
        return server

    def _pod_env(self, revision: Revision) -> dict[str, str]:
        """The pod's environment: the rendered ConfigMap, with the local MLflow instead of the cluster's."""
        config_map = chart.find(revision.objects, "ConfigMap") or {}
        pod_config = {k: str(v) for k, v in config_map.get("data", {}).items() if k != "HOME"}
        env = {**os.environ, **pod_config}
        tracking_uri = self._settings().get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI")
        if tracking_uri:
            env["MLFLOW_TRACKING_URI"] = tracking_uri
        return env

    def _promote(self, revision: Revision, template: str, server: Server | None) -> None:
        previous = self.stable
        if server is not None:
            self.stable, self.stable_template = server, template
            self.router.stable = server.url
        self.router.weight, self.router.canary = 0, None
        if previous is not None and previous is not self.stable:
            previous.stop()
        self.status.stableRevision = revision.revision
        self.status.stableModelUri = self.stable.model_uri if self.stable else None
        self.status.canaryWeight = 0

    def _canary(self, revision: Revision, workload: dict[str, Any], template: str) -> None:
        canary_spec = workload["spec"]["strategy"]["canary"]
        metrics, starting_step = self._analysis(revision, canary_spec.get("analysis"))
        settings = self._settings()
        traffic = self._traffic(settings)
        new = self._start(revision, workload)
        failures: dict[str, int] = {}
        try:
            self.router.canary = new.url
            for index, step in enumerate(self.status.steps):
                self._check_superseded(revision)
                self.status.currentStepIndex = index
                if "setWeight" in step:
                    self.router.weight = self.status.canaryWeight = int(step["setWeight"])
                    self.status.phase = PROGRESSING
                    self._write_status(
                        f"step {index}: {self.router.weight}% of traffic to revision {revision.revision}"
                    )
                elif "pause" in step:
                    self.status.phase = PAUSED
                    self._write_status(
                        f"step {index}: pause (chart: {step['pause'].get('duration', 'until promoted')}; "
                        f"local: {settings['pause_seconds']:.0f}s of replayed traffic)"
                    )
                    before, after = self._window(new, self.router.url, traffic, settings)
                    if metrics and index >= starting_step:
                        self._measure(index, metrics, before, after, failures)
                else:
                    raise Aborted(f"step {index} {step} is not supported by the local canary")
            self._promote(revision, template, new)
        except BaseException:
            if self.stable is not new:
                new.stop()
            raise

    def _blue_green(self, revision: Revision, workload: dict[str, Any], template: str) -> None:
        blue_green = workload["spec"]["strategy"]["blueGreen"]
        metrics, _ = self._analysis(revision, blue_green.get("prePromotionAnalysis"))
        settings = self._settings()
        traffic = self._traffic(settings)
        preview = self._start(revision, workload)
        try:
            if metrics:
                self.status.phase = PAUSED
                self._write_status(f"pre-promotion analysis of revision {revision.revision} on the preview")
                before, after = self._window(preview, preview.url, traffic, settings)
                self._measure(0, metrics, before, after, {})
            self._check_superseded(revision)
            self._promote(revision, template, preview)
        except BaseException:
            if self.stable is not preview:
                preview.stop()
            raise

    def _analysis(self, revision: Revision, spec: dict[str, Any] | None) -> tuple[list[analysis.Metric], int]:
        if not spec:
            return [], 0
        metrics: list[analysis.Metric] = []
        for reference in spec.get("templates", []):
            template = next(
                (
                    obj
                    for obj in revision.objects
                    if obj.get("kind") == "AnalysisTemplate"
                    and obj["metadata"]["name"] == reference["templateName"]
                ),
                None,
            )
            if template is None:
                raise Aborted(f"AnalysisTemplate {reference['templateName']!r} is not part of the release")
            try:
                metrics += analysis.metrics_of(template)
            except StageError as err:
                raise Aborted(str(err)) from err
        return metrics, int(spec.get("startingStep", 0))

    def _window(
        self, new: Server, url: str, traffic: Traffic | None, settings: dict[str, Any]
    ) -> tuple[analysis.Scrape, analysis.Scrape]:
        """One analysis window: the new server's counters before and after a pause of replayed traffic to
        ``url`` (the router, or the preview itself)."""
        before = new.scrape()
        if traffic is not None:
            traffic.replay(url, float(settings["pause_seconds"]), self.stop_requested)
        else:
            self.stop_requested.wait(float(settings["pause_seconds"]))
        return before, new.scrape()

    def _traffic(self, settings: dict[str, Any]) -> Traffic | None:
        if not settings.get("replay_data"):
            log.warning("no replay data: the analysis will see only real traffic")
            return None
        return Traffic.from_prepared(settings["replay_data"], float(settings["requests_per_second"]))

    def _measure(
        self,
        step: int,
        metrics: list[analysis.Metric],
        before: analysis.Scrape,
        after: analysis.Scrape,
        failures: dict[str, int],
    ) -> None:
        requests = analysis.requests_in(before, after)
        failed = []
        for metric in metrics:
            value = analysis.MEASURES[metric.name](before, after)
            ok = metric.passes(value)
            self.status.measurements.append(
                {
                    "step": step,
                    "weight": self.router.weight,
                    "metric": metric.name,
                    "value": None if math.isnan(value) else round(value, 6),
                    "condition": metric.condition,
                    "phase": "Successful" if ok else "Failed",
                    "requests": requests,
                }
            )
            if not ok:
                failures[metric.name] = failures.get(metric.name, 0) + 1
                if failures[metric.name] > metric.failure_limit:
                    shown = (
                        "no data (no requests reached the new model)" if math.isnan(value) else f"{value:.4g}"
                    )
                    failed.append(
                        f'Metric "{metric.name}" assessed Failed due to failed ({failures[metric.name]}) > '
                        f"failureLimit ({metric.failure_limit}): {shown}, condition {metric.condition}"
                    )
        self._write_status(f"step {step}: measured {requests} requests to the new model")
        if failed:
            raise Aborted("; ".join(failed))

    def _check_superseded(self, revision: Revision) -> None:
        current = self.store.deployed()
        if self.stop_requested.is_set() or (current is not None and current.revision != revision.revision):
            raise Superseded()

    def _finish(self, revision: Revision, phase: str, message: str) -> None:
        self.status.phase = phase
        self._write_status(message)
        result = {
            **asdict(self.status),
            "revision": revision.revision,
            "model_uri": revision.values.get("model", {}).get("uri"),
        }
        write_json(self.path / RESULTS_DIR / f"{revision.revision}.json", result)
        log.info("revision %s: %s (%s)", revision.revision, phase, message)

    def _write_status(self, message: str) -> None:
        self.status.message = message
        self.status.updated = datetime.now(UTC).isoformat(timespec="seconds")
        write_json(self.path / STATUS_FILE, asdict(self.status))
        log.info("%s", message)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m ml.release.local_rollouts", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--state-dir", type=Path, required=True, help="folder of the local release histories")
    parser.add_argument("--release", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)
    release_dir = args.state_dir / args.release
    if running_pid(release_dir) is not None:
        log.info("a controller for %s is already running", args.release)
        return
    controller = Controller(args.state_dir, args.release)
    signal.signal(signal.SIGTERM, lambda *_: controller.stop_requested.set())
    signal.signal(signal.SIGINT, lambda *_: controller.stop_requested.set())
    controller.run()


if __name__ == "__main__":
    main()
