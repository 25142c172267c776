"""Hot swap under load: versions published into a polled repository while clients infer.

Clients over REST (tritonclient.http) and gRPC (tritonclient.grpc) infer without pause
on the unversioned model while, in turn: a new version is published (staged, then
renamed, as ``pomona export`` does); a version folder is written in place, file by
file, manifest last; a broken version is published. No request may fail, the server
stays ready, and every response comes from exactly one version: the version it names
is the one whose outputs it carries.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tests.runtime.serve.repo_cases import (
    make_repository,
    publish_broken,
    publish_version,
    which_version,
    write_manifest,
    write_version,
)
from tests.runtime.serve.test_grpc import GrpcServer

X = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)
_WAIT_STEPS = 2400  # x 0.05 s: how long a swap may take to show before the test fails


class Load:
    """Client threads inferring on ``apples`` until stopped; what each response said."""

    def __init__(self, server: GrpcServer) -> None:
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.versions: Counter[int] = Counter()
        self.latest = 0
        self.failures: list[str] = []
        clients: list[tuple[Any, str, Callable[[Any], str]]] = [
            (httpclient, server.url, lambda response: response["model_version"]),
            (grpcclient, server.grpc_url, lambda response: response.model_version),
        ]
        self.threads = [  # two threads per protocol, each with its own client
            threading.Thread(target=self._run, args=(self._client(*client),))
            for client in clients
            for _ in range(2)
        ]

    @staticmethod
    def _client(
        module: Any, url: str, version_of: Callable[[Any], str]
    ) -> Callable[[], tuple[str, np.ndarray, bool]]:
        """One request after another through ``module`` (tritonclient.http or .grpc)."""
        client = module.InferenceServerClient(url)

        def call() -> tuple[str, np.ndarray, bool]:
            tensor = module.InferInput("features", [1, 3], "FP32")
            tensor.set_data_from_numpy(X)
            result = client.infer("apples", [tensor])
            ready = client.is_server_ready() and client.is_model_ready("apples")
            return version_of(result.get_response()), result.as_numpy("predictions"), ready

        return call

    def _run(self, call: Callable[[], tuple[str, np.ndarray, bool]]) -> None:
        while not self.stop.is_set():
            try:
                named, predictions, ready = call()
                version = which_version("apples", predictions, X)
                if str(version) != named:
                    raise AssertionError(f"says version {named}, answers as version {version}")
                if not ready:
                    raise AssertionError("the server or the model was not ready")
            except Exception as err:
                with self.lock:
                    self.failures.append(f"{type(err).__name__}: {err}")
                continue
            with self.lock:
                self.versions[version] += 1
                self.latest = version

    def count(self) -> int:
        with self.lock:
            return sum(self.versions.values())

    def wait_for(self, what: str, done: Callable[[], bool]) -> None:
        """Let the load run until ``done()`` holds (and a few more requests go through)."""
        for _ in range(_WAIT_STEPS):
            if done():
                start = self.count()
                while self.count() < start + 20 and not self.failures:
                    time.sleep(0.01)
                return
            time.sleep(0.05)
        raise AssertionError(f"{what} never happened; failures: {self.failures[:3]}")


def test_publishing_under_load_swaps_versions_without_a_failed_request(tmp_path: Path) -> None:
    repo = make_repository(tmp_path / "repo", (1,))
    server = GrpcServer(repo, tmp_path / "server.log", "--poll", "0.05")
    load = Load(server)
    for thread in load.threads:
        thread.start()
    try:
        load.wait_for("the first responses", lambda: load.count() > 20)
        publish_version(repo, "apples", 2)
        load.wait_for("the swap to version 2", lambda: load.latest == 2)

        # A version folder written in place: never served before its manifest is there.
        folder = write_version(repo / "apples" / "3", "apples", 3, manifest=False)
        load.wait_for("a scan of version 3", lambda: "version 3 pending" in _log(server))
        write_manifest(folder)
        load.wait_for("the swap to version 3", lambda: load.latest == 3)

        publish_broken(repo, "apples", 4)
        load.wait_for("version 4 refused", lambda: "version 4 refused" in _log(server))
    finally:
        load.stop.set()
        for thread in load.threads:
            thread.join()
        stopped = server.stop()
    assert load.failures == []
    assert stopped == 0
    assert set(load.versions) == {1, 2, 3}
    assert load.latest == 3
    assert "apples version 4 refused" in _log(server)
    assert "still serving version 3" in _log(server)


def _log(server: GrpcServer) -> str:
    return server.log.read_text()
