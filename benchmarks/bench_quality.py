"""Quality benchmark: the pipeline's default training against plain scikit-learn baselines, on real and synthetic data.

Datasets, each prepared by ``ml.prepare`` as the pipeline prepares a user's table (same guard, same splits):

- ``adult``: the UCI Adult table (``benchmarks/data/``; a real table no one here wrote), a random stratified split;
- ``synthetic``: the drifting card-transaction stream (``ml.synthetic``), split by time (the test rows are the
  latest: the fraud patterns have moved on since the training rows).

Models, on the same test split:

- ``default``: ``ml.train.fit_model`` with the platform's training defaults (``plugins/mlops/platform.yaml``):
  trained on the training split, early-stopped on the validation split, refit on both, as the train stage does;
- ``tuned``: the tune stage (``ml.tune``: one worker, ``--trials`` trials, against a real MLflow server on
  loopback), then ``fit_model`` with the best trial's values, as ``train --tuned`` does;
- ``logistic``: ``LogisticRegression`` on scaled numbers and one-hot categories;
- ``hist-gbm``: ``HistGradientBoostingClassifier`` with its defaults (native categories);

the references are fitted on training + validation rows (they have no use for a validation split). Each dataset is
drawn ``--splits`` times (other split seeds for Adult, other generator seeds for the stream), so that one lucky split
decides nothing. Prints the mean average precision (with its range), ROC-AUC and wall time per model and dataset,
and ``MET``/``MISSED`` for: the defaults' mean average precision is at least the best reference's on every dataset;
the tuned training's is at least the best reference's + 0.01. Exits 1 when a target is missed.

With ``--ceiling DATASET``, a ``ceiling`` row too: the best of a grid of settings chosen on the test split itself, what
no tuner can beat on these hyperparameters (where a target is out of reach, this shows it).

    python -m benchmarks.bench_quality [--splits 3] [--synthetic-rows 300000] [--trials 25]
        [--datasets adult synthetic] [--ceiling adult]
"""

from __future__ import annotations

import argparse
import gzip
import io
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks._stack import settled_mlflow

ROOT = Path(__file__).resolve().parents[1]
ADULT = ROOT / "benchmarks" / "data" / "adult.csv.gz"
ADULT_COLUMNS = [
    "age", "workclass", "fnlwgt", "education", "education_num", "marital_status", "occupation", "relationship",
    "race", "sex", "capital_gain", "capital_loss", "hours_per_week", "native_country", "income",
]  # fmt: skip


@dataclass
class Dataset:
    name: str
    #: The table, with ``{seed}`` where the draw's seed goes (a generator's); the split's seed is the draw's too.
    source: str
    target: str
    time_column: str | None = None
    positive_label: str | None = None


@dataclass
class Score:
    dataset: str
    model: str
    average_precision: float
    roc_auc: float
    seconds: float


def adult_table(folder: Path) -> Path:
    """The Adult table as a user would bring it to the pipeline: a Parquet file with named columns."""
    text = gzip.decompress(ADULT.read_bytes()).decode()
    frame = pd.read_csv(
        io.StringIO(text),
        header=None,
        names=ADULT_COLUMNS,
        skipinitialspace=True,
        na_values="?",
        lineterminator="\r",
    )
    path = folder / "adult.parquet"
    frame.to_parquet(path, index=False)
    return path


def prepared_splits(
    dataset: Dataset, folder: Path, seed: int = 0
) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
    from ml.prepare import prepare
    from ml.storage import read_manifest, read_published_table

    output = prepared_folder(dataset, folder, seed)
    prepare(dataset.source.format(seed=seed), dataset.target, str(output), time_column=dataset.time_column,
            positive_label=dataset.positive_label, seed=seed)  # fmt: skip
    manifest = read_manifest(str(output))
    splits = {
        name: read_published_table(str(output), f"{name}.parquet") for name in ("train", "validation", "test")
    }
    return splits, manifest


def prepared_folder(dataset: Dataset, folder: Path, seed: int) -> Path:
    return folder / f"prepared-{dataset.name}-{seed}"


def timed(fit: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    result = fit()
    return result, time.perf_counter() - started


DATASETS = ("adult", "synthetic")
#: Over this the tuned training's mean average precision must be, above the best reference's.
TUNED_MARGIN = 0.01


def default_training(
    splits: dict[str, pd.DataFrame], manifest: dict[str, Any], tuned: dict[str, Any] | None = None
) -> Callable[[pd.DataFrame], np.ndarray]:
    from ml.train import TrainConfig, fit_model, resolve_device, with_tuned
    from mlops.platform_config import load_platform

    config = with_tuned(TrainConfig(**load_platform().training.model_dump()), tuned)
    device = resolve_device(config.device, config.model_type)
    pipeline = fit_model(
        config, splits["train"], splits["validation"], features=manifest["features"],
        categorical=manifest["categorical"], target=manifest["target"], device=device,
    ).pipeline  # fmt: skip
    return lambda frame: pipeline.predict_proba(frame[manifest["features"]])[:, 1]


def tuned_training(
    prepared: Path, splits: dict[str, pd.DataFrame], manifest: dict[str, Any], trials: int
) -> Callable[[pd.DataFrame], np.ndarray]:
    """The tune stage's worker and best-trial steps on this draw, then the training with the tuned values."""
    from ml import tune
    from ml.train import TrainConfig
    from mlops.platform_config import load_platform

    form = TrainConfig(**load_platform().training.model_dump())
    common = {
        "experiment": "bench-quality",
        "run_key": f"bench/{prepared.name}",
        "storage_dir": str(prepared.parent / "tuning"),
    }
    tune.worker(str(prepared), form, trials=trials, minutes=60, worker_index=0, **common)
    best = tune.best(str(prepared), form, **common)
    return default_training(splits, manifest, best)


def reference(
    kind: str, splits: dict[str, pd.DataFrame], manifest: dict[str, Any]
) -> Callable[[pd.DataFrame], np.ndarray]:
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    features, categorical, target = manifest["features"], manifest["categorical"], manifest["target"]
    numeric = [c for c in features if c not in categorical]
    fit_on = pd.concat([splits["train"], splits["validation"]], ignore_index=True)

    def frame_of(rows: pd.DataFrame) -> pd.DataFrame:
        out = rows[features].copy()
        for column in categorical:
            out[column] = out[column].astype("string").fillna("(missing)").astype("category")
        return out

    model: Any
    if kind == "logistic":
        encode = ColumnTransformer([
            ("numbers", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numeric),
            ("categories", OneHotEncoder(handle_unknown="ignore", min_frequency=10), categorical),
        ])  # fmt: skip
        model = Pipeline([("encode", encode), ("model", LogisticRegression(max_iter=2000))])
    else:
        model = HistGradientBoostingClassifier(categorical_features="from_dtype", random_state=0)
    train_frame = frame_of(fit_on)
    model.fit(train_frame, fit_on[target].to_numpy())
    categories = {c: train_frame[c].cat.categories for c in categorical}

    def scores(rows: pd.DataFrame) -> np.ndarray:
        frame = frame_of(rows)
        for column, known in categories.items():  # the categories seen in training, in the same order
            values = frame[column].astype("string")
            frame[column] = pd.Categorical(
                values.where(values.isin(known)), categories=known
            )  # unseen: missing
        return np.asarray(model.predict_proba(frame)[:, 1])

    return scores


#: ``--ceiling``: the settings whose best, chosen on the test split itself, bounds what any tuner of these
#: hyperparameters could reach on a draw (an upper bound for the tuned target, not a model anyone could pick).
CEILING_GRID = [
    {"learning_rate": lr, "max_depth": depth, "min_child_weight": weight, "colsample_bytree": columns,
     "subsample": rows}
    for lr in (0.02, 0.05) for depth in (4, 6, 8) for weight in (1.0, 5.0) for columns in (0.5, 0.8)
    for rows in (0.8, 1.0)
]  # fmt: skip


def ceiling(splits: dict[str, pd.DataFrame], manifest: dict[str, Any]) -> float:
    """The best test average precision over ``CEILING_GRID``."""
    from sklearn.metrics import average_precision_score

    test = splits["test"]
    return max(
        float(
            average_precision_score(
                test[manifest["target"]], default_training(splits, manifest, {"params": g})(test)
            )
        )
        for g in CEILING_GRID
    )


def score_all(
    dataset: Dataset, folder: Path, seed: int, trials: int, with_ceiling: bool = False
) -> list[Score]:
    from sklearn.metrics import average_precision_score, roc_auc_score

    splits, manifest = prepared_splits(dataset, folder, seed)
    test, target = splits["test"], manifest["target"]
    prepared = prepared_folder(dataset, folder, seed)
    models: dict[str, Callable[[], Callable[[pd.DataFrame], np.ndarray]]] = {
        "default": lambda: default_training(splits, manifest),
        "tuned": lambda: tuned_training(prepared, splits, manifest, trials),
        "logistic": lambda: reference("logistic", splits, manifest),
        "hist-gbm": lambda: reference("hist-gbm", splits, manifest),
    }
    results = []
    for name, fit in models.items():
        predict, seconds = timed(fit)
        scores = predict(test)
        results.append(Score(dataset.name, name, float(average_precision_score(test[target], scores)),
                             float(roc_auc_score(test[target], scores)), seconds))  # fmt: skip
    if with_ceiling:
        best, seconds = timed(lambda: ceiling(splits, manifest))
        results.append(Score(dataset.name, CEILING, best, float("nan"), seconds))
    return results


#: The ``--ceiling`` row's model name: printed, never a reference.
CEILING = "ceiling"
NOT_REFERENCES = ("default", "tuned", CEILING)


def report(results: list[Score]) -> bool:
    """The mean of each model's draws per dataset, then the targets."""
    print(f"{'dataset':<10} {'model':<9} {'avg precision (range)':>24} {'ROC-AUC':>8} {'fit s':>7}")
    means: dict[tuple[str, str], float] = {}
    for key in dict.fromkeys((r.dataset, r.model) for r in results):
        draws = [r for r in results if (r.dataset, r.model) == key]
        aps = [r.average_precision for r in draws]
        means[key] = float(np.mean(aps))
        print(
            f"{key[0]:<10} {key[1]:<9} {means[key]:>8.4f} ({min(aps):.4f}-{max(aps):.4f}) "
            f"{np.mean([r.roc_auc for r in draws]):>8.4f} {np.mean([r.seconds for r in draws]):>7.1f}"
        )
    ok = True
    for dataset in dict.fromkeys(r.dataset for r in results):
        references = [key for key in means if key[0] == dataset and key[1] not in NOT_REFERENCES]
        best = max(references, key=means.__getitem__)
        for model, margin in (("default", 0.0), ("tuned", TUNED_MARGIN)):
            met = means[(dataset, model)] >= means[best] + margin
            ok &= met
            print(
                f"{'MET' if met else 'MISSED':<7} {dataset}: {model} {means[(dataset, model)]:.4f} mean AP >= "
                f"best reference ({best[1]}) {means[best]:.4f}" + (f" + {margin}" if margin else "")
            )
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--splits", type=int, default=3, help="draws of each dataset")
    parser.add_argument("--synthetic-rows", type=int, default=300_000)
    parser.add_argument("--trials", type=int, default=25, help="the tuning budget of each draw")
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    parser.add_argument(
        "--ceiling", nargs="+", choices=DATASETS, default=[], metavar="DATASET",
        help=f"on these datasets, also the best of {len(CEILING_GRID)} settings chosen on the test split (an upper "
        "bound for tuning; slow on the synthetic stream)",
    )  # fmt: skip
    args = parser.parse_args()
    print(f"tuning budget: {args.trials} trials per draw, one worker")
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp, settled_mlflow(Path(tmp)):
        folder = Path(tmp)
        datasets = [
            Dataset("adult", str(adult_table(folder)), "income", positive_label=">50K"),
            Dataset("synthetic", f"synthetic://card-transactions?rows={args.synthetic_rows}&seed={{seed}}", "is_fraud",
                    time_column="timestamp"),
        ]  # fmt: skip
        datasets = [d for d in datasets if d.name in args.datasets]
        results = [
            score
            for dataset in datasets
            for seed in range(args.splits)
            for score in score_all(dataset, folder, seed, args.trials, dataset.name in args.ceiling)
        ]
    return 0 if report(results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
