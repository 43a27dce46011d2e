"""Nothing left dangling: killed or failed stages end their MLflow runs and logged models, staging folders of
killed attempts are removed by the next prepare, and a promote retried after a crash tells the truth."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from contract import CHAMPION_AT_EVALUATION_TAG, END_REASON_TAG, HEALTHY, RUN_KEY_TAG, XCOM_DIR_ENV
from ml import tracking
from ml.prepare import prepare
from ml.promote import promote
from ml.storage import STALE_STAGING_SECONDS, remove_stale_staging
from ml.train import train
from tests.helpers import train_arguments, train_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = str(tmp_path_factory.mktemp("dangling") / "prepared")
    prepare("synthetic://card-transactions?rows=40000&seed=5", "is_fraud", folder, time_column="timestamp")
    return folder


def keyed_run(experiment: str, key: str):
    return tracking.find_keyed_run(experiment, key)


def test_a_stage_stopped_by_sigterm_ends_its_run_as_killed_with_the_reason(
    mlflow_server: str, prepared: str, tmp_path: Path
) -> None:
    command = [
        sys.executable, "-m", "ml.train", "--prepared-uri", prepared, "--experiment", "dangling",
        "--run-key", "dangling/sigterm",
        *train_arguments(n_estimators=20000, max_depth=8, learning_rate=0.01, early_stopping_rounds=20000,
                         device="cpu", seed=1),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), XCOM_DIR_ENV: str(tmp_path / "xcom")}
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        run = keyed_run("dangling", "dangling/sigterm")
        if run is not None and run.data.params:  # training has started inside the run
            break
        time.sleep(0.3)
    else:
        process.kill()
        pytest.fail("the training run never started")
    time.sleep(1)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, output[-3000:]
    run = tracking.client().get_run(run.info.run_id)
    assert run.info.status == "KILLED"
    assert "SIGTERM" in run.data.tags[END_REASON_TAG]
    assert not (tmp_path / "xcom").exists()


def test_a_run_a_dead_attempt_left_running_is_ended_and_its_pending_model_failed(
    mlflow_server: str, prepared: str
) -> None:
    """An attempt killed with SIGKILL (out of memory, a lost node) cannot close anything: the next one does."""
    experiment = tracking.experiment_id("dangling")
    dead = tracking.create_keyed_run("dangling", "dangling/killed", run_name="killed")
    client = tracking.client()
    client.log_param(dead.info.run_id, "n_estimators", "7")  # it had started training
    pending = client.create_logged_model(experiment, source_run_id=dead.info.run_id, name="model")
    assert client.get_run(dead.info.run_id).info.status == "RUNNING"

    train(prepared, train_config(n_estimators=20), experiment="dangling", run_key="dangling/killed")

    ended = client.get_run(dead.info.run_id)
    assert ended.info.status == "KILLED"
    assert "superseded" in ended.data.tags[END_REASON_TAG]
    assert ended.data.tags[RUN_KEY_TAG] != "dangling/killed"
    assert str(client.get_logged_model(pending.model_id).status) == "FAILED"


def test_a_stage_error_inside_the_run_ends_it_as_failed_and_fails_its_pending_models(
    mlflow_server: str,
) -> None:
    experiment = tracking.experiment_id("dangling")
    run = tracking.create_keyed_run("dangling", "dangling/error", run_name="error")
    client = tracking.client()
    with pytest.raises(RuntimeError, match="disk full"), tracking.active_run(run.info.run_id):
        model = client.create_logged_model(experiment, source_run_id=run.info.run_id, name="model")
        raise RuntimeError("disk full")
    ended = client.get_run(run.info.run_id)
    assert ended.info.status == "FAILED"
    assert ended.data.tags[END_REASON_TAG] == "RuntimeError: disk full"
    assert str(client.get_logged_model(model.model_id).status) == "FAILED"


def test_prepare_removes_what_killed_attempts_left_beside_its_output(tmp_path: Path) -> None:
    output = tmp_path / "prepared" / "run-1"
    own = tmp_path / "prepared" / ".run-1.partial-deadbeef"
    retired = tmp_path / "prepared" / ".run-1.old-deadbeef"
    other_old = tmp_path / "prepared" / ".run-0.partial-cafef00d"
    other_fresh = tmp_path / "prepared" / ".run-2.partial-0badf00d"
    for folder in (own, retired, other_old, other_fresh):
        folder.mkdir(parents=True)
        (folder / "train.parquet").write_bytes(b"x" * 1000)
    long_ago = time.time() - STALE_STAGING_SECONDS - 60
    os.utime(other_old, (long_ago, long_ago))

    prepare(
        "synthetic://card-transactions?rows=3000&seed=2", "is_fraud", str(output), time_column="timestamp"
    )

    assert sorted(p.name for p in output.parent.iterdir()) == [other_fresh.name, "run-1"]
    assert remove_stale_staging(output) == []


@pytest.fixture()
def released(mlflow_server: str, trained_model: dict) -> tuple[str, str, str]:
    """A registered model with a champion (v1) and a candidate (v2) compared with it, whose canary was Healthy."""
    name = f"dangling-{time.time_ns()}"
    client = tracking.client()
    client.create_registered_model(name)
    uri = trained_model["trained"].model_uri
    first = mlflow.register_model(uri, name).version
    second = mlflow.register_model(uri, name, tags={CHAMPION_AT_EVALUATION_TAG: str(first)}).version
    client.set_registered_model_alias(name, "champion", first)
    return name, str(first), str(second)


def verdict(name: str, version: str) -> dict:
    return {
        "phase": HEALTHY,
        "model_uri": f"models:/{name}/{version}",
        "message": "canary healthy",
        "revision": 3,
    }


def test_a_promote_retried_after_a_crash_reports_the_move_its_first_attempt_made(released) -> None:
    name, first, second = released
    promote(name=name, version=second, alias="champion", verdict=verdict(name, second))
    # The first attempt crashed after moving the alias, before its result reached Airflow: the retry runs again.
    retried = promote(name=name, version=second, alias="champion", verdict=verdict(name, second))
    assert (retried.promoted, retried.previous_champion, retried.champion) == (True, first, second)


def test_a_promote_finding_the_alias_moved_by_a_person_does_not_claim_the_move(released) -> None:
    name, _, second = released
    tracking.client().set_registered_model_alias(name, "champion", second)  # by hand, outside the pipeline
    result = promote(name=name, version=second, alias="champion", verdict=verdict(name, second))
    assert (result.promoted, result.previous_champion, result.champion) == (False, None, second)
