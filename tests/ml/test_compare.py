"""The paired bootstrap of two models on the same rows (``ml.compare``): the estimate is scikit-learn's to the
last digit, the interval is paired (what both models share cancels), and it widens where rows are not independent
(whole days are resampled)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from ml.compare import paired_bootstrap


def scores(
    rng: np.random.Generator, labels: np.ndarray, signal: float, decimals: int | None = None
) -> np.ndarray:
    values = rng.normal(labels * signal, 1.0)
    return np.round(values, decimals) if decimals is not None else values


@pytest.mark.parametrize("decimals", [None, 1], ids=["continuous scores", "many ties"])
@pytest.mark.parametrize("days", [False, True], ids=["rows", "days"])
def test_the_estimates_are_scikit_learns(decimals, days) -> None:
    rng = np.random.default_rng(3)
    labels = (rng.random(5000) < 0.05).astype(int)
    new, old = scores(rng, labels, 1.5, decimals), scores(rng, labels, 1.0, decimals)
    units = rng.integers(0, 7, len(labels)) if days else None
    compared = paired_bootstrap(labels, new, old, units, resamples=200)
    ap, auc = compared.differences["average_precision"], compared.differences["roc_auc"]
    assert ap.estimate == pytest.approx(
        average_precision_score(labels, new) - average_precision_score(labels, old), abs=1e-12
    )
    assert auc.estimate == pytest.approx(roc_auc_score(labels, new) - roc_auc_score(labels, old), abs=1e-12)
    assert ap.low < ap.estimate < ap.high and auc.low < auc.estimate < auc.high
    assert compared.units == (7 if days else len(labels)) and len(ap.draws) == 200


def test_identical_models_differ_by_exactly_nothing_in_every_draw() -> None:
    rng = np.random.default_rng(4)
    labels = (rng.random(3000) < 0.1).astype(int)
    same = scores(rng, labels, 1.0)
    difference = paired_bootstrap(labels, same, same.copy(), resamples=100).differences["average_precision"]
    assert (difference.estimate, difference.low, difference.high) == (0.0, 0.0, 0.0)


def test_the_pairing_cancels_what_both_models_share() -> None:
    """Two models that share most of their scores: the paired interval of the difference is far narrower than
    each model's own spread (an unpaired comparison would see mostly that spread)."""
    rng = np.random.default_rng(5)
    labels = (rng.random(20_000) < 0.03).astype(int)
    shared = scores(rng, labels, 1.2)
    new, old = shared + rng.normal(0, 0.1, len(labels)), shared + rng.normal(0, 0.1, len(labels))
    paired = paired_bootstrap(labels, new, old, resamples=300).differences["average_precision"]
    alone = paired_bootstrap(labels, new, np.zeros_like(new), resamples=300).differences["average_precision"]
    assert paired.high - paired.low < (alone.high - alone.low) / 4


def test_resampling_whole_days_widens_the_interval_when_days_differ() -> None:
    """The challenger is far better on some days and worse on others: resampling rows treats the week as 35,000
    independent rows and gives a narrow interval; resampling the 7 days shows how much the verdict hangs on which
    days the week held."""
    rng = np.random.default_rng(6)
    days = np.repeat(np.arange(7), 5000)
    labels = (rng.random(len(days)) < 0.04).astype(int)
    edge = np.array([0.8, -0.6, 0.7, -0.5, 0.9, -0.7, 0.2])[days]
    new, old = scores(rng, labels, 1.0) + edge * labels, scores(rng, labels, 1.0)
    by_day = paired_bootstrap(labels, new, old, days, unit="days", resamples=400).differences[
        "average_precision"
    ]
    by_row = paired_bootstrap(labels, new, old, resamples=400).differences["average_precision"]
    assert by_day.high - by_day.low > 2 * (by_row.high - by_row.low)
    assert by_day.describe("days").startswith(f"{by_day.estimate:+.3f} AP, 95 % interval")


def test_rows_of_other_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="same rows"):
        paired_bootstrap(np.array([0, 1]), np.array([0.1, 0.9]), np.array([0.2]))
