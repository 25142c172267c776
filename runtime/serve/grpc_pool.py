"""The threads that answer gRPC calls: an executor for ``grpc.server`` without per-call locks.

``grpc.server`` hands every call to its executor's ``submit`` and adds one done-callback
to what ``submit`` returns. ``concurrent.futures.ThreadPoolExecutor`` spends about 20 us a
call on bookkeeping when all its threads share one CPU (an idle-thread semaphore, a
:class:`~concurrent.futures.Future` and its condition, a work item, each built on Python
locks); :class:`CallPool` runs the calls from one queue and returns a :class:`Call`, which
takes one shared lock only to add or run callbacks: about 3 us. At one row a call costs
the server about 450 us in all, so this is a few percent of its requests/s.

This module is the one place that relies on how gRPC uses its executor (``submit``, then
``add_done_callback``). :class:`Call` also answers ``done``, ``result``, ``exception``
and ``cancel`` (False: a submitted call always runs), and
``tests/runtime/serve/test_grpc_pool.py`` holds the pool to ThreadPoolExecutor's results.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

__all__ = ["Call", "CallPool"]

logger = logging.getLogger("pomona.serve")

Callback = Callable[["Call"], object]


class Call:
    """One submitted call and its outcome: the parts of a ``Future`` an executor's user needs.

    It cannot be cancelled (a call, once submitted, runs); :meth:`result` and
    :meth:`exception` wait for it, with an event made only when someone waits.
    """

    __slots__ = ("_callbacks", "_done", "_error", "_event", "_result", "args", "fn", "kwargs")
    _lock = threading.Lock()  # one for every call: held only to add, take or wait

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]):
        self.fn, self.args, self.kwargs = fn, args, kwargs
        self._done = False
        self._callbacks: list[Callback] = []
        self._event: threading.Event | None = None
        self._result: Any = None
        self._error: BaseException | None = None

    def add_done_callback(self, callback: Callback) -> None:
        """Call ``callback(self)`` once the call is done (now, if it is)."""
        with self._lock:
            if not self._done:
                self._callbacks.append(callback)
                return
        _run_callback(callback, self)

    def done(self) -> bool:
        return self._done

    def cancel(self) -> bool:
        return False

    def cancelled(self) -> bool:
        return False

    def result(self, timeout: float | None = None) -> Any:
        """The call's return value once it is done; its exception is raised."""
        self._wait(timeout)
        if self._error is not None:
            raise self._error
        return self._result

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._wait(timeout)
        return self._error

    def _wait(self, timeout: float | None) -> None:
        with self._lock:
            if self._done:
                return
            if self._event is None:
                self._event = threading.Event()
            event = self._event
        if not event.wait(timeout):
            raise TimeoutError(f"the call did not finish within {timeout} s")

    def run(self) -> None:
        """Run the call, keep its outcome, then run the callbacks added so far."""
        try:
            self._result = self.fn(*self.args, **self.kwargs)
        except BaseException as err:  # kept for result(), as a Future keeps it
            self._error = err
        self.fn = self.args = self.kwargs = None  # type: ignore[assignment]
        with self._lock:
            self._done = True
            callbacks, self._callbacks = self._callbacks, []
            event = self._event
        if event is not None:
            event.set()
        for callback in callbacks:
            _run_callback(callback, self)


def _run_callback(callback: Callback, call: Call) -> None:
    try:
        callback(call)
    except Exception:
        logger.exception("a callback of a gRPC call failed")


class CallPool(Executor):
    """``threads`` threads running submitted calls in the order they came."""

    def __init__(self, threads: int, name: str = "pomona-grpc") -> None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self._queue: queue.SimpleQueue[Call | None] = queue.SimpleQueue()
        self._shutdown = False
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}_{i}", daemon=True)
            for i in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Call:  # type: ignore[override]
        if self._shutdown:
            raise RuntimeError("cannot schedule new calls after shutdown")
        call = Call(fn, args, kwargs)
        self._queue.put(call)
        return call

    def _work(self) -> None:
        get = self._queue.get
        while (call := get()) is not None:
            call.run()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Run the calls already submitted, then stop the threads (joined when ``wait``)."""
        self._shutdown = True
        for _ in self._threads:
            self._queue.put(None)
        if wait:
            for thread in self._threads:
                thread.join()
