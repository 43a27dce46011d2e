"""Code tests of the evaluation's threshold, metrics and decision."""

from __future__ import annotations

import numpy as np
import pytest

from ml.evaluate import FAIL, PASS, ChampionComparison, Metrics, choose_threshold, decide, score_metrics


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


@pytest.mark.parametrize(
    ("ap", "champion", "expected", "reason"),
    [
        (0.6, ChampionComparison(None, False, reason="no champion"), PASS, "no champion to compare with"),
        (0.2, ChampionComparison(None, False, reason="no champion"), FAIL, "0.2000 < minimum 0.3000"),
        (0.6, ChampionComparison("3", True, metrics(0.55)), PASS, "+0.0500, >= required +0.0100"),
        (0.6, ChampionComparison("3", True, metrics(0.595)), FAIL, "+0.0050, < required +0.0100"),
        (0.2, ChampionComparison("3", True, metrics(0.1)), FAIL, "0.2000 < minimum"),
        (
            0.6,
            ChampionComparison("3", False, reason="missing column x"),
            FAIL,
            "champion v3 cannot score the test rows (missing column x): without a comparison there is no pass",
        ),
    ],
)
def test_decision(ap: float, champion: ChampionComparison, expected: str, reason: str) -> None:
    decision, reasons = decide(metrics(ap), champion, min_average_precision=0.3, min_improvement=0.01)
    assert decision == expected
    assert any(reason in r for r in reasons), reasons


def test_an_incomparable_champion_passes_only_when_the_run_accepts_it_and_the_floor_still_holds() -> None:
    incomparable = ChampionComparison("3", False, reason="missing column x")
    decision, reasons = decide(metrics(0.6), incomparable, min_average_precision=0.3, min_improvement=0.01,
                               accept_incomparable=True)  # fmt: skip
    assert decision == PASS
    assert any("(missing column x); accepted, as the run asks" in r for r in reasons), reasons
    decision, _ = decide(metrics(0.2), incomparable, min_average_precision=0.3, min_improvement=0.01,
                         accept_incomparable=True)  # fmt: skip
    assert decision == FAIL


def test_a_model_registered_for_the_record_need_not_beat_the_champion_but_must_meet_the_floor() -> None:
    weaker = ChampionComparison("3", True, metrics(0.7))
    decision, reasons = decide(metrics(0.6), weaker, min_average_precision=0.3, min_improvement=0.01,
                               record_only="a backfill run")  # fmt: skip
    assert decision == PASS
    assert any("< required +0.0100 (not required: not to be released, a backfill run)" in r for r in reasons)
    decision, _ = decide(
        metrics(0.2), weaker, min_average_precision=0.3, min_improvement=0.01, record_only="old"
    )
    assert decision == FAIL


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
