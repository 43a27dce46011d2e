"""Live quality of a model in production: the rows the inference API scored, joined with the labels that have arrived
since, per version served; and the drift of its inputs and scores from what the version was trained on.

One run judges one window of predictions (a day, by default): the predictions made ``label_delay_days`` before the
run's data interval, with the labels that arrived by the interval's end. So a re-run or a backfill of an interval
reads the same rows and the same labels, and gives the same figures (MLflow keeps one point per metric and step).

Per version served in the window, on its predictions (``ml.serve.recorder``'s files):

- traffic: predictions, positive rate (the share the served threshold flags), mean score;
- live quality, on the labelled rows: average precision, precision and recall at the served threshold, the observed
  positive rate and the expected calibration error (ten equal-count score bins);
- drift (PSI, ``ml.monitoring.psi``) of every feature and of the score against the version's training split (the
  split its evaluation scored: the version's prepared data).

The version that was champion at the window's end is judged. It has **decayed** when its live average precision is
below the gate's floor (``--min-average-precision``) on at least ``--min-labelled-positives`` labelled positives,
or when the score or any feature drifted past ``--psi-threshold``. Too few labels is not a pass: live quality is
``inconclusive`` (drift is judged all the same). Each version's figures are logged on its training run (metrics
``live_<figure>``, one step per window day, and ``plots/live_quality.png``), and the result says whether, and why,
the model decayed: the monitoring DAG announces it on the model's decay asset, which retraining listens to.

    python -m ml.monitor --registered-model card-fraud-detector --predictions data/predictions \\
        --labels data/labels/card-fraud-detector --id-column transaction_id --label-column is_fraud \\
        --arrived-column labelled_at --start 2025-03-10T00:00:00+00:00 --end 2025-03-11T00:00:00+00:00
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from contract import PREPARED_URI_TAG
from ml import tracking
from ml.errors import StageError
from ml.monitoring import metric_name, psi
from ml.runtime import ArgumentParser
from ml.windows import Window

log = logging.getLogger(__name__)

#: Status of one judgement.
DECAYED, HEALTHY, INCONCLUSIVE = "decayed", "healthy", "inconclusive"
#: Score bins of the calibration error.
CALIBRATION_BINS = 10
#: Rows of the training split the drift is measured against, at most (a sample, for large tables).
REFERENCE_ROWS = 200_000
#: The recorded columns that are not features.
RECORD_COLUMNS = (
    "request_id",
    "row",
    "id",
    "time",
    "model_name",
    "model_version",
    "threshold",
    "score",
    "decision",
)


@dataclass
class Health:
    """One version's figures over the window."""

    version: str
    predictions: int
    positive_rate: float
    mean_score: float
    labelled: int = 0
    labelled_positives: int = 0
    observed_rate: float | None = None
    average_precision: float | None = None
    precision: float | None = None
    recall: float | None = None
    calibration_error: float | None = None
    score_psi: float | None = None
    feature_psi: dict[str, float] = field(default_factory=dict)


@dataclass
class Judgement:
    """The monitor stage's XCom result."""

    registered_model: str
    window: list[str]
    labels_until: str
    champion: str | None
    status: str
    reasons: list[str]
    versions: list[Health]

    @property
    def decayed(self) -> bool:
        return self.status == DECAYED


def predictions_in(uri: str, registered_model: str, window: Window) -> pd.DataFrame:
    """The recorded predictions of ``registered_model`` made in ``window`` (its days' files under ``uri``)."""
    from ml.sources import day_partitions, read_source

    folder = f"{uri.rstrip('/')}/{registered_model}"
    days = day_partitions(folder)
    frames = [
        read_source(days[day], time_column="time", window=window).frame
        for day in window.days()
        if day in days
    ]
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(RECORD_COLUMNS))


def labels_until(
    uri: str, id_column: str, label_column: str, arrived_column: str, since: pd.Timestamp, until: pd.Timestamp,
    positive_label: str | None = None,
) -> pd.Series:  # fmt: skip
    """The labels that arrived in ``[since, until)``, by id (as strings), as 0/1; the latest label of an id wins. None
    landed yet (no table): none."""
    from ml.sources import exists, read_source

    if not exists(uri):
        log.warning("no labels at %s yet", uri)
        return pd.Series(dtype=int)
    frame = read_source(uri, time_column=arrived_column, window=Window(since, until)).frame
    missing = [c for c in (id_column, label_column, arrived_column) if c not in frame.columns]
    if missing:
        raise StageError(f"the labels at {uri} have no column {', '.join(map(repr, missing))} "
                         f"(they have {', '.join(map(str, frame.columns))})")  # fmt: skip
    frame = frame.sort_values(arrived_column, kind="stable").drop_duplicates(id_column, keep="last")
    values = frame[label_column]
    if positive_label is not None:
        label = values.astype(str) == positive_label
    elif pd.api.types.is_bool_dtype(values) or pd.api.types.is_numeric_dtype(values):
        label = values.astype(float) != 0
    else:
        raise StageError(f"the labels' {label_column!r} holds {values.dtype} values, not 0/1 or true/false: the "
                         "model file's dataset.positive_label says which value is positive")  # fmt: skip
    return pd.Series(label.astype(int).to_numpy(), index=frame[id_column].astype(str).to_numpy())


def calibration_error(labels: np.ndarray, scores: np.ndarray, bins: int = CALIBRATION_BINS) -> float:
    """Expected calibration error: the rows-weighted gap between mean score and observed rate over equal-count
    score bins."""
    order = np.argsort(scores, kind="stable")
    gaps = [
        len(part) * abs(scores[part].mean() - labels[part].mean())
        for part in np.array_split(order, min(bins, len(order)))
        if len(part)
    ]
    return float(sum(gaps) / len(scores))


def health(
    version: str, rows: pd.DataFrame, labels: pd.Series, reference: pd.DataFrame | None, reference_scores: Any,
    categorical: Sequence[str],
) -> Health:  # fmt: skip
    """One version's figures over its rows (see the module's docstring)."""
    from sklearn.metrics import average_precision_score, precision_score, recall_score

    scores = rows["score"].to_numpy(dtype=np.float64)
    figures = Health(version=version, predictions=len(rows), positive_rate=round(float(rows["decision"].mean()), 6),
                     mean_score=round(float(scores.mean()), 6))  # fmt: skip
    known = rows["id"].notna() & rows["id"].astype(str).isin(labels.index)
    if known.any():
        truth = labels.loc[rows.loc[known, "id"].astype(str)].to_numpy()
        labelled_scores, decisions = (
            scores[known.to_numpy()],
            rows.loc[known, "decision"].to_numpy(dtype=bool),
        )
        figures.labelled, figures.labelled_positives = int(known.sum()), int(truth.sum())
        figures.observed_rate = round(float(truth.mean()), 6)
        figures.calibration_error = round(calibration_error(truth, labelled_scores), 6)
        if 0 < truth.sum() < len(truth):
            figures.average_precision = round(float(average_precision_score(truth, labelled_scores)), 6)
            figures.precision = round(float(precision_score(truth, decisions, zero_division=0)), 6)
            figures.recall = round(float(recall_score(truth, decisions)), 6)
    if reference is not None:
        features = [c for c in reference.columns if c in rows.columns]
        figures.feature_psi = {
            f: round(psi(reference[f], rows[f], categorical=f in categorical), 6) for f in features
        }
        figures.score_psi = round(psi(pd.Series(reference_scores), rows["score"]), 6)
    return figures


def reference_of(name: str, version: str) -> tuple[pd.DataFrame, np.ndarray, list[str]]:
    """The version's training split (a sample of ``REFERENCE_ROWS``), the version's scores of it, and its categorical
    features."""
    from ml.storage import read_manifest, read_published_table

    client = tracking.client()
    run_id = client.get_model_version(name, version).run_id
    prepared = client.get_run(run_id).data.tags.get(PREPARED_URI_TAG) if run_id else None
    if not prepared:
        raise StageError(f"{name} v{version}'s training run has no {PREPARED_URI_TAG} tag: was it trained by the "
                         "pipeline?")  # fmt: skip
    manifest = read_manifest(prepared)
    train = read_published_table(prepared, "train.parquet")
    train = train.sample(n=REFERENCE_ROWS, random_state=0) if len(train) > REFERENCE_ROWS else train
    features, categorical = list(manifest["features"]), list(manifest["categorical"])
    from ml.schema import to_model_input

    frame = to_model_input(train[features], categorical)
    model = tracking.load_model(f"models:/{name}/{version}")
    return frame, model.predict_proba(frame)[:, 1], categorical


def judge(figures: Health | None, *, min_average_precision: float, psi_threshold: float,
          min_labelled_positives: int) -> tuple[str, list[str]]:  # fmt: skip
    """The champion's status over the window, and why."""
    if figures is None:
        return INCONCLUSIVE, ["the champion scored nothing in the window"]
    reasons = []
    drifted = {f: v for f, v in figures.feature_psi.items() if v > psi_threshold}
    if figures.score_psi is not None and figures.score_psi > psi_threshold:
        reasons.append(f"score PSI {figures.score_psi:.3f} > {psi_threshold:g}")
    if drifted:
        worst = sorted(drifted.items(), key=lambda item: -item[1])[:3]
        reasons.append("feature PSI " + ", ".join(f"{f} {v:.3f}" for f, v in worst) + f" > {psi_threshold:g}")
    if figures.average_precision is not None and figures.labelled_positives >= min_labelled_positives:
        if figures.average_precision < min_average_precision:
            reasons.append(f"live AP {figures.average_precision:.3f} < the gate's floor {min_average_precision:g} "
                           f"({figures.labelled:,} labelled, {figures.labelled_positives} positive)")  # fmt: skip
        return (DECAYED if reasons else HEALTHY), reasons
    short = (f"live quality inconclusive: {figures.labelled_positives} labelled positives of the "
             f"{min_labelled_positives} needed")  # fmt: skip
    return (DECAYED, [*reasons, short]) if reasons else (INCONCLUSIVE, [short])


def log_health(name: str, figures: Health, window: Window, floor: float) -> None:
    """The version's figures on its training run: one step per window day (a re-run logs the same point), and
    their plot with the gate's floor."""
    import mlflow

    step = int(window.start.timestamp() // 86400)
    at = int(window.start.timestamp() * 1000)
    values = {key: value for key, value in asdict(figures).items() if isinstance(value, int | float)}
    values |= {f"psi_{metric_name(f)}": v for f, v in figures.feature_psi.items()}
    from mlflow.entities import Metric

    client = tracking.client()
    run_id = client.get_model_version(name, figures.version).run_id
    # A re-run of the window (same rows, same labels) logs nothing new: MLflow would keep a second point.
    logged = {m.step for m in client.get_metric_history(run_id, "live_predictions")}
    if step not in logged:
        # The count last: a run killed half-way leaves the day without it, and its re-run logs the day whole.
        metrics = [Metric(f"live_{k}", float(v), at, step) for k, v in values.items() if k != "predictions"]
        client.log_batch(
            run_id, metrics=[*metrics, Metric("live_predictions", float(figures.predictions), at, step)]
        )
    figure = live_figure(client, run_id, name, figures.version, floor)
    with tracking.active_run(run_id):
        mlflow.log_figure(figure, "plots/live_quality.png")
    import matplotlib.pyplot as plt

    plt.close(figure)


def live_figure(client: Any, run_id: str, name: str, version: str, floor: float) -> Any:
    """The version's live average precision, precision, recall and positive rate by day, from its metric history,
    against the gate's floor of average precision (below it, the version has decayed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.dates import AutoDateLocator, DateFormatter

    figure, ax = plt.subplots(figsize=(8, 4))
    for key in ("average_precision", "precision", "recall", "observed_rate", "positive_rate"):
        history = sorted(client.get_metric_history(run_id, f"live_{key}"), key=lambda m: m.step)
        if history:
            days = [pd.Timestamp(m.step, unit="D") for m in history]
            ax.plot(days, [m.value for m in history], marker="o", label=key.replace("_", " "))
    ax.axhline(floor, color="grey", linestyle="--", linewidth=1, label=f"the gate's floor of AP ({floor:g})")
    ax.set_title(f"{name} v{version} in production: the days its labels judged")
    ax.set_ylim(0, 1)
    ax.xaxis.set_major_locator(AutoDateLocator(minticks=1, maxticks=10, interval_multiples=True))
    ax.xaxis.set_major_formatter(DateFormatter("%Y-%m-%d"))  # days: no hours
    ax.legend(loc="best", fontsize="small")
    figure.autofmt_xdate()
    return figure


def monitor(
    *, registered_model: str, predictions: str, labels: str | None, id_column: str, label_column: str,
    arrived_column: str, interval: Window, label_delay_days: int, champion_alias: str, min_average_precision: float,
    psi_threshold: float, min_labelled_positives: int, positive_label: str | None = None,
) -> Judgement:  # fmt: skip
    """Judge the predictions made ``label_delay_days`` before ``interval`` with the labels that arrived by its end."""
    delay = pd.Timedelta(days=label_delay_days)
    window = Window(interval.start - delay, interval.end - delay)
    rows = predictions_in(predictions, registered_model, window)
    known = (
        labels_until(
            labels, id_column, label_column, arrived_column, window.start, interval.end, positive_label
        )
        if labels
        else pd.Series(dtype=int)
    )
    champion = _champion(registered_model, champion_alias)
    versions = []
    for version, part in rows.groupby(rows["model_version"].astype(str), sort=True):
        reference, reference_scores, categorical = reference_of(registered_model, str(version))
        figures = health(str(version), part, known, reference, reference_scores, categorical)
        log_health(registered_model, figures, window, min_average_precision)
        versions.append(figures)
    judged = next((v for v in versions if v.version == champion), None)
    status, reasons = judge(judged, min_average_precision=min_average_precision, psi_threshold=psi_threshold,
                            min_labelled_positives=min_labelled_positives)  # fmt: skip
    log.info("%s v%s over %s: %s%s", registered_model, champion, window, status,
             f" ({'; '.join(reasons)})" if reasons else "")  # fmt: skip
    return Judgement(registered_model=registered_model, window=window.bounds(), labels_until=interval.end.isoformat(),
                     champion=champion, status=status, reasons=reasons, versions=versions)  # fmt: skip


def _champion(name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(tracking.client().get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = ArgumentParser(prog="python -m ml.monitor", doc=__doc__)
    parser.add_argument("--registered-model", required=True)
    parser.add_argument(
        "--predictions", required=True, help="the inference API's prediction record (its root)"
    )
    parser.add_argument("--labels", default="", help="the labels' table (none: drift only)")
    parser.add_argument("--id-column", default="id", help="the labels' id column (the predictions' id)")
    parser.add_argument("--label-column", default="label")
    parser.add_argument(
        "--positive-label", default=None, help="the label's positive value, if not 0/1 or a bool"
    )
    parser.add_argument("--arrived-column", default="labelled_at", help="when each label arrived")
    parser.add_argument("--start", required=True, help="the data interval's start (ISO 8601)")
    parser.add_argument("--end", required=True, help="the data interval's end (ISO 8601)")
    parser.add_argument("--label-delay-days", type=int, default=0)
    parser.add_argument("--champion-alias", default="champion")
    parser.add_argument("--min-average-precision", type=float, required=True)
    parser.add_argument("--psi-threshold", type=float, required=True)
    parser.add_argument("--min-labelled-positives", type=int, default=10)
    args = parser.parse_args(argv)
    interval = Window(pd.Timestamp(args.start), pd.Timestamp(args.end))
    judgement = monitor(
        registered_model=args.registered_model, predictions=args.predictions, labels=args.labels or None,
        id_column=args.id_column, label_column=args.label_column, arrived_column=args.arrived_column,
        interval=interval, label_delay_days=args.label_delay_days, champion_alias=args.champion_alias,
        min_average_precision=args.min_average_precision, psi_threshold=args.psi_threshold,
        min_labelled_positives=args.min_labelled_positives, positive_label=args.positive_label,
    )  # fmt: skip
    return {**asdict(judgement), "decayed": judgement.decayed}


if __name__ == "__main__":
    from ml.runtime import run_stage

    run_stage(main)
