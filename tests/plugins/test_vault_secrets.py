"""Vault as Airflow's secrets backend: the hashicorp provider's ``VaultBackend`` (and its real hvac client), with the
cluster's and the compose stack's settings, against OpenBao's server (Vault's API): set up with the Vault-side
commands ``k8s/airflow/values.yaml`` lists for operators, logged in with the kubernetes auth method (a service
account token, vouched for by a mock of the cluster's TokenReview: no cluster runs here), read from KV v2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hvac.exceptions
import pytest
import yaml

from tests.conftest import free_port
from tests.openbao import BAO, OpenBao

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_VALUES = ROOT / "k8s" / "airflow" / "values.yaml"
#: Where Airflow's pods run, and one of the service accounts the documented role binds.
NAMESPACE, SERVICE_ACCOUNT = "airflow", "airflow-worker"


def documented_setup() -> str:
    """The Vault-side commands of ``k8s/airflow/values.yaml``'s header, as a shell script."""
    lines = CLUSTER_VALUES.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if "Set up on the Vault side" in line)
    commands = []
    for line in lines[start + 1 :]:
        if not line.startswith("#   "):
            break
        commands.append(line.removeprefix("#   "))
    assert commands and commands[0].startswith("vault "), "no Vault-side commands in the values' header"
    return "\n".join(commands)


def cluster_kwargs() -> dict[str, Any]:
    values = yaml.safe_load(CLUSTER_VALUES.read_text())["config"]["secrets"]
    assert values["backend"] == "airflow.providers.hashicorp.secrets.vault.VaultBackend"
    return dict(json.loads(values["backend_kwargs"]))


def compose_kwargs() -> dict[str, Any]:
    """The compose stack's settings, as .env.example shows them (commented, for a Vault that is optional)."""
    lines = (ROOT / ".env.example").read_text().splitlines()
    (line,) = [line for line in lines if line.startswith("#   AIRFLOW_SECRETS_BACKEND_KWARGS=")]
    return dict(json.loads(line.split("=", 1)[1]))


@pytest.fixture(scope="module")
def vault(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenBao]:
    """OpenBao set up as an operator sets up Vault for Airflow (the values' commands, the ``vault`` CLI being
    OpenBao's ``bao``), its kubernetes auth pointed at the cluster's (the mock), with a connection and a variable."""
    server = OpenBao(free_port(), tmp_path_factory.mktemp("openbao"))
    try:
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", f'vault() {{ "{BAO}" "$@"; }}\n{documented_setup()}'],
            env={**os.environ, **server.env}, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        server.use_kubernetes_mock()
        kwargs = cluster_kwargs()
        mount, conn_path, var_path = (
            kwargs["mount_point"],
            kwargs["connections_path"],
            kwargs["variables_path"],
        )
        server.cli("kv", "put", f"-mount={mount}", f"{conn_path}/mlops_alerts", "conn_type=slackwebhook",
                   "host=127.0.0.1:9/services", "schema=http", "password=T0/B0/X")  # fmt: skip
        server.cli("kv", "put", f"-mount={mount}", f"{var_path}/mlops_data_root", "value=s3://mlops-data")
        yield server
    finally:
        server.stop()


def backend(vault: OpenBao, tmp_path: Path, namespace: str, service_account: str) -> Any:
    """The cluster's ``VaultBackend``, logging in with the token of ``namespace/service_account``."""
    from airflow.providers.hashicorp.secrets.vault import VaultBackend

    jwt = tmp_path / "token"
    jwt.write_text(vault.kubernetes.issue(namespace, service_account))
    return VaultBackend(**{**cluster_kwargs(), "url": vault.url, "kubernetes_jwt_path": str(jwt)})


def test_the_clusters_settings_log_in_with_the_service_account_and_read_connections_and_variables(
    vault, tmp_path
) -> None:
    reads = len(vault.reads())
    secrets = backend(vault, tmp_path, NAMESPACE, SERVICE_ACCOUNT)
    conn = secrets.get_connection("mlops_alerts")
    assert conn is not None and (conn.conn_type, conn.password) == ("slackwebhook", "T0/B0/X")
    assert secrets.get_variable("mlops_data_root") == "s3://mlops-data"
    assert secrets.get_variable("not_in_vault") is None  # Airflow then looks in its own database
    assert secrets.get_config("anything") is None  # config_path: null
    mount = cluster_kwargs()["mount_point"]
    assert vault.reads()[reads:] == [
        f"{mount}/data/connections/mlops_alerts",
        f"{mount}/data/variables/mlops_data_root",
        f"{mount}/data/variables/not_in_vault",
    ]


@pytest.mark.parametrize(
    ("namespace", "service_account"),
    [("airflow", "inference-api"), ("default", SERVICE_ACCOUNT)],
    ids=["a service account the role does not bind", "the right name in another namespace"],
)
def test_a_service_account_outside_the_role_is_refused(vault, tmp_path, namespace, service_account) -> None:
    """The provider refuses to go on unauthenticated; the server says why (its login answer to the same token)."""
    secrets = backend(vault, tmp_path, namespace, service_account)
    with pytest.raises(hvac.exceptions.VaultError, match="Authentication Error"):
        secrets.get_variable("mlops_data_root")
    token = (tmp_path / "token").read_text()
    role = cluster_kwargs()["kubernetes_role"]
    with pytest.raises(
        RuntimeError,
        match=f"{'namespace' if namespace != NAMESPACE else 'service account name'} not authorized",
    ):
        vault.cli("write", "auth/kubernetes/login", f"role={role}", f"jwt={token}")


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
        # What .env.example asks for: a token whose policy reads airflow/data/* (the documented policy).
        "VAULT_TOKEN": vault.cli("token", "create", "-policy=airflow", "-field=token").strip(),
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
    mount = cluster_kwargs()["mount_point"]
    assert {f"{mount}/data/variables/mlops_data_root", f"{mount}/data/connections/mlops_alerts"} <= set(
        vault.reads()
    )
