"""Scoring the requests that arrive together in one call to the model, each getting its own rows back."""

from __future__ import annotations

import asyncio
import gc

import numpy as np

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
