"""Code tests of the MLflow helpers that need no server."""

from __future__ import annotations

import threading

import pytest

from ml import tracking


def test_a_live_series_sends_one_batch_at_a_time_in_the_background_and_each_step_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    release = threading.Event()
    batches: list[tuple[int, list[float]]] = []

    def log_metric_series(run_id: str, key: str, values: list[float], first_step: int = 0) -> None:
        release.wait(timeout=30)
        batches.append((first_step, values))

    monkeypatch.setattr(tracking, "log_metric_series", log_metric_series)
    curve, values = tracking.LiveSeries("run-1", "curve"), [0.1, 0.2]
    curve.send(values)  # returns while the batch waits on its way
    values += [0.3, 0.4]
    curve.send(values)  # the first is still on its way: these wait for the next batch
    assert (batches, curve.logged) == ([], 0)
    release.set()
    values += [0.5]
    curve.finish(values)  # waits for the batch on its way, then logs the rest
    assert batches == [(0, [0.1, 0.2]), (2, [0.3, 0.4, 0.5])]
    assert curve.logged == len(values)
