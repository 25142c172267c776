"""``pomona serve`` over real sockets: HTTP details, tritonclient, concurrency, shutdown, CLI.

Every test talks to a real server process started with ``python -m pomona.runtime.cli
serve`` on 127.0.0.1 and a free port. What the app answers is tested in-process (test_app).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from pomona.runtime.predictor import Predictor
from tests.conftest import POMONA, run_pomona
from tests.onnx_models import CROP_FEATURES, make_linear_onnx, reference_predictions
from tests.runtime.serve.cases import INFER, MAX_BODY, ONE, features_tensor

_READY_POLLS = 1200  # x 0.05 s: how long a server may take to start before the test fails


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """A ``pomona serve`` subprocess on 127.0.0.1 and a free port."""

    def __init__(
        self,
        model: Path,
        log: Path,
        *options: str,
        env: dict[str, str] | None = None,
        host: str = "127.0.0.1",
        max_fds: int | None = None,
    ) -> None:
        """``env`` replaces ``--port`` when it sets ``POMONA_PORT``; ``max_fds``: its ulimit -n."""
        self.port = int((env or {}).get("POMONA_PORT") or free_port())
        self.host = host
        self.url = f"{host}:{self.port}"
        self.log = log
        port = [] if env and "POMONA_PORT" in env else ["--port", str(self.port)]
        with open(log, "w") as stderr:
            self.proc = subprocess.Popen(
                [*POMONA, "serve", str(model), *port, *options],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env={**os.environ, **(env or {})},
                preexec_fn=None if max_fds is None else lambda: _limit_fds(max_fds),
            )
        for _ in range(_READY_POLLS):
            if self.proc.poll() is not None:
                pytest.fail(f"server exited with {self.proc.returncode}: {log.read_text()}")
            try:
                if self.request("GET", "/v2/health/ready")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        self.proc.kill()
        pytest.fail(f"server did not become ready: {log.read_text()}")

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            data = response.read()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, data
        finally:
            conn.close()

    def infer(self, doc: object, **headers: str) -> tuple[int, Any]:
        status, _, body = self.request("POST", INFER, json.dumps(doc).encode(), headers)
        return status, json.loads(body)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=120)


def _limit_fds(limit: int) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))


# -- HTTP on a raw socket: what the server writes, and when ---------------------------------


def _read_until(sock: socket.socket, marker: bytes, data: bytes = b"") -> bytes:
    while marker not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before {marker!r}; got {data!r}")
        data += chunk
    return data


def _read_response(sock: socket.socket, data: bytes = b"") -> tuple[bytes, bytes, bytes]:
    """One response with a Content-Length: (head, body, what follows it)."""
    data = _read_until(sock, b"\r\n\r\n", data)
    head, rest = data.split(b"\r\n\r\n", 1)
    length = int(re.search(rb"(?im)^content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed inside a body: {head!r}"
        rest += chunk
    return head, rest[:length], rest[length:]


def _infer_bytes(rows: list[list[float]], request_id: str) -> bytes:
    doc = {"id": request_id, "inputs": [features_tensor(np.array(rows, dtype=np.float32))]}
    return json.dumps(doc).encode()


def test_expect_100_continue_is_answered_before_the_body_is_sent(server: Server) -> None:
    body = _infer_bytes([[1.0, 2.0, 3.0]], "continue")
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(
            f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Expect: 100-continue\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        )
        interim = _read_until(sock, b"\r\n\r\n")
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"), interim
        sock.sendall(body)
        head, answer, _ = _read_response(sock, interim[len(b"HTTP/1.1 100 Continue\r\n\r\n") :])
    assert head.startswith(b"HTTP/1.1 200 ")
    assert json.loads(answer)["id"] == "continue"


def test_pipelined_requests_are_answered_whole_and_in_order(server: Server) -> None:
    rows = [[[float(i), 2.0, 3.0]] for i in range(20)]
    bodies = [_infer_bytes(r, str(i)) for i, r in enumerate(rows)]
    requests = b"".join(
        f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
        for body in bodies
    )
    answers = []
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(requests + b"HEAD /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        rest = b""
        for _ in rows:
            head, body, rest = _read_response(sock, rest)
            assert head.startswith(b"HTTP/1.1 200 "), head
            answers.append(json.loads(body))
        head = _read_until(sock, b"\r\n\r\n", rest)
    assert [a["id"] for a in answers] == [str(i) for i in range(len(rows))]
    for r, answer in zip(rows, answers, strict=True):
        expected = reference_predictions(np.array(r, dtype=np.float32)).ravel()
        np.testing.assert_array_equal(np.array(answer["outputs"][0]["data"], "<f4"), expected)
    # A HEAD response has headers only: they still go out, with nothing written after them.
    assert head.startswith(b"HTTP/1.1 405 ") and head.endswith(b"\r\n\r\n"), head


# -- tritonclient, unmodified ---------------------------------------------------------------


@pytest.fixture
def triton(server: Server) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(url=server.url)
    yield client
    client.close()


def test_tritonclient_health_and_metadata(triton: httpclient.InferenceServerClient) -> None:
    assert triton.is_server_live()
    assert triton.is_server_ready()
    assert triton.is_model_ready("pomona")
    assert triton.is_model_ready("pomona", model_version="1")
    assert not triton.is_model_ready("nosuchmodel")
    assert "binary_tensor_data" in triton.get_server_metadata()["extensions"]
    meta = triton.get_model_metadata("pomona")
    assert meta["inputs"][0]["shape"] == [-1, len(CROP_FEATURES)]


@pytest.mark.parametrize("binary_in", [False, True], ids=["json-in", "binary-in"])
@pytest.mark.parametrize("binary_out", [False, True, None], ids=["json-out", "bin-out", "default"])
def test_tritonclient_infer_matches_predictor(
    triton: httpclient.InferenceServerClient,
    model: Path,
    binary_in: bool,
    binary_out: bool | None,
) -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(17, 3)).astype(np.float32)
    tensor = httpclient.InferInput("features", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary_in)
    outputs = (
        None
        if binary_out is None
        else [httpclient.InferRequestedOutput("predictions", binary_data=binary_out)]
    )
    result = triton.infer("pomona", [tensor], outputs=outputs, request_id="abc")
    expected = Predictor(model).predict(x)
    np.testing.assert_array_equal(result.as_numpy("predictions"), expected)
    response = result.get_response()
    assert response["id"] == "abc" and response["model_name"] == "pomona"
    is_binary = "binary_data_size" in response["outputs"][0].get("parameters", {})
    assert is_binary == (binary_out is not False)


@pytest.mark.parametrize("compression", ["gzip", "deflate"])
def test_tritonclient_compressed_request_and_other_dtype(
    triton: httpclient.InferenceServerClient, model: Path, compression: str
) -> None:
    x = np.arange(30, dtype=np.float64).reshape(10, 3)
    tensor = httpclient.InferInput("features", list(x.shape), "FP64")
    tensor.set_data_from_numpy(x, binary_data=True)
    result = triton.infer(
        "pomona", [tensor], model_version="1", request_compression_algorithm=compression
    )
    np.testing.assert_array_equal(result.as_numpy("predictions"), Predictor(model).predict(x))


def test_tritonclient_sees_error_message(triton: httpclient.InferenceServerClient) -> None:
    tensor = httpclient.InferInput("features", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 4), dtype=np.float32))
    with pytest.raises(InferenceServerException, match=r"\[rows, 3\]"):
        triton.infer("pomona", [tensor])
    with pytest.raises(InferenceServerException, match="unknown model 'other'"):
        triton.infer("other", [tensor])


def test_oversized_chunked_body_is_refused_while_streaming(server: Server) -> None:
    # The server answers 413 once the limit is passed, then reads and drops the rest
    # until the client is done (a lingering close): the client always reads the 413.
    chunk = b" " * 65536
    chunks = iter([chunk] * (MAX_BODY // len(chunk) + 64))
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        conn.request("POST", INFER, body=chunks, encode_chunked=True)
        response = conn.getresponse()
        assert response.status == 413
        assert "exceeds the limit" in json.loads(response.read())["error"]
    finally:
        conn.close()
    assert server.request("GET", "/v2/health/ready")[0] == 200


# -- concurrency ----------------------------------------------------------------------------


def test_concurrent_clients_all_get_their_own_answers(server: Server) -> None:
    threads, per_thread = 8, 40
    failures: list[str] = []

    def client(seed: int) -> None:
        rng = np.random.default_rng(seed)
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        try:
            for i in range(per_thread):
                rows = int(rng.integers(1, 50))
                x = rng.integers(-100, 100, size=(rows, 3)).astype(np.float32)
                if i % 2:
                    raw = x.astype("<f4").tobytes()
                    tensor = {
                        "name": "features",
                        "shape": [rows, 3],
                        "datatype": "FP32",
                        "parameters": {"binary_data_size": len(raw)},
                    }
                    head = json.dumps({"id": f"{seed}-{i}", "inputs": [tensor]}).encode()
                    headers = {"Inference-Header-Content-Length": str(len(head))}
                    conn.request("POST", INFER, head + raw, headers)
                else:
                    doc = {"id": f"{seed}-{i}", "inputs": [features_tensor(x)]}
                    conn.request("POST", INFER, json.dumps(doc).encode())
                response = conn.getresponse()
                answer = json.loads(response.read())
                y = np.array(answer["outputs"][0]["data"], dtype=np.float32).reshape(rows, 2)
                if response.status != 200 or answer["id"] != f"{seed}-{i}":
                    failures.append(f"{seed}-{i}: {response.status} {answer}")
                elif not np.array_equal(y, reference_predictions(x)):
                    failures.append(f"{seed}-{i}: wrong predictions")
        except Exception as err:  # collected and reported by the main thread
            failures.append(f"{seed}: {err!r}")
        finally:
            conn.close()

    workers = [threading.Thread(target=client, args=(seed,)) for seed in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert failures == []


# -- operation ------------------------------------------------------------------------------


def _in_flight(server: Server) -> int:
    text = server.request("GET", "/metrics")[2].decode()
    match = re.search(r"^pomona_requests_in_flight (\S+)$", text, re.M)
    assert match is not None
    return int(float(match.group(1)))


def send_part_of_a_body(srv: Server, body: bytes) -> socket.socket:
    """A connection that has sent an infer request's head and 10 bytes of ``body``.

    Returns once the server is inside the request (the scrape itself counts as one).
    """
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=60)
    head = f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
    sock.sendall(head.encode() + body[:10])
    for _ in range(_READY_POLLS):
        if _in_flight(srv) >= 2:
            break
        time.sleep(0.05)
    return sock


def test_sigterm_finishes_in_flight_request_then_exits_zero(model: Path, tmp_path: Path) -> None:
    srv = Server(model, tmp_path / "serve.log", "--log-level", "warning")
    body = json.dumps({"id": "last", "inputs": [ONE]}).encode()
    with send_part_of_a_body(srv, body) as sock:
        srv.proc.send_signal(signal.SIGTERM)
        sock.sendall(body[10:])
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    assert response.startswith(b"HTTP/1.1 200"), response
    assert json.loads(response.split(b"\r\n\r\n", 1)[1])["id"] == "last"
    assert srv.proc.wait(timeout=120) == 0
    assert "Traceback" not in srv.log.read_text()


def test_several_workers_serve_and_stop_cleanly(model: Path, tmp_path: Path) -> None:
    srv = Server(model, tmp_path / "serve.log", "--workers", "2", "--log-level", "warning")
    try:
        for _ in range(20):
            status, answer = srv.infer({"inputs": [ONE]})
            assert status == 200, answer
    finally:
        assert srv.stop() == 0, srv.log.read_text()


def _workers(server: subprocess.Popen[bytes]) -> list[int]:
    """The worker processes of a ``pomona serve --workers N`` (not the resource tracker)."""
    children = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
    return [
        int(pid) for pid in children if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]


def test_a_worker_that_cannot_restart_stops_the_server(tmp_path: Path) -> None:
    """A worker restarted after the model file went bad stops the server with one error,
    instead of being restarted (and failing, with a traceback) over and over."""
    path = make_linear_onnx(tmp_path / "model.onnx")
    srv = Server(path, tmp_path / "serve.log", "--workers", "2", "--log-level", "warning")
    try:
        assert srv.infer({"inputs": [ONE]})[0] == 200
        path.write_bytes(b"half a model")
        os.kill(_workers(srv.proc)[0], signal.SIGKILL)
        assert srv.proc.wait(timeout=120) == 1
    finally:
        srv.proc.kill()
    log = srv.log.read_text()
    assert "Traceback" not in log, log
    assert log.count("a worker could not start") == 2, log  # the worker's line, the parent's
    assert "not a valid ONNX model" in log
    assert log.rstrip().endswith(
        "Error: a worker could not start (its error is logged above); the server stopped"
    )


def test_bad_model_exits_1_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not an onnx model")
    result = run_pomona("serve", bad, "--port", str(free_port()))
    assert result.returncode == 1
    assert result.stderr.startswith("Error: ") and "Traceback" not in result.stderr
    assert "not a valid ONNX model" in result.stderr


def test_model_changed_since_manifest_exits_1(model: Path, tmp_path: Path) -> None:
    path = make_linear_onnx(tmp_path / "model.onnx")
    manifest = {"artifacts": {"model.onnx": {"sha256": "0" * 64, "size": 1}}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    result = run_pomona("serve", path, "--port", str(free_port()))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "manifest" in result.stderr and "--no-manifest-check" in result.stderr


def test_usage_errors_exit_2(model: Path) -> None:
    assert run_pomona("serve", model, "--workers", "0").returncode == 2
    assert run_pomona("serve", model, "--max-body-size", "-1").returncode == 2
    assert run_pomona("serve", model, "--name", "a/b").returncode == 2
    assert run_pomona("serve", Path("no/such/model.onnx")).returncode == 2


def test_missing_serve_extra_names_it(model: Path) -> None:
    block_uvicorn = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'uvicorn':\n"
        "            raise ModuleNotFoundError(\"No module named 'uvicorn'\", name='uvicorn')\n"
        "sys.meta_path.insert(0, Block())\n"
        "from pomona.runtime.cli import main\n"
        f"main(['serve', {str(model)!r}])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", block_uvicorn],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    assert result.returncode == 1
    assert "pip install 'pomona[serve]'" in result.stderr and "Traceback" not in result.stderr
