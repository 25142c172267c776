"""Clients other than curl against a real ``pomona serve``: KServe's, Triton's, browsers'.

KServe's ``InferenceRESTClient`` pins packages older than this project's (pandas<3,
psutil<6, python-dateutil<3), so it runs in a virtualenv of its own that the Makefile
builds (``.venv-kserve``, from ``kserve-requirements.txt``), as a subprocess
(``kserve_client.py``) against the server on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from pomona.runtime.predictor import Predictor
from pomona.runtime.serve import create_app
from pomona.runtime.serve.access import AccessPolicy
from tests.conftest import ALL_EXTRAS_VARIABLE, REPO, SUBPROCESS_TIMEOUT, run_pomona
from tests.onnx_models import make_linear_onnx
from tests.runtime.serve.asgi import call
from tests.runtime.serve.cases import INFER, ONE, doc
from tests.runtime.serve.test_socket import Server

KSERVE_PYTHON = Path(os.environ.get("POMONA_KSERVE_PYTHON", REPO / ".venv-kserve/bin/python"))
KSERVE_SCRIPT = Path(__file__).with_name("kserve_client.py")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model exported under the name ``stackloss`` (its ONNX graph name)."""
    path = make_linear_onnx(tmp_path_factory.mktemp("model") / "model.onnx")
    proto = onnx.load(str(path))
    proto.graph.name = "stackloss"
    onnx.save(proto, str(path))
    return path


@pytest.fixture(scope="module")
def server(model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("log") / "serve.log"
    srv = Server(model, log, "--log-level", "warning")
    yield srv
    assert srv.stop() == 0, log.read_text()
    assert "Traceback" not in log.read_text()


# -- the name, version and sha256 -------------------------------------------------------------


def test_default_name_is_the_exported_one(server: Server, model: Path) -> None:
    status, _, body = server.request("GET", "/v2/models/stackloss")
    assert status == 200, body
    meta = json.loads(body)
    assert meta["name"] == "stackloss" and meta["versions"] == ["1"]
    assert meta["parameters"]["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert meta["parameters"]["version"] == "1"
    assert server.request("GET", "/v2/models/pomona")[0] == 404
    assert create_app(model, name="crops").name == "crops"  # --name still wins


def test_plain_onnx_model_is_served_as_pomona(tmp_path: Path) -> None:
    path = make_linear_onnx(tmp_path / "model.onnx", extra_metadata={})
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    proto.graph.name = "some_graph"
    onnx.save(proto, str(path))
    assert create_app(path, check_manifest=False).name == "pomona"


# -- tritonclient -----------------------------------------------------------------------------


def test_tritonclient_reads_the_model_config(server: Server) -> None:
    client = httpclient.InferenceServerClient(url=server.url)
    try:
        config = client.get_model_config("stackloss")
        assert config["name"] == "stackloss" and config["platform"] == "onnxruntime_onnx"
        assert config["max_batch_size"] == 0
        assert config["input"] == [
            {"name": "features", "data_type": "TYPE_FP32", "format": "FORMAT_NONE", "dims": [-1, 3]}
        ]
        output = {"name": "predictions", "data_type": "TYPE_FP32", "dims": [-1, 2]}
        assert config["output"] == [output]
        assert client.get_model_config("stackloss", model_version="1") == config
        with pytest.raises(InferenceServerException, match="unknown model"):
            client.get_model_config("other")
        meta = client.get_model_metadata("stackloss")
        assert len(meta["parameters"]["sha256"]) == 64
    finally:
        client.close()


# -- KServe's InferenceRESTClient ---------------------------------------------------------------


def _kserve_python() -> Path:
    if KSERVE_PYTHON.exists():
        return KSERVE_PYTHON
    reason = f"KServe's client is not installed at {KSERVE_PYTHON} (make install-kserve)"
    if os.environ.get(ALL_EXTRAS_VARIABLE) == "1":
        pytest.fail(f"{reason}, but {ALL_EXTRAS_VARIABLE}=1 says every extra is installed")
    pytest.skip(reason)


def test_kserve_rest_client_health_and_infer(server: Server, model: Path) -> None:
    python = _kserve_python()
    x = np.random.default_rng(3).normal(size=(7, 3)).astype(np.float32)
    result = subprocess.run(
        [str(python), str(KSERVE_SCRIPT), f"http://{server.url}", "stackloss"],
        input=json.dumps({"rows": x.tolist()}),
        capture_output=True,
        text=True,
        check=False,
        timeout=SUBPROCESS_TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    answers = json.loads(result.stdout)
    assert answers["live"] is True and answers["ready"] is True
    assert answers["model_ready"] is True and answers["other_model_ready"] is False
    expected = Predictor(model).predict(x)
    for key in ("json", "binary"):
        answer = answers[key]
        assert answer["id"] == "kserve" and answer["model_name"] == "stackloss"
        assert answer["output"] == "predictions"
        np.testing.assert_array_equal(np.array(answer["predictions"], dtype=np.float32), expected)


def test_health_bodies_say_live_and_ready(server: Server) -> None:
    assert json.loads(server.request("GET", "/v2/health/live")[2]) == {"live": True}
    assert json.loads(server.request("GET", "/v2/health/ready")[2]) == {"ready": True}


# -- bearer token -------------------------------------------------------------------------------


def test_token_guards_every_route_but_health(model: Path, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    srv = Server(model, tmp_path / "serve.log", "--auth-token-file", str(token_file))
    good = {"Authorization": "Bearer s3cret-token"}
    try:
        assert srv.request("GET", "/v2/health/live")[0] == 200
        assert srv.request("GET", "/v2/health/ready")[0] == 200
        for path in ("/v2", "/v2/models/stackloss", "/metrics", "/v2/models/stackloss/config"):
            status, headers, body = srv.request("GET", path)
            assert status == 401, (path, body)
            assert headers["www-authenticate"].startswith("Bearer")
            assert "Authorization" in json.loads(body)["error"]
            assert srv.request("GET", path, headers={"Authorization": "Bearer wrong"})[0] == 401
            assert srv.request("GET", path, headers=good)[0] == 200
        infer = INFER.replace("pomona", "stackloss")
        assert srv.request("POST", infer, doc(inputs=[ONE]))[0] == 401
        client = httpclient.InferenceServerClient(url=srv.url)
        try:
            with pytest.raises(InferenceServerException, match="bearer token"):
                client.get_model_metadata("stackloss", headers={"Authorization": "Bearer x"})
            assert client.get_model_metadata("stackloss", headers=good)["name"] == "stackloss"
        finally:
            client.close()
    finally:
        assert srv.stop() == 0


def test_token_from_the_environment(model: Path, tmp_path: Path) -> None:
    env = {"POMONA_AUTH_TOKEN": "from-env"}
    srv = Server(model, tmp_path / "serve.log", env=env)
    try:
        assert srv.request("GET", "/v2")[0] == 401
        assert srv.request("GET", "/v2", headers={"Authorization": "Bearer from-env"})[0] == 200
    finally:
        assert srv.stop() == 0


def test_network_address_without_a_token_needs_no_auth(model: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "POMONA_AUTH_TOKEN"}
    result = run_pomona("serve", model, "--host", "0.0.0.0", env=env)
    assert result.returncode == 2
    assert "--no-auth" in result.stderr and "Traceback" not in result.stderr
    empty = tmp_path / "empty"
    empty.write_text("\n")
    result = run_pomona("serve", model, "--auth-token-file", empty, env=env)
    assert result.returncode == 2 and "is empty" in result.stderr


# -- CORS ------------------------------------------------------------------------------------


def test_cors_is_off_unless_origins_are_listed(model: Path) -> None:
    plain = create_app(model)
    answer = call(plain, "GET", "/v2", None, {"Origin": "https://app.example"})
    assert answer.status == 200 and "access-control-allow-origin" not in answer.headers
    assert call(plain, "OPTIONS", "/v2", None, {"Origin": "https://app.example"}).status == 405


def test_cors_answers_listed_origins_only(model: Path) -> None:
    access = AccessPolicy("tok", ["https://app.example"])
    app = create_app(model, access=access)
    preflight = call(
        app,
        "OPTIONS",
        "/v2/models/stackloss/infer",
        None,
        {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status == 204  # no token needed: browsers send none with a preflight
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert "authorization" in preflight.headers["access-control-allow-headers"]
    headers = {"Origin": "https://app.example", "Authorization": "Bearer tok"}
    answer = call(app, "GET", "/v2", None, headers)
    assert answer.status == 200
    assert answer.headers["access-control-allow-origin"] == "https://app.example"
    assert answer.headers["vary"] == "origin"
    other = {"Origin": "https://evil.example", "Authorization": "Bearer tok"}
    answer = call(app, "GET", "/v2", None, other)
    assert answer.status == 200 and "access-control-allow-origin" not in answer.headers
    assert call(app, "OPTIONS", "/v2", None, {"Origin": "https://evil.example"}).status == 401
    denied = call(app, "GET", "/v2", None, {"Origin": "https://app.example"})
    assert denied.status == 401  # a listed origin still needs the token
    assert denied.headers["access-control-allow-origin"] == "https://app.example"


def test_cors_over_a_socket(model: Path, tmp_path: Path) -> None:
    srv = Server(model, tmp_path / "serve.log", "--cors-origin", "*")
    try:
        status, headers, _ = srv.request("GET", "/v2", headers={"Origin": "https://any.example"})
        assert status == 200 and headers["access-control-allow-origin"] == "*"
    finally:
        assert srv.stop() == 0
