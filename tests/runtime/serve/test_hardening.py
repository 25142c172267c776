"""Slow and hostile clients against a real ``pomona serve``: none of them stalls the others.

Idle and half-sent connections under a 1,024-descriptor limit, a head that never ends,
numbers with thousands of digits, a body sent whole before the answer is read (urllib),
a body that stops half-way (on its own and during a SIGTERM), a busy port.
"""

from __future__ import annotations

import http.client
import json
import resource
import signal
import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pomona.runtime.serve import InferenceApp, create_app
from tests.conftest import needs, run_pomona
from tests.runtime.serve.asgi import call
from tests.runtime.serve.cases import INFER, MAX_BODY, ONE
from tests.runtime.serve.test_socket import Server, send_part_of_a_body

needs("httptools")  # the guarded protocol runs on httptools

_FD_LIMIT = 1024
_ATTACKERS = 1000


def _response(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def _infer_body() -> bytes:
    return json.dumps({"inputs": [ONE]}).encode()


# -- connections that never finish ---------------------------------------------------------


def test_idle_and_slow_connections_do_not_starve_legitimate_clients(
    model: Path, tmp_path: Path
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < _ATTACKERS + 200:
        pytest.skip(f"this test holds {_ATTACKERS} sockets; the descriptor limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, _ATTACKERS + 200), hard))
    srv = Server(model, tmp_path / "serve.log", "--log-level", "error", max_fds=_FD_LIMIT)
    attackers: list[socket.socket] = []
    failures: list[str] = []
    try:
        for i in range(_ATTACKERS):
            sock = socket.create_connection(("127.0.0.1", srv.port), timeout=60)
            if i % 2:  # slow: half a request head, never finished
                sock.sendall(f"POST {INFER} HTTP/1.1\r\nHost: x\r\nX-Slow: ".encode())
            attackers.append(sock)
        for i in range(40):
            conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
            try:
                conn.request("POST", INFER, _infer_body())
                response = conn.getresponse()
                if response.status != 200:
                    failures.append(f"{i}: {response.status} {response.read()!r}")
                response.read()
            except OSError as err:
                failures.append(f"{i}: {err!r}")
            finally:
                conn.close()
    finally:
        for sock in attackers:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert failures == []
    assert srv.stop() == 0, srv.log.read_text()
    assert "Too many open files" not in srv.log.read_text()


def test_connection_that_sends_nothing_is_closed_after_the_header_timeout(
    model: Path, tmp_path: Path
) -> None:
    srv = Server(model, tmp_path / "serve.log", "--timeout-header", "0.5")
    try:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=60) as idle:
            assert _response(idle) == b""  # closed by the server, nothing said
        with socket.create_connection(("127.0.0.1", srv.port), timeout=60) as slow:
            slow.sendall(b"GET /v2 HTTP/1.1\r\nHost: x\r\n")
            answer = _response(slow)
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert "not received within 0.5 s" in json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]
        assert srv.request("GET", "/v2/health/live")[0] == 200
    finally:
        assert srv.stop() == 0


def test_oversized_head_gets_431_and_others_are_served(server: Server) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(b"GET /v2 HTTP/1.1\r\nHost: x\r\nX-Big: ")
        try:
            for _ in range(64):  # 4 MiB of one header, far past the 64 KiB limit
                sock.sendall(b"a" * 65536)
        except OSError:
            pass  # the server has answered and stopped reading
        answer = _response(sock)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert "exceeds the limit of 65536 bytes" in answer.decode()
    assert server.request("GET", "/v2/health/live")[0] == 200


def test_head_just_under_the_limit_is_served(server: Server) -> None:
    status, _, body = server.request("GET", "/v2", headers={"X-Pad": "a" * 60_000})
    assert status == 200, body


# -- numbers -------------------------------------------------------------------------------


@pytest.mark.parametrize("header", ["Inference-Header-Content-Length", "Content-Length"])
def test_five_thousand_digit_header_is_a_4xx(server: Server, header: str) -> None:
    body = _infer_body()
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        bomb = "9" * 5000
        length = bomb if header == "Content-Length" else str(len(body))
        extra = "" if header == "Content-Length" else f"{header}: {bomb}\r\n"
        sock.sendall(
            f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n{extra}"
            "Connection: close\r\n\r\n".encode()
            + body
        )
        answer = _response(sock)
    status = int(answer.split(b" ", 2)[1])
    assert 400 <= status < 500, answer


@pytest.fixture(scope="module")
def app(model: Path) -> InferenceApp:
    return create_app(model, max_body_size=MAX_BODY)


_HEADER_VALUES = st.one_of(
    st.text("0123456789", min_size=1, max_size=6000),
    st.text("0123456789 +-_.e\t", max_size=40),
    st.integers(-(10**30), 10**30).map(str),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    content_length=st.none() | _HEADER_VALUES,
    header_length=st.none() | _HEADER_VALUES,
    shape=st.lists(st.integers(-(10**25), 10**25) | st.text("0123456789", min_size=1), max_size=3),
)
def test_any_header_or_json_integer_gets_a_4xx_never_a_5xx(
    app: InferenceApp,
    content_length: str | None,
    header_length: str | None,
    shape: list[int | str],
) -> None:
    raw_shape = ",".join(str(d) for d in shape)
    body = f'{{"inputs":[{{"name":"features","shape":[{raw_shape}],"datatype":"FP32",'
    body += '"data":[1,2,3],"parameters":{"binary_data_size":' + (raw_shape or "0") + "}}]}"
    headers = {}
    if content_length is not None:
        headers["Content-Length"] = content_length
    if header_length is not None:
        headers["Inference-Header-Content-Length"] = header_length
    answer = call(app, "POST", INFER, body.encode(), headers)
    assert answer.status is not None and answer.status < 500, answer.body


# -- bodies --------------------------------------------------------------------------------


def test_oversized_body_413_is_read_by_urllib(server: Server) -> None:
    # urllib sends the whole body before it reads: the server must let it read the 413.
    request = urllib.request.Request(
        f"http://{server.url}{INFER}", data=b" " * (32 * MAX_BODY), method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=60)
    assert caught.value.code == 413
    assert "exceeds the limit" in json.loads(caught.value.read())["error"]
    assert server.request("GET", "/v2/health/ready")[0] == 200


def test_body_that_stops_arriving_gets_408(model: Path, tmp_path: Path) -> None:
    srv = Server(model, tmp_path / "serve.log", "--timeout-body", "0.5")
    body = _infer_body()
    try:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=60) as sock:
            head = f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
            sock.sendall(head.encode() + body[:10])
            answer = _response(sock)
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert b"connection: close" in answer.lower()
        assert "stopped arriving" in json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]
        assert srv.request("GET", "/v2/health/live")[0] == 200
    finally:
        assert srv.stop() == 0
    assert "Traceback" not in srv.log.read_text()


def test_sigterm_answers_a_stalled_body_503_and_exits_zero(model: Path, tmp_path: Path) -> None:
    srv = Server(model, tmp_path / "serve.log", "--graceful-timeout", "0.5")
    with send_part_of_a_body(srv, _infer_body()) as sock:
        srv.proc.send_signal(signal.SIGTERM)
        answer = _response(sock)  # the body never comes
    assert answer.startswith(b"HTTP/1.1 503 "), answer
    assert "shutting down" in json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]
    assert srv.proc.wait(timeout=120) == 0
    log = srv.log.read_text()
    assert "Traceback" not in log and "Exception in ASGI application" not in log


# -- the port ------------------------------------------------------------------------------


def test_busy_port_exits_1_with_one_error_line(model: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = run_pomona("serve", model, "--port", str(port))
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert f"port {port} on 127.0.0.1 is already in use" in lines[0]


@pytest.mark.parametrize("field", ["shape", "data", "binary_data_size"])
def test_five_thousand_digit_json_integer_is_a_400_that_names_it(
    app: InferenceApp, field: str
) -> None:
    bomb = "9" * 5000
    tensor = {"name": "features", "shape": "[1,3]", "datatype": "FP32", "data": "[1,2,3]"}
    if field == "binary_data_size":
        tensor["parameters"] = f'{{"binary_data_size":{bomb}}}'
    else:
        tensor[field] = tensor[field].replace("1", bomb, 1)
    fields = ",".join(
        f'"{key}":{value}' if key != "name" and key != "datatype" else f'"{key}":"{value}"'
        for key, value in tensor.items()
    )
    answer = call(app, "POST", INFER, f'{{"inputs":[{{{fields}}}]}}'.encode())
    assert answer.status == 400, answer.body
    error = json.loads(answer.body)["error"]
    assert "beyond the range of float64" in error and "int_max_str_digits" not in error
