"""Scoring the requests that arrive together in one call to the model, each getting its own rows back."""

from __future__ import annotations

import asyncio
import gc
import json
import threading

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import RandomForestClassifier
from sklearn.pipeline import Pipeline
from xgboost import XGBClassifier

from ml.features import TabularEncoder
from ml.serve.model import Scorer
from ml.serve.service import Batcher, settle_memory


def test_requests_arriving_together_are_scored_in_one_call_each_getting_its_own_rows() -> None:
    calls: list[int] = []

    def predict(matrix: np.ndarray) -> np.ndarray:
        calls.append(len(matrix))
        return matrix[:, 0] * 2

    batcher = Batcher(predict)
    sizes = [1, 3, 2]

    async def requests() -> tuple[list[np.ndarray], np.ndarray]:
        together = await asyncio.gather(
            *(batcher.score(np.full((n, 3), i, dtype=np.float32)) for i, n in enumerate(sizes))
        )
        alone = await batcher.score(np.full((1, 3), 9, dtype=np.float32))
        return together, alone

    together, alone = asyncio.run(requests())
    assert calls == [6, 1]  # the three together in one call, the later one alone: nothing waits for company
    for i, (n, scores) in enumerate(zip(sizes, together, strict=True)):
        np.testing.assert_array_equal(scores, np.full(n, 2 * i))
    np.testing.assert_array_equal(alone, [18])


def test_a_failed_call_fails_every_request_in_it() -> None:
    def predict(matrix: np.ndarray) -> np.ndarray:
        raise RuntimeError("the model is broken")

    batcher = Batcher(predict)

    async def requests() -> list[object]:
        return await asyncio.gather(
            *(batcher.score(np.zeros((1, 2))) for _ in range(3)), return_exceptions=True
        )

    failures = asyncio.run(requests())
    assert [str(f) for f in failures] == ["the model is broken"] * 3


def test_what_is_in_memory_after_a_load_is_out_of_the_collectors_sight() -> None:
    try:
        settle_memory()
        assert gc.get_freeze_count() > 0
        settle_memory()  # a reload: the previous freeze is undone first, not piled on
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


@pytest.mark.parametrize("model", [RandomForestClassifier(n_estimators=20, n_jobs=-1, random_state=0),
                                   XGBClassifier(n_estimators=20, n_jobs=2)], ids=["random_forest", "xgboost"])  # fmt: skip
def test_a_request_is_scored_on_the_servers_thread_alone(model) -> None:
    """Trained on every core, a model scores a request on one thread: the server's processes share the cores, and a
    pool started for each request (a random forest's, at n_jobs=-1) cost 6 times the time of one record. A forest's
    scores are its own to the last bit."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"amount": rng.random(400), "channel": rng.choice(["pos", "web"], 400)})
    frame.loc[::7, "amount"] = np.nan
    labels = (frame["amount"] > 0.7).astype(int)
    encoder = TabularEncoder(features=["amount", "channel"], categorical=["channel"])
    pipeline = Pipeline([("encode", encoder), ("model", model)]).fit(frame, labels)
    expected = pipeline.predict_proba(frame.head(50))[:, 1]
    scorer = Scorer(pipeline)
    started: list[str] = []
    threading.setprofile(lambda *_: started.append(threading.current_thread().name))
    try:
        scores = scorer.scores(frame.head(50).to_dict("records"))
    finally:
        threading.setprofile(None)
    assert started == [], "no thread starts for a request"
    if isinstance(model, XGBClassifier):
        np.testing.assert_allclose(scores, expected, rtol=1e-6)
        config = json.loads(model.get_booster().save_config())
        assert config["learner"]["generic_param"]["nthread"] == "1"
    else:
        np.testing.assert_array_equal(scores, expected)
