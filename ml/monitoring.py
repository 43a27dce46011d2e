"""Performance over time: data drift between a run's training and evaluation windows, and past runs' scores.

Drift is the population stability index (PSI) of each feature: the train split's distribution (the training
window without its latest, validation part) against the evaluation window's, over ten quantile bins of the training values (numeric) or over the categories
(categorical), missing values a bin of their own. The usual reading: under 0.1 stable, 0.1 to 0.25 some
shift, over 0.25 a major one.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import numpy as np
import pandas as pd

from contract import EVALUATION_WINDOW_TAG, REGISTERED_MODEL_TAG
from ml import tracking

log = logging.getLogger(__name__)

BINS = 10
#: Floor of a bin's share, so that an empty bin adds a large but finite term.
_FLOOR = 1e-4


def psi(expected: pd.Series, actual: pd.Series, *, categorical: bool = False) -> float:
    """Population stability index of ``actual`` against ``expected`` (0: the same distribution)."""
    if categorical or not pd.api.types.is_numeric_dtype(expected):
        shares = pd.concat(
            [expected.astype("object").fillna("<missing>").value_counts(normalize=True),
             actual.astype("object").fillna("<missing>").value_counts(normalize=True)],
            axis=1,
        ).fillna(0.0)  # fmt: skip
        before, after = shares.iloc[:, 0].to_numpy(), shares.iloc[:, 1].to_numpy()
    else:
        values = expected.dropna().to_numpy(dtype=np.float64)
        edges = (
            np.unique(np.quantile(values, np.linspace(0, 1, BINS + 1)[1:-1])) if len(values) else np.array([])
        )
        before, after = (_binned(s.to_numpy(dtype=np.float64), edges) for s in (expected, actual))
    before, after = np.maximum(before, _FLOOR), np.maximum(after, _FLOOR)
    return float(np.sum((after - before) * np.log(after / before)))


def _binned(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Shares of values in each bin between ``edges``, then the share of missing values."""
    missing = np.isnan(values)
    counts = np.bincount(np.searchsorted(edges, values[~missing], side="right"), minlength=len(edges) + 1)
    return np.append(counts, missing.sum()) / max(len(values), 1)


def drift(
    training: pd.DataFrame, evaluation: pd.DataFrame, features: list[str], categorical: list[str]
) -> dict[str, float]:
    """PSI of every feature, training window against evaluation window."""
    return {f: round(psi(training[f], evaluation[f], categorical=f in categorical), 6) for f in features}


def metric_name(feature: str) -> str:
    """An MLflow metric name for a feature's PSI (MLflow allows letters, digits and ``_-./ `` only)."""
    return "drift_psi_" + re.sub(r"[^A-Za-z0-9_\-./ ]", "_", feature)


def history(experiment_id: str, registered_model_name: str, limit: int, until: str) -> pd.DataFrame:
    """The latest run's test average precision (and its champion's) for each of the last ``limit`` windows
    ending at or before ``until`` (ISO-8601: a backfill of an old week plots the weeks up to it).

    Columns: ``window_end`` (timestamp), ``challenger``, ``champion`` (NaN where there was none), ``run_id``.
    """
    runs = tracking.client().search_runs(
        [experiment_id],
        filter_string=f"tags.`{REGISTERED_MODEL_TAG}` = '{registered_model_name}'",
        order_by=["attributes.start_time DESC"],
        max_results=20 * limit,
    )
    rows: dict[str, dict[str, Any]] = {}
    for run in runs:
        window = run.data.tags.get(EVALUATION_WINDOW_TAG)
        if not window or window in rows or "test_average_precision" not in run.data.metrics:
            continue
        if pd.Timestamp(window.split("/")[-1]) > pd.Timestamp(until):
            continue
        rows[window] = {
            "window_end": pd.Timestamp(window.split("/")[-1]),
            "challenger": run.data.metrics["test_average_precision"],
            "champion": run.data.metrics.get("champion_test_average_precision", np.nan),
            "run_id": run.info.run_id,
        }
    frame = pd.DataFrame(rows.values(), columns=["window_end", "challenger", "champion", "run_id"])
    return frame.sort_values("window_end").tail(limit).reset_index(drop=True)


def history_figure(frame: pd.DataFrame, registered_model_name: str) -> Any:
    """Average precision of each interval's model and of the champion it was compared with, by interval."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(frame["window_end"], frame["challenger"], marker="o", label="model trained for the interval")
    ax.plot(frame["window_end"], frame["champion"], marker="s", linestyle="--", label="champion at the time")
    ax.set_ylim(0, 1)
    ax.set_xlabel("end of the evaluation window")
    ax.set_ylabel("average precision (test)")
    ax.set_title(f"{registered_model_name}: performance over the last {len(frame)} interval(s)")
    ax.legend(loc="lower left")
    fig.autofmt_xdate()
    fig.tight_layout()
    return fig
