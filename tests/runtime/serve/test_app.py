"""The ASGI app in-process: routes, metadata, inference, every error, metrics, lifespan.

Each test calls the app with an ASGI scope, receive and send (``asgi.call``); what needs a
real socket (tritonclient, 100-continue, pipelining, workers, signals) is in test_socket.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest

from pomona.runtime.serve import InferenceApp, create_app, load_predictor
from pomona.runtime.serve.app import MODEL_VERSION
from tests.onnx_models import make_linear_onnx, reference_predictions
from tests.runtime.serve.asgi import call, call_async
from tests.runtime.serve.cases import BAD_REQUESTS, INFER, MAX_BODY, ONE, doc, features_tensor


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_linear_onnx(tmp_path_factory.mktemp("model") / "model.onnx")


@pytest.fixture(scope="module")
def app(model: Path) -> InferenceApp:
    return create_app(model, max_body_size=MAX_BODY)


def infer(app: InferenceApp, body: object, path: str = INFER) -> tuple[int | None, dict]:
    answer = call(app, "POST", path, json.dumps(body).encode())
    return answer.status, json.loads(answer.body)


# -- protocol endpoints ---------------------------------------------------------------------


def test_health_and_metadata(app: InferenceApp) -> None:
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/pomona/ready"):
        assert call(app, "GET", path).status == 200
    assert call(app, "GET", "/v2/models/pomona/versions/1/ready").status == 200
    answer = call(app, "GET", "/v2")
    meta = json.loads(answer.body)
    assert answer.status == 200
    assert meta["name"] == "pomona" and "binary_tensor_data" in meta["extensions"]
    assert isinstance(meta["version"], str)
    for path in ("/v2/models/pomona", "/v2/models/pomona/versions/1"):
        answer = call(app, "GET", path)
        model_meta = json.loads(answer.body)
        assert answer.status == 200
        assert model_meta["name"] == "pomona" and model_meta["versions"] == ["1"]
        assert model_meta["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 3]}]
        assert model_meta["outputs"] == [
            {"name": "predictions", "datatype": "FP32", "shape": [-1, 2]}
        ]


def test_json_infer_flat_and_nested(app: InferenceApp) -> None:
    x = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.float32)
    flat = {"name": "features", "shape": [2, 3], "datatype": "FP32", "data": x.ravel().tolist()}
    for tensor in (flat, features_tensor(x)):
        status, answer = infer(app, {"id": "req-7", "inputs": [tensor]})
        assert status == 200, answer
        assert answer["model_name"] == "pomona" and answer["model_version"] == "1"
        assert answer["id"] == "req-7"
        (output,) = answer["outputs"]
        assert output["name"] == "predictions" and output["datatype"] == "FP32"
        assert output["shape"] == [2, 2]
        np.testing.assert_array_equal(
            np.array(output["data"], dtype=np.float32).reshape(2, 2), reference_predictions(x)
        )


@pytest.mark.parametrize("rows", [500, 2000])
def test_json_infer_large_flat(app: InferenceApp, model: Path, rows: int) -> None:
    x = np.random.default_rng(3).normal(size=(rows, 3)).astype(np.float32)
    flat = {"name": "features", "shape": [rows, 3], "datatype": "FP32", "data": x.ravel().tolist()}
    status, answer = infer(app, {"inputs": [flat]})
    assert status == 200, answer
    y = np.array(answer["outputs"][0]["data"], dtype=np.float32).reshape(rows, 2)
    np.testing.assert_array_equal(y, load_predictor(model).predict(x))


@pytest.mark.parametrize("rows", [1, 500], ids=["small", "large"])
def test_json_zeros_and_ones_are_numbers(app: InferenceApp, model: Path, rows: int) -> None:
    # Integer and float 0 and 1 read like JSON false and true once converted: both pass.
    x = np.tile(np.array([[0.0, 1.0, 2.5]], dtype=np.float32), (rows, 1))
    data = [0, 1.0, 2.5, 0.0, 1, 2.5] * (rows // 2) if rows > 1 else [0, 1, 2.5]
    flat = {"name": "features", "shape": [rows, 3], "datatype": "FP32", "data": data}
    status, answer = infer(app, {"inputs": [flat]})
    assert status == 200, answer
    y = np.array(answer["outputs"][0]["data"], dtype=np.float32).reshape(rows, 2)
    np.testing.assert_array_equal(y, load_predictor(model).predict(x))


@pytest.mark.parametrize("datatype", ["FP64", "INT32", "INT64", "UINT8"])
def test_json_other_numeric_datatypes_are_cast(app: InferenceApp, datatype: str) -> None:
    x = np.array([[1, 2, 3]], dtype=np.float32)
    status, answer = infer(app, {"inputs": [features_tensor(x.astype(np.int64), datatype)]})
    assert status == 200, answer
    assert answer["outputs"][0]["data"] == reference_predictions(x).ravel().tolist()


def test_binary_request_and_response_by_hand(app: InferenceApp) -> None:
    x = np.array([[0.5, 1.5, -2.0], [3.0, 4.0, 5.0], [6, 7, 8]], dtype=np.float32)
    raw = x.astype("<f4").tobytes()
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "features",
                    "shape": [3, 3],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [{"name": "predictions", "parameters": {"binary_data": True}}],
        }
    ).encode()
    answer = call(
        app, "POST", INFER, head + raw, {"Inference-Header-Content-Length": str(len(head))}
    )
    assert answer.status == 200, answer.body
    assert answer.headers["content-type"] == "application/octet-stream"
    length = int(answer.headers["inference-header-content-length"])
    response = json.loads(answer.body[:length])
    output = response["outputs"][0]
    assert output["shape"] == [3, 2] and "data" not in output
    assert output["parameters"]["binary_data_size"] == 3 * 2 * 4 == len(answer.body) - length
    y = np.frombuffer(answer.body[length:], dtype="<f4").reshape(3, 2)
    np.testing.assert_array_equal(y, reference_predictions(x))


def test_custom_name_and_version_paths(model: Path) -> None:
    crops = create_app(model, name="crops")
    status, answer = infer(crops, {"inputs": [ONE]}, "/v2/models/crops/versions/1/infer")
    assert status == 200 and answer["model_name"] == "crops"
    assert call(crops, "GET", "/v2/models/pomona").status == 404


# -- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "message"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
def test_malformed_request_gets_error_and_app_still_answers(
    app: InferenceApp,
    method: str,
    path: str,
    body: bytes | None,
    headers: dict,
    status: int,
    message: str,
) -> None:
    answer = call(app, method, path, body, headers)
    assert answer.status == status, answer.body
    assert answer.headers["content-type"] == "application/json"
    error = json.loads(answer.body)
    assert list(error) == ["error"] and isinstance(error["error"], str)
    assert re.search(message, error["error"]), error["error"]
    if status == 405:
        assert answer.headers["allow"]
    if status == 413:
        assert answer.headers["connection"] == "close"
    # The app still answers, and correctly.
    assert call(app, "GET", "/v2/health/ready").status == 200
    ok, result = infer(app, {"inputs": [ONE]})
    assert ok == 200
    assert (
        result["outputs"][0]["data"]
        == reference_predictions(np.array([[1, 2, 3]])).ravel().tolist()
    )


def test_oversized_body_in_chunks_is_refused_while_streaming(app: InferenceApp) -> None:
    chunk = b" " * 65536
    read: list[int] = []

    def chunks() -> object:
        for i in range(MAX_BODY // len(chunk) + 2):
            read.append(i)
            yield chunk

    answer = call(app, "POST", INFER, chunks())
    assert answer.status == 413
    assert "exceeds the limit" in json.loads(answer.body)["error"]
    assert answer.headers["connection"] == "close"


def test_body_in_several_messages_is_joined(app: InferenceApp) -> None:
    body = gzip.compress(doc(id="parts", inputs=[ONE]))
    parts = [body[:5], body[5:9], b"", body[9:]]
    answer = call(app, "POST", INFER, parts, {"Content-Encoding": "gzip"})
    assert answer.status == 200, answer.body
    assert json.loads(answer.body)["id"] == "parts"


def test_client_gone_before_the_body_gets_no_answer(app: InferenceApp) -> None:
    before = app.metrics.in_flight

    async def gone() -> list[dict]:
        sent: list[dict] = []

        async def receive() -> dict:
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": INFER, "headers": []}
        await app(scope, receive, send)
        return sent

    assert asyncio.run(gone()) == []
    assert app.metrics.in_flight == before


def test_unknown_failure_is_logged_and_answered_with_a_generic_500(
    model: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broken = create_app(model, micro_batch=False)

    def explode(features: np.ndarray) -> np.ndarray:
        raise RuntimeError("secret internals")

    broken.predictor.predict = explode  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="pomona.serve"):
        answer = call(broken, "POST", INFER, doc(inputs=[ONE]))
    assert answer.status == 500
    assert json.loads(answer.body) == {"error": "internal server error"}
    assert "secret internals" in caplog.text and "Traceback" in caplog.text


def test_app_refuses_bad_construction(model: Path) -> None:
    predictor = load_predictor(model)
    with pytest.raises(ValueError, match="model name"):
        InferenceApp(predictor, name="a/b")
    with pytest.raises(ValueError, match="max_body_size"):
        InferenceApp(predictor, max_body_size=0)
    assert predictor.predict(np.ones((1, 3))).shape == (1, 2)


# -- metrics and lifespan -------------------------------------------------------------------


def test_metrics_count_requests_statuses_and_rows(app: InferenceApp) -> None:
    x = np.ones((5, 3), dtype=np.float32)
    assert infer(app, {"inputs": [features_tensor(x)]})[0] == 200
    assert call(app, "GET", "/v2/models/nope").status == 404
    answer = call(app, "GET", "/metrics")
    text = answer.body.decode()
    assert answer.status == 200 and answer.headers["content-type"].startswith("text/plain")
    assert re.search(r'pomona_requests_total\{code="200",endpoint="infer"\} [1-9]', text)
    assert re.search(r'pomona_requests_total\{code="404",endpoint="other"\} [1-9]', text)
    assert re.search(r'pomona_request_duration_seconds_bucket\{endpoint="infer",le="\+Inf"\}', text)
    rows = float(re.search(r"^pomona_rows_predicted_total (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]
    assert rows >= 5
    assert re.search(r"^pomona_requests_in_flight 1\.0$", text, re.M)


def test_lifespan_sets_readiness(model: Path) -> None:
    lifespan_app = create_app(model)

    async def run() -> tuple[list[str], int | None, int | None]:
        inbox: asyncio.Queue[dict] = asyncio.Queue()
        sent: list[str] = []

        async def send(message: dict) -> None:
            sent.append(message["type"])

        task = asyncio.create_task(lifespan_app({"type": "lifespan"}, inbox.get, send))
        await inbox.put({"type": "lifespan.startup"})
        while not sent:
            await asyncio.sleep(0)
        ready = (await call_async(lifespan_app, "GET", "/v2/health/ready")).status
        await inbox.put({"type": "lifespan.shutdown"})
        await task
        after = (await call_async(lifespan_app, "GET", "/v2/models/pomona/ready")).status
        return sent, ready, after

    sent, ready, after = asyncio.run(run())
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert (ready, after) == (200, 400)


def test_micro_batched_requests_of_one_turn_get_their_own_answers(app: InferenceApp) -> None:
    xs = [np.full((rows, 3), rows, dtype=np.float32) for rows in (1, 2, 3, 4)]

    async def together() -> list:
        bodies = [
            json.dumps({"id": str(i), "inputs": [features_tensor(x)]}) for i, x in enumerate(xs)
        ]
        return await asyncio.gather(*(call_async(app, "POST", INFER, b.encode()) for b in bodies))

    for i, (x, answer) in enumerate(zip(xs, asyncio.run(together()), strict=True)):
        result = json.loads(answer.body)
        assert answer.status == 200 and result["id"] == str(i)
        y = np.array(result["outputs"][0]["data"], dtype=np.float32).reshape(len(x), 2)
        np.testing.assert_array_equal(y, reference_predictions(x))
    assert MODEL_VERSION == "1"
