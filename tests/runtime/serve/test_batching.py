"""The micro-batcher: requests of one loop turn predicted together, each answered alone."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from pomona.runtime.errors import InputError
from pomona.runtime.serve import load_predictor
from pomona.runtime.serve.batching import MicroBatcher
from tests.onnx_models import make_linear_onnx, reference_predictions


def counting_batcher(tmp_path: Path) -> tuple[MicroBatcher, list[int]]:
    """A batcher over the linear model, and the row counts of the model calls it makes."""
    predictor = load_predictor(make_linear_onnx(tmp_path / "model.onnx"))
    calls: list[int] = []

    def predict(x: np.ndarray) -> np.ndarray:
        calls.append(len(x))
        return predictor.predict(x)

    return MicroBatcher(predict), calls


def test_micro_batch_answers_each_request_even_beside_a_bad_one(tmp_path: Path) -> None:
    batcher, calls = counting_batcher(tmp_path)
    good = [np.full((rows, 3), rows, dtype=np.float32) for rows in (1, 2, 3)]
    bad = np.array([[1.0, np.inf, 2.0]], dtype=np.float32)

    async def together(batch: list[np.ndarray]) -> list[object]:
        futures = [batcher.predict(x) for x in batch]  # same loop turn: one batch
        return await asyncio.gather(*futures, return_exceptions=True)

    for batch in (good, [good[0], bad, good[2]]):
        calls.clear()
        results = asyncio.run(together(batch))
        for x, result in zip(batch, results, strict=True):
            if x is bad:
                assert isinstance(result, InputError)
            else:
                np.testing.assert_array_equal(result, reference_predictions(x))
        # One call for the good batch; the bad one's call fails, then each alone.
        assert calls == ([6] if batch is good else [5, 1, 1, 3])


def test_requests_of_different_turns_are_not_batched(tmp_path: Path) -> None:
    batcher, calls = counting_batcher(tmp_path)

    async def one_by_one() -> None:
        for rows in (1, 2):
            await batcher.predict(np.ones((rows, 3), dtype=np.float32))

    asyncio.run(one_by_one())
    assert calls == [1, 2]
