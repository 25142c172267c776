"""Fuzz every endpoint of a real ``pomona serve`` from an OpenAPI description: never a 5xx.

``oip_openapi.json`` describes the Open Inference Protocol REST endpoints loosely
enough (any datatype, odd shapes, mixed data, unknown model names and versions) that
schemathesis generates both valid and invalid requests.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.onnx_models import make_linear_onnx
from tests.runtime.serve.cases import INFER
from tests.runtime.serve.test_socket import Server

SPEC = Path(__file__).with_name("oip_openapi.json")


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    model = make_linear_onnx(tmp_path_factory.mktemp("model") / "model.onnx")
    log = tmp_path_factory.mktemp("log") / "serve.log"
    srv = Server(model, log, "--max-body-size", "65536", "--log-level", "warning")
    yield srv
    assert srv.stop() == 0
    assert "Traceback" not in log.read_text(), log.read_text()


schema = schemathesis.openapi.from_path(SPEC)


@schema.parametrize()
@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
    database=None,
)
def test_no_endpoint_answers_5xx(case: schemathesis.Case, fuzz_server: Server) -> None:
    response = case.call(base_url=f"http://{fuzz_server.url}")
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert set(json.loads(response.content)) == {"error"}
    assert fuzz_server.request("GET", "/v2/health/live")[0] == 200


@st.composite
def _bodies(draw: st.DrawFn, binary_header: bool) -> tuple[bytes, dict[str, str]]:
    rows = draw(st.integers(0, 4))
    width = draw(st.integers(0, 5))
    datatype = draw(st.sampled_from(["FP32", "FP64", "INT32", "UINT8", "FP16", "BOOL"]))
    tensor: dict[str, object] = {"name": "features", "shape": [rows, width], "datatype": datatype}
    if binary_header:
        tensor["parameters"] = {"binary_data_size": draw(st.integers(-1, 80))}
    else:
        tensor["data"] = draw(
            st.lists(
                st.one_of(st.floats(width=32), st.integers(-(2**70), 2**70), st.booleans()),
                max_size=20,
            )
        )
    head = json.dumps({"inputs": [tensor]}).encode()
    raw = draw(st.binary(max_size=64))
    headers = {}
    if binary_header:
        declared = draw(st.sampled_from([len(head), 0, len(head) + len(raw) + 1]))
        headers["Inference-Header-Content-Length"] = str(declared)
    cut = draw(st.integers(0, len(head)))
    body = draw(st.sampled_from([head + raw, head[:cut], raw]))
    return body, headers


@pytest.mark.parametrize("binary_header", [False, True], ids=["json", "binary"])
@given(data=st.data())
@settings(max_examples=80, deadline=None, derandomize=True, database=None)
def test_arbitrary_bodies_never_5xx(
    fuzz_server: Server, binary_header: bool, data: st.DataObject
) -> None:
    """Raw bodies, NaN and huge numbers, wrong binary headers: only 2xx or 4xx, always JSON."""
    body, headers = data.draw(_bodies(binary_header))
    status, _, answer = fuzz_server.request("POST", INFER, body, headers)
    assert status in (200, 400, 413), answer
    if status != 200:
        assert set(json.loads(answer)) == {"error"}
