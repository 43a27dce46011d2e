"""Train a binary classifier on prepared splits and log it to MLflow.

XGBoost (``hist``) runs with ``device="cuda"`` when a GPU is visible and on the CPU otherwise; the seed's
RandomForest baseline is selectable. Categorical columns are ordinal-encoded (unknown categories become
missing) and passed to XGBoost as native categoricals; class imbalance is handled with ``scale_pos_weight``
(XGBoost) or balanced class weights (RandomForest). XGBoost stops early on the validation average precision;
then, by default, the model is refit on training + validation rows for the round count early stopping chose,
scaled to the larger set (the rows held out to stop on are not lost to the model). The early-stopped model's
validation scores are kept on the run: the evaluate stage chooses the threshold on them, never on rows the served
model learnt from. Hyperparameters come from the form, or from the tune stage's best trial (``--tuned``). With
``--progress-every N`` each XGBoost fit logs its round, validation average precision and time every N rounds, and
the learning curve reaches the MLflow run as it trains.

The model is logged as a scikit-learn pipeline (encoding + estimator) whose pyfunc predicts probabilities,
with its signature, an input example and the lineage of the data it learnt from.

    python -m ml.train --prepared-uri data/prepared/x --experiment fraud --run-key manual/1 --model-type xgboost \\
        ... --tuned '{"params": {"learning_rate": 0.05, "max_depth": 6}}'
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from contract import (
    DATA_DIGEST_TAG,
    DEVICES,
    DISTRIBUTED_MODES,
    MODEL_TYPES,
    PREPARED_URI_TAG,
    TRAIN_FINGERPRINT_TAG,
    TRAIN_RESULT_TAG,
)
from ml import tracking
from ml.boosting import as_classifier
from ml.errors import StageError
from ml.features import TabularEncoder
from ml.runtime import ArgumentParser, boolean, json_object, non_negative_int
from ml.schema import to_model_input
from ml.splits import Pieces
from ml.storage import read_manifest

log = logging.getLogger(__name__)

# Types beyond skops' defaults that each model's file holds. The files are written by this stage into our own
# registry; loading them trusts exactly these types and nothing else.
SKOPS_TRUSTED_TYPES = {
    "xgboost": ["ml.features.TabularEncoder", "xgboost.core.Booster", "xgboost.sklearn.XGBClassifier"],
    "random_forest": ["ml.features.TabularEncoder", "sklearn.tree._tree.Tree"],
}
#: The model's own code (the encoder) travels inside the logged model, so it loads outside this repository.
ML_PACKAGE = Path(__file__).resolve().parent
#: What loading each model needs, pinned to the versions that trained it. Named here rather than inferred: MLflow's
#: inference loads the model again in a subprocess to see what it imports, about 5 s of every training.
REQUIREMENTS = {
    "xgboost": ("mlflow", "scikit-learn", "skops", "numpy", "pandas", "scipy", "xgboost"),
    "random_forest": ("mlflow", "scikit-learn", "skops", "numpy", "pandas", "scipy"),
}


@contextlib.contextmanager
def model_code(model_type: str) -> Iterator[str]:
    """The model's own code, to log with it: a copy of this package with only the modules its trusted types come
    from (and the packages' ``__init__`` on the way), not the whole platform. Every file is an artifact that each
    load of the model (the evaluation's, every inference API's) downloads in a request of its own."""
    package = ML_PACKAGE.name
    modules = {
        name.rsplit(".", 1)[0] for name in SKOPS_TRUSTED_TYPES[model_type] if name.startswith(f"{package}.")
    }
    with tempfile.TemporaryDirectory(prefix="model-code-") as folder:
        root = Path(folder)
        for module in sorted(modules):
            parts = module.split(".")
            packages = [Path(*parts[:depth], "__init__.py") for depth in range(1, len(parts))]
            for file in [*packages, Path(*parts).with_suffix(".py")]:
                (root / file).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(ML_PACKAGE.parent / file, root / file)
        yield str(root / package)


def pip_requirements(model_type: str) -> list[str]:
    """The model's requirements at the versions installed here (the ML stage image's)."""
    from importlib.metadata import version

    return [f"{package}=={version(package)}" for package in REQUIREMENTS[model_type]]


#: Upper bounds of what a run may ask for: more rounds or deeper trees than this is a typo, and a tree of depth
#: d has up to 2**d leaves (memory grows with it).
MAX_ROUNDS = 100_000
MAX_DEPTH = 32


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters and choices of one training run (all logged as MLflow params).

    The pipeline passes every field its form exposes; their defaults live with the DAG's, in the platform
    settings (``training``), not here.
    """

    model_type: str
    n_estimators: int
    max_depth: int
    learning_rate: float
    early_stopping_rounds: int
    # How much more a positive row weighs: "sqrt" (of the negative/positive ratio), "auto" (the ratio itself),
    # "none" (1), or a number. Full reweighting costs ranking quality on rare-positive data; "sqrt" keeps recall
    # at high thresholds for little average precision.
    scale_pos_weight: str
    device: str
    seed: int
    min_child_weight: float
    subsample: float
    colsample_bytree: float
    reg_alpha: float
    reg_lambda: float
    # Refit on training + validation rows after early stopping chose the round count (XGBoost).
    refit: bool
    # "dask": XGBoost trains with xgboost.dask on a Dask cluster (ml.distributed); "none": in this process.
    distributed: str = "none"

    def __post_init__(self) -> None:
        if self.model_type not in MODEL_TYPES:
            raise StageError(f"model_type must be one of {MODEL_TYPES}, got {self.model_type!r}")
        if self.distributed not in DISTRIBUTED_MODES:
            raise StageError(f"distributed must be one of {DISTRIBUTED_MODES}, got {self.distributed!r}")
        if self.distributed == "dask" and self.model_type != "xgboost":
            raise StageError(f"distributed: dask trains XGBoost, not {self.model_type}")
        if self.device not in DEVICES:
            raise StageError(f"device must be one of {DEVICES}, got {self.device!r}")
        checks = {
            "n_estimators": 1 <= self.n_estimators <= MAX_ROUNDS,
            "max_depth": 1 <= self.max_depth <= MAX_DEPTH,
            "learning_rate": 0 < self.learning_rate <= 1,
            "early_stopping_rounds": self.early_stopping_rounds >= 1,
            "seed": self.seed >= 0,
            "subsample": 0 < self.subsample <= 1,
            "colsample_bytree": 0 < self.colsample_bytree <= 1,
            "min_child_weight": self.min_child_weight >= 0,
            "reg_alpha": self.reg_alpha >= 0,
            "reg_lambda": self.reg_lambda >= 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        try:
            positive_weight(self.scale_pos_weight, negatives=1, positives=1)
        except StageError:
            bad.append("scale_pos_weight")
        if bad:
            raise StageError(
                f"hyperparameter(s) out of range: {', '.join(f'{b}={getattr(self, b)}' for b in bad)}"
            )


#: What the tune stage searches (its best trial's values replace the form's): the XGBoost hyperparameters that
#: matter for tabular data. The round count is not among them: early stopping chooses it.
TUNABLE = (
    "learning_rate", "max_depth", "min_child_weight", "subsample", "colsample_bytree", "reg_alpha", "reg_lambda",
    "scale_pos_weight",
)  # fmt: skip


def with_tuned(config: TrainConfig, tuned: dict[str, Any] | None) -> TrainConfig:
    """``config`` with the tuned hyperparameters (the tune stage's result, ``{"params": {...}}``) in place of the
    form's; ``config`` itself when there is no tuning result."""
    if not tuned:
        return config
    params = tuned.get("params") if isinstance(tuned, dict) else None
    if not isinstance(params, dict) or not params:
        raise StageError(f"the tuning result has no parameters: {str(tuned)[:200]!r}")
    unknown = sorted(set(params) - set(TUNABLE))
    if unknown:
        raise StageError(
            f"the tuning result sets {unknown}, which are not tunable (tunable: {list(TUNABLE)})"
        )
    if config.model_type != "xgboost":
        raise StageError(f"tuned hyperparameters are XGBoost's; the run trains {config.model_type}")
    return replace(config, **{name: type(getattr(config, name))(value) for name, value in params.items()})


@dataclass
class TrainResult:
    """The train stage's XCom result."""

    run_id: str
    model_uri: str
    model_id: str
    model_type: str
    device: str
    best_iteration: int | None
    val_average_precision: float
    train_seconds: float
    reused: bool = False
    #: Rounds of the served model when it was refit on training + validation rows (None: the early-stopped one).
    refit_rounds: int | None = None
    #: Where the hyperparameters came from: ``form`` or ``tuning``.
    hyperparameters: str = "form"


@dataclass
class Fit:
    """A fitted pipeline and what its fit showed."""

    pipeline: Any
    #: Validation average precision after each round of the early-stopped fit (XGBoost).
    history: list[float]
    best_iteration: int | None
    #: Positive-class scores of the validation rows by the early-stopped model: the rows the served model would
    #: otherwise have learnt from when it is refit.
    validation_scores: np.ndarray
    refit_rounds: int | None = None


def positive_weight(setting: str, *, negatives: int, positives: int) -> float:
    """Turn a ``scale_pos_weight`` setting into XGBoost's number."""
    ratio = negatives / max(positives, 1)
    named = {"sqrt": ratio**0.5, "auto": ratio, "none": 1.0}
    if setting in named:
        return named[setting]
    try:
        value = float(setting)
    except ValueError:
        value = 0.0
    if value <= 0:
        raise StageError(f"scale_pos_weight must be sqrt, auto, none or a positive number, got {setting!r}")
    return value


def cuda_device_count() -> int:
    """Count CUDA devices through the driver API; 0 when there is no driver or no device."""
    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if driver.cuInit(0) != 0 or driver.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return int(count.value)


def xgboost_has_cuda() -> bool:
    import xgboost

    return bool(xgboost.build_info().get("USE_CUDA", False))


def resolve_device(requested: str, model_type: str) -> str:
    """Pick ``cuda`` when asked for or (``auto``) when XGBoost has CUDA and a GPU is visible, else ``cpu``."""
    if model_type != "xgboost":
        if requested == "cuda":
            raise StageError(f"device 'cuda' is only supported by xgboost, not {model_type}")
        return "cpu"
    gpu_ready = xgboost_has_cuda() and cuda_device_count() > 0
    if requested == "cuda" and not gpu_ready:
        raise StageError(
            "device 'cuda' was requested but no GPU is usable "
            f"(xgboost built with CUDA: {xgboost_has_cuda()}, CUDA devices: {cuda_device_count()})"
        )
    if requested == "auto":
        return "cuda" if gpu_ready else "cpu"
    return requested


def booster_params(config: TrainConfig, labels: np.ndarray, device: str) -> dict[str, Any]:
    """XGBoost's learning parameters for ``config`` on these training labels: the same for the train stage's
    ``XGBClassifier`` and the tune stage's ``xgboost.train``, so that a trial's score is the training's."""
    positives = int(labels.sum())
    return {
        "objective": "binary:logistic",
        "eval_metric": "aucpr",
        "tree_method": "hist",
        "device": device,
        "max_depth": config.max_depth,
        "learning_rate": config.learning_rate,
        "min_child_weight": config.min_child_weight,
        "subsample": config.subsample,
        "colsample_bytree": config.colsample_bytree,
        "reg_alpha": config.reg_alpha,
        "reg_lambda": config.reg_lambda,
        "scale_pos_weight": positive_weight(
            config.scale_pos_weight, negatives=len(labels) - positives, positives=positives
        ),
        # Native categoricals, split by partition rather than one-hot.
        "max_cat_to_onehot": 1,
    }


def refit_rounds(best_rounds: int, train_rows: int, validation_rows: int) -> int:
    """Rounds for the refit on training + validation rows: the early-stopped count, scaled to the larger set
    (more rows take more rounds to reach the same fit at the same learning rate)."""
    return max(1, round(best_rounds * (train_rows + validation_rows) / max(train_rows, 1)))


def quantile_matrix(pieces: Pieces, encoder: TabularEncoder, target: str, feature_types: list[str],
                    ref: Any = None) -> Any:  # fmt: skip
    """XGBoost's quantised matrix of ``pieces``, built a piece at a time: each is read, encoded and handed over
    in turn (an ``xgboost.DataIter``), so the rows are never one frame nor one float matrix; what stays is the
    quantised matrix, about a byte per value. ``ref``: the training matrix whose bins it uses."""
    import xgboost

    class Batches(xgboost.DataIter):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__(release_data=True)
            self.frames: Iterator[pd.DataFrame] = iter(())
            self.reset()

        def next(self, input_data: Callable[..., None]) -> bool:
            frame = next(self.frames, None)
            if frame is None:
                return False
            input_data(
                data=encoder.transform(frame), label=frame[target].to_numpy(), feature_types=feature_types
            )
            return True

        def reset(self) -> None:
            self.frames = pieces.frames()

    return xgboost.QuantileDMatrix(Batches(), ref=ref, enable_categorical=True, nthread=os.cpu_count())


def fitted_encoder(pieces: Pieces, features: Sequence[str], categorical: Sequence[str]) -> TabularEncoder:
    """The ``TabularEncoder`` of ``pieces``, fitted a piece at a time on their categorical columns alone."""
    encode = TabularEncoder(features=list(features), categorical=list(categorical))
    return encode.fit_batches(pieces.frames(list(categorical)) if categorical else [])


def positive_scores(booster: Any, pieces: Pieces, encoder: TabularEncoder, best_iteration: int) -> np.ndarray:
    """The probability of the positive class of each row of ``pieces`` at ``best_iteration``, a piece at a time."""
    parts = [
        booster.inplace_predict(encoder.transform(frame), iteration_range=(0, best_iteration + 1))
        for frame in pieces.frames()
    ]
    return np.concatenate(parts).astype(np.float64)


#: The early-stopped fit's learning curve on the run: the validation average precision of each round, at the
#: round's index from 0 (as XGBoost's ``best_iteration`` counts).
ROUND_METRIC = "val_average_precision_by_round"
#: Where XGBoost's scikit-learn API keeps that metric while it trains (its first ``eval_set``, ``booster_params``'
#: ``eval_metric``).
VALIDATION_SET, VALIDATION_METRIC = "validation_0", "aucpr"


def progress_callback(phase: str, rounds: int, every: int, run_id: str | None = None) -> Any | None:
    """An XGBoost callback that shows a long fit's life while it runs; None when ``every`` is 0.

    Every ``every`` rounds, and at the last one, it logs a line for the task log: ``phase``, the round of
    ``rounds``, the validation average precision and the best so far (when the fit has a validation set) and the
    seconds since the fit began. With ``run_id``, the validation average precision of the rounds since the last
    line goes to that MLflow run (``ROUND_METRIC``) in one batch, each round once, sent in the background
    (``tracking.LiveSeries``): the training waits for MLflow only when it ends.
    """
    if not every:
        return None
    import xgboost

    curve = tracking.LiveSeries(run_id, ROUND_METRIC) if run_id else None

    class Progress(xgboost.callback.TrainingCallback):
        def __init__(self) -> None:
            super().__init__()
            self.started = time.perf_counter()
            self.history: list[float] = []  # XGBoost's own list of the validation metric, one value a round
            self.best, self.best_round, self.shown = float("-inf"), 0, 0

        def after_iteration(self, model: Any, epoch: int, evals_log: Any) -> bool:
            self.history = evals_log.get(VALIDATION_SET, {}).get(VALIDATION_METRIC, [])
            if self.history and self.history[-1] > self.best:  # the first best, as early stopping keeps it
                self.best, self.best_round = self.history[-1], epoch + 1
            if (epoch + 1) % every == 0:
                self.show(epoch + 1)
                if curve is not None:
                    curve.send(self.history)
            return False

        def after_training(self, model: Any) -> Any:
            if model.num_boosted_rounds() > self.shown:
                self.show(model.num_boosted_rounds())
            if curve is not None:
                curve.finish(self.history)
            return model

        def show(self, done: int) -> None:
            elapsed, self.shown = time.perf_counter() - self.started, done
            if self.history:
                log.info("%s: round %d/%d, validation average precision %.4f (best %.4f at round %d), %.1f s "
                         "elapsed", phase, done, rounds, self.history[done - 1], self.best, self.best_round,
                         elapsed)  # fmt: skip
            else:
                log.info("%s: round %d/%d, %.1f s elapsed", phase, done, rounds, elapsed)

    return Progress()


def fit_model(
    config: TrainConfig,
    train: Pieces | pd.DataFrame,
    validation: Pieces | pd.DataFrame,
    *,
    features: Sequence[str],
    categorical: Sequence[str],
    target: str,
    device: str,
    progress_every: int = 0,
    run_id: str | None = None,
    callbacks: Sequence[Any] = (),
) -> Fit:
    """Fit the encoder and estimator (XGBoost: early-stopped on ``validation``, then refit on both when
    ``config.refit``). XGBoost's fits show their progress every ``progress_every`` rounds (0: not as they run), the
    early-stopped one's learning curve going to the MLflow run ``run_id`` (``progress_callback``); ``callbacks``
    (XGBoost's) watch the early-stopped fit too. None changes the model, so none is part of ``config``.

    The splits are ``Pieces`` (or frames, a piece each): XGBoost reads them a piece at a time into its quantised
    matrices (``quantile_matrix``), so that a split larger than memory as a frame trains; the random forest
    baseline needs its rows at once.
    """
    from sklearn.pipeline import Pipeline

    train, validation = (Pieces.of(s) if isinstance(s, pd.DataFrame) else s for s in (train, validation))

    def encoder(pieces: Pieces) -> TabularEncoder:
        return fitted_encoder(pieces, features, categorical)

    if config.model_type == "random_forest":
        return _fit_forest(config, train.frame(), validation.frame(), encoder(train), target)
    import xgboost

    types = ["c" if name in categorical else "q" for name in features]
    encode = encoder(train)
    params = booster_params(config, train.column(target), device)
    d_train = quantile_matrix(train, encode, target, types)
    history: dict[str, Any] = {}
    callback = progress_callback("train", config.n_estimators, progress_every, run_id)
    booster = xgboost.train(
        {**params, "seed": config.seed, "nthread": os.cpu_count()}, d_train, num_boost_round=config.n_estimators,
        evals=[(quantile_matrix(validation, encode, target, types, ref=d_train), VALIDATION_SET)],
        early_stopping_rounds=config.early_stopping_rounds, evals_result=history, verbose_eval=False,
        callbacks=[*([callback] if callback else []), *callbacks] or None,
    )  # fmt: skip
    del d_train
    best = int(booster.best_iteration)
    stopped = as_classifier(booster, params, types, config.seed, n_estimators=config.n_estimators,
                            early_stopping_rounds=config.early_stopping_rounds)  # fmt: skip
    curve = [float(v) for v in history[VALIDATION_SET][VALIDATION_METRIC]]
    scores = positive_scores(booster, validation, encode, best)
    if not config.refit:
        return Fit(Pipeline([("encode", encode), ("model", stopped)]), curve, best, scores)
    rounds = refit_rounds(best + 1, len(train), len(validation))
    refit = _refit(config, train + validation, encoder(train + validation), types, target, device, rounds,
                   progress_every)  # fmt: skip
    return Fit(refit, curve, best, scores, rounds)


def _refit(
    config: TrainConfig,
    both: Pieces,
    encode: TabularEncoder,
    types: list[str],
    target: str,
    device: str,
    rounds: int,
    progress_every: int,
) -> Any:
    """The pipeline refit on training + validation rows (``both``) for ``rounds`` rounds."""
    import xgboost
    from sklearn.pipeline import Pipeline

    params = booster_params(config, both.column(target), device)
    callback = progress_callback("refit", rounds, progress_every)
    final = xgboost.train(
        {**params, "seed": config.seed, "nthread": os.cpu_count()}, quantile_matrix(both, encode, target, types),
        num_boost_round=rounds, callbacks=[callback] if callback else None,
    )  # fmt: skip
    return Pipeline([("encode", encode), ("model", as_classifier(final, params, types, config.seed,
                                                                 n_estimators=rounds))])  # fmt: skip


def _fit_forest(
    config: TrainConfig, train: pd.DataFrame, validation: pd.DataFrame, encode: TabularEncoder, target: str
) -> Fit:
    """The random forest baseline (the seed project's model), on every row at once."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.pipeline import Pipeline

    forest = RandomForestClassifier(
        n_estimators=100,
        max_depth=10,
        class_weight="balanced_subsample",
        n_jobs=-1,
        random_state=config.seed,
    )
    forest.fit(encode.transform(train), train[target].to_numpy())
    fitted = Pipeline([("encode", encode), ("model", forest)])
    return Fit(fitted, [], None, fitted.predict_proba(validation[list(encode.features)])[:, 1])


def fingerprint(config: TrainConfig, manifest: dict[str, Any]) -> str:
    """Identify a training by its inputs: same config and same prepared data give the same fingerprint."""
    payload = json.dumps({"config": asdict(config), "data": manifest.get("digest")}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def _keyed_run(experiment: str, run_key: str, inputs_fingerprint: str) -> tuple[Any, TrainResult | None]:
    """The MLflow run keyed ``run_key``, and its result if it already trained a model from the same inputs.

    A run that holds an attempt with other inputs (or an incomplete one) is superseded by a fresh run.
    """
    run = tracking.find_keyed_run(experiment, run_key)
    tags = run.data.tags if run is not None else {}
    if run is not None and tags.get(TRAIN_FINGERPRINT_TAG) == inputs_fingerprint and TRAIN_RESULT_TAG in tags:
        if run.info.status == "RUNNING":  # the attempt that trained it died before ending the run
            tracking.client().set_terminated(run.info.run_id, "FINISHED")
        return run, TrainResult(**{**json.loads(tags[TRAIN_RESULT_TAG]), "reused": True})
    if run is not None and (run.data.params or run.data.metrics):
        tracking.supersede(run, "a new training attempt with different inputs, or after an incomplete one")
        run = None
    if run is None:
        run = tracking.create_keyed_run(experiment, run_key, run_name=run_key.replace("/", " "))
    return run, None


#: Rows the logged datasets' schema is read from: the splits' columns and types, not their values, so a bounded
#: sample tells them all (MLflow's ``from_pandas`` profiles every row: 10 s and more per million).
SCHEMA_SAMPLE_ROWS = 1000


def _log_inputs(prepared_uri: str, manifest: dict[str, Any], splits: dict[str, Pieces]) -> None:
    """The data's lineage on the active run: where it came from, its digest, and each split as a dataset, all
    from what ``prepare`` wrote in the manifest (digest, row and positive counts, time range) rather than from a
    pass over the rows."""
    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.models import infer_signature

    class SplitDataset(MetaDataset):
        """A published split: its schema from a sample, its profile from the manifest."""

        def __init__(self, profile: dict[str, Any], **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self._profile = profile

        @property
        def profile(self) -> dict[str, Any]:
            return self._profile

        def to_dict(self) -> dict[str, str]:
            return {**super().to_dict(), "profile": json.dumps(self._profile)}

    digest = manifest.get("digest", "")
    mlflow.set_tags({PREPARED_URI_TAG: prepared_uri, DATA_DIGEST_TAG: digest})
    for name, pieces in splits.items():
        profile: dict[str, Any] = {
            key: manifest[key][name] for key in ("rows", "positives") if name in manifest.get(key, {})
        }
        if name in manifest.get("time_ranges", {}):
            profile["time_range"] = manifest["time_ranges"][name]
        dataset = SplitDataset(
            profile,
            source=resolve_dataset_source(f"{prepared_uri.rstrip('/')}/{name}.parquet"),
            name=name,
            # The split's: the prepared data's digest (whole in the run's tag) and the split's name.
            digest=f"{digest[:16]}-{name}",
            schema=infer_signature(pieces.head(SCHEMA_SAMPLE_ROWS)).inputs,
        )
        mlflow.log_input(dataset, context="training" if name == "train" else name)


def _log_model(
    pipeline: Any, validation: Pieces, manifest: dict[str, Any], config: TrainConfig, device: str
) -> Any:
    """Log the pipeline with its signature and an input example; its pyfunc predicts probabilities."""
    import mlflow

    example = to_model_input(validation.head(5)[manifest["features"]], manifest["categorical"])
    with model_code(config.model_type) as code, tracking.import_path_kept():
        return mlflow.sklearn.log_model(
            sk_model=pipeline,
            name="model",
            signature=mlflow.models.infer_signature(example, pipeline.predict_proba(example)),
            input_example=example,
            pyfunc_predict_fn="predict_proba",
            # Saved with skops, not pickle: loading executes no code beyond these declared types.
            skops_trusted_types=SKOPS_TRUSTED_TYPES[config.model_type],
            code_paths=[code],
            pip_requirements=pip_requirements(config.model_type),
            params={"model_type": config.model_type, "device_used": device},
        )


def train(
    prepared_uri: str,
    config: TrainConfig,
    *,
    experiment: str,
    run_key: str,
    tuned: dict[str, Any] | None = None,
    progress_every: int = 0,
) -> TrainResult:
    """Train on the published splits at ``prepared_uri`` and log everything to the run keyed ``run_key``, with
    the tune stage's best hyperparameters in place of ``config``'s when ``tuned`` holds them. Every
    ``progress_every`` rounds (0: never) the training logs where it is, and its learning curve so far to the run.

    A repeat with the same config and data (a retried or cleared task) returns the model already logged to
    the keyed run instead of training again; anything else supersedes that run and starts a fresh one.
    """
    import mlflow

    source = "tuning" if tuned else "form"
    config = with_tuned(config, tuned)
    manifest = read_manifest(prepared_uri)
    device = resolve_device(config.device, config.model_type)
    inputs_fingerprint = fingerprint(config, manifest)
    # The tables before the run: a folder that cannot be read opens no MLflow run.
    splits = {name: Pieces.published(prepared_uri, name) for name in ("train", "validation")}
    run, reused = _keyed_run(experiment, run_key, inputs_fingerprint)
    if reused is not None:
        log.info("run %s already trained %s for %s: reusing it", run.info.run_id, reused.model_id, run_key)
        return reused
    log.info(
        "training %s on %s (%d rows, %d features) with device=%s",
        config.model_type, prepared_uri, len(splits["train"]), len(manifest["features"]), device,
    )  # fmt: skip
    with tracking.active_run(run.info.run_id):
        mlflow.log_params({
            **asdict(config), "device_used": device, "n_features": len(manifest["features"]),
            "hyperparameters_from": source,
        })  # fmt: skip
        _log_inputs(prepared_uri, manifest, splits)
        result = _fit_and_log(run.info.run_id, config, splits, manifest, device, progress_every, prepared_uri)
        result.hyperparameters = source
        mlflow.set_tags(
            {TRAIN_FINGERPRINT_TAG: inputs_fingerprint, TRAIN_RESULT_TAG: json.dumps(asdict(result))}
        )
    log.info("validation average precision %.4f; model %s", result.val_average_precision, result.model_uri)
    return result


def _fit_and_log(
    run_id: str,
    config: TrainConfig,
    splits: dict[str, Pieces],
    manifest: dict[str, Any],
    device: str,
    progress_every: int,
    prepared_uri: str,
) -> TrainResult:
    """Fit on the active run: the learning curve, the validation average precision and the model."""
    import mlflow
    from sklearn.metrics import average_precision_score

    features, target, validation = manifest["features"], manifest["target"], splits["validation"]
    started = time.perf_counter()
    if config.distributed == "dask":  # the same fit by xgboost.dask on a Dask cluster (it reads the splits)
        from ml.distributed import fit_on_dask

        fit = Fit(**fit_on_dask(prepared_uri, manifest, config, device, booster_params=booster_params,
                                refit_rounds=refit_rounds))  # fmt: skip
        progress_every = 0  # its rounds run on the workers: the learning curve is logged after the fit
    else:
        fit = fit_model(
            config, splits["train"], validation, features=features, categorical=manifest["categorical"],
            target=target, device=device, progress_every=progress_every, run_id=run_id,
        )  # fmt: skip
    train_seconds = time.perf_counter() - started
    log.info("trained in %.1fs on %s (best iteration %s)", train_seconds, device, fit.best_iteration)
    if fit.history and not progress_every:  # with progress, logged as it trained
        tracking.log_metric_series(run_id, ROUND_METRIC, fit.history)
    # The early-stopped model's: the refit one has learnt from these rows.
    val_ap = float(average_precision_score(validation.column(target), fit.validation_scores))
    mlflow.log_metrics({"val_average_precision": val_ap, "train_seconds": train_seconds})
    if fit.refit_rounds is not None:
        tracking.log_validation_scores(run_id, fit.validation_scores)
    mlflow.set_tag(tracking.SERVED_MODEL_TAG, served_model(fit, len(splits["train"]), len(validation)))
    info = _log_model(fit.pipeline, validation, manifest, config, device)
    return TrainResult(
        run_id=run_id,
        model_uri=info.model_uri,
        model_id=info.model_id,
        model_type=config.model_type,
        device=device,
        best_iteration=fit.best_iteration,
        val_average_precision=val_ap,
        train_seconds=round(train_seconds, 3),
        refit_rounds=fit.refit_rounds,
    )


def served_model(fit: Fit, train_rows: int, validation_rows: int) -> str:
    """Which model is served, in a sentence for the model card."""
    if fit.best_iteration is None:
        return f"fitted on the {train_rows:,} training rows"
    stopped = (
        f"early stopping chose {fit.best_iteration + 1} rounds on the {validation_rows:,} validation rows"
    )
    if fit.refit_rounds is None:
        return f"the early-stopped model ({stopped}), fitted on the {train_rows:,} training rows"
    return (
        f"refit on the {train_rows + validation_rows:,} training + validation rows for {fit.refit_rounds} rounds "
        f"({stopped}, scaled to the larger set); validation metrics and the threshold are the early-stopped "
        "model's"
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = ArgumentParser(prog="python -m ml.train", doc=__doc__)
    parser.add_argument("--prepared-uri", required=True, help="folder published by ml.prepare")
    parser.add_argument("--experiment", required=True, help="MLflow experiment name")
    parser.add_argument("--run-key", required=True, help="key of the MLflow run, e.g. <dag_id>/<run_id>")
    parser.add_argument("--model-type", choices=MODEL_TYPES, required=True)
    parser.add_argument("--n-estimators", type=int, required=True, help="maximum boosting rounds")
    parser.add_argument("--max-depth", type=int, required=True)
    parser.add_argument("--learning-rate", type=float, required=True)
    parser.add_argument("--early-stopping-rounds", type=int, required=True)
    parser.add_argument("--scale-pos-weight", required=True, help="sqrt, auto, none, or a number")
    parser.add_argument("--device", choices=DEVICES, required=True)
    parser.add_argument("--seed", type=non_negative_int, required=True)
    parser.add_argument("--min-child-weight", type=float, required=True)
    parser.add_argument("--subsample", type=float, required=True)
    parser.add_argument("--colsample-bytree", type=float, required=True)
    parser.add_argument("--reg-alpha", type=float, required=True, help="L1 regularisation")
    parser.add_argument("--reg-lambda", type=float, required=True, help="L2 regularisation")
    parser.add_argument("--refit", type=boolean, required=True, help="refit on training + validation rows")
    parser.add_argument(
        "--distributed", choices=DISTRIBUTED_MODES, default="none",
        help="dask: train with xgboost.dask on a Dask cluster ($MLOPS_DASK_SCHEDULER's, the Dask Kubernetes "
        "operator's in the cluster, else a local one)",
    )  # fmt: skip
    parser.add_argument(
        "--tuned", type=tuning_result, default=None,
        help="the tune stage's result (JSON); its parameters replace the form's. Empty or null: none",
    )  # fmt: skip
    parser.add_argument(
        "--progress-every", type=non_negative_int, default=0,
        help="log the round, validation metric and time every N rounds, and the learning curve to MLflow as it "
        "trains (0: the curve after the fit). Not part of the training's identity",
    )  # fmt: skip
    args = parser.parse_args(argv)
    config = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
    trained = train(args.prepared_uri, config, experiment=args.experiment, run_key=args.run_key,
                    tuned=args.tuned, progress_every=args.progress_every)  # fmt: skip
    return asdict(trained)


def tuning_result(value: str) -> dict[str, Any] | None:
    """An argparse ``type=`` for ``--tuned``: a JSON object, or nothing (tuning was off)."""
    if value.strip() in ("", "null", "None"):
        return None
    return json_object("--tuned", "the tune stage's result")(value)


if __name__ == "__main__":
    from ml.runtime import run_stage

    run_stage(main)
