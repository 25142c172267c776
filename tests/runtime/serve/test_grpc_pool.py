"""CallPool, the executor of the gRPC server, against ThreadPoolExecutor's guarantees."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pomona.runtime.serve.grpc_pool import Call, CallPool


class Boom(Exception):
    pass


def _work(value: int) -> int:
    if value % 5 == 0:
        raise Boom(value)
    return value * value


def _outcome(future: Any) -> tuple[str, Any]:
    error = future.exception()
    return ("error", error.args) if error is not None else ("value", future.result())


@given(
    values=st.lists(st.integers(0, 1000), max_size=60),
    threads=st.integers(1, 4),
    submitters=st.integers(1, 3),
)
@settings(max_examples=40, deadline=None, derandomize=True, database=None)
def test_the_pool_gives_what_thread_pool_executor_gives(
    values: list[int], threads: int, submitters: int
) -> None:
    """Every call runs once; results, exceptions and callbacks are ThreadPoolExecutor's,
    also when calls come from several threads and callbacks are added after the end."""
    pool = CallPool(threads, "test")
    reference = ThreadPoolExecutor(threads)
    calls: dict[int, Call] = {}
    seen: dict[int, list[bool]] = {i: [] for i in range(len(values))}

    def submit(part: range) -> None:
        for i in part:
            call = pool.submit(_work, values[i])
            calls[i] = call
            call.add_done_callback(lambda c, i=i: seen[i].append(c.done()))

    parts = [range(k, len(values), submitters) for k in range(submitters)]
    workers = [threading.Thread(target=submit, args=(part,)) for part in parts]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    expected = [_outcome(reference.submit(_work, v)) for v in values]
    assert [_outcome(calls[i]) for i in range(len(values))] == expected
    pool.shutdown()  # runs what was submitted, then the threads end
    assert all(s == [True] for s in seen.values())  # once each, after the call was done
    late: list[Call] = []
    for call in calls.values():
        call.add_done_callback(late.append)  # a done call runs it at once
    assert late == list(calls.values())
    reference.shutdown()


def test_result_waits_for_the_call_and_times_out() -> None:
    pool = CallPool(1, "test")
    gate = threading.Event()
    call = pool.submit(gate.wait)
    with pytest.raises(TimeoutError):
        call.result(timeout=0.01)
    assert not call.done() and not call.cancel() and not call.cancelled()
    gate.set()
    assert call.result(timeout=60) is True
    pool.shutdown()


def test_a_failing_callback_is_logged_and_the_others_run(caplog: pytest.LogCaptureFixture) -> None:
    pool = CallPool(1, "test")
    gate = threading.Event()
    call = pool.submit(gate.wait)
    ran: list[int] = []
    call.add_done_callback(lambda c: 1 / 0)
    call.add_done_callback(lambda c: ran.append(1))
    gate.set()
    pool.shutdown()
    assert ran == [1]
    assert "a callback of a gRPC call failed" in caplog.text


def test_no_calls_after_shutdown() -> None:
    pool = CallPool(2, "test")
    pool.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(print)
    with pytest.raises(ValueError, match="threads must be >= 1"):
        CallPool(0)
