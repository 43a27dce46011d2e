"""docker-compose.yaml: valid against the Compose specification, and held to the house rules.

No Docker engine runs in the test environment: the file is checked against the Compose specification's JSON
schema (check-jsonschema's vendored copy, offline) and its rules are checked on the parsed file. The
entrypoint's choice of pod runtime runs for real, with `env` standing in for the Airflow image's entrypoint, and
so does the secrets check (compose/check-secrets.sh) on .env.example's values and on real ones. MLflow's
basic-auth setup runs against a real server in tests/ml/test_mlflow_auth.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlops.models import load_models
from mlops.platform_config import load_platform

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yaml"
OVERLAYS = [ROOT / "compose" / "kind.yaml"]
AIRFLOW_SERVICES = {"api-server", "scheduler", "dag-processor", "triggerer"}
SECRET_NAME = re.compile(r"(PASSWORD|SECRET|TOKEN|_KEY|_KEY_ID)$")
REQUIRED_VARIABLE = re.compile(r"^\$\{[A-Z0-9_]+:\?[^}]+\}$")
#: A secret of an optional feature (Vault's token): from .env too, empty unless set there, never a literal.
OPTIONAL_VARIABLE = re.compile(r"^\$\{[A-Z0-9_]+:-\}$")
VARIABLE = re.compile(r"(?<!\$)\$\{([A-Z0-9_]+)(?::?[-?][^}]*)?\}")
EXAMPLE = ROOT / ".env.example"
CHECK_SECRETS = ROOT / "compose" / "check-secrets.sh"


def example_settings() -> dict[str, str]:
    return dict(
        line.split("=", 1) for line in EXAMPLE.read_text().splitlines() if line and not line.startswith("#")
    )


def secret_settings() -> set[str]:
    """The settings from .env that are secrets (by name)."""
    return {name for name in VARIABLE.findall(COMPOSE_FILE.read_text()) if SECRET_NAME.search(name)}


def check_secrets(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(CHECK_SECRETS)], env={"PATH": os.environ["PATH"], **env}, capture_output=True, text=True
    )


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE_FILE.read_text()))


@pytest.fixture(scope="module")
def services(compose) -> dict[str, dict[str, Any]]:
    return dict(compose["services"])


def check_compose_spec(*files: Path) -> subprocess.CompletedProcess[str]:
    checker = Path(sys.executable).parent / "check-jsonschema"
    return subprocess.run(
        [str(checker), "--builtin-schema", "vendor.compose-spec", *map(str, files)],
        capture_output=True,
        text=True,
    )


def one_shot(service: dict[str, Any]) -> bool:
    return service.get("restart") == "no"


def environment(service: dict[str, Any]) -> dict[str, str]:
    return {key: str(value) for key, value in (service.get("environment") or {}).items()}


def test_the_compose_files_validate_against_the_compose_specification() -> None:
    result = check_compose_spec(COMPOSE_FILE, *OVERLAYS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_specification_check_rejects_a_malformed_file(tmp_path: Path, compose) -> None:
    broken = dict(compose)
    broken["services"] = {**compose["services"], "prometheus": {**compose["services"]["prometheus"]}}
    broken["services"]["prometheus"]["healthcheck"] = {"test": "true", "intervall": "10s"}
    path = tmp_path / "docker-compose.yaml"
    path.write_text(yaml.safe_dump(broken))
    assert check_compose_spec(path).returncode != 0


def test_the_stack_has_every_part(services) -> None:
    assert {
        *AIRFLOW_SERVICES,
        "airflow-init",
        "postgres",
        "mlflow",
        "mlflow-db",
        "minio",
        "minio-init",
        "inference-api",
        "prometheus",
    } <= set(services)


def test_every_long_running_service_has_a_healthcheck(services) -> None:
    missing = [
        name for name, service in services.items() if not one_shot(service) and "healthcheck" not in service
    ]
    assert not missing
    for name, service in services.items():
        if "healthcheck" in service:
            assert service["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), name


def test_one_shot_jobs_are_awaited_until_they_complete(services) -> None:
    jobs = {name for name, service in services.items() if one_shot(service)}
    assert jobs == {"airflow-init", "minio-init", "mlflow-auth-init", "secrets-check"}
    awaited = {
        dependency
        for service in services.values()
        for dependency, spec in (service.get("depends_on") or {}).items()
        if spec["condition"] == "service_completed_successfully"
    }
    assert awaited == jobs


def test_every_dependency_waits_for_health_or_completion(services) -> None:
    for name, service in services.items():
        depends_on = service.get("depends_on", {})
        assert isinstance(depends_on, dict), f"{name}: depends_on needs conditions"
        for dependency, spec in depends_on.items():
            expected = (
                "service_completed_successfully" if one_shot(services[dependency]) else "service_healthy"
            )
            assert spec == {"condition": expected}, f"{name} -> {dependency}"


def test_airflow_services_share_one_definition_and_wait_for_the_init_job(compose, services) -> None:
    common = compose["x-airflow-common"]
    assert common["environment"]["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert common["environment"]["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
    for name in AIRFLOW_SERVICES:
        service = services[name]
        # YAML merge keys (<<: *airflow-common) leave the anchor's values in each service.
        assert service["image"] == common["image"]
        assert service["environment"] == common["environment"], name
        assert service["depends_on"]["airflow-init"] == {"condition": "service_completed_successfully"}
        assert service["command"] == name
        mounts = {volume.split(":")[1] for volume in service["volumes"]}
        assert {"/opt/airflow/dags", "/opt/airflow/plugins"} <= mounts


def test_no_secret_is_written_in_the_file(services) -> None:
    for name, service in services.items():
        for key, value in environment(service).items():
            if SECRET_NAME.search(key):
                assert REQUIRED_VARIABLE.match(value) or OPTIONAL_VARIABLE.match(value), (
                    f"{name}: {key} must come from .env as ${{VAR:?message}} (or ${{VAR:-}} when optional)"
                )
    # Credentials inside URLs or arguments are variables too.
    for url in re.findall(r"[a-z+]+://[^/\s:]+:[^@\s]+@", COMPOSE_FILE.read_text()):
        assert VARIABLE.search(url), url
    # And inside connections given as JSON.
    for name, service in services.items():
        for key, value in environment(service).items():
            if key.startswith("AIRFLOW_CONN_") and value.lstrip().startswith("{"):
                connection = json.loads(value)
                assert REQUIRED_VARIABLE.match(connection.get("password", "${X:?}")), f"{name}: {key}"


def test_every_setting_from_env_is_documented_in_the_example_and_the_real_file_is_ignored() -> None:
    used = set(VARIABLE.findall(COMPOSE_FILE.read_text()))
    example = ROOT / ".env.example"
    documented = {
        line.split("=", 1)[0]
        for line in example.read_text().splitlines()
        if line and not line.startswith("#")
    }
    assert used == documented
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=ROOT)
    assert ignored.returncode == 0, ".env must be git-ignored"
    assert subprocess.run(["git", "check-ignore", "-q", ".env.example"], cwd=ROOT).returncode == 1


def test_the_inference_api_serves_the_registry_champion(services) -> None:
    registry = load_platform().registry
    env = environment(services["inference-api"])
    # The stack's own API serves one model's champion (each model's release serves its own).
    assert env["SERVE_MODEL_URI"] in {
        f"models:/{m.registered_model}@{registry.production_alias}" for m in load_models()
    }
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert services["inference-api"]["build"]["dockerfile"] == "docker/inference-api.Dockerfile"


def test_prometheus_scrapes_the_inference_api(services) -> None:
    mount = next(
        v for v in services["prometheus"]["volumes"] if v.endswith("/etc/prometheus/prometheus.yml:ro")
    )
    config = yaml.safe_load((ROOT / mount.split(":")[0]).read_text())
    targets = [
        t for job in config["scrape_configs"] for group in job["static_configs"] for t in group["targets"]
    ]
    port = services["inference-api"]["ports"][0].rsplit(":", 1)[1]
    assert f"inference-api:{port}" in targets


def test_the_buckets_mlflow_and_the_pipeline_use_are_created(services) -> None:
    script = services["minio-init"]["command"][0]
    created = set(re.findall(r"store/([a-z0-9-]+)", script.split("mc mb", 1)[1]))
    artifacts = next(a for a in services["mlflow"]["entrypoint"] if a.startswith("--artifacts-destination="))
    data_root = environment(services["api-server"])["AIRFLOW_VAR_MLOPS_DATA_ROOT"]
    assert {artifacts.split("s3://")[1].split("/")[0], data_root.split("s3://")[1].split("/")[0]} <= created


def test_the_dockerfiles_the_stack_builds_exist(services) -> None:
    for service in services.values():
        if "build" in service:
            assert (ROOT / service["build"]["context"] / service["build"]["dockerfile"]).is_file()


@pytest.mark.parametrize("with_kubeconfig", [True, False], ids=["kubeconfig-mounted", "no-kubeconfig"])
def test_the_entrypoint_picks_the_pod_runtime_from_the_mounted_kubeconfig(
    tmp_path: Path, with_kubeconfig
) -> None:
    kubeconfig = tmp_path / "config"
    if with_kubeconfig:
        kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    env = {
        "PATH": os.environ["PATH"],
        "KUBECONFIG_FILE": str(kubeconfig),
        "AIRFLOW_ENTRYPOINT": shutil.which("env") or "/usr/bin/env",
    }
    result = subprocess.run(
        ["bash", str(ROOT / "compose" / "airflow-entrypoint.sh")],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    printed = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    assert printed["AIRFLOW_VAR_MLOPS_POD_RUNTIME"] == ("kubernetes" if with_kubeconfig else "local")
    if with_kubeconfig:
        import json

        connection = json.loads(printed["AIRFLOW_CONN_KUBERNETES_DEFAULT"])
        assert connection["conn_type"] == "kubernetes"
        assert connection["extra"]["kube_config_path"] == str(kubeconfig)
    else:
        assert "AIRFLOW_CONN_KUBERNETES_DEFAULT" not in printed


def test_the_kind_overlay_mounts_the_kubeconfig_where_the_entrypoint_looks(services) -> None:
    overlay = yaml.safe_load(OVERLAYS[0].read_text())
    script = (ROOT / "compose" / "airflow-entrypoint.sh").read_text()
    default = re.search(r'KUBECONFIG_FILE="\$\{KUBECONFIG_FILE:-([^}]+)\}"', script).group(1)  # type: ignore[union-attr]
    for name in AIRFLOW_SERVICES:
        assert f"{default}:ro" in [v.split(":", 1)[1] for v in overlay["services"][name]["volumes"]]
        assert "kind" in overlay["services"][name]["networks"]


def test_the_secrets_check_refuses_the_placeholders_of_the_example_and_names_each(services) -> None:
    example = example_settings()
    passed = {
        key: interpolate_example(value) for key, value in environment(services["secrets-check"]).items()
    }
    result = check_secrets(passed)
    assert result.returncode != 0
    placeholders = {name for name, value in example.items() if value.startswith("change-me")}
    assert placeholders, "the example's secrets are placeholders"
    for name in placeholders:
        assert f"{name} still holds the placeholder" in result.stderr, name


def test_the_secrets_check_passes_real_values(services) -> None:
    real = {key: os.urandom(12).hex() for key in environment(services["secrets-check"])}
    result = check_secrets(real)
    assert result.returncode == 0, result.stderr


def test_the_secrets_check_is_given_every_secret_and_every_service_taking_one_waits_for_it(services) -> None:
    check = services["secrets-check"]
    assert one_shot(check)
    assert CHECK_SECRETS.name in " ".join(check["entrypoint"])
    checked = set(VARIABLE.findall(" ".join(environment(check).values())))
    assert checked == secret_settings()
    for name, service in services.items():
        if name == "secrets-check":
            continue
        taken = set(VARIABLE.findall(yaml.safe_dump(service))) & secret_settings()
        if taken:
            assert service["depends_on"].get("secrets-check") == {
                "condition": "service_completed_successfully"
            }, f"{name} takes {sorted(taken)} but does not wait for the secrets check"


def interpolate_example(value: str) -> str:
    """``${VAR:?message}`` with .env.example's value, as docker compose reads it from a copied .env."""
    return VARIABLE.sub(lambda m: example_settings()[m.group(1)], value)


def test_mlflow_runs_its_basic_auth_app_with_the_config_and_users_the_init_job_creates(services) -> None:
    import configparser

    mlflow = services["mlflow"]
    assert "--app-name=basic-auth" in mlflow["entrypoint"]
    env = environment(mlflow)
    mount = next(v for v in mlflow["volumes"] if v.split(":")[1] == env["MLFLOW_AUTH_CONFIG_PATH"])
    config = configparser.ConfigParser()
    config.read(ROOT / mount.split(":")[0])
    auth = config["mlflow"]
    assert auth["default_permission"] == "READ"
    assert "@" in auth["database_uri"] and ":" not in auth["database_uri"].split("://", 1)[1].split("@")[0], (
        "the auth database URI carries no password (PGPASSWORD)"
    )
    for key in ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY", "PGPASSWORD"):
        assert REQUIRED_VARIABLE.match(env[key]), key
    init = services["mlflow-auth-init"]
    init_env = environment(init)
    assert init_env["MLFLOW_TRACKING_USERNAME"] == auth["admin_username"]
    assert init_env["MLFLOW_TRACKING_PASSWORD"] == env["MLFLOW_AUTH_ADMIN_PASSWORD"]
    assert init["depends_on"]["mlflow"] == {"condition": "service_healthy"}
    # Every model file's experiment and registered model, read from the files it mounts (none named here).
    assert (init["entrypoint"], init["command"]) == (["python", "-m", "mlops.models"], ["mlflow-auth"])
    assert (
        "./dags:/opt/airflow/dags:ro" in init["volumes"]
        and "./plugins:/opt/airflow/plugins:ro" in init["volumes"]
    )
    assert init_env["MLOPS_MODELS_DIR"] == "/opt/airflow/dags/models"


def test_the_pipeline_writes_as_its_user_and_the_inference_api_reads_as_the_read_only_one(
    compose, services
) -> None:
    init = environment(services["mlflow-auth-init"])
    connection = json.loads(compose["x-airflow-common"]["environment"]["AIRFLOW_CONN_MLFLOW_DEFAULT"])
    assert (connection["login"], connection["password"]) == (
        init["MLFLOW_PIPELINE_USERNAME"], init["MLFLOW_PIPELINE_PASSWORD"],
    )  # fmt: skip
    api = environment(services["inference-api"])
    assert (api["MLFLOW_TRACKING_USERNAME"], api["MLFLOW_TRACKING_PASSWORD"]) == (
        init["MLFLOW_READER_USERNAME"], init["MLFLOW_READER_PASSWORD"],
    )  # fmt: skip
    for name in (*AIRFLOW_SERVICES, "inference-api"):
        assert services[name]["depends_on"]["mlflow-auth-init"] == {
            "condition": "service_completed_successfully"
        }
