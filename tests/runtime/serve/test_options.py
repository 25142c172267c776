"""``pomona serve`` options that change where and how it serves: each one checked in effect.

The address it binds (loopback unless told), ``--host``, ``POMONA_HOST``/``POMONA_PORT``,
micro-batching on and off (model calls counted against requests), and ``/metrics`` summed
over ``--workers``.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from pathlib import Path

import numpy as np
import psutil
import pytest

from pomona.runtime.serve import InferenceApp, load_predictor
from tests.onnx_models import reference_predictions
from tests.runtime.serve.asgi import call, call_async
from tests.runtime.serve.cases import INFER, ONE, doc, features_tensor
from tests.runtime.serve.test_socket import Server, free_port


def _listening(srv: Server) -> set[tuple[str, int]]:
    """The addresses the server process listens on."""
    connections = psutil.Process(srv.proc.pid).net_connections(kind="inet")
    return {(c.laddr.ip, c.laddr.port) for c in connections if c.status == psutil.CONN_LISTEN}


def _metric(srv: Server, name: str) -> float:
    text = srv.request("GET", "/metrics")[2].decode()
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    assert match is not None, text
    return float(match.group(1))


# -- where it listens ------------------------------------------------------------------------


def test_default_bind_is_loopback_only(model: Path, tmp_path: Path) -> None:
    srv = Server(model, tmp_path / "serve.log")
    try:
        assert _listening(srv) == {("127.0.0.1", srv.port)}
    finally:
        assert srv.stop() == 0


def test_host_option_and_environment(model: Path, tmp_path: Path) -> None:
    srv = Server(model, tmp_path / "a.log", "--host", "127.0.0.2", host="127.0.0.2")
    try:
        assert _listening(srv) == {("127.0.0.2", srv.port)}
    finally:
        assert srv.stop() == 0
    port = str(free_port())
    env = {"POMONA_HOST": "127.0.0.3", "POMONA_PORT": port}
    srv = Server(model, tmp_path / "b.log", env=env, host="127.0.0.3")
    try:
        assert _listening(srv) == {("127.0.0.3", int(port))}
        assert srv.request("GET", "/v2/health/ready")[0] == 200
    finally:
        assert srv.stop() == 0


# -- micro-batching --------------------------------------------------------------------------


def _counting_app(model: Path, micro_batch: bool) -> tuple[InferenceApp, list[int]]:
    predictor = load_predictor(model)
    calls: list[int] = []
    predict = predictor.predict

    def counted(x: np.ndarray) -> np.ndarray:
        calls.append(len(x))
        return predict(x)

    predictor.predict = counted  # type: ignore[method-assign]
    return InferenceApp(predictor, micro_batch=micro_batch), calls


@pytest.mark.parametrize("micro_batch", [True, False], ids=["batched", "not-batched"])
def test_requests_of_one_turn_share_one_model_call_when_batching(
    model: Path, micro_batch: bool
) -> None:
    app, calls = _counting_app(model, micro_batch)
    xs = [np.full((i + 1, 3), float(i), dtype=np.float32) for i in range(10)]

    async def together() -> list[int | None]:
        answers = await asyncio.gather(
            *(call_async(app, "POST", INFER, doc(inputs=[features_tensor(x)])) for x in xs)
        )
        for x, answer in zip(xs, answers, strict=True):
            data = json.loads(answer.body)["outputs"][0]["data"]
            y = np.array(data, dtype=np.float32).reshape(len(x), 2)
            np.testing.assert_array_equal(y, reference_predictions(x))
        return [a.status for a in answers]

    assert asyncio.run(together()) == [200] * len(xs)
    if micro_batch:
        assert calls == [sum(len(x) for x in xs)]  # ten requests, one model call
    else:
        assert calls == [len(x) for x in xs]
    text = call(app, "GET", "/metrics").body.decode()
    assert f"pomona_model_calls_total {float(len(calls))}" in text


def test_no_micro_batch_makes_one_model_call_per_request(model: Path, tmp_path: Path) -> None:
    srv = Server(model, tmp_path / "serve.log", "--no-micro-batch")
    try:
        _concurrent_infers(srv, threads=8, per_thread=10)
        assert _metric(srv, "pomona_model_calls_total") == 80
        assert _metric(srv, "pomona_rows_predicted_total") == 80
    finally:
        assert srv.stop() == 0


def _concurrent_infers(srv: Server, threads: int, per_thread: int) -> None:
    failures: list[str] = []

    def client() -> None:
        for _ in range(per_thread):
            try:
                status, answer = srv.infer({"inputs": [ONE]})
            except OSError as err:
                failures.append(repr(err))
                continue
            if status != 200:
                failures.append(f"{status} {answer}")

    workers = [threading.Thread(target=client) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert failures == []


# -- workers ---------------------------------------------------------------------------------


def test_metrics_are_summed_over_workers(model: Path, tmp_path: Path) -> None:
    srv = Server(model, tmp_path / "serve.log", "--workers", "2", "--log-level", "warning")
    try:
        _concurrent_infers(srv, threads=4, per_thread=15)
        # Whichever worker answers the scrape, it reports both workers' requests.
        for _ in range(6):
            assert _metric(srv, "pomona_rows_predicted_total") == 60
            text = srv.request("GET", "/metrics")[2].decode()
            assert re.search(
                r'^pomona_requests_total\{code="200",endpoint="infer"\} 60\.0$', text, re.M
            )
            assert "process_resident_memory_bytes" in text
        assert len(psutil.Process(srv.proc.pid).children()) >= 2  # the two workers
    finally:
        assert srv.stop() == 0, srv.log.read_text()
    assert "Traceback" not in srv.log.read_text()


def test_one_process_has_process_metrics(model: Path, tmp_path: Path) -> None:
    srv = Server(model, tmp_path / "serve.log")
    try:
        assert _metric(srv, "process_open_fds") > 0
    finally:
        assert srv.stop() == 0
