"""The tune stage: workers as real processes sharing a study (Optuna's journal file), a real MLflow server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from contract import EXIT_INVALID_INPUT, RUN_KEY_TAG, TUNING_STORAGE_ENV, XCOM_DIR_ENV, XCOM_RESULT_FILE
from ml import tune
from ml.errors import StageError
from ml.prepare import prepare
from ml.train import ROUND_METRIC, TUNABLE, train
from tests.helpers import train_config

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENT = "tuning"
#: Small enough for a test: few rounds, short patience.
FORM = train_config(n_estimators=40, early_stopping_rounds=5, device="cpu")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("tune-prepared") / "interval"
    prepare("synthetic://card-transactions?rows=20000&seed=3", "is_fraud", str(out), time_column="timestamp",
            drop_columns=["transaction_id"])  # fmt: skip
    return str(out)


def worker_command(prepared: str, storage: Path, run_key: str, index: int, trials: int) -> list[str]:
    return [
        sys.executable, "-m", "ml.tune", "worker", "--prepared-uri", prepared, "--experiment", EXPERIMENT,
        "--run-key", run_key, "--storage-dir", str(storage), "--form", json.dumps(asdict(FORM)),
        "--trials", str(trials), "--minutes", "5", "--worker", str(index),
    ]  # fmt: skip


def run_workers(prepared: str, storage: Path, run_key: str, workers: int, trials: int) -> list[dict]:
    """The mapped tune task's pods, as processes started together."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop(TUNING_STORAGE_ENV, None)
    processes = []
    for index in range(workers):
        xcom = storage.parent / f"xcom-{run_key.replace('/', '_')}-{index}"
        xcom.mkdir(parents=True, exist_ok=True)
        processes.append((xcom, subprocess.Popen(
            worker_command(prepared, storage, run_key, index, trials), cwd=ROOT, env={**env, XCOM_DIR_ENV: str(xcom)},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )))  # fmt: skip
    results = []
    for xcom, process in processes:
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, output[-3000:]
        results.append(json.loads((xcom / XCOM_RESULT_FILE).read_text()))
    return results


def study_of(storage: Path, run_key: str, prepared: str) -> optuna.Study:
    from ml.storage import read_manifest

    name = tune.study_name(run_key, FORM, read_manifest(prepared)["digest"])
    return optuna.load_study(study_name=name, storage=tune.storage(str(storage)))


def test_two_workers_share_one_study_and_every_trial_is_a_nested_run(
    mlflow_server, prepared, tmp_path
) -> None:
    storage, run_key = tmp_path / "tuning", "dag/tune-a"
    results = run_workers(prepared, storage, run_key, workers=2, trials=8)
    study = study_of(storage, run_key, prepared)
    finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    # The budget is the whole study's: each worker stops when the study holds it (one trial more per worker
    # at most: the other may have started one as the budget filled).
    assert 8 <= len(finished) <= 9
    assert {r["study"] for r in results} == {study.study_name}
    # The first trial is the form's own values (brought within the search space).
    assert study.trials[0].params == tune.first_trial(FORM)

    client = MlflowClient()
    keyed = client.search_runs(
        [client.get_experiment_by_name(EXPERIMENT).experiment_id], f"tags.`{RUN_KEY_TAG}` = '{run_key}'"
    )
    assert len(keyed) == 1, "the workers made one parent run between them"
    children = client.search_runs(
        [keyed[0].info.experiment_id], f"tags.mlflow.parentRunId = '{keyed[0].info.run_id}'"
    )
    assert sorted(int(c.data.tags[tune.TRIAL_TAG]) for c in children) == [t.number for t in study.trials]
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.tags[tune.TRIAL_STATE_TAG] in ("COMPLETE", "PRUNED")
        assert set(TUNABLE) <= set(child.data.params)
        history = client.get_metric_history(child.info.run_id, ROUND_METRIC)
        # One value a round; a trial early-stopped (patience 5) may end before the first report, a pruned one
        # only at a report.
        assert sorted(m.step for m in history) == list(range(len(history))) and history
        if child.data.tags[tune.TRIAL_STATE_TAG] == "PRUNED":
            assert len(history) >= tune.REPORT_EVERY_ROUNDS

    # The best trial is the stage's result, and train takes its values over the form's.
    best = tune.best(prepared, FORM, experiment=EXPERIMENT, run_key=run_key, storage_dir=str(storage))
    assert best["value"] == study.best_value and best["params"] == study.best_params
    trained = train(prepared, FORM, experiment=EXPERIMENT, run_key=run_key, tuned=best)
    assert trained.run_id == keyed[0].info.run_id and trained.hyperparameters == "tuning"
    params = client.get_run(trained.run_id).data.params
    assert float(params["learning_rate"]) == pytest.approx(best["params"]["learning_rate"])
    assert params["hyperparameters_from"] == "tuning"


def test_re_running_the_stage_resumes_the_study_and_abandoned_trials_are_failed(
    mlflow_server, prepared, tmp_path
) -> None:
    storage, run_key = tmp_path / "tuning", "dag/tune-b"
    run_workers(prepared, storage, run_key, workers=1, trials=3)
    study = study_of(storage, run_key, prepared)
    numbers = [t.number for t in study.trials]
    # A worker killed mid-trial leaves it RUNNING.
    study.ask()
    [again] = run_workers(prepared, storage, run_key, workers=1, trials=3)
    assert again["trials_in_study"] == 3
    study = study_of(storage, run_key, prepared)
    assert [t.number for t in study.trials if t.state != TrialState.RUNNING] == numbers, "no trial ran again"

    [more] = run_workers(prepared, storage, run_key, workers=1, trials=5)
    assert more["trials_in_study"] == 5

    best = tune.best(prepared, FORM, experiment=EXPERIMENT, run_key=run_key, storage_dir=str(storage))
    assert best["trials"]["fail"] == 1, "the abandoned trial is failed once every worker is done"
    assert best["trials"].get("complete", 0) + best["trials"].get("pruned", 0) == 5
    assert not study_of(storage, run_key, prepared).get_trials(states=(TrialState.RUNNING,))


def test_other_inputs_open_another_study() -> None:
    other_rounds = train_config(n_estimators=41, early_stopping_rounds=5, device="cpu")
    tuned_value = train_config(n_estimators=40, early_stopping_rounds=5, device="cpu", learning_rate=0.2)
    base = tune.study_name("dag/x", FORM, "digest-1")
    assert tune.study_name("dag/x", FORM, "digest-2") != base
    assert tune.study_name("dag/x", other_rounds, "digest-1") != base
    # A tunable value of the form is where the search starts, not another study.
    assert tune.study_name("dag/x", tuned_value, "digest-1") == base


def test_a_pruned_trial_stops_early_and_says_so(mlflow_server, prepared, tmp_path) -> None:
    from ml.storage import read_manifest
    from ml.tracking import keyed_run

    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=1.01))
    # The form's values, which learn past the first report (sampled ones may early-stop before it: flaky).
    study.enqueue_trial(tune.first_trial(FORM))
    parent = keyed_run(EXPERIMENT, "dag/tune-pruned", "tune pruned")
    objective = tune.Objective(
        tune._Data(prepared, read_manifest(prepared)), FORM, "cpu", parent.info.run_id, "s"
    )
    study.optimize(objective, n_trials=1)
    [trial] = study.trials
    assert trial.state == TrialState.PRUNED and trial.last_step == tune.REPORT_EVERY_ROUNDS
    [child] = MlflowClient().search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert child.data.tags[tune.TRIAL_STATE_TAG] == "PRUNED"
    assert len(MlflowClient().get_metric_history(child.info.run_id, ROUND_METRIC)) == 10


def test_without_a_database_the_data_root_must_be_a_local_folder(monkeypatch) -> None:
    monkeypatch.delenv(TUNING_STORAGE_ENV, raising=False)
    with pytest.raises(StageError, match=TUNING_STORAGE_ENV):
        tune.storage("s3://bucket/tuning/dag")


def test_a_bad_budget_or_a_random_forest_form_is_bad_input(prepared, tmp_path) -> None:
    done = subprocess.run(
        [*worker_command(prepared, tmp_path, "dag/t", 0, 0)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == EXIT_INVALID_INPUT, done.stderr[-2000:]
    assert "at least 1 trial" in done.stderr
    with pytest.raises(StageError, match="random_forest"):
        tune._form(asdict(train_config(model_type="random_forest")))
