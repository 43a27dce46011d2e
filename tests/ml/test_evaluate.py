"""Code tests of the evaluation's threshold, metrics and decision."""

from __future__ import annotations

import re

import numpy as np
import pytest

from ml.compare import MIN_DAYS, Comparison, Difference, Rule
from ml.evaluate import (
    FAIL,
    PASS,
    ChampionComparison,
    Metrics,
    choose_threshold,
    comparison_units,
    decide,
    score_metrics,
)


def metrics(ap: float) -> Metrics:
    return Metrics(average_precision=ap, roc_auc=0.9, precision=0.5, recall=0.5, f1=0.5, threshold=0.5)


def test_threshold_maximises_f1_on_the_given_labels() -> None:
    labels = np.array([0, 0, 0, 0, 1, 1, 0, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.35, 0.4, 0.6, 0.65, 0.9])
    threshold = choose_threshold(labels, scores)
    best_f1 = score_metrics(labels, scores, threshold).f1
    for candidate in scores:
        assert score_metrics(labels, scores, float(candidate)).f1 <= best_f1 + 1e-12


def test_metrics_at_a_threshold() -> None:
    labels = np.array([0, 0, 1, 1])
    result = score_metrics(labels, np.array([0.1, 0.6, 0.4, 0.9]), threshold=0.5)
    assert (result.precision, result.recall, result.f1) == (0.5, 0.5, 0.5)
    assert result.roc_auc == 0.75


SUPERIOR = Rule("superior", min_improvement=0.01, margin=0.0)
NON_INFERIOR = Rule("non-inferior", min_improvement=0.0, margin=0.02)


def compared(estimate: float, low: float, high: float) -> Comparison:
    """A bootstrap's result as the gate reads it (the draws themselves play no part in the decision)."""
    return Comparison({metric: Difference(metric, estimate, low, high, 0.95, np.array([]))
                       for metric in ("average_precision", "roc_auc")}, "days", 7, 1000)  # fmt: skip


@pytest.mark.parametrize(
    ("ap", "champion", "rule", "comparison", "expected", "reason"),
    [
        (0.6, ChampionComparison(None, False, reason="no champion"), SUPERIOR, None, PASS,
         "no champion to compare with"),
        (0.2, ChampionComparison(None, False, reason="no champion"), SUPERIOR, None, FAIL, "0.2000 < minimum 0.3000"),
        (0.6, ChampionComparison("3", True, metrics(0.55)), SUPERIOR, compared(0.05, 0.02, 0.08), PASS,
         "+0.050 AP, 95 % interval +0.020 to +0.080 (resampling days); superior: lower bound +0.020 > required "
         "improvement +0.010"),
        # The point estimate clears the bar by far; the interval does not: no evidence, no release.
        (0.6, ChampionComparison("3", True, metrics(0.55)), SUPERIOR, compared(0.05, -0.01, 0.11), FAIL,
         "superior: lower bound -0.010 <= required improvement +0.010"),
        (0.6, ChampionComparison("3", True, metrics(0.605)), NON_INFERIOR, compared(-0.005, -0.015, 0.006), PASS,
         "non-inferior: lower bound -0.015 > minus the margin -0.020"),
        (0.6, ChampionComparison("3", True, metrics(0.6)), NON_INFERIOR, compared(0.0, -0.04, 0.04), FAIL,
         "non-inferior: lower bound -0.040 <= minus the margin -0.020"),
        (0.6, ChampionComparison("3", True, metrics(0.5)), NON_INFERIOR, compared(0.1, np.nan, np.nan), FAIL,
         "no interval (too few positives in the resampled test rows), so no pass"),
        (0.2, ChampionComparison("3", True, metrics(0.1)), SUPERIOR, compared(0.1, 0.05, 0.15), FAIL,
         "0.2000 < minimum"),
        (0.6, ChampionComparison("3", False, reason="missing column x"), SUPERIOR, None, FAIL,
         "champion v3 cannot score the test rows (missing column x): without a comparison there is no pass"),
    ],
)  # fmt: skip
def test_decision(ap: float, champion: ChampionComparison, rule: Rule, comparison: Comparison | None, expected: str,
                  reason: str) -> None:  # fmt: skip
    decision, reasons = decide(
        metrics(ap), champion, min_average_precision=0.3, rule=rule, comparison=comparison
    )
    assert decision == expected
    assert any(reason in r for r in reasons), reasons


def test_a_comparable_champion_without_its_comparison_is_a_bug_not_a_pass() -> None:
    with pytest.raises(ValueError, match="needs the comparison"):
        decide(
            metrics(0.6),
            ChampionComparison("3", True, metrics(0.5)),
            min_average_precision=0.3,
            rule=SUPERIOR,
        )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (("better", 0.0, 0.0), "policy must be one of superior, non-inferior"),
        (("superior", 0.0, -0.1), "a margin of 0 or more"),
        (("superior", 0.0, 0.0, 1.0), "a confidence in [0.5, 1)"),
        (("superior", 0.0, 0.0, 0.95, 10), "at least 100 resamples"),
    ],
)
def test_a_rule_that_cannot_decide_is_refused(fields: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        Rule(*fields)


def test_an_incomparable_champion_passes_only_when_the_run_accepts_it_and_the_floor_still_holds() -> None:
    incomparable = ChampionComparison("3", False, reason="missing column x")
    decision, reasons = decide(metrics(0.6), incomparable, min_average_precision=0.3, rule=SUPERIOR,
                               accept_incomparable=True)  # fmt: skip
    assert decision == PASS
    assert any("(missing column x); accepted, as the run asks" in r for r in reasons), reasons
    decision, _ = decide(metrics(0.2), incomparable, min_average_precision=0.3, rule=SUPERIOR,
                         accept_incomparable=True)  # fmt: skip
    assert decision == FAIL


def test_a_model_registered_for_the_record_need_not_beat_the_champion_but_must_meet_the_floor() -> None:
    weaker = ChampionComparison("3", True, metrics(0.7))
    decision, reasons = decide(metrics(0.6), weaker, min_average_precision=0.3, rule=SUPERIOR,
                               comparison=compared(-0.1, -0.15, -0.05), record_only="a backfill run")  # fmt: skip
    assert decision == PASS
    assert any("<= required improvement +0.010 (not required: not to be released, a backfill run)" in r
               for r in reasons), reasons  # fmt: skip
    decision, _ = decide(metrics(0.2), weaker, min_average_precision=0.3, rule=SUPERIOR,
                         comparison=compared(-0.5, -0.55, -0.45), record_only="old")  # fmt: skip
    assert decision == FAIL


def test_the_comparison_resamples_days_only_where_the_test_window_has_enough_of_them() -> None:
    import pandas as pd

    times = pd.date_range("2026-03-02 01:00", periods=2 * MIN_DAYS, freq="12h", tz="UTC")
    units, unit = comparison_units(pd.DataFrame({"t": times}), {"time_column": "t"})
    assert unit == "days" and len(set(units)) == MIN_DAYS and units[0] == units[1] != units[2]
    week = pd.DataFrame({"t": times[:14]})
    assert comparison_units(week, {"time_column": "t"}) == (None, "rows")  # 7 days: too few to resample
    assert comparison_units(week, {"time_column": None}) == (None, "rows")


def test_the_decision_plots_mark_the_chosen_threshold_and_show_each_class() -> None:
    """Precision, recall and F1 against the threshold with the chosen one marked; each class's scores; calibration
    of the candidate (and the champion's, when there is one)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ml.evaluate import _decision_figures

    rng = np.random.default_rng(0)
    labels = (rng.random(2000) < 0.1).astype(int)
    scores = np.clip(labels * 0.5 + rng.random(2000) * 0.5, 0, 1)
    figures = _decision_figures(labels, scores, 0.42, champion_scores=scores * 0.9)
    assert set(figures) == {
        "plots/threshold_tradeoff.png",
        "plots/score_distribution.png",
        "plots/calibration.png",
    }
    tradeoff = figures["plots/threshold_tradeoff.png"].axes[0]
    names = [line.get_label() for line in tradeoff.lines]
    assert names[:3] == ["precision", "recall", "F1"] and "chosen threshold 0.420" in names[3]
    assert list(tradeoff.lines[3].get_xdata()) == [0.42, 0.42]
    f1 = tradeoff.lines[2].get_ydata()
    assert 0 < max(f1) <= 1
    legend = [t.get_text() for t in figures["plots/score_distribution.png"].axes[0].get_legend().get_texts()]
    assert legend[:2] == [f"negative ({(labels == 0).sum()})", f"positive ({(labels == 1).sum()})"]
    calibration = [line.get_label() for line in figures["plots/calibration.png"].axes[0].lines]
    assert "candidate" in calibration and "champion" in calibration
    for figure in figures.values():
        plt.close(figure)
