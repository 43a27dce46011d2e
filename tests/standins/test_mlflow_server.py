"""The embedded MLflow server's ``start``: it uses a server already on the port only if it started it itself.

Real sockets and processes: a foreign HTTP server that answers ``/health`` like MLflow, and the session's real
MLflow server (started by ``standins.mlflow_server.start``, as ``make mlflow-up`` does).
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from standins.mlflow_server import PID_FILE

ROOT = Path(__file__).resolve().parents[2]


class _Healthy(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"OK")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def foreign_server() -> Iterator[int]:
    """Something else answering ``/health`` with 200 on a free loopback port (another MLflow, say)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Healthy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


def start_cli(root: Path, port: int, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "standins.mlflow_server", "start", "--root", str(root), "--port", str(port), *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_start_refuses_a_server_on_the_port_that_it_did_not_start(
    tmp_path: Path, foreign_server: int
) -> None:
    done = start_cli(tmp_path / "mlflow", foreign_server)
    assert done.returncode != 0
    assert f"port {foreign_server} answers but is not the MLflow this project started" in done.stderr
    assert str(tmp_path / "mlflow" / PID_FILE) in done.stderr
    assert "MLFLOW_EXTERNAL=1" in done.stderr


def test_a_stale_pid_file_does_not_make_a_foreign_server_ours(tmp_path: Path, foreign_server: int) -> None:
    root = tmp_path / "mlflow"
    root.mkdir()
    # The pid file names a live process (a reused pid, say) that is not what listens on the port.
    with subprocess.Popen(["sleep", "60"], start_new_session=True) as other:
        (root / PID_FILE).write_text(str(other.pid))
        try:
            assert start_cli(root, foreign_server).returncode != 0
        finally:
            other.kill()


def test_start_uses_a_foreign_server_when_told_to(tmp_path: Path, foreign_server: int) -> None:
    done = start_cli(tmp_path / "mlflow", foreign_server, "--external-ok")
    assert done.returncode == 0, done.stderr
    assert "not started by this project" in done.stderr
    assert not (tmp_path / "mlflow" / PID_FILE).exists()


def test_start_reuses_the_server_it_started(
    mlflow_server: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    root = tmp_path_factory.getbasetemp() / "mlflow"  # where the session's fixture started it
    done = start_cli(root, int(urlsplit(mlflow_server).port or 0))
    assert done.returncode == 0, done.stderr
    assert "already running" in done.stderr
