"""Fixtures of the serving tests over real sockets: a model and a server on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.onnx_models import make_linear_onnx
from tests.runtime.serve.cases import MAX_BODY
from tests.runtime.serve.test_socket import Server


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_linear_onnx(tmp_path_factory.mktemp("model") / "model.onnx")


@pytest.fixture(scope="module")
def server(model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``pomona serve`` with a small ``--max-body-size`` (``MAX_BODY``), for one test module."""
    log = tmp_path_factory.mktemp("log") / "serve.log"
    srv = Server(model, log, "--max-body-size", str(MAX_BODY), "--log-level", "warning")
    yield srv
    assert srv.stop() == 0, log.read_text()
    assert "Traceback" not in log.read_text()
