"""MLflow behind its basic-auth app, as docker-compose.yaml runs it: a real ``mlflow server --app-name
basic-auth`` with compose's auth config (its database moved to SQLite in a temporary folder), set up by the same
one-shot with the same arguments and environment as compose's ``mlflow-auth-init`` (``ml/mlflow_auth.py``).

Only the pipeline's user can write to the pipeline's experiment and model, the ``champion`` alias included; the
inference API's user reads; an anonymous request is refused.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from contract import CANARY_ABORTED, CANARY_VERDICT_TAG, CHAMPION_AT_EVALUATION_TAG, DEGRADED
from mlops.models import MODELS_DIR_ENV, load_models
from mlops.platform_config import load_platform
from standins.mlflow_server import JOB_EXECUTION_SETTING
from tests.conftest import free_port
from tests.helpers import wait_until_answering

# A real server with the auth app and two runs of the one-shot (a minute on 2 cores): with the end-to-end tests
# out of `make test-fast`, and with the drills in `make test-scheduler` (as CI runs it) rather than `make test`.
pytestmark = [pytest.mark.e2e, pytest.mark.drill]
ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())
INIT = COMPOSE["services"]["mlflow-auth-init"]
SERVER = COMPOSE["services"]["mlflow"]
CHAMPION = load_platform().registry.production_alias
CHALLENGER = load_platform().registry.candidate_alias
ADMIN_PASSWORD = os.urandom(9).hex()
#: Values for the ``${VAR:?...}`` settings that compose reads from .env.
DOTENV = {
    "MLFLOW_ADMIN_PASSWORD": ADMIN_PASSWORD,
    "MLFLOW_PIPELINE_USERNAME": "mlops-pipeline",
    "MLFLOW_PIPELINE_PASSWORD": os.urandom(9).hex(),
    "MLFLOW_READER_USERNAME": "inference-api",
    "MLFLOW_READER_PASSWORD": os.urandom(9).hex(),
    "MLFLOW_SECRET_KEY": os.urandom(9).hex(),
}


def interpolate(value: str) -> str:
    return re.sub(r"\$\{([A-Z0-9_]+)(?::\?[^}]*)?\}", lambda m: DOTENV.get(m.group(1), "unused-here"), value)


def compose_environment(service: dict[str, Any]) -> dict[str, str]:
    return {key: interpolate(str(value)) for key, value in service["environment"].items()}


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``mlflow server --app-name basic-auth`` on loopback with compose's auth config, on SQLite."""
    root = tmp_path_factory.mktemp("mlflow-auth")
    mount = next(v for v in SERVER["volumes"] if "basic-auth" in v)
    config = configparser.ConfigParser()
    config.read(ROOT / mount.split(":")[0])
    config["mlflow"]["database_uri"] = f"sqlite:///{root / 'auth.db'}"
    with open(root / "basic-auth.ini", "w") as ini:
        config.write(ini)
    server_env = compose_environment(SERVER)
    env = {
        **os.environ,
        "MLFLOW_AUTH_CONFIG_PATH": str(root / "basic-auth.ini"),
        "MLFLOW_AUTH_ADMIN_PASSWORD": server_env["MLFLOW_AUTH_ADMIN_PASSWORD"],
        "MLFLOW_FLASK_SERVER_SECRET_KEY": server_env["MLFLOW_FLASK_SERVER_SECRET_KEY"],
        # Compose's job runner switch too: left on, its seven polling processes took about a core and a half for
        # the module's whole run.
        JOB_EXECUTION_SETTING: server_env[JOB_EXECUTION_SETTING],
    }
    assert "--app-name=basic-auth" in SERVER["entrypoint"]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(root / "server.log", "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth",
             "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "art"),
             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        wait_until_answering(f"{url}/health", process, root / "server.log")
        yield url
    finally:
        os.killpg(process.pid, 15)
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def configured(auth_server: str) -> dict[str, str]:
    """compose's ``mlflow-auth-init``, run twice (it is idempotent), against the server."""
    env = {
        **os.environ,
        **compose_environment(INIT),
        "MLFLOW_TRACKING_URI": auth_server,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins")]),
        MODELS_DIR_ENV: str(ROOT / "dags" / "models"),  # where compose mounts them, on this machine
    }
    command = [sys.executable, "-m", *INIT["entrypoint"][2:], *INIT["command"]]
    assert INIT["entrypoint"][:2] == ["python", "-m"]
    for _ in range(2):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr[-3000:]
    model = load_models().get("card_fraud")
    return {"experiment": model.training_dag_id, "model": model.registered_model}


def rest(url: str, method: str, path: str, user: str | None = None, **kwargs: Any) -> httpx.Response:
    auth = None if user is None else (DOTENV[f"MLFLOW_{user}_USERNAME"], DOTENV[f"MLFLOW_{user}_PASSWORD"])
    return httpx.request(method, f"{url}/api/2.0/mlflow/{path}", auth=auth, timeout=30, **kwargs)


@pytest.fixture(scope="module")
def pipeline_version(auth_server: str, configured: dict[str, str]) -> str:
    """What the pipeline does, as its user: a run with an artifact in its experiment, a version registered from it,
    and the champion alias moved to it."""
    url, model = auth_server, configured["model"]
    experiment = rest(
        url,
        "GET",
        "experiments/get-by-name",
        "PIPELINE",
        params={"experiment_name": configured["experiment"]},
    )
    assert experiment.status_code == 200, experiment.text
    run = rest(
        url,
        "POST",
        "runs/create",
        "PIPELINE",
        json={"experiment_id": experiment.json()["experiment"]["experiment_id"]},
    )
    assert run.status_code == 200, run.text
    run_id = run.json()["run"]["info"]["run_id"]
    artifact_uri = run.json()["run"]["info"]["artifact_uri"]
    uploaded = httpx.put(
        f"{url}/api/2.0/mlflow-artifacts/artifacts/{artifact_uri.split('mlflow-artifacts:/', 1)[1]}/model/MLmodel",
        content=b"flavors: {}\n", auth=(DOTENV["MLFLOW_PIPELINE_USERNAME"], DOTENV["MLFLOW_PIPELINE_PASSWORD"]),
        timeout=30,
    )  # fmt: skip
    assert uploaded.status_code == 200, uploaded.text
    version = rest(url, "POST", "model-versions/create", "PIPELINE",
                   json={"name": model, "source": f"{artifact_uri}/model", "run_id": run_id})  # fmt: skip
    assert version.status_code == 200, version.text
    number = str(version.json()["model_version"]["version"])
    moved = rest(url, "POST", "registered-models/alias", "PIPELINE",
                 json={"name": model, "alias": CHAMPION, "version": number})  # fmt: skip
    assert moved.status_code == 200, moved.text
    return number


def test_the_pipeline_user_logs_a_run_registers_a_version_and_moves_the_champion(
    auth_server: str, configured: dict[str, str], pipeline_version: str
) -> None:
    champion = rest(auth_server, "GET", "registered-models/alias", "READER",
                    params={"name": configured["model"], "alias": CHAMPION})  # fmt: skip
    assert champion.status_code == 200, champion.text
    assert champion.json()["model_version"]["version"] == pipeline_version


def test_the_pipeline_user_records_an_aborted_release_with_the_promote_stage(
    auth_server: str, configured: dict[str, str], pipeline_version: str
) -> None:
    """The promote stage, as the DAG runs it and as the pipeline's user, on a version whose canary was aborted: it
    records the verdict and
    leaves both aliases where they are (it once deleted the candidate alias, which takes ``MANAGE``: 403)."""
    model = configured["model"]
    source = rest(auth_server, "GET", "model-versions/get", "PIPELINE",
                  params={"name": model, "version": pipeline_version}).json()["model_version"]  # fmt: skip
    version = rest(auth_server, "POST", "model-versions/create", "PIPELINE",
                   json={"name": model, "source": source["source"], "run_id": source["run_id"],
                         "tags": [{"key": CHAMPION_AT_EVALUATION_TAG, "value": pipeline_version}]})  # fmt: skip
    assert version.status_code == 200, version.text
    number = str(version.json()["model_version"]["version"])
    as_register = rest(auth_server, "POST", "registered-models/alias", "PIPELINE",
                       json={"name": model, "alias": CHALLENGER, "version": number})  # fmt: skip
    assert as_register.status_code == 200, as_register.text
    verdict = {"phase": DEGRADED, "message": "RolloutAborted", "measurements": [],
               "model_uri": f"models:/{model}/{number}"}  # fmt: skip
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": auth_server,
        "MLFLOW_TRACKING_USERNAME": DOTENV["MLFLOW_PIPELINE_USERNAME"],
        "MLFLOW_TRACKING_PASSWORD": DOTENV["MLFLOW_PIPELINE_PASSWORD"],
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins")]),
    }
    # The arguments the training DAG gives the stage, its templates filled in.
    from dags.model_dags import promote_stage

    arguments = list(promote_stage(load_models().get("card_fraud")).arguments)
    for option, value in (("--version", number), ("--verdict", json.dumps(verdict))):
        arguments[arguments.index(option) + 1] = value
    done = subprocess.run([sys.executable, "-m", "ml.promote", *arguments], env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    recorded = rest(auth_server, "GET", "model-versions/get", "READER",
                    params={"name": model, "version": number}).json()["model_version"]  # fmt: skip
    assert {t["key"]: t["value"] for t in recorded["tags"]}[CANARY_VERDICT_TAG] == CANARY_ABORTED
    assert recorded["aliases"] == [CHALLENGER]
    champion = rest(auth_server, "GET", "registered-models/alias", "READER",
                    params={"name": model, "alias": CHAMPION})  # fmt: skip
    assert champion.json()["model_version"]["version"] == pipeline_version


def test_an_anonymous_request_to_move_the_champion_is_refused(
    auth_server: str, configured: dict[str, str], pipeline_version: str
) -> None:
    moved = rest(auth_server, "POST", "registered-models/alias",
                 json={"name": configured["model"], "alias": CHAMPION, "version": pipeline_version})  # fmt: skip
    assert moved.status_code == 401
    assert (
        rest(auth_server, "GET", "registered-models/get", params={"name": configured["model"]}).status_code
        == 401
    )


def test_the_read_only_user_reads_but_cannot_move_the_champion_or_write_runs(
    auth_server: str, configured: dict[str, str], pipeline_version: str
) -> None:
    model = configured["model"]
    assert (
        rest(auth_server, "GET", "registered-models/get", "READER", params={"name": model}).status_code == 200
    )
    moved = rest(auth_server, "POST", "registered-models/alias", "READER",
                 json={"name": model, "alias": CHAMPION, "version": pipeline_version})  # fmt: skip
    assert moved.status_code == 403, moved.text
    assert rest(auth_server, "DELETE", "registered-models/alias", "READER",
                params={"name": model, "alias": CHAMPION}).status_code == 403  # fmt: skip
    experiment = rest(auth_server, "GET", "experiments/get-by-name", "READER",
                      params={"experiment_name": configured["experiment"]})  # fmt: skip
    assert experiment.status_code == 200
    run = rest(auth_server, "POST", "runs/create", "READER",
               json={"experiment_id": experiment.json()["experiment"]["experiment_id"]})  # fmt: skip
    assert run.status_code == 403, run.text


def test_a_wrong_password_is_refused(auth_server: str, configured: dict[str, str]) -> None:
    response = httpx.get(
        f"{auth_server}/api/2.0/mlflow/registered-models/get", params={"name": configured["model"]},
        auth=(DOTENV["MLFLOW_PIPELINE_USERNAME"], "not-the-password"), timeout=30,
    )  # fmt: skip
    assert response.status_code == 401
