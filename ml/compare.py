"""Two models compared on the same test rows, with the uncertainty of the comparison.

The difference in average precision (and ROC-AUC) between a challenger and the champion, both scored on the same
rows, gets a percentile confidence interval from a **paired bootstrap**: every draw resamples the test rows, the
same rows for both models, and recomputes both metrics on them, so what the two models have in common (an easy or
a hard week) cancels out of the difference.

Rows are resampled as whole **units** where rows are not independent of each other: in the world, the rows of one
day share that day (a campaign, an outage, a holiday), and a bootstrap of single rows would then make the interval
too narrow. But a bootstrap of few units is too narrow as well, for want of units: with fewer than ``MIN_DAYS``
days in the test window ("few clusters", below about 30), the rows are resampled instead. ``make
bench-decisions`` measures both against an oracle on a 7-day test window: the day bootstrap's 95 % interval held
the true difference in about three quarters of the weeks, the row bootstrap's in nine tenths and more.

Each draw is a weighting of the units (a unit drawn twice counts twice), and both metrics are computed from the
weighted counts of positives and negatives above each distinct score (each unit's counts computed once, a draw
is then one matrix product), so 1,000 draws over 200,000 rows take well under a second.

A ``Rule`` turns the interval of the difference in average precision into the gate's verdict: ``superior``
releases a challenger only when the interval's lower bound is above the required improvement (the champion stays
unless the evidence says the challenger is better), ``non-inferior`` when it is above minus a margin (the challenger,
trained on fresher data, replaces the champion unless the evidence says it is worse by more than the margin).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from contract import GATE_POLICIES

#: The most units resampled one by one; more are dealt into this many blocks (see ``paired_bootstrap``).
MAX_UNITS = 512
#: ...and fewer blocks when the positives have many distinct scores: a unit's counts at each of them are kept,
#: 8 bytes each, three tables per model, so this bounds each table to 32 MB.
MAX_CELLS = 4_000_000
#: Draws computed together (their counts at each positive score: ``CHUNK`` x those scores x 8 bytes per table).
CHUNK = 64
METRICS = ("average_precision", "roc_auc")
#: The fewest days in a test window for the bootstrap to resample days rather than rows.
MIN_DAYS = 30
POLICIES = SUPERIOR, NON_INFERIOR = GATE_POLICIES


@dataclass(frozen=True)
class Difference:
    """Challenger minus champion in one metric: the estimate on the test rows and its bootstrap interval."""

    metric: str
    estimate: float
    low: float
    high: float
    confidence: float
    draws: np.ndarray = field(repr=False, compare=False)

    def describe(self, unit: str = "") -> str:
        """``+0.018 AP, 95 % interval -0.004 to +0.041``."""
        name = {"average_precision": "AP", "roc_auc": "ROC-AUC"}.get(self.metric, self.metric)
        shown = f"{self.estimate:+.3f} {name}, {self.confidence * 100:.0f} % interval {self.low:+.3f} to {self.high:+.3f}"
        return shown + (f" (resampling {unit})" if unit else "")


@dataclass(frozen=True)
class Comparison:
    """The paired bootstrap of one challenger against one champion."""

    differences: dict[str, Difference]
    unit: str  # "days" or "rows"
    units: int
    resamples: int


def _metrics(
    tps: np.ndarray, fps: np.ndarray, above: np.ndarray, negatives: np.ndarray
) -> dict[str, np.ndarray]:
    """Average precision and ROC-AUC of each draw (a row each) from its weighted counts at each distinct score that
    positives have, highest first: ``tps`` positives and ``fps`` negatives at or above it, ``above`` negatives
    strictly above it; ``negatives`` in all. As scikit-learn computes them: AP sums, over the thresholds, the recall
    gained times the precision there; ROC-AUC is the chance that a positive outscores a negative, ties counting
    half (the area under the ROC curve)."""
    positives = tps[:, -1:]
    gained = np.diff(tps, axis=1, prepend=0.0)  # the positives at each score
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(gained > 0, tps / (tps + fps), 0.0)  # a threshold no drawn positive has adds 0
        average_precision = np.sum(gained * precision, axis=1) / positives[:, 0]
        below = negatives - fps + (fps - above) / 2  # negatives under the score, ties counting half
        roc_auc = np.sum(gained * below, axis=1) / (positives[:, 0] * negatives[:, 0])
    undefined = (positives[:, 0] <= 0) | (negatives[:, 0] <= 0)  # a draw without both classes
    average_precision[undefined], roc_auc[undefined] = np.nan, np.nan
    return {"average_precision": average_precision, "roc_auc": roc_auc}


class _Ranked:
    """One model's counts, per unit, at each distinct score that positives have (highest first): the positives and
    negatives at or above it and the negatives strictly above it. A draw reweights the units: one matrix product.
    Only the scores of positives matter to both metrics, so the matrices are units x (distinct positive scores)."""

    def __init__(self, labels: np.ndarray, scores: np.ndarray, unit_index: np.ndarray, units: int) -> None:
        positive = labels.astype(bool)
        thresholds = np.unique(scores[positive])[::-1]  # the positives' distinct scores, highest first
        ascending = thresholds[::-1]
        count = len(thresholds)

        def cumulated(rows: np.ndarray, at: np.ndarray) -> np.ndarray:
            """Rows counted from threshold ``at`` on (``count``: never), summed per unit and cumulated."""
            key = unit_index[rows] * (count + 1) + at
            counts = np.bincount(key, minlength=units * (count + 1)).reshape(units, count + 1)
            return np.cumsum(counts, axis=1)[:, :count].astype(np.float64)

        def position(values: np.ndarray, side: str) -> np.ndarray:
            """For each value, the index (highest first) of the first threshold it is at or above (``"right"``) or
            strictly above (``"left"``); ``count`` when there is none."""
            return count - np.searchsorted(ascending, values, side=side)  # type: ignore[call-overload]

        negative_rows = np.flatnonzero(~positive)
        self.above_pos = cumulated(np.flatnonzero(positive), position(scores[positive], "right"))
        self.above_neg = cumulated(negative_rows, position(scores[~positive], "right"))
        self.strictly_above_neg = cumulated(negative_rows, position(scores[~positive], "left"))
        self.negatives = np.bincount(unit_index[negative_rows], minlength=units).astype(np.float64)

    def counts(self, weights: np.ndarray) -> tuple[np.ndarray, ...]:
        """What ``_metrics`` reads, for each draw's weights of the units (draws x units)."""
        return (weights @ self.above_pos, weights @ self.above_neg, weights @ self.strictly_above_neg,
                (weights @ self.negatives)[:, None])  # fmt: skip


def paired_bootstrap(
    labels: np.ndarray,
    challenger: np.ndarray,
    champion: np.ndarray,
    units: np.ndarray | None = None,
    *,
    unit: str = "rows",
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Comparison:
    """The difference challenger minus champion in each metric, with a ``confidence`` percentile interval from
    ``resamples`` paired draws of the ``units`` (one label per row, e.g. its day; None: each row its own)."""
    labels = np.asarray(labels)
    if not len(labels) == len(challenger) == len(champion):
        raise ValueError("the labels and both models' scores must be of the same rows")
    if units is None:
        unit_index = np.arange(len(labels))
    else:
        _, unit_index = np.unique(np.asarray(units), return_inverse=True)
    rng = np.random.default_rng(seed)
    count = total = int(unit_index.max()) + 1 if len(unit_index) else 0
    blocks = max(32, min(MAX_UNITS, MAX_CELLS // max(1, int(labels.sum()))))
    if count > blocks:
        # Many independent units (rows, entities) are dealt into blocks at random and the blocks are resampled:
        # blocks of independent units are independent too and hold as many rows in all, so the spread is the same
        # as resampling the units one by one, at a fraction of the work.
        unit_index = rng.permutation(count)[unit_index] % blocks
        count = blocks
    ranked = {name: _Ranked(labels, np.asarray(s), unit_index, count) for name, s in
              (("challenger", challenger), ("champion", champion))}  # fmt: skip
    observed = {name: _metrics(*r.counts(np.ones((1, count)))) for name, r in ranked.items()}
    draws: dict[str, list[np.ndarray]] = {metric: [] for metric in METRICS}
    for start in range(0, resamples, CHUNK):
        size = min(CHUNK, resamples - start)
        drawn = rng.integers(0, count, size=(size, count))  # each draw: ``count`` units, with replacement
        offsets = np.arange(size)[:, None] * count
        weights = np.bincount((drawn + offsets).ravel(), minlength=size * count).reshape(size, count)
        new, old = (
            _metrics(*ranked[name].counts(weights.astype(np.float64))) for name in ("challenger", "champion")
        )
        for metric in METRICS:
            draws[metric].append(new[metric] - old[metric])
    tail = (1 - confidence) / 2 * 100
    differences = {}
    for metric in METRICS:
        sample = np.concatenate(draws[metric])
        sample = sample[~np.isnan(sample)]
        low, high = np.percentile(sample, [tail, 100 - tail]) if len(sample) else (np.nan, np.nan)
        estimate = float(observed["challenger"][metric][0] - observed["champion"][metric][0])
        differences[metric] = Difference(metric, estimate, float(low), float(high), confidence, sample)
    return Comparison(differences, unit, total, resamples)


@dataclass(frozen=True)
class Rule:
    """How the gate judges a comparison: the policy, what it requires, and the interval it reads."""

    policy: str
    #: ``superior``: the lowest improvement in average precision the interval's lower bound must be above.
    min_improvement: float
    #: ``non-inferior``: how much worse than the champion the interval's lower bound may be.
    margin: float
    confidence: float = 0.95
    resamples: int = 1000

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"the gate's policy must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        if not 0.5 <= self.confidence < 1 or self.resamples < 100 or self.margin < 0:
            raise ValueError(
                f"the gate needs a confidence in [0.5, 1), at least 100 resamples and a margin of 0 or more (got "
                f"{self.confidence}, {self.resamples}, {self.margin})"
            )

    @property
    def bound(self) -> float:
        """What the lower bound of the interval of the difference in average precision must be above."""
        return self.min_improvement if self.policy == SUPERIOR else -self.margin

    def passes(self, difference: Difference) -> bool:
        """Whether the interval says what the policy requires (an interval that could not be computed: no)."""
        return bool(np.isfinite(difference.low)) and difference.low > self.bound

    def verdict(self, difference: Difference) -> str:
        """``superior: lower bound -0.004 <= required +0.000`` and the like: the rule applied, in words."""
        if not np.isfinite(difference.low):
            return f"{self.policy}: no interval (too few positives in the resampled test rows), so no pass"
        passed = self.passes(difference)
        what = "required improvement" if self.policy == SUPERIOR else "minus the margin"
        return f"{self.policy}: lower bound {difference.low:+.3f} {'>' if passed else '<='} {what} {self.bound:+.3f}"
