"""Tune the training's hyperparameters: workers sharing one Optuna study, every trial a nested MLflow run.

The pipeline maps ``worker`` over N pods (the GPU preset) when the form's switch is on. Each worker loads the
prepared training and validation splits once and pulls trials from the DAG run's study until the study holds the
budget's trials (finished or pruned, across all workers) or the budget's minutes are spent. A trial trains
XGBoost exactly as the train stage does (``ml.train.booster_params``) with early stopping on the validation
average precision, reported every few rounds to a median pruner that stops trials behind the others; TPE proposes
the next values. The first trial is the form's own values, so tuning never ends below them on validation.

``best`` then reads the study: its best trial's parameters are the stage's result, which ``ml.train --tuned``
takes in place of the form's. Trials a killed worker left running are marked failed (and their MLflow runs
killed). The study is named after the DAG run and its inputs, so re-running the stage for the same DAG run
resumes it: finished trials count towards the budget and are not run again.

The study lives in a database where the platform has one (``$MLOPS_TUNING_STORAGE``, an SQLAlchemy URL: the
Postgres of the compose stack or the cluster, from a Secret) and otherwise in a journal file under
``--storage-dir`` (the embedded defaults: a local folder; several processes may share it).

    python -m ml.tune worker --prepared-uri data/prepared/x --experiment fraud --run-key manual/1 \\
        --storage-dir data/tuning --trials 20 --minutes 30 --worker 0 --form '{...training settings...}'
    python -m ml.tune best --prepared-uri data/prepared/x --experiment fraud --run-key manual/1 \\
        --storage-dir data/tuning --form '{...}'
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from contract import TUNING_STORAGE_ENV
from ml import tracking
from ml.errors import StageError
from ml.runtime import ArgumentParser, json_object, non_negative_int
from ml.splits import Pieces
from ml.storage import read_manifest
from ml.train import (
    ROUND_METRIC,
    TUNABLE,
    TrainConfig,
    booster_params,
    fitted_encoder,
    quantile_matrix,
    resolve_device,
)

log = logging.getLogger(__name__)

#: A trial reports its validation average precision to the pruner every this many rounds (each report is a
#: write to the study's storage).
REPORT_EVERY_ROUNDS = 10
#: The pruner compares a trial with the others only after this many finished trials.
PRUNER_STARTUP_TRIALS = 5
#: The journal file of the studies in ``--storage-dir`` (the embedded defaults).
JOURNAL_FILE = "studies.journal"
#: Tags of a trial's MLflow run.
TRIAL_TAG = "mlops.tuning.trial"
STUDY_TAG = "mlops.tuning.study"
TRIAL_STATE_TAG = "mlops.tuning.state"
#: Seconds between a worker's heartbeats in a database storage; a trial without one for the grace period belongs
#: to a dead worker and is marked failed by the next worker that starts.
HEARTBEAT_SECONDS = 60
HEARTBEAT_GRACE_SECONDS = 300


#: The search space of ``ml.train.TUNABLE``: (low, high, log scale) for numbers (whole numbers when the bounds
#: are), a list of choices otherwise. Ranges that hold for tabular data of any size.
SEARCH_SPACE: dict[str, tuple[float, float, bool] | list[str]] = {
    "learning_rate": (0.01, 0.3, True),
    "max_depth": (2, 10, False),
    "min_child_weight": (0.1, 50.0, True),
    "subsample": (0.5, 1.0, False),
    "colsample_bytree": (0.3, 1.0, False),
    "reg_alpha": (1e-3, 10.0, True),
    "reg_lambda": (1e-3, 10.0, True),
    "scale_pos_weight": ["none", "sqrt", "auto"],
}


def search_space(trial: Any) -> dict[str, Any]:
    """The values one trial tries."""
    values: dict[str, Any] = {}
    for name, space in SEARCH_SPACE.items():
        if isinstance(space, list):
            values[name] = trial.suggest_categorical(name, space)
        elif isinstance(space[0], int) and isinstance(space[1], int):
            values[name] = trial.suggest_int(name, space[0], space[1], log=space[2])
        else:
            values[name] = trial.suggest_float(name, space[0], space[1], log=space[2])
    return values


def first_trial(form: TrainConfig) -> dict[str, Any]:
    """The form's values as a trial: numbers brought within the search space (an L1 weight of 0 becomes the
    space's smallest), a choice outside it left to the sampler."""
    values: dict[str, Any] = {}
    for name, space in SEARCH_SPACE.items():
        value = getattr(form, name)
        if isinstance(space, list):
            if value in space:
                values[name] = value
        else:
            values[name] = type(space[0])(min(max(value, space[0]), space[1]))
    return values


def storage(folder: str) -> Any:
    """The study's storage: the database of ``$MLOPS_TUNING_STORAGE``, else a journal file in ``folder``."""
    import optuna

    url = os.environ.get(TUNING_STORAGE_ENV, "").strip()
    if url:
        return optuna.storages.RDBStorage(
            url, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=HEARTBEAT_GRACE_SECONDS
        )
    if "://" in folder:
        raise StageError(
            f"tuning needs a database when the data root is not a local folder ({folder}): set "
            f"{TUNING_STORAGE_ENV} to an SQLAlchemy URL (in the cluster, the Secret named in platform.yaml's "
            "tuning.storage_secret)"
        )
    from optuna.storages.journal import JournalFileBackend

    Path(folder).mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(str(Path(folder) / JOURNAL_FILE)))


def study_name(run_key: str, form: TrainConfig, digest: str) -> str:
    """The DAG run's study: the same run with the same data and fixed settings resumes it; other inputs get
    another study. Where the final model trains (device, refit, distributed) does not change the trials."""
    where = ("device", "refit", "distributed")
    fixed = {k: v for k, v in asdict(form).items() if k not in TUNABLE and k not in where}
    payload = json.dumps({"data": digest, "fixed": fixed}, sort_keys=True)
    return f"{run_key}@{hashlib.sha256(payload.encode()).hexdigest()[:12]}"


def open_study(name: str, folder: str, seed: int, trials: int, patience: int) -> Any:
    """Create the study, or load it when it exists (a resumed stage, another worker)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(
        study_name=name,
        storage=storage(folder),
        direction="maximize",
        load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(3, trials // 4))),
        pruner=optuna.pruners.MedianPruner(
            n_startup_trials=PRUNER_STARTUP_TRIALS,
            n_warmup_steps=patience,
            interval_steps=REPORT_EVERY_ROUNDS,
        ),
    )


class _Data:
    """The training and validation splits, encoded once per worker as XGBoost matrices."""

    def __init__(self, prepared_uri: str, manifest: dict[str, Any]) -> None:

        features, categorical, target = manifest["features"], manifest["categorical"], manifest["target"]
        # The train stage's matrices, read a piece at a time as it reads them: a trial's score is the training's.
        train, validation = (Pieces.published(prepared_uri, name) for name in ("train", "validation"))
        encoder = fitted_encoder(train, features, categorical)
        types = ["c" if name in categorical else "q" for name in features]
        self.labels = train.column(target)
        self.train = quantile_matrix(train, encoder, target, types)
        self.validation = quantile_matrix(validation, encoder, target, types, ref=self.train)
        self.rows = (len(train), len(validation))


class Objective:
    """One trial: train with early stopping, report to the pruner, log a nested MLflow run."""

    def __init__(self, data: _Data, form: TrainConfig, device: str, parent_run_id: str, study: str) -> None:
        self.data, self.form, self.device = data, form, device
        self.parent_run_id, self.study = parent_run_id, study
        self.experiment_id = tracking.client().get_run(parent_run_id).info.experiment_id

    def __call__(self, trial: Any) -> float:
        import optuna
        import xgboost

        config = replace(self.form, **search_space(trial))
        child = tracking.client().create_run(
            self.experiment_id,
            run_name=f"trial {trial.number}",
            tags={
                "mlflow.parentRunId": self.parent_run_id,
                TRIAL_TAG: str(trial.number),
                STUDY_TAG: self.study,
            },
        )
        run_id = child.info.run_id
        tracking.client().log_batch(run_id, params=_params({**asdict(config), "device_used": self.device}))
        history: list[float] = []
        started = time.perf_counter()
        state, status = "FAILED", "FAILED"
        try:
            booster = xgboost.train(
                {**booster_params(config, self.data.labels, self.device), "seed": config.seed,
                 "nthread": os.cpu_count()},
                self.data.train,
                num_boost_round=config.n_estimators,
                evals=[(self.data.validation, "validation")],
                early_stopping_rounds=config.early_stopping_rounds,
                callbacks=[_reporter(trial, history)],
                verbose_eval=False,
            )  # fmt: skip
            value, rounds = float(booster.best_score), int(booster.best_iteration) + 1
            trial.set_user_attr("best_rounds", rounds)
            tracking.client().log_batch(run_id, metrics=_metrics(
                {"val_average_precision": value, "best_rounds": rounds, "seconds": time.perf_counter() - started}
            ))  # fmt: skip
            state, status = "COMPLETE", "FINISHED"
            log.info("trial %d: validation AP %.4f after %d rounds %s", trial.number, value, rounds,
                     trial.params)  # fmt: skip
            return value
        except optuna.TrialPruned:
            state, status = "PRUNED", "FINISHED"
            log.info("trial %d pruned after %d rounds", trial.number, len(history))
            raise
        finally:
            tracking.log_metric_series(run_id, ROUND_METRIC, history)
            tracking.client().set_tag(run_id, TRIAL_STATE_TAG, state)
            tracking.client().set_terminated(run_id, status)


def _reporter(trial: Any, history: list[float]) -> Any:
    """An XGBoost callback that keeps the validation average precision of each round in ``history`` and reports
    the best so far to the trial every ``REPORT_EVERY_ROUNDS``, stopping the training when the pruner says so."""
    import optuna
    import xgboost

    class Report(xgboost.callback.TrainingCallback):
        def after_iteration(self, model: Any, epoch: int, evals_log: Any) -> bool:
            history.append(float(evals_log["validation"]["aucpr"][-1]))
            if (epoch + 1) % REPORT_EVERY_ROUNDS == 0:
                trial.report(max(history), epoch + 1)
                if trial.should_prune():
                    raise optuna.TrialPruned()
            return False

    return Report()


def _params(values: dict[str, Any]) -> list[Any]:
    from mlflow.entities import Param

    return [Param(key, str(value)) for key, value in values.items()]


def _metrics(values: dict[str, float]) -> list[Any]:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(key, float(value), now, 0) for key, value in values.items()]


def _form(value: dict[str, Any]) -> TrainConfig:
    try:
        form = TrainConfig(**value)
    except TypeError as err:
        raise StageError(f"--form is not a training config: {err}") from err
    if form.model_type != "xgboost":
        raise StageError(f"tuning searches XGBoost's hyperparameters; the form trains {form.model_type}")
    return form


def worker(
    prepared_uri: str,
    form: TrainConfig,
    *,
    experiment: str,
    run_key: str,
    storage_dir: str,
    trials: int,
    minutes: float,
    worker_index: int,
) -> dict[str, Any]:
    """Run trials of the DAG run's study until it holds ``trials`` or ``minutes`` have passed."""
    import optuna
    from optuna.trial import TrialState

    if trials < 1 or minutes <= 0:
        raise StageError(
            f"the tuning budget needs at least 1 trial and some minutes, got {trials}, {minutes}"
        )
    manifest = read_manifest(prepared_uri)
    device = resolve_device(form.device, form.model_type)
    data = _Data(prepared_uri, manifest)  # before the study and the run: unreadable data opens neither
    name = study_name(run_key, form, manifest.get("digest", ""))
    study = open_study(name, storage_dir, form.seed + worker_index, trials, form.early_stopping_rounds)
    if worker_index == 0 and not study.trials:
        study.enqueue_trial(first_trial(form), skip_if_exists=True)
    parent = tracking.keyed_run(experiment, run_key, run_name=run_key.replace("/", " "))
    counted = (TrialState.COMPLETE, TrialState.PRUNED)
    before = len(study.get_trials(deepcopy=False, states=counted))
    log.info("worker %d: study %s holds %d of %d trials; %d rows to train on with device=%s",
             worker_index, name, before, trials, data.rows[0], device)  # fmt: skip
    if before < trials:
        study.optimize(
            Objective(data, form, device, parent.info.run_id, name),
            n_trials=trials - before,
            timeout=minutes * 60,
            callbacks=[optuna.study.MaxTrialsCallback(trials, states=counted)],
            gc_after_trial=True,
        )
    done = study.get_trials(deepcopy=False, states=counted)
    completed = [t for t in done if t.state == TrialState.COMPLETE]
    return {
        "study": name,
        "worker": worker_index,
        "trials_in_study": len(done),
        "best_value": max((t.value for t in completed), default=None),
    }


def best(
    prepared_uri: str, form: TrainConfig, *, experiment: str, run_key: str, storage_dir: str
) -> dict[str, Any]:
    """The study's best trial, once its workers are done: the stage's result for ``ml.train --tuned``."""
    from optuna.trial import TrialState

    manifest = read_manifest(prepared_uri)
    name = study_name(run_key, form, manifest.get("digest", ""))
    study = open_study(name, storage_dir, form.seed, 1, form.early_stopping_rounds)
    abandoned = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    trials_storage = storage(storage_dir)
    study_id = trials_storage.get_study_id_from_name(name)
    for trial in abandoned:  # every worker has ended: nothing runs them any more
        trial_id = trials_storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        trials_storage.set_trial_state_values(trial_id, TrialState.FAIL)
    parent = tracking.find_keyed_run(experiment, run_key)
    if parent is not None:
        _end_abandoned_trial_runs(parent, {t.number for t in abandoned})
    counts = {
        state.name.lower(): len(study.get_trials(deepcopy=False, states=(state,))) for state in TrialState
    }
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not completed:
        raise StageError(f"study {name} has no finished trial ({counts}): there is nothing to train with")
    top = max(completed, key=lambda t: t.value)
    result = {
        "study": name,
        "params": {key: top.params[key] for key in TUNABLE},
        "value": top.value,
        "trial": top.number,
        "best_rounds": top.user_attrs.get("best_rounds"),
        "trials": {state: count for state, count in counts.items() if count},
    }
    if parent is not None:
        tracking.client().set_tag(parent.info.run_id, "mlops.tuning", json.dumps(result)[:5000])
    log.info("best of %s: trial %d, validation AP %.4f, %s", name, top.number, top.value, result["params"])
    return result


def _end_abandoned_trial_runs(parent: Any, numbers: set[int]) -> None:
    if not numbers:
        return
    children = tracking.client().search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}' and attributes.status = 'RUNNING'",
    )
    for child in children:
        if int(child.data.tags.get(TRIAL_TAG, -1)) in numbers:
            tracking.end_abandoned(child, "its tuning worker ended before the trial did")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = ArgumentParser(prog="python -m ml.tune", doc=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    described = {
        "worker": "run trials of the study until its budget (trials, minutes) is spent",
        "best": "the study's best trial: its hyperparameters for train",
    }
    for command, what in described.items():
        sub = commands.add_parser(command, help=what, description=what)
        sub.add_argument("--prepared-uri", required=True, help="folder published by ml.prepare")
        sub.add_argument("--experiment", required=True, help="MLflow experiment name")
        sub.add_argument("--run-key", required=True, help="key of the DAG run's MLflow run")
        sub.add_argument("--storage-dir", required=True, help="folder of the journal file without a database")
        sub.add_argument(
            "--form", type=json_object("--form", "the training settings"), required=True,
            help="the training settings (JSON): the fixed ones, and the first trial's values",
        )  # fmt: skip
        if command == "worker":
            sub.add_argument(
                "--trials", type=non_negative_int, required=True, help="trials in the whole study"
            )
            sub.add_argument("--minutes", type=float, required=True, help="time budget of this worker")
            sub.add_argument("--worker", type=non_negative_int, required=True, help="index of this worker")
    args = parser.parse_args(argv)
    common = {"experiment": args.experiment, "run_key": args.run_key, "storage_dir": args.storage_dir}
    form = _form(args.form)
    if args.command == "worker":
        return worker(args.prepared_uri, form, trials=args.trials, minutes=args.minutes,
                      worker_index=args.worker, **common)  # fmt: skip
    return best(args.prepared_uri, form, **common)


if __name__ == "__main__":
    from ml.runtime import run_stage

    run_stage(main)
