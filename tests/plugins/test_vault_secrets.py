"""Vault as Airflow's secrets backend: the hashicorp provider's ``VaultBackend`` (and its real hvac client), with the
cluster's and the compose stack's settings, against ``VaultKvStandIn``.

No Vault server package exists here: ``VaultKvStandIn`` is a loopback HTTP server that speaks the two parts of
Vault's API the backend uses, the kubernetes auth method's login (``POST /v1/auth/<mount>/login``: a role and a
service-account JWT in, a client token out) and the KV v2 engine's read (``GET /v1/<mount>/data/<path>`` with
``X-Vault-Token``: ``{"data": {"data": {...}, "metadata": {...}}}``, 404 ``{"errors": []}`` for a missing path,
403 for a wrong token)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_VALUES = ROOT / "k8s" / "airflow" / "values.yaml"
ROLE, SERVICE_ACCOUNT_JWT, TOKEN = "airflow", "eyJhbGciOi.service-account.jwt", "hvs.stand-in-token"


class VaultKvStandIn:
    """A stand-in for Vault's kubernetes login and KV v2 read API on loopback (named so: no Vault runs here)."""

    def __init__(self, mount: str) -> None:
        self.mount = mount
        self.secrets: dict[str, dict[str, Any]] = {}
        self.reads: list[str] = []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def answer(self, status: int, body: dict[str, Any]) -> None:
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_POST(self) -> None:
                sent = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                if self.path == "/v1/auth/kubernetes/login" and sent == {
                    "role": ROLE,
                    "jwt": SERVICE_ACCOUNT_JWT,
                }:
                    self.answer(
                        200, {"auth": {"client_token": TOKEN, "lease_duration": 3600, "renewable": True}}
                    )
                else:
                    self.answer(400, {"errors": ["invalid role name or service account"]})

            def do_GET(self) -> None:
                if self.headers.get("X-Vault-Token") != TOKEN:
                    self.answer(403, {"errors": ["permission denied"]})
                    return
                prefix = f"/v1/{stand_in.mount}/data/"
                path = self.path.split("?")[0].removeprefix(prefix)
                stand_in.reads.append(path)
                if not self.path.startswith(prefix) or path not in stand_in.secrets:
                    self.answer(404, {"errors": []})
                    return
                metadata = {
                    "version": 1,
                    "deletion_time": "",
                    "destroyed": False,
                    "created_time": "2026-11-27T00:00:00Z",
                }
                self.answer(200, {"data": {"data": stand_in.secrets[path], "metadata": metadata}})

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


def cluster_kwargs() -> dict[str, Any]:
    values = yaml.safe_load(CLUSTER_VALUES.read_text())["config"]["secrets"]
    assert values["backend"] == "airflow.providers.hashicorp.secrets.vault.VaultBackend"
    return dict(json.loads(values["backend_kwargs"]))


def compose_kwargs() -> dict[str, Any]:
    """The compose stack's settings, as .env.example shows them (commented, for a Vault that is optional)."""
    lines = (ROOT / ".env.example").read_text().splitlines()
    (line,) = [line for line in lines if line.startswith("#   AIRFLOW_SECRETS_BACKEND_KWARGS=")]
    return dict(json.loads(line.split("=", 1)[1]))


@pytest.fixture()
def vault(tmp_path: Path) -> Iterator[VaultKvStandIn]:
    kwargs = cluster_kwargs()
    stand_in = VaultKvStandIn(kwargs["mount_point"])
    conn_path, var_path = kwargs["connections_path"], kwargs["variables_path"]
    stand_in.secrets[f"{conn_path}/mlops_alerts"] = {
        "conn_type": "slackwebhook", "host": "127.0.0.1:9/services", "schema": "http", "password": "T0/B0/X"
    }  # fmt: skip
    stand_in.secrets[f"{var_path}/mlops_data_root"] = {"value": "s3://mlops-data"}
    thread = threading.Thread(target=stand_in.server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield stand_in
    stand_in.server.shutdown()


def test_the_clusters_settings_log_in_with_the_service_account_and_read_connections_and_variables(
    vault, tmp_path
) -> None:
    from airflow.providers.hashicorp.secrets.vault import VaultBackend

    jwt = tmp_path / "token"
    jwt.write_text(SERVICE_ACCOUNT_JWT)
    backend = VaultBackend(**{**cluster_kwargs(), "url": vault.url, "kubernetes_jwt_path": str(jwt)})
    conn = backend.get_connection("mlops_alerts")
    assert conn is not None and (conn.conn_type, conn.password) == ("slackwebhook", "T0/B0/X")
    assert backend.get_variable("mlops_data_root") == "s3://mlops-data"
    assert backend.get_variable("not_in_vault") is None  # Airflow then looks in its own database
    assert (
        backend.get_config("anything") is None and "config/anything" not in vault.reads
    )  # config_path: null


def test_the_compose_stack_uses_the_clusters_layout() -> None:
    layout = ("mount_point", "connections_path", "variables_path", "config_path")
    assert {key: compose_kwargs()[key] for key in layout} == {key: cluster_kwargs()[key] for key in layout}


def test_airflow_configured_as_the_compose_stack_resolves_its_variables_and_alerts_from_vault(vault) -> None:
    """A fresh Airflow process with the compose stack's environment: a Variable and the alert connection come from
    Vault (token auth from VAULT_TOKEN), through Airflow's own secrets backend chain."""
    env = {
        **os.environ,
        "AIRFLOW__SECRETS__BACKEND": "airflow.providers.hashicorp.secrets.vault.VaultBackend",
        "AIRFLOW__SECRETS__BACKEND_KWARGS": json.dumps(compose_kwargs()),
        "VAULT_ADDR": vault.url,
        "VAULT_TOKEN": TOKEN,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins")]),
    }
    env.pop("AIRFLOW_VAR_MLOPS_DATA_ROOT", None)
    env.pop("AIRFLOW_CONN_MLOPS_ALERTS", None)
    script = (
        "from airflow.sdk import BaseHook, Variable\n"
        "print(Variable.get('mlops_data_root'))\n"
        "print(BaseHook.get_connection('mlops_alerts').conn_type)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["s3://mlops-data", "slackwebhook"]
    assert {"variables/mlops_data_root", "connections/mlops_alerts"} <= set(vault.reads)
