"""The model repository: scanning, version policies, pending and refused versions, swaps."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import pytest

from pomona.runtime.artifacts import MANIFEST_FILE, ONNX_FILE
from pomona.runtime.errors import ArtifactError
from pomona.runtime.files import file_sha256
from pomona.runtime.serve.app import load_predictor
from pomona.runtime.serve.codec import RequestError
from pomona.runtime.serve.model_info import model_metadata
from pomona.runtime.serve.repository import ModelRepository
from pomona.runtime.serve.snapshot import PendingError, VersionPolicy, check_version_folder
from tests.runtime.serve.repo_cases import (
    make_repository,
    publish_broken,
    publish_version,
    which_version,
    write_version,
)

X = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)


def _repo(root: Path, **options: object) -> ModelRepository:
    return ModelRepository(root, loader=load_predictor, **options)  # type: ignore[arg-type]


def _served(repo: ModelRepository) -> dict[str, list[str]]:
    snapshot = repo.snapshot
    return {name: snapshot.versions(name) for name in snapshot.models}


def _answer(repo: ModelRepository, name: str, version: str | None = None) -> int:
    model = repo.snapshot.get(name, version)
    return which_version(name, model.predictor.predict(X), X)


@pytest.mark.parametrize(
    ("policy", "served"),
    [("latest", ["3"]), ("latest:2", ["2", "3"]), ("all", ["1", "2", "3"]),
     ("specific:1,3", ["1", "3"]), ("specific:2,7", ["2"])],
)  # fmt: skip
def test_version_policies(tmp_path: Path, policy: str, served: list[str]) -> None:
    repo = _repo(make_repository(tmp_path, (1, 2, 3)), policy=VersionPolicy.parse(policy))
    assert _served(repo) == {"apples": served, "oranges": served}
    for name in ("apples", "oranges"):
        assert _answer(repo, name) == int(served[-1])
        for version in served:
            assert _answer(repo, name, version) == int(version)


@pytest.mark.parametrize("text", ["", "latest:0", "latest:x", "all:2", "specific", "specific:0"])
def test_bad_policies_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"use latest, latest:N, all, or specific"):
        VersionPolicy.parse(text)


def test_unknown_models_and_versions_are_404_with_what_is_served(tmp_path: Path) -> None:
    repo = _repo(make_repository(tmp_path))
    with pytest.raises(RequestError) as caught:
        repo.snapshot.get("pears")
    assert caught.value.http_status == 404
    assert str(caught.value) == "unknown model 'pears'; this server serves: apples, oranges"
    with pytest.raises(RequestError) as caught:
        repo.snapshot.get("apples", "1")
    assert caught.value.http_status == 404
    assert str(caught.value) == "version '1' of model 'apples' is not ready; ready: 2"


def test_versions_are_listed_and_known_by_their_model_sha256(tmp_path: Path) -> None:
    repo = _repo(make_repository(tmp_path), policy=VersionPolicy.parse("all"))
    model = repo.snapshot.get("apples", "1")
    assert repo.snapshot.versions("apples") == ["1", "2"]
    assert model.digest == file_sha256(tmp_path / "apples" / "1" / ONNX_FILE)
    meta = model_metadata(model.predictor, "apples", model.version, model.digest)
    assert meta["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 3]}]


def test_a_folder_being_written_is_pending_until_its_manifest_vouches_for_it(
    tmp_path: Path,
) -> None:
    repo = _repo(make_repository(tmp_path, (1,)))
    folder = write_version(tmp_path / "apples" / "2", "apples", 2, manifest=False)
    with pytest.raises(PendingError, match=r"no manifest\.json yet"):
        check_version_folder(folder)
    repo.refresh()
    assert _served(repo)["apples"] == ["1"]
    # The manifest is there but lists a file not yet copied.
    (folder / MANIFEST_FILE).write_text(
        '{"artifacts": {"model.onnx": {"sha256": "0"}, "model.pt": {"sha256": "0"}}}'
    )
    with pytest.raises(PendingError, match=r"model\.pt listed in manifest\.json is not there yet"):
        check_version_folder(folder)
    repo.refresh()
    assert _served(repo)["apples"] == ["1"]
    write_version(folder, "apples", 2)
    before = repo.snapshot
    repo.refresh()
    assert _served(repo)["apples"] == ["2"]
    assert _answer(repo, "apples") == 2
    # The other model's version was reused, not reloaded.
    assert repo.snapshot.get("oranges") is before.get("oranges")


def test_a_broken_version_is_refused_once_with_its_reason_and_the_old_keeps_serving(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    repo = _repo(make_repository(tmp_path, (1,)))
    served = repo.snapshot.get("apples")
    publish_broken(tmp_path, "apples", 2)
    with caplog.at_level(logging.INFO, logger="pomona.serve"):
        repo.refresh()
        repo.refresh()
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 1
    assert refusals[0].startswith("model apples version 2 refused: ")
    assert "not a valid ONNX model" in refusals[0]
    assert refusals[0].endswith("; still serving version 1")
    assert repo.snapshot.get("apples") is served
    assert {"name": "apples", "version": "2", "state": "UNAVAILABLE"}.items() <= next(
        row for row in repo.index() if row["version"] == "2" and row["name"] == "apples"
    ).items()
    # A fixed version 2 (a new manifest) is tried again and served.
    publish_version(tmp_path / "fixed", "apples", 2)
    (tmp_path / "apples" / "2" / ONNX_FILE).write_bytes(
        (tmp_path / "fixed" / "apples" / "2" / ONNX_FILE).read_bytes()
    )
    (tmp_path / "fixed" / "apples" / "2" / MANIFEST_FILE).replace(
        tmp_path / "apples" / "2" / MANIFEST_FILE
    )
    repo.refresh()
    assert _answer(repo, "apples") == 2


def test_a_model_that_differs_from_its_manifest_is_refused(tmp_path: Path) -> None:
    folder = publish_version(tmp_path, "apples", 1)
    write_version(tmp_path / "other", "apples", 5, manifest=False)
    (tmp_path / "other" / ONNX_FILE).replace(folder / ONNX_FILE)
    with pytest.raises(ArtifactError, match=r"model\.onnx differs from manifest\.json"):
        check_version_folder(folder)
    assert _served(_repo(tmp_path)) == {}


def test_unreadable_manifests_are_refused(tmp_path: Path) -> None:
    folder = publish_version(tmp_path, "apples", 1)
    (folder / MANIFEST_FILE).write_text("{")
    with pytest.raises(ArtifactError, match=r"unreadable manifest\.json"):
        check_version_folder(folder)
    (folder / MANIFEST_FILE).write_text('{"artifacts": {"model.pt": {"sha256": "0"}}}')
    with pytest.raises(ArtifactError, match=r"does not list model\.onnx"):
        check_version_folder(folder)


def test_latest_falls_back_to_the_newest_version_that_loads(tmp_path: Path) -> None:
    make_repository(tmp_path, (1,))
    publish_broken(tmp_path, "apples", 2)
    repo = _repo(tmp_path)
    assert _served(repo) == {"apples": ["1"], "oranges": ["1"]}


def test_removed_versions_and_models_stop_being_served(tmp_path: Path) -> None:
    repo = _repo(make_repository(tmp_path), policy=VersionPolicy.parse("all"))
    old = repo.snapshot.get("apples", "2")
    (tmp_path / "apples" / "2").rename(tmp_path / "apples" / ".gone")
    (tmp_path / "oranges").rename(tmp_path / ".oranges")
    repo.refresh()
    assert _served(repo) == {"apples": ["1"]}
    # Whoever still holds the old version can finish with it.
    assert which_version("apples", old.predictor.predict(X), X) == 2


def test_explicit_model_control_loads_and_unloads_on_request(tmp_path: Path) -> None:
    repo = _repo(make_repository(tmp_path), explicit=True, startup_models=["oranges"])
    assert _served(repo) == {"oranges": ["2"]}
    repo.load("apples")
    assert _served(repo) == {"apples": ["2"], "oranges": ["2"]}
    repo.unload("oranges")
    repo.refresh()
    assert _served(repo) == {"apples": ["2"]}
    assert [row["state"] for row in repo.index() if row["name"] == "oranges"] == [
        "UNAVAILABLE",
        "UNAVAILABLE",
    ]
    with pytest.raises(RequestError, match=r"no model 'pears' in the repository") as caught:
        repo.load("pears")
    assert caught.value.http_status == 404
    publish_broken(tmp_path, "pears", 1)
    with pytest.raises(RequestError, match=r"failed to load model 'pears': .*not a valid ONNX"):
        repo.load("pears")


def test_polling_publishes_a_new_version(tmp_path: Path) -> None:
    repo = _repo(make_repository(tmp_path, (1,)))
    swapped = threading.Event()
    original = repo.refresh

    def refresh(names: object = None) -> object:
        snapshot = original()
        if "2" in snapshot.versions("apples"):
            swapped.set()
        return snapshot

    repo.refresh = refresh  # type: ignore[method-assign]
    repo.start_polling(0.01)
    try:
        publish_version(tmp_path, "apples", 2)
        assert swapped.wait(120), "the poll never picked up version 2"
    finally:
        repo.stop()
    assert _answer(repo, "apples") == 2


def test_a_missing_repository_folder_is_an_artifact_error(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match=r"model repository folder does not exist"):
        _repo(tmp_path / "nope")
