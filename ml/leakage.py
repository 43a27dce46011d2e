"""The leakage guard: columns that would make a model look better than it is, found before the data is split.

A model that learns a row's identifier, a counter of time or a copy of the label scores well on a test split cut
from the same table and fails in production; the quality gate cannot see it, because the test split leaks the
same way. ``screen`` looks at each candidate feature on the rows the model trains on and names, with a reason,
every column that is:

- a row identifier: an integer or text column with (nearly) one value per row, a column that increases with the
  row order, or an identifier-named column (``*_id``, ``*_number``, ...) with many distinct values, *unless its
  values carry signal*: an identifier's values have no order that ranks the classes and no entity whose positive
  rate carries over to other rows (earlier rows to later ones, with a time column), while an amount in cents
  (nearly one value per row) ranks them, and a merchant whose frauds recur is worth learning;
- a counter of time: a numeric column whose rank follows the time column's almost exactly, *unless what is left
  of it once the time is taken out still ranks the classes* (an account's age in days follows the time, and its
  young accounts are the frauds): such a column is kept and flagged, as it also tells the model when a row is;
- a single-column target leak: a column that alone separates the two classes almost perfectly (dropped), or
  nearly so (kept and flagged, loudly: a near copy of the label, such as a review flag written after the fact,
  reaches that alone; a real feature seldom does);
- constant: one value, nothing to learn.

A finding either drops its column (``Finding.drops``) or flags it: kept, with the reason in the manifest, the log
and the model card. Every threshold is here, with why it has its value. They were checked on a table of cases
(``tests/ml/test_leakage.py``: identifiers, counters, label copies and the real features that look like them,
with no false positive and no false negative) and on a real table (census income): nothing is flagged there, its
sampling weight ``fnlwgt`` included.
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
#: Area under the ROC curve of one column alone from which it is a copy of the label and dropped (a fraud-scenario
#: code, a chargeback flag, a review flag that agrees with the label on all but a few percent of the rows): no
#: real single feature of a hard problem separates the classes this well. It was 0.99, which let a review flag
#: equal to the label on 97 % of the rows (0.975) through unnoticed.
TARGET_LEAK_AUC = 0.97
#: ...and from which it is kept but flagged, loudly (the strongest real single features of public fraud data, a
#: vendor's risk score, come this close; the person who knows where the column comes from decides).
LABEL_COPY_WARNING_AUC = 0.95
#: A column's values "carry signal" when they alone rank the classes at least this far from chance (|AUC - 0.5|)
#: ...
SIGNAL_MIN_EFFECT = 0.05
#: ...with at least this z-score against chance (the Mann-Whitney statistic's normal approximation): four
#: standard errors, so that an identifier's noise (one in 30,000 columns) is not taken for signal, while an
#: amount or a merchant with a few dozen frauds is. An order must hold in both halves of the rows, each at
#: ``SIGNAL_MIN_Z / sqrt(2)`` (four standard errors together): a range of identifiers a fraud ring used for a few
#: weeks ranks those weeks only.
SIGNAL_MIN_Z = 4.0
#: Rows the correlations and areas are computed on (a uniform sample beyond): the estimates are stable to the
#: third decimal well before, and the guard stays a small part of ``prepare`` on ten million rows.
SAMPLE_ROWS = 200_000
#: Fewer training rows than this say nothing about uniqueness, correlation or constancy: nothing is flagged (the
#: window's minimums, checked next, say what is missing).
MIN_ROWS = 100


@dataclass(frozen=True)
class Finding:
    """A column the guard found: what kind of leak, the figures that show it, and whether it drops the column
    (else the column is kept and flagged)."""

    column: str
    kind: str  # identifier, time counter, target leak, near copy of the label, time-like, constant
    reason: str
    drops: bool = True


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
    signal = Signal(labels, times, seed)
    flagged = {f.column for f in findings}
    for column in columns:
        if column in flagged:
            continue
        values = sample[column]
        is_category = column in categorical
        finding = (
            _identifier(values, column, position, signal, is_category=is_category)
            or (_time_counter(values, column, times, signal) if times is not None else None)
            or _target_leak(values, column, labels, is_category=is_category, seed=seed)
        )
        if finding is not None:
            findings.append(finding)
    return findings


class Signal:
    """Whether a column's values rank the classes beyond chance (``SIGNAL_MIN_EFFECT``, ``SIGNAL_MIN_Z``) in a way
    that carries over to rows it was not seen on: by their order, in both halves of the rows alike, or as entities
    whose positive rate, learnt on one half, ranks the other. With a time column the halves are the earlier and the
    later rows (what a model could use tomorrow); without one, a random split."""

    def __init__(self, labels: np.ndarray, times: pd.Series | None, seed: int) -> None:
        self.labels = labels
        if times is not None:
            self.later = (times >= times.median()).to_numpy()
        else:
            self.later = np.random.default_rng(seed).random(len(labels)) < 0.5

    def of_order(self, values: pd.Series) -> float:
        """The smaller |AUC - 0.5| of the values as scores in the two halves, when both are significant and of
        one sign (else 0)."""
        scores = _as_scores(values)
        halves = [_auc_effect(self.labels[h], scores[h], SIGNAL_MIN_Z / np.sqrt(2)) for h in self._halves()]
        if any(effect == 0 for effect in halves) or (halves[0] > 0) != (halves[1] > 0):
            return 0.0
        return min(abs(effect) for effect in halves)

    def of_entities(self, values: pd.Series) -> float:
        """|AUC - 0.5| of each later row's value scored by that value's positive rate in the earlier rows, when
        significant (else 0)."""
        keys = values.astype(object).where(values.notna(), "\0missing").astype(str).to_numpy()
        fit, apply = self._halves()
        if not self.labels[fit].any():
            return 0.0
        rates = pd.Series(self.labels[fit]).groupby(keys[fit]).mean()
        scores = pd.Series(keys[apply]).map(rates).fillna(self.labels[fit].mean()).to_numpy()
        return abs(_auc_effect(self.labels[apply], scores, SIGNAL_MIN_Z))

    def of(self, values: pd.Series, *, is_category: bool) -> float:
        return max(0.0 if is_category else self.of_order(values), self.of_entities(values))

    def _halves(self) -> tuple[np.ndarray, np.ndarray]:
        return ~self.later, self.later


def _as_scores(values: pd.Series) -> np.ndarray:
    """Numbers as scores, a missing value below every other (so "missing exactly when positive" shows)."""
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
    missing = np.isnan(numbers)
    if missing.all():
        return np.zeros(len(numbers))
    return np.where(missing, np.nanmin(numbers) - 1, numbers)


def _auc_effect(labels: np.ndarray, scores: np.ndarray, min_z: float) -> float:
    """AUC - 0.5 of ``scores`` for ``labels`` if it is at least ``SIGNAL_MIN_EFFECT`` away from chance and
    ``min_z`` standard errors (Hanley and McNeil's, under the null), else 0."""
    from sklearn.metrics import roc_auc_score

    positives, negatives = int(labels.sum()), int(len(labels) - labels.sum())
    if not positives or not negatives:
        return 0.0
    effect = float(roc_auc_score(labels, scores)) - 0.5
    error = np.sqrt((positives + negatives + 1) / (12 * positives * negatives))
    return effect if abs(effect) >= SIGNAL_MIN_EFFECT and abs(effect) / error >= min_z else 0.0


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


def _identifier(
    values: pd.Series, column: str, position: pd.Series, signal: Signal, *, is_category: bool
) -> Finding | None:
    if not (is_category or _is_integer(values)):
        return None
    distinct = int(values.nunique())
    share = distinct / len(values)
    words = _name_words(column)
    unique = share >= IDENTIFIER_DISTINCT_SHARE
    named = bool(words) and words[-1] in IDENTIFIER_WORDS and distinct > IDENTIFIER_NAME_MIN_DISTINCT
    if (unique or named) and not signal.of(values, is_category=is_category):
        return Finding(
            column,
            "identifier",
            f"row identifier: {distinct} distinct values in {len(values)} rows ({share:.0%}), whose values rank "
            "nothing"
            if unique
            else f"identifier: named like one ('{words[-1]}') with {distinct} distinct values (over "
            f"{IDENTIFIER_NAME_MIN_DISTINCT}), none of which carries its positive rate to other rows: it names an "
            "entity, it does not describe the row",
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


def _time_counter(values: pd.Series, column: str, times: pd.Series, signal: Signal) -> Finding | None:
    if not pd.api.types.is_numeric_dtype(values) or isinstance(values.dtype, pd.CategoricalDtype):
        return None
    seconds = times.astype("int64").astype(np.float64)
    correlation = _rank_correlation(values, seconds)
    if abs(correlation) < TIME_COUNTER_CORRELATION:
        return None
    beyond = signal.of_order(_beyond_time(values, seconds))
    if beyond:
        return Finding(
            column,
            "time-like",
            f"follows the time column (rank correlation {correlation:.3f}) but ranks the classes beyond it "
            f"(|ROC-AUC - 0.5| {beyond:.3f} once the time is taken out): kept; it also tells the model when a "
            "row is",
            drops=False,
        )
    return Finding(
        column,
        "time counter",
        f"counter of time: its rank follows the time column's (rank correlation {correlation:.3f}) and nothing "
        "is left of it once the time is taken out",
    )


def _beyond_time(values: pd.Series, seconds: pd.Series) -> pd.Series:
    """What is left of a column once a straight line in the time is taken out of it (an account's opening date,
    of its age in days)."""
    numbers = pd.to_numeric(values, errors="coerce").astype(np.float64)
    present = numbers.notna().to_numpy()
    slope, intercept = np.polyfit(seconds[present] - seconds.mean(), numbers[present], 1)
    return numbers - (slope * (seconds - seconds.mean()) + intercept)


def _target_leak(
    values: pd.Series, column: str, labels: np.ndarray, *, is_category: bool, seed: int
) -> Finding | None:
    from sklearn.metrics import roc_auc_score

    if len(np.unique(labels)) < 2:
        return None
    if is_category:
        scores = _out_of_fold_rates(values, labels, seed)
    else:
        if values.isna().all():
            return None
        scores = _as_scores(values)
    area = float(roc_auc_score(labels, scores))
    separation = max(area, 1 - area)
    if separation >= TARGET_LEAK_AUC:
        return Finding(
            column,
            "target leak",
            f"target leak: alone it separates the classes of the training rows (ROC-AUC {separation:.3f}, "
            f"{TARGET_LEAK_AUC} or more)",
        )
    if separation >= LABEL_COPY_WARNING_AUC:
        return Finding(
            column,
            "near copy of the label",
            f"NEAR COPY OF THE LABEL? alone it ranks the classes of the training rows with ROC-AUC "
            f"{separation:.3f} ({LABEL_COPY_WARNING_AUC} or more): kept; drop it unless it is known when a row is "
            "scored (not written after the outcome, as a review or a chargeback is)",
            drops=False,
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
