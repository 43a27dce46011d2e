"""The exit-code contract: 0 success, 2 deterministic bad input (no retry), anything else retryable; transient
faults of S3 and helm are retried inside the stage first. Every stage is run as its command, as a pod runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests

from contract import (
    ERROR_PREFIX,
    EXIT_INVALID_INPUT,
    EXIT_TRANSIENT,
    LOCAL_RELEASES_ENV,
    XCOM_DIR_ENV,
    XCOM_RESULT_FILE,
)
from ml import faults
from ml.errors import StageError, TransientError
from tests.conftest import free_port
from tests.helpers import train_arguments

ROOT = Path(__file__).resolve().parents[2]
SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


def run_stage(
    module: str, *args: str, env: dict[str, str] | None = None, timeout: int = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def error_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in done.stderr.splitlines() if line.startswith(ERROR_PREFIX)]
    assert len(lines) == 1, done.stderr[-3000:]
    return lines[0].removeprefix(ERROR_PREFIX)


# -- Bad input: exit 2, one ERROR line, nothing touched -----------------------------------------------------


@pytest.mark.parametrize(
    ("module", "args", "message"),
    [
        pytest.param("ml.prepare", ["--source", "x.csv", "--target", "y", "--output", "o", "--seed", "-1"],
                     "--seed: must be 0 or more", id="negative-seed"),
        pytest.param("ml.train", ["--prepared-uri", "p"], "the following arguments are required",
                     id="missing-flags"),
        pytest.param("ml.evaluate", ["--prepared-uri", "p", "--model-uri", "m-1; rm -rf /", "--run-id", "r",
                     "--registered-model-name", "n", "--min-average-precision", "0.1", "--min-improvement", "0",
                     "--champion-alias", "champion", "--psi-warning", "0.2"],
                     "is not a model URI", id="malformed-model-uri"),
        pytest.param("ml.serve.export", ["--model-uri", "s3:/nowhere", "--output", "o"], "is not a model URI",
                     id="export-model-uri"),
        pytest.param("ml.promote", ["--name", "n", "--version", "1", "--alias", "champion",
                     "--verdict", "[" * 50_000 + "]" * 50_000], "nested too deeply", id="deeply-nested-json"),
        pytest.param("ml.prepare", ["--source", "synthetic://card-transactions?rows=20000000000", "--target",
                     "is_fraud", "--output", "o"], "at most 200,000,000", id="too-many-rows"),
        # It exited 1 (retried) on an OutOfBoundsTimedelta traceback; 36,500 days went through without a word.
        *(pytest.param("ml.prepare", ["--source", "synthetic://card-transactions?rows_per_day=10", "--target",
                       "is_fraud", "--output", "o", "--time-column", "timestamp", "--interval-start", "2026-03-02",
                       "--interval-end", "2026-03-09", "--training-window-days", days],
                       f"--training-window-days: must be from 1 to 3660, got {days}", id=f"window-{days}-days")
          for days in ("1000000000", "36500")),
        pytest.param("ml.prepare", ["--source", "synthetic://nope-typo?rows=100", "--target", "is_fraud",
                     "--output", "o"], "names no synthetic data set: the one there is is synthetic://card-"
                     "transactions", id="synthetic-typo"),
        pytest.param("ml.synthetic", ["--rows", "100", "--output", "s.txt"], "name a .parquet or .csv file",
                     id="synthetic-output-suffix"),
    ],
)  # fmt: skip
def test_bad_input_exits_2_with_one_error_line_before_touching_anything(
    module: str, args: list[str], message: str, tmp_path: Path
) -> None:
    # No MLflow server answers here: a stage that got as far as calling one would fail otherwise.
    env = {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}", XCOM_DIR_ENV: str(tmp_path / "xcom")}
    started = time.monotonic()
    done = run_stage(module, *args, env=env)
    assert done.returncode == EXIT_INVALID_INPUT, done.stderr[-3000:]
    assert message in error_line(done)
    assert time.monotonic() - started < 60  # refused up front: no 149 GiB allocation, no retries
    assert not (tmp_path / "xcom").exists()


def test_credentials_in_the_tracking_uri_are_refused_without_being_printed(tmp_path: Path) -> None:
    env = {"MLFLOW_TRACKING_URI": "http://pipeline:s3cr3t-value@127.0.0.1:5000"}
    done = run_stage(
        "ml.promote", "--name", "n", "--version", "1", "--alias", "a", "--verdict", "{}", env=env
    )
    assert done.returncode == EXIT_INVALID_INPUT
    assert "MLFLOW_TRACKING_USERNAME" in error_line(done)
    assert "s3cr3t-value" not in done.stdout + done.stderr


def test_a_corrupt_parquet_file_in_a_complete_folder_is_bad_input_and_opens_no_run(
    mlflow_server: str, tmp_path: Path
) -> None:
    from ml.prepare import prepare
    from ml.tracking import client

    prepared = tmp_path / "prepared"
    prepare(
        "synthetic://card-transactions?rows=3000&seed=3", "is_fraud", str(prepared), time_column="timestamp"
    )
    (prepared / "train.parquet").write_bytes(b"PAR1 this is not a parquet file PAR1")
    done = run_stage(
        "ml.train", "--prepared-uri", str(prepared), "--experiment", "corrupt-input", "--run-key", "corrupt/1",
        *train_arguments(n_estimators=5, max_depth=3, early_stopping_rounds=2, device="cpu", seed=1),
    )  # fmt: skip
    assert done.returncode == EXIT_INVALID_INPUT, done.stderr[-3000:]
    assert "train.parquet" in error_line(done) and "not a readable Parquet file" in error_line(done)
    experiment = client().get_experiment_by_name("corrupt-input")
    runs = client().search_runs([experiment.experiment_id]) if experiment else []
    assert runs == []


# -- Transient faults: retried inside, then a retryable exit ------------------------------------------------


class ThrottlingS3(BaseHTTPRequestHandler):
    """An S3 endpoint that answers 503 SlowDown to the first ``throttled`` requests, as MinIO and AWS do under
    load, and forwards the rest to ``upstream`` (moto's S3 server): a stand-in for AWS, which is not reachable
    here."""

    throttled = 0
    upstream = ""
    seen: list[str]

    def _handle(self) -> None:
        self.seen.append(f"{self.command} {self.path}")
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if len(self.seen) <= self.throttled:
            self.send_response(503)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(SLOW_DOWN)))
            self.end_headers()
            self.wfile.write(SLOW_DOWN)
            return
        answer = requests.request(self.command, self.upstream + self.path, data=body, timeout=30,
                                  headers={k: v for k, v in self.headers.items() if k.lower() != "host"})  # fmt: skip
        self.send_response(answer.status_code)
        for key, value in answer.headers.items():
            if key.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(answer.content)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(answer.content)

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def s3(tmp_path: Path) -> Iterator[tuple[type[ThrottlingS3], str, dict[str, str]]]:
    """moto's S3 server behind a throttling endpoint; the environment a stage needs to use it."""
    from moto.server import ThreadedMotoServer

    moto_port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=moto_port)
    moto.start()
    handler = type("Throttling", (ThrottlingS3,), {"seen": [], "upstream": f"http://127.0.0.1:{moto_port}"})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{server.server_port}",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        XCOM_DIR_ENV: str(tmp_path / "xcom"),
    }
    import boto3

    direct = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{moto_port}", region_name="us-east-1",
                          aws_access_key_id="test", aws_secret_access_key="test")  # fmt: skip
    direct.create_bucket(Bucket="lake")
    table = tmp_path / "tx.parquet"
    rng = np.random.default_rng(0)
    pd.DataFrame(
        {"amount": rng.gamma(2.0, 30.0, 400).round(2), "is_fraud": rng.random(400) < 0.25}
    ).to_parquet(table)
    direct.upload_file(str(table), "lake", "raw/tx.parquet")
    yield handler, f"http://127.0.0.1:{moto_port}", env
    server.shutdown()
    moto.stop()


def prepare_on_s3(env: dict[str, str], attempts: int) -> subprocess.CompletedProcess[str]:
    return run_stage(
        "ml.prepare", "--source", "s3://lake/raw/tx.parquet", "--target", "is_fraud",
        "--output", "s3://lake/prepared/run-1", env={**env, "AWS_MAX_ATTEMPTS": str(attempts)},
    )  # fmt: skip


def test_s3_throttling_is_retried_inside_the_stage_and_the_stage_succeeds(s3) -> None:
    handler, _, env = s3
    handler.throttled = 2
    done = prepare_on_s3(env, attempts=5)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(handler.seen) > handler.throttled
    assert json.loads(Path(env[XCOM_DIR_ENV], XCOM_RESULT_FILE).read_text())["rows"]


def test_s3_throttling_that_outlasts_the_retries_is_a_retryable_exit_not_bad_input(s3) -> None:
    handler, _, env = s3
    handler.throttled = 10_000
    done = prepare_on_s3(env, attempts=2)
    assert done.returncode == EXIT_TRANSIENT, done.stderr[-3000:]
    assert "temporarily unavailable" in error_line(done) and "SlowDown" in error_line(done)
    assert len(handler.seen) >= 2  # botocore's own retry, with backoff
    assert not Path(env[XCOM_DIR_ENV], XCOM_RESULT_FILE).exists()


def test_an_mlflow_server_that_stays_away_is_a_retryable_exit(tmp_path: Path) -> None:
    env = {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
           "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0", XCOM_DIR_ENV: str(tmp_path / "xcom")}  # fmt: skip
    verdict = json.dumps({"phase": "Healthy", "model_uri": "models:/m/1"})
    done = run_stage("ml.promote", "--name", "m", "--version", "1", "--alias", "champion", "--verdict", verdict,
                     env=env)  # fmt: skip
    assert done.returncode == EXIT_TRANSIENT, done.stderr[-3000:]
    assert "temporarily unavailable" in error_line(done)


# -- helm: a busy API server is retried, a refusal is not ---------------------------------------------------


def fake_helm(folder: Path, failures: int, stderr: str) -> Path:
    """A ``helm`` that fails its first ``failures`` calls as a busy Kubernetes API server makes it fail, then
    runs the project's local helm (a stand-in for a cluster, which is not reachable here)."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "helm"
    script.write_text(
        "#!/bin/sh\n"
        f'n=$(cat "{folder}/count" 2>/dev/null || echo 0); echo $((n+1)) > "{folder}/count"\n'
        f'if [ "$n" -lt {failures} ]; then echo "{stderr}" >&2; exit 1; fi\n'
        f'exec "{ROOT / "standins" / "bin" / "helm"}" "$@"\n'
    )
    script.chmod(0o755)
    return folder


API_TIMEOUT = 'Error: Kubernetes cluster unreachable: Get "https://10.0.0.1:443/version": dial tcp 10.0.0.1:443: i/o timeout'


def release_history(tmp_path: Path, helm_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": f"{helm_dir}{os.pathsep}{os.environ['PATH']}", LOCAL_RELEASES_ENV: str(tmp_path / "rel"),
           XCOM_DIR_ENV: str(tmp_path / "xcom")}  # fmt: skip
    return run_stage(
        "ml.release", "rollback", "--release", "inference-api", "--namespace", "ml-serving",
        "--chart", str(ROOT / "k8s" / "helm" / "inference-api"), "--revision", "2", env=env,
    )  # fmt: skip


def test_a_helm_read_through_a_busy_api_server_is_retried(tmp_path: Path) -> None:
    helm_dir = fake_helm(tmp_path / "bin", failures=2, stderr=API_TIMEOUT)
    done = release_history(tmp_path, helm_dir)
    # Past the timeouts, the local helm answers: the release has no history, which is the user's problem.
    assert done.returncode == EXIT_INVALID_INPUT, done.stderr[-3000:]
    assert "is not in the release's history" in error_line(done)
    assert int((helm_dir / "count").read_text()) == 3


def test_a_helm_timeout_that_lasts_is_retryable_and_a_refusal_is_not(tmp_path: Path) -> None:
    lasting = release_history(
        tmp_path / "a", fake_helm(tmp_path / "a" / "bin", failures=99, stderr=API_TIMEOUT)
    )
    assert lasting.returncode == EXIT_TRANSIENT, lasting.stderr[-3000:]
    assert "i/o timeout" in error_line(lasting)
    forbidden = (
        'Error: releases is forbidden: User "system:serviceaccount:ml:x" cannot list resource "secrets"'
    )
    refused = release_history(
        tmp_path / "b", fake_helm(tmp_path / "b" / "bin", failures=99, stderr=forbidden)
    )
    assert refused.returncode == EXIT_INVALID_INPUT
    assert "forbidden" in error_line(refused)
    assert int((tmp_path / "b" / "bin" / "count").read_text()) == 1


# -- The classification itself ------------------------------------------------------------------------------


def test_classification_of_client_library_errors() -> None:
    from botocore.exceptions import ClientError, EndpointConnectionError
    from mlflow.exceptions import MlflowException, RestException

    def s3_error(code: str, status: int) -> ClientError:
        return ClientError(
            {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject"
        )

    assert faults.classify(s3_error("SlowDown", 503)) == faults.TRANSIENT
    assert faults.classify(s3_error("InternalError", 500)) == faults.TRANSIENT
    assert faults.classify(s3_error("NoSuchKey", 404)) == faults.INVALID
    assert faults.classify(s3_error("AccessDenied", 403)) == faults.INVALID
    assert faults.classify(EndpointConnectionError(endpoint_url="http://minio:9000")) == faults.TRANSIENT
    unavailable = MlflowException(
        "API request to http://mlflow:5000/api/2.0/x failed with exception Max retries"
    )
    assert faults.classify(unavailable) == faults.TRANSIENT
    assert faults.classify(RestException({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no"})) == (
        faults.INVALID
    )
    assert (
        faults.classify(RestException({"error_code": "PERMISSION_DENIED", "message": "no"})) == faults.INVALID
    )
    assert faults.classify(MlflowException("a bug in our code")) == faults.UNKNOWN
    assert faults.classify(ValueError("a bug")) == faults.UNKNOWN
    assert faults.classify(StageError("bad")) == faults.INVALID


@pytest.mark.parametrize(
    ("stderr", "transient"),
    [
        (API_TIMEOUT, True),
        ('Error: Get "https://10.0.0.1/api/v1/namespaces/x/secrets": unexpected EOF', True),
        ("Error: etcdserver: request timed out", True),
        ("Error: the server is currently unable to handle the request (get secrets.)", True),
        # Deterministic errors whose words look like a network's: the user's to fix.
        ('Error: parse error at (inference-api/templates/rollout.yaml:40): unexpected EOF', False),
        ("Error: values don't meet the specifications of the schema(s): analysis.timeoutSeconds: Invalid type", False),
        ("Error: values don't meet the specifications of the schema(s): workload: oneOf failed", False),
        ('Error: template: inference-api/templates/x.yaml:3:11: nil pointer evaluating .Values.geoffrey', False),
        ('Error: UPGRADE FAILED: "inference-api" has no deployed releases', False),
    ],
)  # fmt: skip
def test_helm_errors_are_transient_only_when_the_cluster_was_busy_or_out_of_reach(
    stderr: str, transient: bool
) -> None:
    assert bool(faults.HELM_TRANSIENT.search(stderr)) is transient


def test_retry_backs_off_then_gives_up_as_transient() -> None:
    calls: list[float] = []

    def flaky() -> str:
        calls.append(time.monotonic())
        raise TransientError("busy")

    with pytest.raises(TransientError, match="still failing after 3 attempts"):
        faults.retry(flaky, what="x", transient=lambda e: isinstance(e, TransientError), attempts=3,
                     base_delay=0.01)  # fmt: skip
    assert len(calls) == 3
    with pytest.raises(ValueError):  # not transient: raised at once
        faults.retry(lambda: int("x"), what="y", transient=lambda e: False)
