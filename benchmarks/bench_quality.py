"""Quality benchmark: the pipeline's default training against plain scikit-learn baselines, on real and synthetic data.

Datasets, each prepared by ``ml.prepare`` as the pipeline prepares a user's table (same guard, same splits):

- ``adult``: the UCI Adult table (``benchmarks/data/``; a real table no one here wrote), a random stratified split;
- ``synthetic``: the drifting card-transaction stream (``ml.synthetic``), split by time (the test rows are the
  latest: the fraud patterns have moved on since the training rows).

Models, on the same test split:

- ``default``: ``ml.train.fit_model`` with the platform's training defaults (``plugins/mlops/platform.yaml``):
  trained on the training split, early-stopped on the validation split, as the train stage does;
- ``logistic``: ``LogisticRegression`` on scaled numbers and one-hot categories;
- ``hist-gbm``: ``HistGradientBoostingClassifier`` with its defaults (native categories);

the references are fitted on training + validation rows (they have no use for a validation split). Prints average
precision, ROC-AUC and wall time per model and dataset, and ``MET``/``MISSED`` for: the defaults score at least the
best reference's average precision on every dataset. Exits 1 when a target is missed.

    python -m benchmarks.bench_quality [--synthetic-rows 300000]
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

ROOT = Path(__file__).resolve().parents[1]
ADULT = ROOT / "benchmarks" / "data" / "adult.csv.gz"
ADULT_COLUMNS = [
    "age", "workclass", "fnlwgt", "education", "education_num", "marital_status", "occupation", "relationship",
    "race", "sex", "capital_gain", "capital_loss", "hours_per_week", "native_country", "income",
]  # fmt: skip


@dataclass
class Dataset:
    name: str
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


def prepared_splits(dataset: Dataset, folder: Path) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
    from ml.prepare import prepare
    from ml.storage import read_manifest, read_published_table

    output = folder / f"prepared-{dataset.name}"
    prepare(dataset.source, dataset.target, str(output), time_column=dataset.time_column,
            positive_label=dataset.positive_label)  # fmt: skip
    manifest = read_manifest(str(output))
    splits = {
        name: read_published_table(str(output), f"{name}.parquet") for name in ("train", "validation", "test")
    }
    return splits, manifest


def timed(fit: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    result = fit()
    return result, time.perf_counter() - started


def default_training(
    splits: dict[str, pd.DataFrame], manifest: dict[str, Any]
) -> Callable[[pd.DataFrame], np.ndarray]:
    from ml.train import TrainConfig, fit_model, resolve_device
    from mlops.platform_config import load_platform

    config = TrainConfig(**load_platform().training.model_dump())
    device = resolve_device(config.device, config.model_type)
    pipeline, _, _ = fit_model(
        config, splits["train"], splits["validation"], features=manifest["features"],
        categorical=manifest["categorical"], target=manifest["target"], device=device,
    )  # fmt: skip
    return lambda frame: pipeline.predict_proba(frame[manifest["features"]])[:, 1]


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
            frame[column] = pd.Categorical(frame[column].astype("string"), categories=known)
        return np.asarray(model.predict_proba(frame)[:, 1])

    return scores


def score_all(dataset: Dataset, folder: Path) -> list[Score]:
    from sklearn.metrics import average_precision_score, roc_auc_score

    splits, manifest = prepared_splits(dataset, folder)
    test, target = splits["test"], manifest["target"]
    models: dict[str, Callable[[], Callable[[pd.DataFrame], np.ndarray]]] = {
        "default": lambda: default_training(splits, manifest),
        "logistic": lambda: reference("logistic", splits, manifest),
        "hist-gbm": lambda: reference("hist-gbm", splits, manifest),
    }
    results = []
    for name, fit in models.items():
        predict, seconds = timed(fit)
        scores = predict(test)
        results.append(Score(dataset.name, name, float(average_precision_score(test[target], scores)),
                             float(roc_auc_score(test[target], scores)), seconds))  # fmt: skip
    return results


def report(results: list[Score]) -> bool:
    print(f"{'dataset':<10} {'model':<9} {'avg precision':>13} {'ROC-AUC':>8} {'fit s':>7}")
    for r in results:
        print(
            f"{r.dataset:<10} {r.model:<9} {r.average_precision:>13.4f} {r.roc_auc:>8.4f} {r.seconds:>7.1f}"
        )
    ok = True
    for dataset in dict.fromkeys(r.dataset for r in results):
        mine = next(r for r in results if r.dataset == dataset and r.model == "default")
        best = max((r for r in results if r.dataset == dataset and r.model != "default"),
                   key=lambda r: r.average_precision)  # fmt: skip
        met = mine.average_precision >= best.average_precision
        ok &= met
        print(
            f"{'MET' if met else 'MISSED':<7} {dataset}: defaults {mine.average_precision:.4f} AP >= best "
            f"reference ({best.model}) {best.average_precision:.4f}"
        )
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--synthetic-rows", type=int, default=300_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:
        folder = Path(tmp)
        datasets = [
            Dataset("adult", str(adult_table(folder)), "income", positive_label=">50K"),
            Dataset("synthetic", f"synthetic://card-transactions?rows={args.synthetic_rows}&seed=11", "is_fraud",
                    time_column="timestamp"),
        ]  # fmt: skip
        results = [score for dataset in datasets for score in score_all(dataset, folder)]
    return 0 if report(results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
