"""A local stand-in for the Argo Rollouts controller, acting on the releases of the ``helm`` stand-in.

One controller process per release (``python -m standins.rollouts run``, started by ``standins.helm``) watches the
release history. For each newly deployed revision it does what Argo Rollouts does with the rendered Rollout
(``controller``, ``strategies``): a first release or a rollback becomes stable at once; a canary starts the new
model's inference API on loopback (``server``), moves the weighted router's share (``router``) through the
Rollout's steps, replays the test split during each pause (``traffic``) and evaluates the AnalysisTemplate on the
new model's own ``/metrics`` (``analysis``); blue-green analyses the preview before switching.

The Rollout's status goes to ``rollout.json`` and each revision's outcome to ``results/<revision>.json`` (names
in ``contract``), which the pipeline's watch reads. The stable API keeps serving until
``python -m standins.rollouts stop``.

This module stays light (no HTTP client): the ``helm`` stand-in imports it to find a running controller.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from contract import LOCAL_PID_FILE, LOCAL_STATUS_FILE, local_result_path

#: What a controller process's command line holds: tells a live controller from a reused pid.
MODULE = "standins.rollouts"


def running_pid(release_dir: Path) -> int | None:
    """The pid of the release's controller if it is alive (and really is the controller), else None."""
    try:
        pid = int((Path(release_dir) / LOCAL_PID_FILE).read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None
    return pid if MODULE.encode() in cmdline else None


def read_result(release_dir: Path, revision: int) -> dict[str, Any] | None:
    """The outcome of a revision's rollout once it is final, else None."""
    path = local_result_path(release_dir, revision)
    return json.loads(path.read_text()) if path.exists() else None


def read_status(release_dir: Path) -> dict[str, Any] | None:
    """The Rollout's status as the controller last wrote it, or None before its first."""
    path = Path(release_dir) / LOCAL_STATUS_FILE
    return json.loads(path.read_text()) if path.exists() else None


def stop(release_dir: Path, timeout_s: float = 30) -> bool:
    """Stop the release's controller and the servers it runs; False if none was running."""
    pid = running_pid(release_dir)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while running_pid(release_dir) is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    if running_pid(release_dir) is not None:
        os.killpg(pid, signal.SIGKILL)
    return True
