"""The API's environment file (``SERVE_ENV_FILE``): what Vault's Agent injector renders from the chart's template,
rendered here by a real agent (OpenBao's ``bao agent``, logged in with the kubernetes auth method as the injected
agent does) from a KV v2 secret on OpenBao's server."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ml.serve.settings import ENV_FILE_VARIABLE, Settings, load_env_file
from mlops.models import load_models
from mlops.platform_config import load_platform
from standins.render import render
from tests.conftest import free_port
from tests.openbao import BAO, OpenBao

ROOT = Path(__file__).resolve().parents[3]
RELEASE = load_models().get("card_fraud").release
VAULT_VALUES = {"secrets": {"vault": {"enabled": True}}}
#: What the API's secret holds: quotes, '=', '#', a backslash and a newline, which the file must carry unchanged.
SECRET = {
    "SERVE_ADMIN_TOKEN": 'to"k=en #1',
    "AWS_ACCESS_KEY_ID": "AKIA000",
    "MLFLOW_TRACKING_TOKEN": "mlf\\tok\nline",
}


def chart_pod() -> tuple[dict[str, Any], str]:
    """The rendered Rollout's pod template with Vault on, and its service account's name."""
    objects = render(ROOT / load_platform().release.chart, VAULT_VALUES, release=RELEASE.name,
                     namespace=RELEASE.namespace)  # fmt: skip
    (rollout,) = [o for o in objects if o["kind"] == "Rollout"]
    pod = rollout["spec"]["template"]
    return pod, pod["spec"]["serviceAccountName"]


@pytest.fixture(scope="module")
def agent_env_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The env file a real ``bao agent`` renders from the chart's annotations: it logs in as the pod's service
    account with the role the annotations name, reads the secret at ``envPath`` and writes the template's output,
    once (``agent-pre-populate-only``: the injector's init container)."""
    folder = tmp_path_factory.mktemp("vault-agent")
    pod, service_account = chart_pod()
    annotations = pod["metadata"]["annotations"]
    role, env_path = (
        annotations["vault.hashicorp.com/role"],
        annotations["vault.hashicorp.com/agent-inject-secret-env"],
    )
    server = OpenBao(free_port(), folder)
    try:
        mount, _, path = env_path.partition("/data/")  # KV v2: <mount>/data/<path>
        server.cli("kv", "put", f"-mount={mount}", path, *(f"{k}={v}" for k, v in SECRET.items()))
        server.cli("policy", "write", role, "-", stdin=f'path "{env_path}" {{ capabilities = ["read"] }}')
        server.cli("auth", "enable", "kubernetes")
        server.use_kubernetes_mock()
        server.cli("write", f"auth/kubernetes/role/{role}", f"bound_service_account_names={service_account}",
                   f"bound_service_account_namespaces={RELEASE.namespace}", f"policies={role}", "ttl=5m")  # fmt: skip
        token = folder / "token"
        token.write_text(server.kubernetes.issue(RELEASE.namespace, service_account))
        template = folder / "env.ctmpl"
        template.write_text(annotations["vault.hashicorp.com/agent-inject-template-env"])
        env_file = folder / "env"
        config = folder / "agent.hcl"
        config.write_text(
            f'vault {{\n  address = "{server.url}"\n}}\n'
            "exit_after_auth = true\n"
            'auto_auth {\n  method "kubernetes" {\n    mount_path = "auth/kubernetes"\n'
            f'    config = {{\n      role = "{role}"\n      token_path = "{token}"\n    }}\n  }}\n}}\n'
            f'template {{\n  source = "{template}"\n  destination = "{env_file}"\n}}\n'
        )
        environment = {k: v for k, v in os.environ.items() if not k.startswith(("BAO_", "VAULT_"))}
        done = subprocess.run([str(BAO), "agent", f"-config={config}"], capture_output=True, text=True,
                              timeout=60, env=environment, cwd=folder)  # fmt: skip
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        yield env_file
    finally:
        server.stop()


def test_the_secrets_become_environment_variables_before_the_settings_are_read(
    agent_env_file: Path, monkeypatch
) -> None:
    monkeypatch.setenv(ENV_FILE_VARIABLE, str(agent_env_file))
    monkeypatch.setenv("SERVE_MODEL_URI", "models:/m@champion")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "set-by-the-pod")  # what is already set wins
    for key in ("SERVE_ADMIN_TOKEN", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    assert load_env_file() == sorted(SECRET)
    settings = Settings()  # type: ignore[call-arg]
    assert (
        settings.admin_token is not None
        and settings.admin_token.get_secret_value() == SECRET["SERVE_ADMIN_TOKEN"]
    )
    assert os.environ["MLFLOW_TRACKING_TOKEN"] == SECRET["MLFLOW_TRACKING_TOKEN"]
    assert os.environ["AWS_ACCESS_KEY_ID"] == "set-by-the-pod"


def test_a_named_file_that_is_missing_stops_the_start(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv(ENV_FILE_VARIABLE, str(tmp_path / "not-rendered"))
    with pytest.raises(SystemExit, match="no such file"):
        load_env_file()
    monkeypatch.delenv(ENV_FILE_VARIABLE)
    assert load_env_file() == []
