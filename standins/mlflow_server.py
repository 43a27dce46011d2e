"""Start, wait for and stop the embedded MLflow tracking server (SQLite backend, local artifact root).

Artifacts are served through the tracking server (``--artifacts-destination``), as in production where the
server proxies S3: stages need only ``MLFLOW_TRACKING_URI``, never direct access to the artifact store.

The server binds loopback unless ``--host`` says otherwise. ``start`` uses a server already answering on the
port only if it is the one it started from the same ``--root`` (its pid file): anything else answering there is
refused unless ``--external-ok`` is given, so that the demo never writes to a foreign tracking server by chance.

    python -m standins.mlflow_server start --root .local/mlflow --port 5000 [--host 127.0.0.1] [--external-ok]
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

import psutil

from contract import replacing

log = logging.getLogger(__name__)

PID_FILE = "server.pid"
#: The ``make`` setting that passes ``--external-ok`` (named in the refusal).
EXTERNAL_OK_SETTING = "MLFLOW_EXTERNAL=1"


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def local_url(host: str, port: int) -> str:
    """Where this machine reaches a server bound to ``host`` (a wildcard address is reached on loopback)."""
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '::', '') else host}:{port}"


def start(root: Path, port: int, host: str = "127.0.0.1", timeout_s: float = 120) -> subprocess.Popen[bytes]:
    """Start a tracking server in the background and return once its health check answers."""
    root = root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    url = local_url(host, port)
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
    with replacing(root / PID_FILE) as partial:  # a reader never sees an empty pid file
        partial.write_text(str(process.pid))
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


def started_here(root: Path, port: int) -> bool:
    """Whether what listens on ``port`` is the server ``start`` launched from ``root``: a process of the session
    whose leader is the pid in its pid file (the server's workers are that process's children)."""
    try:
        leader = psutil.Process(int((root / PID_FILE).read_text()))
        processes = [leader, *leader.children(recursive=True)]
    except (OSError, ValueError, psutil.Error):
        return False
    for process in processes:
        with contextlib.suppress(psutil.Error):
            if any(
                c.status == psutil.CONN_LISTEN and c.laddr.port == port
                for c in process.net_connections("tcp")
            ):
                return True
    return False


def stop(root: Path) -> None:
    pid_file = root / PID_FILE
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
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0: every interface)")
    parser.add_argument(
        "--external-ok",
        action="store_true",
        help="use a server already answering on the port that is not ours",
    )
    args = parser.parse_args()
    if args.action == "stop":
        stop(args.root)
        return
    url = local_url(args.host, args.port)
    if healthy(url):
        if started_here(args.root.resolve(), args.port):
            log.info("MLflow already running at %s", url)
            return
        if not args.external_ok:
            sys.exit(
                f"port {args.port} answers but is not the MLflow this project started (pid file "
                f"{args.root / PID_FILE}); stop it, or set {EXTERNAL_OK_SETTING} (--external-ok) to use it"
            )
        log.warning("Using the MLflow server already answering at %s (not started by this project)", url)
        return
    start(args.root, args.port, args.host)
    log.info("MLflow running at %s (data in %s)", url, args.root)


if __name__ == "__main__":
    main()
