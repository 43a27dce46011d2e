"""A local stand-in for the Argo Rollouts controller, acting on the releases of the ``helm`` stand-in.

One controller process per release (``python -m standins.rollouts run``, started by ``standins.helm``) watches the
release history. For each newly deployed revision it does what Argo Rollouts does with the rendered Rollout
(``controller``, ``strategies``): a first release or a rollback becomes stable at once; a canary starts the new
model's inference API on loopback (``server``), moves the weighted router's share (``router``) through the
Rollout's steps, replays the test split during each pause (``traffic``) and runs the AnalysisTemplate's queries on
a real Prometheus that scrapes the APIs as the cluster's does (``prometheus``, ``analysis``); blue-green analyses
the preview before switching.

The Rollout's status goes to ``rollout.json`` and each revision's outcome to ``results/<revision>.json`` (names
in ``contract``), which the pipeline's watch reads. The router, Prometheus and the inference APIs are processes of
their own: they keep serving when the controller fails or is killed (a restarted controller takes them over), and
stop only on ``python -m standins.rollouts stop``.

This module stays light (no HTTP client): the ``helm`` stand-in imports it to find a running controller.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from contract import LOCAL_STATUS_FILE, local_controller_pid, local_result_path, runs_module

log = logging.getLogger(__name__)
#: The router, Prometheus and inference API processes a controller runs (pids, ports), so that a controller started
#: after it died takes them over, and ``stop`` ends them even without it.
PROCESSES_FILE = "processes.json"
#: What the command lines of those processes hold: tells them from pids the system reused.
ROUTER_COMMAND = "standins.rollouts.router"
SERVER_COMMAND = "ml.serve"
#: Where the Prometheus that each release's controller runs comes from (the analysis queries it).
PROMETHEUS_INSTALL_HINT = (
    "Debian's `prometheus` package (`make prometheus`), or a `prometheus` binary on PATH"
)


def running_pid(release_dir: Path) -> int | None:
    """The pid of the release's controller if it is alive (and really is the controller), else None."""
    return local_controller_pid(release_dir)


def read_result(release_dir: Path, revision: int) -> dict[str, Any] | None:
    """The outcome of a revision's rollout once it is final, else None."""
    path = local_result_path(release_dir, revision)
    return json.loads(path.read_text()) if path.exists() else None


def read_status(release_dir: Path) -> dict[str, Any] | None:
    """The Rollout's status as the controller last wrote it, or None before its first."""
    path = Path(release_dir) / LOCAL_STATUS_FILE
    return json.loads(path.read_text()) if path.exists() else None


def read_processes(release_dir: Path) -> dict[str, Any]:
    """The router and servers the release's controller last recorded; empty when none are, or the record is
    unreadable (a warning says so)."""
    path = Path(release_dir) / PROCESSES_FILE
    try:
        processes = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except ValueError as err:
        log.warning("%s is not a record of processes (%s): taking over none", path, err)
        return {}
    return processes if isinstance(processes, dict) else {}


def runs_prometheus(pid: int, config: str | Path) -> bool:
    """Whether ``pid`` is a Prometheus on the configuration file ``config`` (not a pid the system reused)."""
    try:
        cmdline = Path(f"/proc/{int(pid)}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return False
    return Path(cmdline[0].decode()).name == "prometheus" and f"--config.file={config}".encode() in cmdline


def terminate(pid: int, command: str, timeout_s: float = 15) -> bool:
    """Stop the process ``pid`` if it still runs ``command``: SIGTERM, then SIGKILL; False if it did not run."""
    return terminate_if(pid, lambda: runs_module(pid, command), timeout_s)


def terminate_if(pid: int, alive: Callable[[], bool], timeout_s: float = 15) -> bool:
    """Stop the process ``pid`` while ``alive()`` says it is still ours: SIGTERM, then SIGKILL; False if not."""
    if not alive():
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    if alive():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return True


def stop_leftovers(release_dir: Path, keep_router: bool = False) -> bool:
    """Stop the router and Prometheus (unless ``keep_router``) and the servers a controller that is no longer
    running left serving; False if there were none."""
    processes = read_processes(release_dir)
    stopped = [terminate(int(server["pid"]), SERVER_COMMAND) for server in processes.get("servers", [])]
    router, prometheus = processes.get("router"), processes.get("prometheus")
    if not keep_router:
        if router:
            stopped.append(terminate(int(router["pid"]), ROUTER_COMMAND))
        if prometheus:
            pid, config = int(prometheus["pid"]), prometheus["config"]
            stopped.append(terminate_if(pid, lambda: runs_prometheus(pid, config)))
        (Path(release_dir) / PROCESSES_FILE).unlink(missing_ok=True)
    return any(stopped)


def stop(release_dir: Path, timeout_s: float = 30) -> bool:
    """Stop the release's controller and the servers it runs (or that a dead one left); False if none ran."""
    pid = running_pid(release_dir)
    if pid is None:
        return stop_leftovers(release_dir)
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while running_pid(release_dir) is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    if running_pid(release_dir) is not None:
        os.killpg(pid, signal.SIGKILL)
    stop_leftovers(release_dir)
    return True
