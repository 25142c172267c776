"""The gRPC service of ``pomona serve --grpc-port``, through ``tritonclient.grpc`` unmodified."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from pomona.runtime.serve.grpc_server import status_code
from pomona.runtime.serve.proto import open_inference_grpc_pb2 as pb
from pomona.runtime.serve.proto import open_inference_grpc_pb2_grpc as pb_grpc
from tests.conftest import run_pomona
from tests.onnx_models import make_linear_onnx, reference_predictions
from tests.runtime.serve.repo_cases import MODELS, make_repository, which_version
from tests.runtime.serve.test_socket import _READY_POLLS, Server, free_port

X = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=np.float32)
MAX_MESSAGE = 64 * 1024


class GrpcServer(Server):
    def __init__(self, model: Path, log: Path, *options: str) -> None:
        self.grpc_port = free_port()
        self.grpc_url = f"127.0.0.1:{self.grpc_port}"
        super().__init__(model, log, "--grpc-port", str(self.grpc_port), *options)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GrpcServer]:
    repo = make_repository(tmp_path_factory.mktemp("repo"))
    log = tmp_path_factory.mktemp("log") / "server.log"
    server = GrpcServer(
        repo, log, "--version-policy", "all", "--grpc-max-message-bytes", str(MAX_MESSAGE)
    )
    yield server
    assert server.stop() == 0


@pytest.fixture()
def client(server: GrpcServer) -> Iterator[grpcclient.InferenceServerClient]:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    yield client
    client.close()


def _infer(
    client: grpcclient.InferenceServerClient, model: str, x: np.ndarray = X, version: str = ""
) -> tuple[str, np.ndarray]:
    tensor = grpcclient.InferInput("features", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    outputs = [grpcclient.InferRequestedOutput("predictions")]
    result = client.infer(model, [tensor], model_version=version, outputs=outputs, request_id="7")
    response = result.get_response()
    assert response.id == "7"
    return response.model_version, result.as_numpy("predictions")


def test_health_and_metadata(client: grpcclient.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.get_server_metadata().name == "pomona"
    for model in MODELS:
        assert client.is_model_ready(model) and client.is_model_ready(model, "1")
        meta = client.get_model_metadata(model, as_json=True)
        assert meta["name"] == model and meta["versions"] == ["1", "2"]
        assert meta["inputs"] == [{"name": "features", "datatype": "FP32", "shape": ["-1", "3"]}]
    assert not client.is_model_ready("apples", "9")
    assert not client.is_model_ready("pears")


def test_every_model_and_version_infers_with_raw_contents(
    client: grpcclient.InferenceServerClient,
) -> None:
    for model in MODELS:
        for version in ("1", "2"):
            answered, y = _infer(client, model, version=version)
            assert answered == version and which_version(model, y, X) == int(version)
        answered, y = _infer(client, model)
        assert answered == "2" and y.shape == (2, 2) and y.dtype == np.float32


def test_typed_contents_and_other_datatypes(server: GrpcServer) -> None:
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        request = pb.ModelInferRequest(model_name="apples", model_version="1")
        tensor = request.inputs.add(name="features", datatype="INT64", shape=[1, 3])
        tensor.contents.int64_contents.extend([1, 2, 3])
        response = stub.ModelInfer(request)
    y = np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(1, 2)
    assert list(response.outputs[0].shape) == [1, 2]
    assert which_version("apples", y, np.array([[1, 2, 3]])) == 1


@pytest.mark.parametrize(
    ("model", "x", "code", "message"),
    [
        ("pears", X, "StatusCode.NOT_FOUND", "unknown model 'pears'"),
        ("apples", X[:, :2], "StatusCode.INVALID_ARGUMENT", "'shape' must be [rows, 3]"),
        (
            "apples",
            np.full((1, 3), np.nan, np.float32),
            "StatusCode.INVALID_ARGUMENT",
            "non-finite",
        ),
    ],
)
def test_errors_map_to_status_codes(
    client: grpcclient.InferenceServerClient, model: str, x: np.ndarray, code: str, message: str
) -> None:
    with pytest.raises(InferenceServerException) as caught:
        _infer(client, model, x)
    assert caught.value.status() == code
    assert message in caught.value.message()


def test_a_message_past_the_limit_is_refused_clearly(
    client: grpcclient.InferenceServerClient,
) -> None:
    big = np.ones((MAX_MESSAGE // 12 + 10, 3), dtype=np.float32)
    with pytest.raises(InferenceServerException) as caught:
        _infer(client, "apples", big)
    assert caught.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert f"vs. {MAX_MESSAGE}" in caught.value.message()
    assert _infer(client, "apples")[0] == "2"  # the server carries on


def test_a_model_file_is_served_over_grpc_as_version_1(tmp_path: Path) -> None:
    server = GrpcServer(make_linear_onnx(tmp_path / "model.onnx"), tmp_path / "log")
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        answered, y = _infer(client, "pomona")
        assert answered == "1"
        np.testing.assert_array_equal(y, reference_predictions(X))
    finally:
        client.close()
        assert server.stop() == 0


def test_a_busy_grpc_port_is_one_error_line(tmp_path: Path) -> None:
    model = make_linear_onnx(tmp_path / "model.onnx")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_pomona("serve", model, "--port", str(free_port()), "--grpc-port", str(port))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("Error: cannot listen for gRPC on")
    assert "Traceback" not in result.stderr


def test_every_worker_serves_grpc_on_the_one_port(tmp_path: Path) -> None:
    server = GrpcServer(
        make_linear_onnx(tmp_path / "model.onnx"), tmp_path / "log", "--workers", "2"
    )
    try:
        for _ in range(_READY_POLLS):  # ready answers once one worker is up: wait for both
            if server.log.read_text().count("serving gRPC on") == 2:
                break
            time.sleep(0.05)
        for _ in range(8):  # a new connection each time: the kernel spreads them
            client = grpcclient.InferenceServerClient(server.grpc_url)
            try:
                answered, y = _infer(client, "pomona")
            finally:
                client.close()
            assert answered == "1"
            np.testing.assert_array_equal(y, reference_predictions(X))
        _, _, body = server.request("GET", "/v2/models/pomona/stats")
        assert b'"execution_count"' in body
    finally:
        assert server.stop() == 0
    assert server.log.read_text().count("serving gRPC on") == 2


def test_a_busy_grpc_port_is_one_error_line_with_workers(tmp_path: Path) -> None:
    model = make_linear_onnx(tmp_path / "model.onnx")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_pomona(
            "serve", model, "--port", str(free_port()), "--grpc-port", str(port), "--workers", "2"
        )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("Error: cannot listen for gRPC on")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("http", "code"),
    [(404, grpc.StatusCode.NOT_FOUND), (400, grpc.StatusCode.INVALID_ARGUMENT),
     (422, grpc.StatusCode.INVALID_ARGUMENT), (413, grpc.StatusCode.RESOURCE_EXHAUSTED),
     (503, grpc.StatusCode.UNAVAILABLE), (500, grpc.StatusCode.INTERNAL)],
)  # fmt: skip
def test_status_codes(http: int, code: grpc.StatusCode) -> None:
    assert status_code(http) is code
