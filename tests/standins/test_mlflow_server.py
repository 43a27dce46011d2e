"""The embedded MLflow server: it uses a server already on the port only if it started it itself; it runs
MLflow's basic-auth app, so that only the pipeline's account moves the registry (an anonymous write is refused
and changes nothing); its files are its owner's only; ``exec`` hands a command an account without showing it.

Real sockets and processes: a foreign HTTP server that answers ``/health`` like MLflow, and the session's real
MLflow server (started by ``standins.mlflow_server.start``, as ``make mlflow-up`` does).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from contract import CANARY_PROMOTED, CANARY_VERDICT_TAG
from mlops.models import load_models
from mlops.platform_config import load_platform
from standins.mlflow_server import (
    CREDENTIALS_FILE,
    PID_FILE,
    account,
    ensure_credentials,
    load_credentials,
    start,
    stop,
    tighten,
)
from tests.conftest import free_port

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


def test_start_reuses_the_server_it_started(mlflow_server: str, mlflow_root: Path) -> None:
    done = start_cli(mlflow_root, int(urlsplit(mlflow_server).port or 0))
    assert done.returncode == 0, done.stderr
    assert "already running" in done.stderr


CHAMPION = load_platform().registry.production_alias


@pytest.fixture(scope="module")
def champion_version(mlflow_server: str) -> dict[str, str]:
    """A registered model whose champion is version 1, with version 2 beside it, made as the pipeline (the
    session's account) makes them."""
    from mlflow import MlflowClient

    client, name = MlflowClient(), "registry-writes"
    client.create_registered_model(name)
    run = client.create_run(client.create_experiment(name))
    client.log_text(run.info.run_id, "flavors: {}\n", "model/MLmodel")
    for _ in range(2):
        client.create_model_version(name, f"{run.info.artifact_uri}/model", run.info.run_id)
    client.set_registered_model_alias(name, CHAMPION, "1")
    return {"name": name, "champion": "1", "other": "2"}


def rest(url: str, path: str, body: dict[str, Any], auth: tuple[str, str] | None) -> httpx.Response:
    return httpx.post(f"{url}/api/2.0/mlflow/{path}", json=body, auth=auth, timeout=30)


@pytest.mark.parametrize("who", ["anonymous", "reader"])
def test_only_the_pipeline_moves_the_champion_or_sets_the_verdict_the_inference_api_trusts(
    mlflow_server: str, mlflow_root: Path, champion_version: dict[str, str], who: str
) -> None:
    from mlflow import MlflowClient

    name, other = champion_version["name"], champion_version["other"]
    user = None if who == "anonymous" else account(mlflow_root, who)
    auth = None if user is None else (user.username, user.password)
    moved = rest(mlflow_server, "registered-models/alias", {"name": name, "alias": CHAMPION, "version": other},
                 auth)  # fmt: skip
    tagged = rest(mlflow_server, "model-versions/set-tag",
                  {"name": name, "version": other, "key": CANARY_VERDICT_TAG, "value": CANARY_PROMOTED}, auth)  # fmt: skip
    refused = 401 if who == "anonymous" else 403  # no user, or a user without the grant
    assert (moved.status_code, tagged.status_code) == (refused, refused), (moved.text, tagged.text)
    client = MlflowClient()
    assert client.get_model_version_by_alias(name, CHAMPION).version == champion_version["champion"]
    assert CANARY_VERDICT_TAG not in client.get_model_version(name, other).tags
    # The pipeline's account, which the session holds, may.
    client.set_model_version_tag(name, other, CANARY_VERDICT_TAG, CANARY_PROMOTED)
    client.set_registered_model_alias(name, CHAMPION, other)
    assert client.get_model_version_by_alias(name, CHAMPION).version == other
    client.set_registered_model_alias(name, CHAMPION, champion_version["champion"])
    client.delete_model_version_tag(name, other, CANARY_VERDICT_TAG)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_servers_data_and_accounts_are_its_owners_only(mlflow_server: str, mlflow_root: Path) -> None:
    assert {name: oct(mode(mlflow_root / name)) for name in ("mlflow.db", "auth.db", CREDENTIALS_FILE)} == {
        name: oct(0o600) for name in ("mlflow.db", "auth.db", CREDENTIALS_FILE)
    }
    assert (oct(mode(mlflow_root)), oct(mode(mlflow_root / "artifacts"))) == (oct(0o700), oct(0o700))
    accounts = load_credentials(mlflow_root)
    assert {a.username for a in accounts.values()} == {"admin", "mlops-pipeline", "inference-api"}
    assert len({a.password for a in accounts.values()}) == 3 and all(
        len(a.password) >= 24 for a in accounts.values()
    )


@pytest.mark.long  # a second real server (about 20 s on 2 cores); its kin: the owner-only test above
def test_a_root_of_an_older_version_is_tightened_on_start_and_its_accounts_are_generated_once(
    tmp_path: Path,
) -> None:
    """A root of the version without authentication: a 0644 database and 0755 artifacts, no accounts. Its start
    tightens them and generates the accounts, which a later start keeps (``make mlflow-down``, ``make demo``)."""
    root = tmp_path / "mlflow"
    (root / "artifacts" / "0").mkdir(parents=True)
    (root / "artifacts" / "0" / "model.pkl").write_bytes(b"old")
    (root / "mlflow.db").touch()
    for path, loose in ((root, 0o755), (root / "artifacts", 0o755), (root / "mlflow.db", 0o644)):
        path.chmod(loose)
    port = free_port()
    process = start(root, port)
    try:
        assert (mode(root), mode(root / "artifacts")) == (0o700, 0o700)
        assert {
            name: mode(root / name) for name in ("mlflow.db", "auth.db", CREDENTIALS_FILE)
        } == dict.fromkeys(("mlflow.db", "auth.db", CREDENTIALS_FILE), 0o600)
        pipeline = account(root, "pipeline")
        answer = httpx.get(f"http://127.0.0.1:{port}/api/2.0/mlflow/registered-models/get",
                           params={"name": load_models().models[0].registered_model},
                           auth=(pipeline.username, pipeline.password), timeout=30)  # fmt: skip
        assert answer.status_code == 200, answer.text
    finally:
        stop(root)
        process.wait(timeout=30)
    generated = (root / CREDENTIALS_FILE).read_text()
    (root / "mlflow.db").chmod(0o644)
    ensure_credentials(root, "admin")
    tighten(root)
    assert (root / CREDENTIALS_FILE).read_text() == generated and mode(root / "mlflow.db") == 0o600


#: What a command run by ``exec`` sees: its MLflow user, the login of the stages' Airflow connection and, with
#: ``READS`` set, whether it reads the registry (the password stays out of its output).
CHILD = """
import json, os
conn = json.loads(os.environ.get("AIRFLOW_CONN_MLFLOW_DEFAULT", "{}"))
seen = {"user": os.environ.get("MLFLOW_TRACKING_USERNAME"), "connection_login": conn.get("login")}
if os.environ.get("READS"):
    from mlflow import MlflowClient
    seen["reads"] = MlflowClient().get_registered_model(os.environ["READS"]).name
print(json.dumps(seen))
"""


def exec_cli(root: Path, port: int, *options: str, reads: str = "") -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
    }
    return subprocess.run(
        [sys.executable, "-m", "standins.mlflow_server", "exec", "--root", str(root), "--port", str(port), *options,
         "--", sys.executable, "-c", CHILD],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**env, "READS": reads, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins")])},  # as make
    )  # fmt: skip


def test_exec_hands_a_command_the_accounts_in_its_environment_only(
    mlflow_server: str, mlflow_root: Path, champion_version: dict[str, str]
) -> None:
    """What `make demo` does: the demo reads as the reader, the stages get the pipeline's account from the
    Airflow connection of platform.yaml; no password is on the command line or in the output."""
    # The child reads the connection's variable, AIRFLOW_CONN_<id>.
    assert load_platform().registry.credentials.connection_id == "mlflow_default"
    port = int(urlsplit(mlflow_server).port or 0)
    done = exec_cli(
        mlflow_root, port, "--user", "reader", "--airflow-connection", reads=champion_version["name"]
    )
    assert done.returncode == 0, done.stderr[-3000:]
    accounts = load_credentials(mlflow_root)
    assert json.loads(done.stdout.splitlines()[-1]) == {
        "user": accounts["reader"].username,
        "connection_login": accounts["pipeline"].username,
        "reads": champion_version["name"],
    }
    assert not any(a.password in done.stdout + done.stderr for a in accounts.values())


def test_exec_gives_no_account_to_a_command_for_a_server_it_did_not_start(
    mlflow_root: Path, foreign_server: int
) -> None:
    done = exec_cli(mlflow_root, foreign_server, "--user", "reader", "--airflow-connection")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "no accounts of it are given" in done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == {"user": None, "connection_login": None}
