"""Evaluate a trained model on the test split, compare it with the current champion, and decide.

The decision threshold is the one that maximises F1 on the validation split (never chosen on test). The same
metrics are computed for the registered model's ``champion`` alias on the same test rows when one exists, and the
difference in average precision gets a confidence interval from a paired bootstrap (``ml.compare``: whole days are
resampled where the table has a time column). The model's policy decides on the interval, never on the point
estimate: ``superior`` passes when its lower bound is above the required improvement, ``non-inferior`` when it is
above minus the margin.

The gate fails closed. A champion that exists but cannot score the test rows (it was trained on other columns)
is a ``fail``, unless the run accepts an incomparable champion (``--accept-incomparable-champion``, for a
deliberate change of inputs), which is then recorded. A registry or artifact store that fails while the champion
is looked up or loaded is no decision at all: the stage errors (exit 1), and the orchestrator retries it.
Plots (precision-recall curve, confusion matrix, feature importance, and the performance over the last
intervals), the drift of each feature between the training and evaluation windows (``ml.monitoring``), a
markdown model card and the decision are logged to the training's MLflow run; the decision is also the stage's
XCom result.

    python -m ml.evaluate --prepared-uri data/prepared/x --model-uri models:/m-... --run-id abc \\
        --registered-model-name card-fraud-detector --min-average-precision 0.3 --policy non-inferior \\
        --min-improvement 0.0 --margin 0.02 --confidence 0.95 --resamples 1000
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from contract import (
    CHAMPION_COMPARISON_TAG,
    DECISION_TAG,
    EVALUATION_WINDOW_TAG,
    FAIL,
    PASS,
    REGISTERED_MODEL_TAG,
    THRESHOLD_TAG,
)
from ml import monitoring, tracking
from ml import plan as release_plan
from ml.compare import MIN_DAYS, POLICIES, Comparison, Rule, paired_bootstrap
from ml.errors import StageError
from ml.runtime import ArgumentParser, boolean
from ml.schema import to_model_input
from ml.storage import read_manifest, read_published_table

log = logging.getLogger(__name__)


@dataclass
class Metrics:
    average_precision: float
    roc_auc: float
    precision: float
    recall: float
    f1: float
    threshold: float


class ChampionUnavailable(RuntimeError):
    """The registry or the artifact store failed while the champion was looked up or loaded: no decision can be
    made, and none is (not a ``StageError``: the stage exits 1 and the orchestrator retries it)."""


@dataclass
class ChampionComparison:
    version: str | None
    comparable: bool
    metrics: Metrics | None = None
    reason: str = ""


@dataclass
class Evaluation:
    """The evaluate stage's XCom result: everything the gate and the registration need."""

    decision: str
    reasons: list[str]
    metrics: Metrics
    champion: ChampionComparison
    run_id: str
    model_uri: str
    model_id: str
    registered_model_name: str
    min_average_precision: float
    min_improvement: float
    test_rows: int
    test_positives: int
    #: PSI of each feature between the training and the evaluation window, and those over the warning level.
    drift: dict[str, float]
    drifted: list[str]
    #: Whether the pipeline will release this model (``ml.plan``); register records it on the version.
    release_plan: dict[str, Any]
    #: The run accepted a champion that could not score the test rows: why it could not (empty otherwise).
    incomparable_champion_accepted: str = ""
    #: Which model the train stage logged (refit on training + validation rows, or early-stopped), in a sentence.
    served_model: str = ""
    #: The features kept although the leakage guard found something (``prepare``'s flagged columns): each with the
    #: finding; register records them on the version.
    leakage_flags: dict[str, str] = field(default_factory=dict)
    #: The rule the gate applied (``ml.compare.Rule``'s fields).
    rule: dict[str, Any] = field(default_factory=dict)
    #: The paired bootstrap against the champion (``comparison_summary``); empty without a comparable champion.
    comparison: dict[str, Any] = field(default_factory=dict)


def choose_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """Return the score threshold that maximises F1 on these (validation) labels."""
    from sklearn.metrics import precision_recall_curve

    precision, recall, thresholds = precision_recall_curve(labels, scores)
    f1 = np.divide(
        2 * precision * recall, precision + recall, out=np.zeros_like(precision), where=precision + recall > 0
    )
    best = int(np.argmax(f1[:-1])) if len(thresholds) else 0
    return float(thresholds[best]) if len(thresholds) else 0.5


def score_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> Metrics:
    """Threshold-free (PR-AUC, ROC-AUC) and thresholded (precision, recall, F1) metrics."""
    from sklearn.metrics import average_precision_score, precision_recall_fscore_support, roc_auc_score

    predicted = (scores >= threshold).astype(np.int8)
    precision, recall, f1, _ = precision_recall_fscore_support(
        labels, predicted, average="binary", zero_division=0
    )
    return Metrics(
        average_precision=float(average_precision_score(labels, scores)),
        roc_auc=float(roc_auc_score(labels, scores)),
        precision=float(precision),
        recall=float(recall),
        f1=float(f1),
        threshold=float(threshold),
    )


def comparison_summary(comparison: Comparison, rule: Rule) -> dict[str, Any]:
    """What the evaluation records of a comparison: each metric's estimate and interval, and the rule's verdict."""
    ap = comparison.differences["average_precision"]
    return {
        "unit": comparison.unit,
        "units": comparison.units,
        "resamples": comparison.resamples,
        "confidence": ap.confidence,
        **{metric: {"estimate": d.estimate, "low": d.low, "high": d.high}
           for metric, d in comparison.differences.items()},
        "passes": rule.passes(ap),
        "described": ap.describe(comparison.unit),
        "verdict": rule.verdict(ap),
    }  # fmt: skip


def decide(
    metrics: Metrics,
    champion: ChampionComparison,
    *,
    min_average_precision: float,
    rule: Rule,
    comparison: Comparison | None = None,
    record_only: str = "",
    accept_incomparable: bool = False,
) -> tuple[str, list[str]]:
    """Pass only if the absolute floor is met and, when a champion exists, the ``rule`` passes the interval of the
    difference in average precision (``comparison``: the paired bootstrap of the candidate against it).

    A champion that cannot be compared fails the gate unless ``accept_incomparable``. A model that will not be
    released (``record_only`` says why) is registered for the record if it meets the floor: it replaces
    nothing, so beating the champion is reported, not required.
    """
    reasons = []
    ok = metrics.average_precision >= min_average_precision
    reasons.append(
        f"average precision {metrics.average_precision:.4f} {'>=' if ok else '<'} minimum {min_average_precision:.4f}"
    )
    if champion.version is None:
        reasons.append("no champion to compare with")
    elif not champion.comparable or champion.metrics is None:
        if accept_incomparable:
            reasons.append(
                f"champion v{champion.version} cannot score the test rows ({champion.reason}); accepted, as the "
                "run asks: no comparison was made"
            )
        else:
            ok = False
            reasons.append(
                f"champion v{champion.version} cannot score the test rows ({champion.reason}): without a comparison "
                "there is no pass (accept an incomparable champion in the run's parameters for a deliberate "
                "change of inputs)"
            )
    else:
        if comparison is None:
            raise ValueError("a comparable champion needs the comparison with it")
        difference = comparison.differences["average_precision"]
        beats = rule.passes(difference)
        ok = ok and (beats or bool(record_only))
        reasons.append(
            f"against champion v{champion.version} ({champion.metrics.average_precision:.4f}): "
            f"{difference.describe(comparison.unit)}; {rule.verdict(difference)}"
            + (f" (not required: not to be released, {record_only})" if record_only else "")
        )
    return (PASS if ok else FAIL), reasons


def comparison_units(test: pd.DataFrame, manifest: dict[str, Any]) -> tuple[np.ndarray | None, str]:
    """What the bootstrap resamples (``ml.compare``): the test rows' days where the table has a time column and
    the test window holds enough of them (a day's rows share whatever happened that day), else the rows."""
    column = manifest.get("time_column")
    if not column or column not in test.columns:
        return None, "rows"
    days = pd.to_datetime(test[column], utc=True).dt.floor("D").to_numpy()
    return (days, "days") if len(np.unique(days)) >= MIN_DAYS else (None, "rows")


def compare_with_champion(
    name: str, alias: str, validation: pd.DataFrame, test: pd.DataFrame, manifest: dict[str, Any]
) -> tuple[ChampionComparison, np.ndarray | None]:
    """Score the ``alias`` version of ``name`` on the same test rows, at its own recorded threshold.

    The rows go through the champion's pyfunc, typed as a client sends them, so its own signature decides
    whether it can score them; a champion that cannot is reported as not comparable. Returns the comparison
    and the champion's test scores (None when there are none).

    Raises:
        ChampionUnavailable: the registry or the artifact store failed while the champion was looked up or
            loaded.
    """
    from mlflow.exceptions import MlflowException

    features, categorical, target = (
        list(manifest["features"]),
        list(manifest["categorical"]),
        manifest["target"],
    )
    try:
        version = tracking.alias_version(name, alias)
    except MlflowException as err:
        raise ChampionUnavailable(f"the registry failed while looking up {name}@{alias}: {err}") from err
    if version is None:
        log.info("no '%s' alias on '%s' yet: nothing to compare with", alias, name)
        return ChampionComparison(version=None, comparable=False, reason="no champion"), None
    number = str(version.version)
    try:
        model = tracking.load_model(f"models:/{name}/{number}", pyfunc=True)
    except (
        Exception
    ) as err:  # the artifact store, the network, a corrupt artifact: not a property of the data
        log.error("champion %s v%s could not be loaded: %s", name, number, err)
        raise ChampionUnavailable(
            f"champion {name} v{number} could not be loaded ({type(err).__name__}: {_first_line(err)}): no "
            "decision without it; the stage fails so that it is tried again"
        ) from err
    try:
        threshold_tag = version.tags.get(THRESHOLD_TAG)
        if threshold_tag is None:
            val_input = to_model_input(validation[features], categorical)
            threshold = choose_threshold(
                validation[target].to_numpy(), tracking.positive_scores(model, val_input)
            )
        else:
            threshold = float(threshold_tag)
        scores = tracking.positive_scores(model, to_model_input(test[features], categorical))
    except (
        Exception
    ) as err:  # a champion trained on other columns cannot score this data: a finding, not a crash
        reason = _first_line(err)
        log.warning("champion v%s cannot score this test set: %s", number, reason)
        return ChampionComparison(version=number, comparable=False, reason=reason), None
    metrics = score_metrics(test[target].to_numpy(), scores, threshold)
    return ChampionComparison(version=number, comparable=True, metrics=metrics), scores


def _first_line(err: BaseException) -> str:
    """The telling part of an error: MLflow's schema errors put it after ". Error: "."""
    return str(err).split(". Error: ")[-1].strip().splitlines()[0][:300] if str(err).strip() else repr(err)


def _feature_importance(pipeline: Any) -> pd.Series:
    names = list(pipeline.named_steps["encode"].get_feature_names_out())
    importances = np.asarray(pipeline.named_steps["model"].feature_importances_, dtype=np.float64)
    return pd.Series(importances, index=names).sort_values()


def _figures(
    labels: np.ndarray, scores: np.ndarray, threshold: float, pipeline: Any, champion_scores: Any
) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay, PrecisionRecallDisplay

    figures = {}
    fig, ax = plt.subplots(figsize=(6, 5))
    PrecisionRecallDisplay.from_predictions(labels, scores, name="candidate", ax=ax)
    if champion_scores is not None:
        PrecisionRecallDisplay.from_predictions(labels, champion_scores, name="champion", ax=ax)
    ax.set_title("Precision-recall on the test split")
    figures["plots/precision_recall_curve.png"] = fig

    fig, ax = plt.subplots(figsize=(5, 4.5))
    ConfusionMatrixDisplay.from_predictions(labels, (scores >= threshold).astype(int), ax=ax, colorbar=False)
    ax.set_title(f"Confusion matrix at threshold {threshold:.3f}")
    figures["plots/confusion_matrix.png"] = fig

    importance = _feature_importance(pipeline)
    fig, ax = plt.subplots(figsize=(6, max(3, 0.3 * len(importance))))
    importance.tail(30).plot.barh(ax=ax)
    ax.set_title("Feature importance")
    fig.tight_layout()
    figures["plots/feature_importance.png"] = fig
    return {**figures, **_decision_figures(labels, scores, threshold, champion_scores)}


def _comparison_figure(comparison: Comparison, rule: Rule) -> Any:
    """The bootstrap distribution of the difference in average precision, its interval and the rule's bound."""
    import matplotlib.pyplot as plt

    difference = comparison.differences["average_precision"]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.hist(difference.draws, bins=50, color="tab:blue", alpha=0.7,
            label=f"{len(difference.draws)} paired resamples of the {comparison.unit}")  # fmt: skip
    ax.axvspan(difference.low, difference.high, color="tab:blue", alpha=0.12,
               label=f"{difference.confidence * 100:.0f} % interval {difference.low:+.3f} to {difference.high:+.3f}")  # fmt: skip
    ax.axvline(difference.estimate, color="tab:blue", label=f"on the test rows {difference.estimate:+.3f}")
    passed = rule.passes(difference)
    ax.axvline(rule.bound, color="tab:green" if passed else "tab:red", linestyle="--",
               label=f"{rule.policy}: lower bound must be above {rule.bound:+.3f} ({'pass' if passed else 'fail'})")  # fmt: skip
    ax.set(xlabel="average precision, candidate minus champion", ylabel="resamples",
           title="The candidate against the champion on the same test rows")  # fmt: skip
    ax.legend(loc="best", fontsize="small")
    return fig


def _decision_figures(
    labels: np.ndarray, scores: np.ndarray, threshold: float, champion_scores: Any
) -> dict[str, Any]:
    """The plots a fraud team picks a threshold with: precision, recall and F1 against the threshold (the chosen
    one marked), the scores of each class, and how far the scores are from calibrated probabilities."""
    import matplotlib.pyplot as plt
    from sklearn.calibration import CalibrationDisplay
    from sklearn.metrics import precision_recall_curve

    precision, recall, thresholds = precision_recall_curve(labels, scores)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(precision),
                   where=(precision + recall) > 0)  # fmt: skip
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for values, name in ((precision, "precision"), (recall, "recall"), (f1, "F1")):
        ax.plot(thresholds, values[:-1], label=name)
    ax.axvline(
        threshold, color="black", linestyle="--", label=f"chosen threshold {threshold:.3f} (on validation)"
    )
    ax.set(xlabel="threshold on the score", ylabel="on the test split", ylim=(0, 1.02),
           title="Precision, recall and F1 against the threshold")  # fmt: skip
    ax.legend(loc="best")
    figures = {"plots/threshold_tradeoff.png": fig}

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    bins = [i / 50 for i in range(51)]
    for value, name in ((0, "negative"), (1, "positive")):
        ax.hist(
            scores[labels == value],
            bins=bins,
            alpha=0.6,
            density=True,
            label=f"{name} ({(labels == value).sum()})",
        )
    ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.3f}")
    ax.set(xlabel="score", ylabel="density (each class on its own)", yscale="log",
           title="Scores of each class on the test split")  # fmt: skip
    ax.legend(loc="best")
    figures["plots/score_distribution.png"] = fig

    fig, ax = plt.subplots(figsize=(5.5, 5))
    CalibrationDisplay.from_predictions(
        labels, scores, n_bins=10, strategy="quantile", name="candidate", ax=ax
    )
    if champion_scores is not None:
        CalibrationDisplay.from_predictions(labels, champion_scores, n_bins=10, strategy="quantile", name="champion",
                                            ax=ax)  # fmt: skip
    ax.set_title("Calibration on the test split (deciles of the score)")
    figures["plots/calibration.png"] = fig
    return figures


def model_card(evaluation: Evaluation, manifest: dict[str, Any]) -> str:
    """A short markdown card: data, metrics, comparison with the champion, decision."""
    m = evaluation.metrics
    champion = evaluation.champion
    rows = [
        ("Average precision (PR-AUC)", m.average_precision, "average_precision"),
        ("ROC-AUC", m.roc_auc, "roc_auc"),
        (f"Precision @ {m.threshold:.3f}", m.precision, "precision"),
        (f"Recall @ {m.threshold:.3f}", m.recall, "recall"),
        (f"F1 @ {m.threshold:.3f}", m.f1, "f1"),
    ]
    table = ["| Metric | Candidate | Champion |", "|---|---|---|"]
    for label, value, key in rows:
        other = f"{getattr(champion.metrics, key):.4f}" if champion.metrics else "-"
        table.append(f"| {label} | {value:.4f} | {other} |")
    split = (
        "by time on `{}`".format(manifest["time_column"])
        if manifest.get("time_column")
        else "stratified random"
    )
    lines = [
        f"# Model card: {evaluation.registered_model_name}",
        "",
        f"**Decision: {evaluation.decision.upper()}**",
        "",
        *(f"- {reason}" for reason in evaluation.reasons),
        "",
        *_flag_lines(manifest),
        "## Data",
        f"- Source: `{manifest['source']}`; target `{manifest['target']}` (positive: "
        f"`{manifest.get('positive_label', '1')}`); split {split}",
        f"- Rows: {manifest['rows']}; positives: {manifest['positives']}",
        f"- Features ({len(manifest['features'])}): {', '.join(manifest['features'])}",
        f"- Categorical: {', '.join(manifest['categorical']) or 'none'}",
        "",
        "## Test metrics",
        *table,
        "",
        f"Decision threshold {m.threshold:.4f}, chosen to maximise F1 on the validation split.",
        f"Champion: {('v' + champion.version) if champion.version else 'none'}"
        + (f" ({champion.reason})" if champion.reason and not champion.comparable else ""),
        *_comparison_lines(evaluation),
        *(
            [
                f"**The run accepted a champion that could not be compared** ({evaluation.incomparable_champion_accepted})."
            ]
            if evaluation.incomparable_champion_accepted
            else []
        ),
        "",
        *_column_lines(manifest),
        "",
        *_drift_lines(evaluation, manifest),
        "",
        "## Model",
        f"- MLflow run `{evaluation.run_id}`, model `{evaluation.model_uri}`",
        *([f"- Served model: {evaluation.served_model}"] if evaluation.served_model else []),
    ]
    return "\n".join(lines) + "\n"


def _comparison_lines(evaluation: Evaluation) -> list[str]:
    """The difference with the champion, its interval and the policy's verdict, as the gate read them."""
    compared = evaluation.comparison
    if not compared:
        return []
    roc = compared["roc_auc"]
    return [
        "",
        "## Against the champion (paired bootstrap)",
        f"- Average precision: **{compared['described']}**",
        f"- ROC-AUC: {roc['estimate']:+.3f}, interval {roc['low']:+.3f} to {roc['high']:+.3f}",
        f"- {compared['resamples']} resamples of the test set's {compared['units']} {compared['unit']}, the same for "
        "both models",
        f"- Verdict, {compared['verdict']}: **{'pass' if compared['passes'] else 'fail'}**",
    ]


def _flag_lines(manifest: dict[str, Any]) -> list[str]:
    """The features the model learnt from although the leakage guard found something: first thing after the
    decision, so that nobody reads the metrics without knowing (a near copy of the label makes them too good)."""
    flagged = manifest.get("flagged_columns") or {}
    if not flagged:
        return []
    return [
        "> **Warning: learnt from columns the leakage guard flagged.** Check that each is known when a row is scored;",
        "> a copy of the label makes every metric below look better than production will be.",
        *(f"> - `{column}`: {reason}" for column, reason in flagged.items()),
        "",
    ]


def _column_lines(manifest: dict[str, Any]) -> list[str]:
    """What was left out of the features and why (the leakage guard's findings among them)."""
    lines = ["## Columns left out"]
    dropped = manifest.get("dropped_columns", {})
    lines += [f"- `{column}`: {reason}" for column, reason in dropped.items()] or ["- none"]
    return lines


def _drift_lines(evaluation: Evaluation, manifest: dict[str, Any]) -> list[str]:
    lines = ["## Drift (training window to evaluation window)"]
    if evaluation.drifted:
        shown = ", ".join(f"`{f}` {evaluation.drift[f]:.3f}" for f in evaluation.drifted)
        lines.append(f"- PSI above the warning level: {shown}")
    else:
        lines.append("- No feature's PSI is above the warning level.")
    if windows := manifest.get("windows"):
        (train_start, train_end), (test_start, test_end) = windows["training"], windows["evaluation"]
        lines.append(
            f"- Windows: training {train_start} to {train_end}, evaluation {test_start} to {test_end}"
        )
    return lines


def _drift(
    prepared_uri: str, test: pd.DataFrame, manifest: dict[str, Any], warning: float
) -> tuple[dict[str, float], list[str]]:
    """PSI of each feature, training split against test split, and the features above ``warning``, worst first."""
    training = read_published_table(prepared_uri, "train.parquet")
    drift = monitoring.drift(training, test, list(manifest["features"]), list(manifest["categorical"]))
    drifted = sorted((f for f, value in drift.items() if value > warning), key=lambda f: -drift[f])
    for feature in drifted:
        log.warning("drift: %s has PSI %.3f between the training and evaluation windows (warning above %.2f)",
                    feature, drift[feature], warning)  # fmt: skip
    return drift, drifted


def evaluate(
    prepared_uri: str,
    model_uri: str,
    run_id: str,
    *,
    registered_model_name: str,
    min_average_precision: float,
    rule: Rule,
    champion_alias: str,
    psi_warning: float = float("inf"),
    history_intervals: int = 0,
    plan: dict[str, Any] = release_plan.UNPLANNED,
    accept_incomparable_champion: bool = False,
) -> Evaluation:
    """Score the candidate and the champion on the test split, log the evidence and return the decision
    (drift warned of above ``psi_warning``, by default never; ``history_intervals`` windows plotted, default none)."""
    # Long on purpose: the stage's steps in order; the result's fields are spelt out once, here.
    if not 0 <= min_average_precision <= 1:
        raise StageError(f"min_average_precision must be within [0, 1], got {min_average_precision}")
    manifest = read_manifest(prepared_uri)
    features, target = list(manifest["features"]), manifest["target"]
    validation = read_published_table(prepared_uri, "validation.parquet")
    test = read_published_table(prepared_uri, "test.parquet")
    drift, drifted = _drift(prepared_uri, test, manifest, psi_warning)
    pipeline = tracking.load_model(model_uri)
    # A model refit on training + validation rows has learnt the validation rows: the threshold is chosen on the
    # early-stopped model's scores of them, kept by the train stage.
    validation_scores = tracking.early_stopped_validation_scores(run_id, len(validation))
    if validation_scores is None:
        validation_scores = pipeline.predict_proba(validation[features])[:, 1]
    threshold = choose_threshold(validation[target].to_numpy(), validation_scores)
    labels, scores = test[target].to_numpy(), pipeline.predict_proba(test[features])[:, 1]
    metrics = score_metrics(labels, scores, threshold)
    champion, champion_scores = compare_with_champion(
        registered_model_name, champion_alias, validation, test, manifest
    )
    accepted = accept_incomparable_champion and bool(champion.version) and not champion.comparable
    comparison = None
    if champion.comparable and champion_scores is not None:
        units, unit = comparison_units(test, manifest)
        comparison = paired_bootstrap(labels, scores, champion_scores, units, unit=unit, resamples=rule.resamples,
                                      confidence=rule.confidence)  # fmt: skip
    decision, reasons = decide(
        metrics, champion, min_average_precision=min_average_precision, rule=rule, comparison=comparison,
        record_only="" if plan["release"] else plan["reason"], accept_incomparable=accept_incomparable_champion,
    )  # fmt: skip
    evaluation = Evaluation(
        decision=decision,
        reasons=reasons,
        metrics=metrics,
        champion=champion,
        run_id=run_id,
        model_uri=model_uri,
        model_id=model_uri.removeprefix("models:/"),
        registered_model_name=registered_model_name,
        min_average_precision=min_average_precision,
        min_improvement=rule.min_improvement,
        test_rows=len(test),
        test_positives=int(labels.sum()),
        drift=drift,
        drifted=drifted,
        release_plan=plan,
        incomparable_champion_accepted=champion.reason if accepted else "",
        served_model=tracking.client().get_run(run_id).data.tags.get(tracking.SERVED_MODEL_TAG, ""),
        leakage_flags=dict(manifest.get("flagged_columns") or {}),
        rule=asdict(rule),
        comparison=comparison_summary(comparison, rule) if comparison else {},
    )

    _log_evidence(evaluation, manifest, labels, scores, pipeline, champion_scores)
    if comparison:
        _log_comparison(evaluation, comparison, rule)
    _log_history(evaluation, history_intervals)
    log.info("decision %s: %s", decision.upper(), "; ".join(reasons))
    return evaluation


def _log_evidence(
    evaluation: Evaluation,
    manifest: dict[str, Any],
    labels: np.ndarray,
    scores: np.ndarray,
    pipeline: Any,
    champion_scores: np.ndarray | None,
) -> None:
    """Log the metrics, figures, model card and decision to the training's run."""
    import mlflow

    threshold = evaluation.metrics.threshold
    figures = _figures(labels, scores, threshold, pipeline, champion_scores)  # selects the Agg backend first
    import matplotlib.pyplot as plt

    with tracking.active_run(evaluation.run_id):
        test_metrics = {f"test_{k}": v for k, v in asdict(evaluation.metrics).items() if k != "threshold"}
        mlflow.log_metrics({**test_metrics, "decision_threshold": threshold}, model_id=evaluation.model_id)
        if evaluation.champion.metrics:
            mlflow.log_metrics(
                {f"champion_test_{k}": v for k, v in asdict(evaluation.champion.metrics).items()}
            )
        for path, figure in figures.items():
            mlflow.log_figure(figure, path)
            plt.close(figure)  # pyplot keeps every figure alive until closed
        mlflow.log_text(model_card(evaluation, manifest), "model_card.md")
        mlflow.log_dict(asdict(evaluation), "evaluation.json")
        mlflow.log_metrics({monitoring.metric_name(f): value for f, value in evaluation.drift.items()})
        mlflow.set_tags({
            DECISION_TAG: evaluation.decision,
            THRESHOLD_TAG: f"{threshold:.6f}",
            REGISTERED_MODEL_TAG: evaluation.registered_model_name,
            **({EVALUATION_WINDOW_TAG: "/".join(manifest["windows"]["evaluation"])} if manifest.get("windows") else {}),
        })  # fmt: skip


def _log_comparison(evaluation: Evaluation, comparison: Comparison, rule: Rule) -> None:
    """The comparison's figures as metrics, its plot, and its sentence as a tag of the run."""
    import matplotlib.pyplot as plt
    import mlflow

    figure = _comparison_figure(comparison, rule)
    with tracking.active_run(evaluation.run_id):
        mlflow.log_metrics({f"champion_difference_{metric}_{end}": getattr(d, end)
                            for metric, d in comparison.differences.items() for end in ("estimate", "low", "high")})  # fmt: skip
        mlflow.log_figure(figure, "plots/champion_comparison.png")
        mlflow.set_tag(CHAMPION_COMPARISON_TAG, described(evaluation.comparison))
    plt.close(figure)


def described(comparison: dict[str, Any]) -> str:
    """A recorded comparison in one line: the interval and the rule's verdict."""
    return f"{comparison['described']}; {comparison['verdict']}" if comparison else ""


def _log_history(evaluation: Evaluation, intervals: int) -> None:
    """Plot the model's and the champion's average precision over the last intervals (this run's included)."""
    import matplotlib.pyplot as plt
    import mlflow

    run = tracking.client().get_run(evaluation.run_id)
    window = run.data.tags.get(EVALUATION_WINDOW_TAG)
    if not window or not intervals:
        return  # no data windows (no time column): nothing lines up over time
    past = monitoring.history(
        run.info.experiment_id, evaluation.registered_model_name, intervals, until=window.split("/")[-1]
    )
    figure = monitoring.history_figure(past, evaluation.registered_model_name)
    with tracking.active_run(evaluation.run_id):
        mlflow.log_figure(figure, "plots/performance_over_time.png")
        mlflow.log_table(past.assign(window_end=past["window_end"].astype(str)), "performance_over_time.json")
    plt.close(figure)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = ArgumentParser(prog="python -m ml.evaluate", doc=__doc__)
    parser.add_argument("--prepared-uri", required=True)
    parser.add_argument("--model-uri", type=tracking.model_uri, required=True)
    parser.add_argument("--run-id", required=True, help="MLflow run of the training")
    parser.add_argument("--registered-model-name", required=True)
    parser.add_argument("--min-average-precision", type=float, required=True)
    parser.add_argument("--policy", choices=POLICIES, required=True,
                        help="superior: the interval's lower bound above --min-improvement; non-inferior: above "
                             "minus --margin")  # fmt: skip
    parser.add_argument("--min-improvement", type=float, required=True)
    parser.add_argument("--margin", type=float, required=True)
    parser.add_argument("--confidence", type=float, required=True)
    parser.add_argument("--resamples", type=int, required=True)
    parser.add_argument("--champion-alias", required=True, help="registry alias of the model to beat")
    parser.add_argument("--psi-warning", type=float, required=True, help="warn of drift above this PSI")
    parser.add_argument(
        "--history-intervals", type=int, required=True, help="intervals in the performance plot"
    )
    parser.add_argument(
        "--release-plan",
        type=release_plan.parse,
        default=release_plan.UNPLANNED,
        help="JSON {release, reason, interval}: a model not to be released need not beat the champion",
    )
    parser.add_argument(
        "--accept-incomparable-champion",
        type=boolean,
        default=False,
        help="true: a champion that cannot score the test rows (other inputs) does not fail the gate; recorded",
    )
    args = parser.parse_args(argv)
    try:
        rule = Rule(args.policy, args.min_improvement, args.margin, args.confidence, args.resamples)
    except ValueError as err:
        raise StageError(str(err)) from err
    evaluation = evaluate(
        args.prepared_uri,
        args.model_uri,
        args.run_id,
        registered_model_name=args.registered_model_name,
        min_average_precision=args.min_average_precision,
        rule=rule,
        champion_alias=args.champion_alias,
        psi_warning=args.psi_warning,
        history_intervals=args.history_intervals,
        plan=args.release_plan,
        accept_incomparable_champion=args.accept_incomparable_champion,
    )
    return asdict(evaluation)


if __name__ == "__main__":
    from ml.runtime import run_stage

    run_stage(main)
