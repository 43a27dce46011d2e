"""One inference API process (a pod of one revision) on a loopback port."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from standins.rollouts import SERVER_COMMAND, http

#: The scoring endpoint the canary's replayed traffic goes to.
SCORED_PATH = "/predict"

log = logging.getLogger(__name__)


class NotReady(Exception):
    """The API exited, could not load its model, or was not ready in time."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_or_free(port: int) -> int:
    """``port`` if it can be bound on loopback, else any free port (the status names the one in use)."""
    if port:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
                return port
            except OSError:
                log.warning("port %s is taken: serving on another free port", port)
    return free_port()


class Server:
    """``python -m ml.serve`` (the image's command: uvicorn with the API's limits) for one revision, with the pod's
    environment."""

    def __init__(
        self, revision: int, model_uri: str, env: dict[str, str], log_dir: Path, template_hash: str = ""
    ) -> None:
        self.revision = revision
        self.model_uri = model_uri
        self.template_hash = template_hash  # the pod's rollouts-pod-template-hash: its series' label
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"revision-{revision}-{self.port}.log"
        with self.log_path.open("w") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", SERVER_COMMAND,  # uvicorn with the limits of ml/serve/settings.py
                 "--host", "127.0.0.1", "--port", str(self.port), "--no-access-log"],
                env=env, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def wait_ready(self, timeout_s: float) -> None:
        """Return once ``/ready`` answers 200; raise ``NotReady`` as soon as that cannot happen."""
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise NotReady(f"the API for revision {self.revision} exited: {self._log_tail()}")
            try:
                answer = http.client().get(f"{self.url}/ready", timeout=2)
                if answer.status_code == 200:
                    return
                last = str(answer.json().get("detail"))
                if last != "model is loading":  # loading failed: the probe would fail until the deadline
                    raise NotReady(f"the API for revision {self.revision} cannot load its model: {last}")
            except httpx.HTTPError as err:
                last = str(err)
            time.sleep(0.3)
        raise NotReady(f"the API for revision {self.revision} was not ready within {timeout_s:.0f}s: {last}")

    def requests_served(self) -> float:
        """How many scoring requests this API has answered (its own counter): what paces the replayed traffic."""
        from prometheus_client.parser import text_string_to_metric_families

        exposition = http.client().get(f"{self.url}/metrics", timeout=5).text
        return sum(
            sample.value
            for family in text_string_to_metric_families(exposition)
            for sample in family.samples
            if sample.name == "http_requests_total" and sample.labels.get("path") == SCORED_PATH
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()

    def _log_tail(self) -> str:
        return " | ".join(self.log_path.read_text().strip().splitlines()[-3:])
