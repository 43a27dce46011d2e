"""What the benchmarks share: a local MLflow server that has finished starting up."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def wait_until_idle(
    pid: int, *, busy_share: float = 0.05, window_s: float = 3.0, timeout_s: float = 120
) -> float:
    """Wait until a process tree uses under ``busy_share`` of one core over ``window_s``; return the wait.

    A freshly started MLflow server spends its first tens of seconds of CPU on start-up work; on a 2-core
    machine that would be measured as part of whichever step runs first.
    """
    import psutil

    root = psutil.Process(pid)
    started = time.monotonic()

    def cpu_seconds() -> float:
        total = 0.0
        for process in [root, *root.children(recursive=True)]:
            try:
                times = process.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
        return total

    while time.monotonic() - started < timeout_s:
        before = cpu_seconds()
        time.sleep(window_s)
        if (cpu_seconds() - before) / window_s < busy_share:
            break
    return time.monotonic() - started


@contextmanager
def settled_mlflow(work: Path) -> Iterator[str]:
    """Run a tracking server under ``work`` as ``make mlflow-up`` does (its basic-auth app), wait until it is idle,
    point MLFLOW_TRACKING_URI at it and use the pipeline's account (the stages run as the pipeline)."""
    from standins.mlflow_server import credentials_env, start
    from tests.conftest import free_port

    port = free_port()
    server = start(work / "mlflow", port)
    print(f"MLflow server up; settled after {wait_until_idle(server.pid):.0f} s", flush=True)
    url = f"http://127.0.0.1:{port}"
    os.environ["MLFLOW_TRACKING_URI"] = url
    os.environ.update(credentials_env(work / "mlflow", port, user="pipeline", airflow_connection=False))
    try:
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
