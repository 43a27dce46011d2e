"""A real Prometheus for a local release, standing where the cluster's stands.

Debian's ``prometheus`` (``make prometheus``) on loopback scrapes the release's inference APIs with the labels the
chart's ServiceMonitor gives their series in the cluster (``namespace``, ``service``, ``pod`` and the pod's
``rollouts_pod_template_hash``), loads the chart's rendered PrometheusRule (the SLO recording rules and the alerts),
and answers the AnalysisTemplates' queries and the error-budget gate's as the cluster's Prometheus answers Argo
Rollouts and the deploy stage. It scrapes every ``SCRAPE_INTERVAL`` so that a canary's short local windows hold
several samples of each series.

Like the router, it is a process of its own: it keeps running when the controller dies, a restarted controller
takes it over, and ``python -m standins.rollouts stop`` ends it.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from contract import write_json
from standins.rollouts import PROMETHEUS_INSTALL_HINT, http, runs_prometheus, terminate_if

log = logging.getLogger(__name__)
#: What the process's command line holds (tells it from a pid the system reused).
COMMAND = "prometheus"
SCRAPE_INTERVAL = "1s"
SCRAPE_SECONDS = 1.0


class PrometheusUnavailable(RuntimeError):
    """No Prometheus can run, or it does not answer."""


@dataclass(frozen=True)
class Target:
    """One API process as the cluster's Prometheus sees a pod: its address and its series' labels."""

    url: str
    labels: dict[str, str]


def binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        raise PrometheusUnavailable(
            f"the local canary analysis needs Prometheus: install {PROMETHEUS_INSTALL_HINT}"
        )
    return found


class Prometheus:
    """The release's Prometheus: its configuration, targets and rules under ``folder``, listening on ``port``."""

    def __init__(self, folder: Path, port: int, pid: int | None = None) -> None:
        self.folder, self.port, self.pid = folder, port, pid
        self.url = f"http://127.0.0.1:{port}"
        self.config = folder / "prometheus.yml"
        self.targets_file = folder / "targets.json"
        self.rules_file = folder / "rules.yml"

    def start(self) -> None:
        """Write the configuration (no targets, no rules yet) and start the server."""
        self.folder.mkdir(parents=True, exist_ok=True)
        write_json(self.targets_file, [])
        self.rules_file.write_text("groups: []\n")
        config = {
            "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
            "rule_files": [str(self.rules_file)],
            "scrape_configs": [
                {
                    "job_name": "inference-api",
                    "metrics_path": "/metrics",
                    "scrape_timeout": SCRAPE_INTERVAL,
                    "file_sd_configs": [{"files": [str(self.targets_file)], "refresh_interval": "1s"}],
                }
            ],
        }
        self.config.write_text(json.dumps(config))  # YAML is a superset of JSON
        with (self.folder / "prometheus.log").open("ab") as output:
            process = subprocess.Popen(
                [binary(), f"--config.file={self.config}", f"--storage.tsdb.path={self.folder / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--web.enable-lifecycle",
                 "--storage.tsdb.retention.time=1d"],
                stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        self.pid = process.pid
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise PrometheusUnavailable(
                    f"prometheus exited with {process.returncode}: {self._log_tail()}"
                )
            try:
                if http.client().get(f"{self.url}/-/ready", timeout=2).status_code == 200:
                    log.info("prometheus on %s", self.url)
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise PrometheusUnavailable(f"prometheus was not ready on {self.url} within 30s: {self._log_tail()}")

    def alive(self) -> bool:
        return self.pid is not None and runs_prometheus(self.pid, self.config)

    def record(self) -> dict[str, Any]:
        """What the controller's record of processes keeps, for a later controller and ``stop``."""
        return {"pid": self.pid, "port": self.port, "config": str(self.config)}

    def set_targets(self, targets: list[Target]) -> None:
        """The APIs to scrape now (file-based discovery: Prometheus picks the file up within a second)."""
        groups = [{"targets": [t.url.removeprefix("http://")], "labels": t.labels} for t in targets]
        write_json(self.targets_file, groups)

    def set_rules(self, rule_groups: list[dict[str, Any]]) -> None:
        """Load a PrometheusRule's groups (the deployed revision's), as the operator loads them in the cluster."""
        import yaml

        text = yaml.safe_dump({"groups": rule_groups}, sort_keys=False)
        if self.rules_file.exists() and self.rules_file.read_text() == text:
            return
        self.rules_file.write_text(text)
        answer = http.client().post(f"{self.url}/-/reload", timeout=30)
        if answer.status_code != 200:
            raise PrometheusUnavailable(f"prometheus refused the chart's rules: {answer.text.strip()}")

    def wait_scraped(self, urls: list[str], since: float, timeout_s: float = 10) -> bool:
        """Wait until each of ``urls`` has been scraped successfully after ``since`` (a wall-clock time); False if
        one was not within ``timeout_s`` (a pod too busy to answer its scrapes): the queries then see what
        Prometheus has, as Argo's would."""
        wanted = {url.removeprefix("http://") for url in urls}
        deadline = time.monotonic() + timeout_s
        while True:
            answer = (
                http.client().get(f"{self.url}/api/v1/targets", params={"state": "active"}, timeout=10).json()
            )
            seen = {t["labels"].get("instance"): t for t in answer["data"]["activeTargets"]}
            late = {
                url: (seen.get(url) or {}).get("lastError") or "not scraped yet"
                for url in wanted
                if url not in seen
                or seen[url].get("health") != "up"
                or _seconds(seen[url].get("lastScrape", "")) <= since
            }
            if not late:
                return True
            if time.monotonic() > deadline:
                log.warning("prometheus has no scrape since the window ended of %s", late)
                return False
            time.sleep(SCRAPE_SECONDS / 4)

    def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query's result (``data.result``), now or ``at`` (seconds since the epoch); a refused query
        raises with Prometheus's reason."""
        params = {"query": promql, **({"time": f"{at:.3f}"} if at is not None else {})}
        answer = http.client().get(f"{self.url}/api/v1/query", params=params, timeout=30)
        body = answer.json()
        if answer.status_code != 200 or body.get("status") != "success":
            raise PrometheusUnavailable(f"prometheus refused the query ({body.get('error')}): {promql}")
        return list(body["data"]["result"])

    def stop(self) -> None:
        if self.pid is not None:
            terminate_if(self.pid, self.alive)

    def _log_tail(self) -> str:
        path = self.folder / "prometheus.log"
        return " | ".join(path.read_text().strip().splitlines()[-3:]) if path.exists() else ""


def _seconds(timestamp: str) -> float:
    """An RFC 3339 time from Prometheus's API as seconds since the epoch (0 for none)."""
    from datetime import datetime

    if not timestamp or timestamp.startswith("0001-"):
        return 0.0
    head, _, fraction = timestamp.rstrip("Z").partition(".")
    zone = ""
    for sign in ("+", "-"):
        if sign in fraction:
            fraction, zone = fraction.split(sign, 1)[0], sign + fraction.split(sign, 1)[1]
    return datetime.fromisoformat(f"{head}.{(fraction or '0')[:6]}{zone or '+00:00'}").timestamp()
