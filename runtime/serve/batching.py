"""Micro-batching: the small requests that arrive together, predicted in one call."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np

__all__ = ["BATCH_ROWS", "MicroBatcher"]

#: Requests of up to this many rows are predicted together when they arrive together.
BATCH_ROWS = 64


class MicroBatcher:
    """Predict the small requests that arrive together in one onnxruntime call.

    A request asks for its prediction and waits; the first one of an event-loop turn
    schedules the call for the next turn, so every request parsed in the meantime
    joins it. No timer: a lone request waits one loop turn, never a fixed delay. When
    the batch fails (one bad request among good ones), each request is predicted alone,
    so only the bad one gets the error.
    """

    def __init__(self, predict: Callable[[np.ndarray], np.ndarray]) -> None:
        self._predict = predict
        self._pending: list[tuple[np.ndarray, asyncio.Future[np.ndarray]]] = []

    def predict(self, features: np.ndarray) -> asyncio.Future[np.ndarray]:
        """The predictions of ``features``, once the batch they join has run."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[np.ndarray] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.append((features, future))
        return future

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        if len(pending) > 1 and self._predict_together(pending):
            return
        for x, future in pending:
            try:
                result = self._predict(x)
            except Exception as err:
                if not future.done():
                    future.set_exception(err)
            else:
                if not future.done():
                    future.set_result(result)

    def _predict_together(
        self, pending: list[tuple[np.ndarray, asyncio.Future[np.ndarray]]]
    ) -> bool:
        try:
            predictions = self._predict(np.concatenate([x for x, _ in pending]))
        except Exception:
            return False  # one bad request must not fail the others: predict alone
        start = 0
        for x, future in pending:
            stop = start + len(x)
            if not future.done():
                future.set_result(predictions[start:stop])
            start = stop
        return True
