"""Start, wait for and stop the embedded MLflow tracking server (SQLite backend, local artifact root).

Artifacts are served through the tracking server (``--artifacts-destination``), as in production where the
server proxies S3: stages need only ``MLFLOW_TRACKING_URI``, never direct access to the artifact store.

    python -m standins.mlflow_server start --root .local/mlflow --port 5000
    python -m standins.mlflow_server stop --root .local/mlflow
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

log = logging.getLogger(__name__)


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def start(root: Path, port: int, host: str = "127.0.0.1", timeout_s: float = 120) -> subprocess.Popen[bytes]:
    """Start a tracking server in the background and return once its health check answers."""
    root = root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    url = f"http://{host}:{port}"
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", str(root / "artifacts"),
        "--host", host, "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    with open(root / "server.log", "ab") as server_log:
        process = subprocess.Popen(
            command, stdout=server_log, stderr=subprocess.STDOUT, cwd=root, start_new_session=True
        )
    (root / "server.pid").write_text(str(process.pid))
    deadline = time.monotonic() + timeout_s
    while not healthy(url):
        if process.poll() is not None:
            raise RuntimeError(f"MLflow server exited with {process.returncode}; see {root / 'server.log'}")
        if time.monotonic() > deadline:
            process.kill()
            raise TimeoutError(
                f"MLflow server not healthy at {url} after {timeout_s}s; see {root / 'server.log'}"
            )
        time.sleep(0.5)
    return process


def stop(root: Path) -> None:
    pid_file = root / "server.pid"
    if not pid_file.exists():
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(int(pid_file.read_text()), signal.SIGTERM)
    pid_file.unlink()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("--root", type=Path, default=Path(".local/mlflow"))
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args()
    if args.action == "stop":
        stop(args.root)
        return
    url = f"http://127.0.0.1:{args.port}"
    if healthy(url):
        log.info("MLflow already running at %s", url)
        return
    start(args.root, args.port)
    log.info("MLflow running at %s (data in %s)", url, args.root)


if __name__ == "__main__":
    main()
