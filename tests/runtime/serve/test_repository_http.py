"""``pomona serve REPO`` over real sockets: two models, two versions each, tritonclient.http."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.conftest import run_pomona
from tests.onnx_models import make_linear_onnx
from tests.runtime.serve.repo_cases import (
    MODELS,
    make_repository,
    publish_broken,
    publish_version,
    which_version,
)
from tests.runtime.serve.test_socket import Server

X = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=np.float32)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_repository(tmp_path_factory.mktemp("repo"))
    publish_broken(root, "oranges", 3)
    return root


@pytest.fixture(scope="module")
def server(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("log") / "server.log"
    server = Server(repo, log, "--version-policy", "all")
    yield server
    assert server.stop() == 0


@pytest.fixture()
def triton(server: Server) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(server.url)
    yield client
    client.close()


def _infer(client: httpclient.InferenceServerClient, model: str, version: str = "") -> tuple:
    tensor = httpclient.InferInput("features", list(X.shape), "FP32")
    tensor.set_data_from_numpy(X, binary_data=True)
    result = client.infer(model, [tensor], model_version=version)
    response = result.get_response()
    return response["model_version"], result.as_numpy("predictions")


def test_every_model_and_version_answers_through_tritonclient(
    triton: httpclient.InferenceServerClient,
) -> None:
    assert triton.is_server_live() and triton.is_server_ready()
    for model in MODELS:
        assert triton.is_model_ready(model)
        meta = triton.get_model_metadata(model)
        assert meta["name"] == model and meta["versions"] == ["1", "2"]
        for version in ("1", "2"):
            assert triton.is_model_ready(model, version)
            answered, y = _infer(triton, model, version)
            assert answered == version and which_version(model, y, X) == int(version)
            assert triton.get_model_metadata(model, version)["parameters"]["version"] == version
        answered, y = _infer(triton, model)  # unversioned: the latest ready
        assert answered == "2" and which_version(model, y, X) == 2


def test_a_version_not_ready_is_404_and_the_broken_one_is_not_served(
    triton: httpclient.InferenceServerClient, server: Server
) -> None:
    assert not triton.is_model_ready("oranges", "3")
    assert not triton.is_model_ready("pears")
    with pytest.raises(InferenceServerException, match="version '3' of model 'oranges' is not"):
        _infer(triton, "oranges", "3")
    with pytest.raises(InferenceServerException, match="unknown model 'pears'"):
        _infer(triton, "pears")
    assert "model oranges version 3 refused" in server.log.read_text()


def test_repository_index_lists_every_version_with_its_state(server: Server) -> None:
    status, _, body = server.request("POST", "/v2/repository/index", b"{}")
    assert status == 200
    rows = {(row["name"], row["version"]): row for row in json.loads(body)}
    assert {key: row["state"] for key, row in rows.items()} == {
        ("apples", "1"): "READY",
        ("apples", "2"): "READY",
        ("oranges", "1"): "READY",
        ("oranges", "2"): "READY",
        ("oranges", "3"): "UNAVAILABLE",
    }
    assert "not a valid ONNX model" in rows[("oranges", "3")]["reason"]
    status, _, body = server.request("POST", "/v2/repository/models/apples/unload", b"{}")
    assert status == 400
    assert "model control is off" in json.loads(body)["error"]


def test_statistics_count_each_version(
    triton: httpclient.InferenceServerClient, server: Server
) -> None:
    before = triton.get_inference_statistics("apples", "1")["model_stats"][0]
    for _ in range(3):
        _infer(triton, "apples", "1")
    stats = triton.get_inference_statistics("apples", "1")["model_stats"]
    assert [(s["name"], s["version"]) for s in stats] == [("apples", "1")]
    success = stats[0]["inference_stats"]["success"]
    assert success["count"] == before["inference_stats"]["success"]["count"] + 3
    assert int(success["ns"]) > int(before["inference_stats"]["success"]["ns"])
    assert stats[0]["inference_count"] == before["inference_count"] + 3 * len(X)
    every = triton.get_inference_statistics()["model_stats"]
    assert {(s["name"], s["version"]) for s in every} == {
        (m, v) for m in MODELS for v in ("1", "2")
    }
    status, _, body = server.request("GET", "/v2/models/apples/stats")
    assert status == 200 and len(json.loads(body)["model_stats"]) == 2


def test_explicit_model_control_loads_and_unloads_through_the_api(
    repo: Path, tmp_path: Path
) -> None:
    server = Server(repo, tmp_path / "log", "--model-control", "explicit", "--load-model", "apples")
    client = httpclient.InferenceServerClient(server.url)
    try:
        assert client.is_model_ready("apples") and not client.is_model_ready("oranges")
        client.load_model("oranges")
        assert client.is_model_ready("oranges")
        assert _infer(client, "oranges")[0] == "2"
        client.unload_model("apples")
        assert not client.is_model_ready("apples")
        with pytest.raises(InferenceServerException, match="no model 'pears'"):
            client.load_model("pears")
    finally:
        client.close()
        assert server.stop() == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--poll", "1"], "apply to a model repository (a folder), not a model file"),
        (["--version-policy", "newest"], "use latest, latest:N, all, or specific"),
    ],
)
def test_repository_options_on_a_model_file_are_usage_errors(
    tmp_path: Path, args: list[str], message: str
) -> None:
    model = make_linear_onnx(tmp_path / "model.onnx")
    result = run_pomona("serve", model, *args)
    assert result.returncode == 2
    assert message in result.stderr


def test_model_file_options_on_a_repository_are_usage_errors(repo: Path) -> None:
    result = run_pomona("serve", repo, "--name", "x")
    assert result.returncode == 2
    assert "--name applies to a model file, not a model repository" in result.stderr


def test_workers_each_serve_and_poll_the_repository(tmp_path: Path) -> None:
    repo = make_repository(tmp_path / "repo", (1,))
    server = Server(repo, tmp_path / "log", "--workers", "2", "--poll", "0.05")
    client = httpclient.InferenceServerClient(server.url)
    try:
        assert {_infer(client, "apples")[0] for _ in range(8)} == {"1"}
        publish_version(repo, "apples", 2)
        seen: list[str] = []
        for _ in range(2400):  # x 0.05 s: how long the workers may take to swap
            seen = [_infer(client, "apples")[0] for _ in range(8)]
            if seen == ["2"] * 8:
                break
            time.sleep(0.05)
        assert seen == ["2"] * 8
    finally:
        client.close()
        assert server.stop() == 0
