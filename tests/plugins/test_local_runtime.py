"""The local pod runtime: real subprocesses, exit codes, deadlines and the pod's environment."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException
from kubernetes.client import models as k8s

from contract import EXIT_INVALID_INPUT, EXIT_TRANSIENT
from mlops.operators import MLStageOperator
from mlops.platform_config import load_platform

TEST_LOGGER = logging.getLogger("tests.local_runtime")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def operator(monkeypatch: pytest.MonkeyPatch) -> MLStageOperator:
    # Airflow's task logger is structlog; a stdlib logger lets caplog see what the task log would get.
    monkeypatch.setattr(MLStageOperator, "log", property(lambda self: TEST_LOGGER))
    return MLStageOperator(stage="prepare", arguments=[])


def is_running(pid: int) -> bool:
    """True while the process exists and is not a zombie (a killed orphan may wait to be reaped)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in status


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_output_is_streamed_into_the_task_log(operator, caplog) -> None:
    with caplog.at_level(logging.INFO, logger=TEST_LOGGER.name):
        operator._run(python("print('hello'); print('world')"), {"PYTHONPATH": "."}, timeout=30)
    assert "[prepare] hello" in caplog.text and "[prepare] world" in caplog.text


def test_rejected_input_fails_without_retry_and_carries_the_stage_message(operator) -> None:
    code = "import sys; print('ERROR: column \\'x\\': entirely null', file=sys.stderr); sys.exit(2)"
    with pytest.raises(
        AirflowFailException, match="stage prepare rejected its input: column 'x': entirely null"
    ):
        operator._run(python(code), {"PYTHONPATH": "."}, timeout=30)


def test_exit_2_fails_without_retry_even_without_an_error_line(operator) -> None:
    """The contract is the exit code: argparse-style exits and foreign commands that print no "ERROR:" line."""
    with pytest.raises(AirflowFailException, match=r"(?s)rejected its input: .*bad flag"):
        operator._run(
            python(f"print('bad flag'); import sys; sys.exit({EXIT_INVALID_INPUT})"), {}, timeout=30
        )


def test_a_transient_exit_fails_retryably_and_says_so(operator) -> None:
    code = f"import sys; print('ERROR: temporarily unavailable: SlowDown', file=sys.stderr); sys.exit({EXIT_TRANSIENT})"
    with pytest.raises(
        AirflowException, match=r"found a service unavailable \(will retry\): .*SlowDown"
    ) as caught:
        operator._run(python(code), {}, timeout=30)
    assert not isinstance(caught.value, AirflowFailException)


def test_a_crash_fails_retryably_with_the_end_of_the_output(operator) -> None:
    with pytest.raises(AirflowException, match=r"(?s)exit code 1: .*ZeroDivisionError") as caught:
        operator._run(python("1 / 0"), {"PYTHONPATH": "."}, timeout=30)
    assert not isinstance(caught.value, AirflowFailException)


def test_the_deadline_stops_the_stage_and_its_children(operator, tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    code = (
        "import subprocess, sys, time; "
        f"child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        f"open({str(pid_file)!r}, 'w').write(str(child.pid)); time.sleep(60)"
    )
    started = time.monotonic()
    with pytest.raises(AirflowException, match="passed its deadline of 2s"):
        operator._run(python(code), {"PYTHONPATH": "."}, timeout=2)
    assert time.monotonic() - started < 20
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while is_running(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not is_running(child)


def test_environment_is_the_pods_plus_credentials_and_nothing_else(operator, monkeypatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "from-worker")
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    monkeypatch.setenv("UNRELATED_WORKER_SECRET", "must-not-leak")
    monkeypatch.setenv("DB_PASSWORD", "from-worker-secret-store")
    pod_env = [
        k8s.V1EnvVar(name="MLFLOW_TRACKING_URI", value="http://mlflow:5000"),
        k8s.V1EnvVar(name="DB_PASSWORD", value_from=k8s.V1EnvVarSource(secret_key_ref=k8s.V1SecretKeySelector(
            name="db", key="password"))),
    ]  # fmt: skip
    env = operator._local_environment(pod_env)
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert env["AWS_ACCESS_KEY_ID"] == "from-worker"
    assert env["OMP_WAIT_POLICY"] == "PASSIVE"  # the worker's cores are the stage's
    assert env["DB_PASSWORD"] == "from-worker-secret-store"
    assert "UNRELATED_WORKER_SECRET" not in env
    # The stand-ins' commands first (what the cluster would answer), then the worker's interpreter.
    assert env["PATH"].split(os.pathsep)[:2] == [
        str(ROOT / "standins" / "bin"),
        str(Path(sys.executable).parent),
    ]


def test_mlflow_credentials_come_from_the_airflow_connection_and_stay_out_of_the_templated_fields(
    operator, monkeypatch
) -> None:
    credentials = load_platform().registry.credentials
    monkeypatch.setenv(f"AIRFLOW_CONN_{credentials.connection_id.upper()}",
                       '{"conn_type": "http", "login": "pipeline", "password": "s3cr3t-from-conn"}')  # fmt: skip
    pod_env = operator.build_pod_request_obj(dry_run=True).spec.containers[0].env
    secret_refs = {e.name: e.value_from.secret_key_ref for e in pod_env if e.value_from is not None}
    assert {name: (ref.name, ref.key, ref.optional) for name, ref in secret_refs.items()} == {
        "MLFLOW_TRACKING_USERNAME": (credentials.secret, "username", True),
        "MLFLOW_TRACKING_PASSWORD": (credentials.secret, "password", True),
    }
    env = operator._local_environment(pod_env)
    assert (env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"]) == (
        "pipeline",
        "s3cr3t-from-conn",
    )
    rendered = repr([getattr(operator, field) for field in operator.template_fields])
    assert "s3cr3t-from-conn" not in rendered and "s3cr3t-from-conn" not in repr(pod_env)


def test_without_a_connection_or_secret_the_stage_runs_without_credentials(operator, monkeypatch) -> None:
    """An MLflow without authentication (one a user points the pipeline at) needs none: the Secret's keys are
    optional."""
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    env = operator._local_environment(operator.build_pod_request_obj(dry_run=True).spec.containers[0].env)
    assert "MLFLOW_TRACKING_USERNAME" not in env and "MLFLOW_TRACKING_PASSWORD" not in env


def test_a_secret_env_var_missing_on_the_worker_is_a_clear_error(operator, monkeypatch) -> None:
    monkeypatch.delenv("API_TOKEN", raising=False)
    secret = k8s.V1EnvVar(name="API_TOKEN", value_from=k8s.V1EnvVarSource(
        secret_key_ref=k8s.V1SecretKeySelector(name="api", key="token")))  # fmt: skip
    with pytest.raises(AirflowFailException, match="env var API_TOKEN comes from a Secret or ConfigMap"):
        operator._local_environment([secret])


def test_an_unknown_runtime_is_refused(monkeypatch) -> None:
    from mlops.operators import pod_runtime

    monkeypatch.setenv("AIRFLOW_VAR_MLOPS_POD_RUNTIME", "docker")
    with pytest.raises(AirflowFailException, match="mlops_pod_runtime='docker' must be one of"):
        pod_runtime()


def test_a_local_pod_finds_the_stand_ins_helm_and_where_releases_are_kept(
    operator, tmp_path, monkeypatch
) -> None:
    """The local runtime's PATH resolves ``helm`` to the stand-in, and names the folder of local releases."""
    import shutil

    from contract import LOCAL_RELEASES_ENV, PLUGINS_FOLDER_ENV
    from mlops.platform_config import load_platform

    monkeypatch.setenv("AIRFLOW_VAR_MLOPS_DATA_ROOT", str(tmp_path))
    env = operator._local_environment([])
    assert shutil.which("helm", path=env["PATH"]) == str(ROOT / "standins" / "bin" / "helm")
    assert env[LOCAL_RELEASES_ENV] == f"{tmp_path}/{load_platform().release.local.state_dir}"
    assert env[PLUGINS_FOLDER_ENV] == str(
        ROOT / "plugins"
    )  # the stand-ins read the worker's platform settings
