"""The leakage guard: columns that would make a model look better than it is, found before the data is split.

A model that learns a row's identifier, a counter of time or a copy of the label scores well on a test split cut
from the same table and fails in production; the quality gate cannot see it, because the test split leaks the
same way. ``screen`` looks at each candidate feature on the rows the model trains on and names, with a reason,
every column that is:

- a row identifier: an integer or text column with (nearly) one value per row, a column that increases with the
  row order, or an identifier-named column (``*_id``, ``*_number``, ...) with many distinct values;
- a counter of time: a numeric column whose rank follows the time column's almost exactly;
- a single-column target leak: a column that alone separates the two classes almost perfectly;
- constant: one value, nothing to learn.

Every threshold is here, with why it has its value. They were checked on the reference data and on a real table
(census income): nothing legitimate is flagged there, its sampling weight ``fnlwgt`` included.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

#: A row identifier has one value per row; 1 % slack keeps an id column with a few duplicated rows (a join that
#: repeated some) flagged. Real features with this many distinct values are continuous, hence not integers.
IDENTIFIER_DISTINCT_SHARE = 0.99
#: Last words of a column name that make it an identifier (``customer_id``, ``policyNumber``, ``terminal_no``).
IDENTIFIER_WORDS = frozenset({"id", "ids", "uuid", "guid", "key", "number", "no", "nr"})
#: An identifier-named column with more distinct values than this is memorised per entity (a customer, a
#: terminal), which does not carry over to the entities of tomorrow; a store id with a few dozen stores is a
#: category and stays.
IDENTIFIER_NAME_MIN_DISTINCT = 100
#: Rank correlation with the row position above which an integer column is a running number of the rows...
ROW_ORDER_CORRELATION = 0.99
#: ...provided it has a value for at least this share of the rows: a table sorted by a feature with few values
#: (an age) must not lose that feature.
ROW_ORDER_MIN_DISTINCT_SHARE = 0.5
#: Rank correlation with the time column above which a numeric column is a counter of time (seconds or days
#: since a start): it tells the model when a row happened, which in a time split separates train from test.
TIME_COUNTER_CORRELATION = 0.98
#: Area under the ROC curve of one column alone above which it is a copy of the label (a fraud-scenario code, a
#: chargeback flag): no real single feature of a hard problem separates the classes this well.
TARGET_LEAK_AUC = 0.99
#: Rows the correlations and areas are computed on (a uniform sample beyond): the estimates are stable to the
#: third decimal well before, and the guard stays a small part of ``prepare`` on ten million rows.
SAMPLE_ROWS = 200_000
#: Fewer training rows than this say nothing about uniqueness, correlation or constancy: nothing is flagged (the
#: window's minimums, checked next, say what is missing).
MIN_ROWS = 100


@dataclass(frozen=True)
class Finding:
    """A column the guard flags: what kind of leak, and the figures that show it."""

    column: str
    kind: str  # identifier, time counter, target leak, constant
    reason: str


def screen(
    frame: pd.DataFrame,
    target: str,
    columns: Sequence[str],
    *,
    categorical: Sequence[str] = (),
    time_column: str | None = None,
    seed: int = 0,
) -> list[Finding]:
    """Flag the ``columns`` of ``frame`` (the rows a model trains on, cleaned by ``prepare``) that leak.

    Args:
        frame: The training rows, with the target as 0/1 and the time column (if any) as timestamps.
        target: The target column.
        columns: The candidate features.
        categorical: Those of ``columns`` that are categories.
        time_column: The time column, if any: counters of time are looked for against it.
        seed: Seed of the sample taken from large tables.
    """
    sample = frame.sample(SAMPLE_ROWS, random_state=seed).sort_index() if len(frame) > SAMPLE_ROWS else frame
    if len(sample) < MIN_ROWS:
        return []
    # Constant on a uniform sample of this size: any other value is rarer than one row in SAMPLE_ROWS.
    findings = [f for column in columns if (f := _constant(sample[column], column)) is not None]
    position = pd.Series(np.arange(len(sample), dtype=np.float64), index=sample.index)
    labels = sample[target].to_numpy()
    times = sample[time_column] if time_column else None
    flagged = {f.column for f in findings}
    for column in columns:
        if column in flagged:
            continue
        values = sample[column]
        finding = (
            _identifier(values, column, position, is_category=column in categorical)
            or (_time_counter(values, column, times) if times is not None else None)
            or _target_leak(values, column, labels, is_category=column in categorical, seed=seed)
        )
        if finding is not None:
            findings.append(finding)
    return findings


def _constant(values: pd.Series, column: str) -> Finding | None:
    present = values.dropna()
    if isinstance(values.dtype, pd.CategoricalDtype):
        distinct = present.nunique()
    else:
        distinct = 0 if present.empty else (1 if present.min() == present.max() else 2)
    if distinct <= 1:
        shown = f"{present.iloc[0]!r}" if len(present) else "only missing values"
        return Finding(column, "constant", f"constant: every training row holds {shown}")
    return None


def _is_integer(values: pd.Series) -> bool:
    if pd.api.types.is_integer_dtype(values):
        return True
    if not pd.api.types.is_float_dtype(values):
        return False
    present = values.dropna().to_numpy()
    return bool(len(present)) and bool(np.all(np.mod(present, 1) == 0))


def _name_words(column: str) -> list[str]:
    return [w.lower() for w in re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+", column)]


def _identifier(values: pd.Series, column: str, position: pd.Series, *, is_category: bool) -> Finding | None:
    if not (is_category or _is_integer(values)):
        return None
    distinct = int(values.nunique())
    share = distinct / len(values)
    if share >= IDENTIFIER_DISTINCT_SHARE:
        return Finding(
            column,
            "identifier",
            f"row identifier: {distinct} distinct values in {len(values)} rows ({share:.0%})",
        )
    words = _name_words(column)
    if words and words[-1] in IDENTIFIER_WORDS and distinct > IDENTIFIER_NAME_MIN_DISTINCT:
        return Finding(
            column,
            "identifier",
            f"identifier: named like one ('{words[-1]}') with {distinct} distinct values (over "
            f"{IDENTIFIER_NAME_MIN_DISTINCT}): it names an entity, it does not describe the row",
        )
    if is_category or share < ROW_ORDER_MIN_DISTINCT_SHARE:
        return None
    correlation = _rank_correlation(values, position)
    if abs(correlation) >= ROW_ORDER_CORRELATION:
        return Finding(
            column,
            "identifier",
            f"row identifier: follows the row order (rank correlation {correlation:.3f}) with {distinct} "
            "distinct values",
        )
    return None


def _time_counter(values: pd.Series, column: str, times: pd.Series) -> Finding | None:
    if not pd.api.types.is_numeric_dtype(values) or isinstance(values.dtype, pd.CategoricalDtype):
        return None
    correlation = _rank_correlation(values, times.astype("int64").astype(np.float64))
    if abs(correlation) >= TIME_COUNTER_CORRELATION:
        return Finding(
            column,
            "time counter",
            f"counter of time: its rank follows the time column's (rank correlation {correlation:.3f})",
        )
    return None


def _target_leak(
    values: pd.Series, column: str, labels: np.ndarray, *, is_category: bool, seed: int
) -> Finding | None:
    from sklearn.metrics import roc_auc_score

    if len(np.unique(labels)) < 2:
        return None
    if is_category:
        scores = _out_of_fold_rates(values, labels, seed)
    else:
        numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
        missing = np.isnan(numbers)
        if missing.all():
            return None
        # A missing value is a value of its own (below every other), so "missing exactly when positive" shows.
        scores = np.where(missing, np.nanmin(numbers) - 1, numbers)
    area = float(roc_auc_score(labels, scores))
    separation = max(area, 1 - area)
    if separation >= TARGET_LEAK_AUC:
        return Finding(
            column,
            "target leak",
            f"target leak: alone it separates the classes of the training rows (ROC-AUC {separation:.3f})",
        )
    return None


def _out_of_fold_rates(values: pd.Series, labels: np.ndarray, seed: int) -> np.ndarray:
    """Each row's category scored by its positive rate in the other half of the rows, so a category seen once
    does not score itself."""
    keys = values.astype(object).where(values.notna(), "\0missing").astype(str).to_numpy()
    half = np.random.default_rng(seed).random(len(keys)) < 0.5
    scores = np.full(len(keys), labels.mean(), dtype=np.float64)
    for fit, apply in ((half, ~half), (~half, half)):
        rates = pd.Series(labels[fit]).groupby(keys[fit]).mean()
        scores[apply] = pd.Series(keys[apply]).map(rates).fillna(labels[fit].mean()).to_numpy()
    return scores


def _rank_correlation(values: pd.Series, other: pd.Series) -> float:
    """Spearman's rank correlation over the rows where ``values`` is present (0 when undefined)."""
    present = values.notna().to_numpy()
    if present.sum() < MIN_ROWS:
        return 0.0
    left = values[present].rank().to_numpy(dtype=np.float64)
    right = other[present].rank().to_numpy(dtype=np.float64)
    if left.std() == 0 or right.std() == 0:
        return 0.0
    return float(np.corrcoef(left, right)[0, 1])
