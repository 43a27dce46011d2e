"""Model and code tests of the train stage."""

from __future__ import annotations

import logging
import pickle
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score

from ml import train as train_module
from ml.errors import StageError
from ml.prepare import split, validate
from ml.synthetic import generate
from ml.train import ROUND_METRIC, TrainConfig, fit_model, positive_weight, resolve_device, with_tuned
from tests.helpers import every_and_last, progress_lines, train_config


@pytest.fixture(scope="module")
def splits() -> tuple[dict[str, pd.DataFrame], object]:
    frame, meta = validate(
        generate(60_000, seed=11), "is_fraud", time_column="timestamp", drop_columns=["transaction_id"]
    )
    return split(frame, meta, val_fraction=0.15, test_fraction=0.15, seed=0), meta


def fit(splits, config: TrainConfig, train_frame: pd.DataFrame | None = None, features=None):
    parts, meta = splits
    fitted = fit_model(
        config,
        parts["train"] if train_frame is None else train_frame,
        parts["validation"],
        features=features or meta.features,
        categorical=meta.categorical,
        target="is_fraud",
        device="cpu",
    )
    return fitted.pipeline, fitted.history, fitted.best_iteration


@pytest.mark.parametrize("model_type", ["xgboost", "random_forest"])
def test_model_beats_a_trivial_baseline(splits, model_type: str) -> None:
    parts, meta = splits
    config = train_config(model_type=model_type)
    pipeline, history, best = fit(splits, config)
    test = parts["test"]
    scores = pipeline.predict_proba(test[meta.features])[:, 1]
    average_precision = average_precision_score(test["is_fraud"], scores)
    prevalence = test["is_fraud"].mean()  # the average precision of a constant score
    assert average_precision > 10 * prevalence
    if model_type == "xgboost":
        # Stopped early (patience rounds after the best one), or ran every round.
        assert len(history) in (best + 1 + config.early_stopping_rounds, config.n_estimators)
        assert best >= 1


def test_xgboost_stops_early_on_validation(splits) -> None:
    _, history, best = fit(splits, train_config(n_estimators=400, early_stopping_rounds=5, learning_rate=0.5))
    assert len(history) < 400
    assert history[best] == max(history)


def test_scores_are_invariant_to_an_irrelevant_column_left_out_of_the_features(splits) -> None:
    parts, meta = splits
    pipeline, _, _ = fit(splits, train_config(n_estimators=50))
    test = parts["test"][meta.features]
    noisy = test.assign(unrelated=np.random.default_rng(0).random(len(test)))
    np.testing.assert_allclose(pipeline.predict_proba(test)[:, 1], pipeline.predict_proba(noisy)[:, 1])


def test_unknown_and_missing_categories_are_scored_not_rejected(splits) -> None:
    parts, meta = splits
    pipeline, _, _ = fit(splits, train_config(n_estimators=30))
    rows = parts["test"][meta.features].head(3).copy()
    rows["merchant_category"] = rows["merchant_category"].astype(object)
    rows.iloc[0, rows.columns.get_loc("merchant_category")] = "never-seen"
    rows.iloc[1, rows.columns.get_loc("merchant_category")] = None
    scores = pipeline.predict_proba(rows)[:, 1]
    assert np.isfinite(scores).all()


def test_fraud_score_rises_with_the_amount_relative_to_usual_spend(splits) -> None:
    parts, meta = splits
    pipeline, _, _ = fit(splits, train_config())
    rows = parts["test"][meta.features].head(2_000).copy()
    low = pipeline.predict_proba(rows.assign(amount=rows["avg_amount_30d"] * 0.5))[:, 1]
    high = pipeline.predict_proba(rows.assign(amount=rows["avg_amount_30d"] * 8))[:, 1]
    assert (high >= low).mean() > 0.9
    assert high.mean() > 3 * low.mean()


def test_positive_weight_settings() -> None:
    assert positive_weight("auto", negatives=900, positives=100) == 9
    assert positive_weight("sqrt", negatives=900, positives=100) == 3
    assert positive_weight("none", negatives=900, positives=100) == 1
    assert positive_weight("2.5", negatives=900, positives=100) == 2.5
    with pytest.raises(StageError, match="scale_pos_weight must be"):
        positive_weight("-1", negatives=9, positives=1)
    with pytest.raises(StageError, match=r"out of range: .*learning_rate=0"):
        train_config(learning_rate=0)


def test_device_is_cpu_without_a_gpu_and_cuda_refused() -> None:
    """On this machine (no GPU): auto picks the CPU and an explicit cuda request fails clearly."""
    if train_module.cuda_device_count() > 0:
        pytest.skip("a GPU is visible: the CPU-only expectations do not apply")
    assert resolve_device("auto", "xgboost") == "cpu"
    with pytest.raises(StageError, match="device 'cuda' was requested but no GPU is usable"):
        resolve_device("cuda", "xgboost")


def test_device_picks_cuda_when_a_gpu_is_visible_mocked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mocked GPU: this machine has none, so the driver's device count and XGBoost's build flag are faked."""
    monkeypatch.setattr(train_module, "cuda_device_count", lambda: 1)
    monkeypatch.setattr(train_module, "xgboost_has_cuda", lambda: True)
    assert resolve_device("auto", "xgboost") == "cuda"
    assert resolve_device("cpu", "xgboost") == "cpu"
    assert resolve_device("auto", "random_forest") == "cpu"
    with pytest.raises(StageError, match="only supported by xgboost"):
        resolve_device("cuda", "random_forest")


def test_the_refit_learns_from_validation_rows_too_with_rounds_scaled_to_them(splits) -> None:
    parts, meta = splits
    config = train_config(n_estimators=300, early_stopping_rounds=10)
    kwargs = dict(features=meta.features, categorical=meta.categorical, target="is_fraud", device="cpu")
    stopped = fit_model(replace(config, refit=False), parts["train"], parts["validation"], **kwargs)
    refit = fit_model(config, parts["train"], parts["validation"], **kwargs)
    assert stopped.refit_rounds is None and stopped.best_iteration == refit.best_iteration
    rows = len(parts["train"]) + len(parts["validation"])
    assert refit.refit_rounds == round((refit.best_iteration + 1) * rows / len(parts["train"]))
    assert refit.pipeline.named_steps["model"].get_booster().num_boosted_rounds() == refit.refit_rounds
    # The validation scores are the early-stopped model's in both cases (the threshold is chosen on them) ...
    np.testing.assert_allclose(refit.validation_scores, stopped.validation_scores)
    # ... and the refit model is another model, which has seen the validation rows.
    validation = parts["validation"][meta.features]
    assert not np.allclose(refit.pipeline.predict_proba(validation)[:, 1], refit.validation_scores)


def test_progress_shows_every_n_rounds_the_round_the_metric_and_the_time_and_then_the_refits_rounds(
    splits, caplog: pytest.LogCaptureFixture
) -> None:
    parts, meta = splits
    caplog.set_level(logging.INFO, logger=train_module.__name__)
    config = train_config(n_estimators=300, early_stopping_rounds=10)
    fitted = fit_model(config, parts["train"], parts["validation"], features=meta.features,
                       categorical=meta.categorical, target="is_fraud", device="cpu", progress_every=25)  # fmt: skip
    history, lines = fitted.history, progress_lines(caplog.text, "train")
    assert [int(line["round"]) for line in lines] == every_and_last(25, len(history))
    for line in lines:
        seen = history[: int(line["round"])]
        assert (line["rounds"], line["value"]) == (str(config.n_estimators), f"{seen[-1]:.4f}")
        assert (line["best"], int(line["best_round"])) == (f"{max(seen):.4f}", seen.index(max(seen)) + 1)
    elapsed = [float(line["elapsed"]) for line in lines]
    assert elapsed == sorted(elapsed) and elapsed[-1] > 0
    assert fitted.refit_rounds is not None
    refits = progress_lines(caplog.text, "refit")
    assert [int(line["round"]) for line in refits] == every_and_last(25, fitted.refit_rounds)
    assert {(line["rounds"], line["value"]) for line in refits} == {(str(fitted.refit_rounds), None)}


def test_the_learning_curve_goes_to_mlflow_as_it_trains_a_batch_a_report_each_round_once_through_a_blip(
    splits, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    parts, meta = splits
    batches: list[tuple[int, int]] = []  # (first step, values) of each call
    sent: dict[int, float] = {}

    def log_metric_series(run_id: str, key: str, values: list[float], first_step: int = 0) -> None:
        assert (run_id, key) == ("run-1", ROUND_METRIC)
        batches.append((first_step, len(values)))
        if len(batches) == 2:
            raise ConnectionError("the MLflow server is restarting")
        for step, value in enumerate(values, start=first_step):
            assert step not in sent, f"round {step} logged twice"
            sent[step] = value

    monkeypatch.setattr(train_module.tracking, "log_metric_series", log_metric_series)
    kwargs = dict(features=meta.features, categorical=meta.categorical, target="is_fraud", device="cpu",
                  run_id="run-1")  # fmt: skip
    config = train_config(n_estimators=300, early_stopping_rounds=10, refit=False)
    fitted = fit_model(config, parts["train"], parts["validation"], progress_every=20, **kwargs)
    assert sent == dict(enumerate(fitted.history))  # every round, once; the failed batch's with a later one
    assert batches[0] == (0, 20)  # sent at the first report, while it trained
    assert 3 <= len(batches) <= len(every_and_last(20, len(fitted.history)))  # at most one a report
    assert "from step 20 not logged yet, sent again with the next batch: the MLflow server is restarting" in (
        caplog.text
    )
    pickle.dumps(fitted.pipeline)  # the callback, a local class, was not kept with the model

    batches.clear()
    fit_model(
        replace(config, n_estimators=20), parts["train"], parts["validation"], progress_every=0, **kwargs
    )
    assert batches == []  # without progress the stage logs the curve after the fit

    def refuse(run_id: str, key: str, values: list[float], first_step: int = 0) -> None:
        raise StageError("the run was deleted")  # not a blip: the stage fails as for any other logging

    monkeypatch.setattr(train_module.tracking, "log_metric_series", refuse)
    with pytest.raises(StageError, match="the run was deleted"):
        fit_model(replace(config, n_estimators=20), parts["train"], parts["validation"], progress_every=5,
                  **kwargs)  # fmt: skip


def test_tuned_values_replace_the_forms_and_unknown_ones_are_refused() -> None:
    form = train_config()
    tuned = with_tuned(form, {"params": {"learning_rate": 0.02, "max_depth": 7, "scale_pos_weight": "auto"}})
    assert (tuned.learning_rate, tuned.max_depth, tuned.scale_pos_weight) == (0.02, 7, "auto")
    assert tuned.n_estimators == form.n_estimators
    assert with_tuned(form, None) is form
    with pytest.raises(StageError, match="n_estimators"):
        with_tuned(form, {"params": {"n_estimators": 5}})
    with pytest.raises(StageError, match="no parameters"):
        with_tuned(form, {"value": 0.5})
    with pytest.raises(StageError, match="random_forest"):
        with_tuned(train_config(model_type="random_forest"), {"params": {"max_depth": 3}})
