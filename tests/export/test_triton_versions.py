"""``pomona export --triton-repo`` publishes whole, numbered versions that the server loads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pomona.export import export_checkpoint
from pomona.export.triton import next_version
from pomona.runtime.artifacts import CHECKPOINT_FILE, MANIFEST_FILE, ONNX_FILE, TORCHSCRIPT_FILE
from pomona.runtime.predictor import Predictor
from pomona.runtime.serve.app import load_predictor
from pomona.runtime.serve.repository import ModelRepository
from pomona.runtime.serve.snapshot import VersionPolicy, check_version_folder
from tests.conftest import run_pomona
from tests.export.checkpoints import crop_checkpoint

X = np.array([[80.0, 70.0, 40.0]], dtype=np.float32)


def test_each_export_adds_the_next_version_and_serve_loads_them(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    outs = []
    for seed in (1, 2):
        checkpoint = crop_checkpoint(tmp_path / f"run{seed}" / CHECKPOINT_FILE, seed=seed)
        out = tmp_path / f"out{seed}"
        result = run_pomona(
            "export", "--checkpoint", checkpoint, "--out", out, "--triton-repo", repo
        )
        assert result.returncode == 0, result.stderr
        outs.append(out)
    model_dir = repo / "pomona"
    assert sorted(p.name for p in model_dir.iterdir()) == ["1", "2", "config.pbtxt"]
    assert next_version(model_dir) == 3
    for version, out in zip(("1", "2"), outs, strict=True):
        folder = model_dir / version
        assert sorted(p.name for p in folder.iterdir()) == [
            MANIFEST_FILE,
            ONNX_FILE,
            TORCHSCRIPT_FILE,
        ]
        for name in (MANIFEST_FILE, ONNX_FILE, TORCHSCRIPT_FILE):
            assert (folder / name).read_bytes() == (out / name).read_bytes()
        check_version_folder(folder)
    served = ModelRepository(repo, loader=load_predictor, policy=VersionPolicy.parse("all"))
    assert served.snapshot.versions("pomona") == ["1", "2"]
    for version, out in zip(("1", "2"), outs, strict=True):
        expected = Predictor(out / ONNX_FILE).predict(X)
        got = served.snapshot.get("pomona", version).predictor.predict(X)
        np.testing.assert_array_equal(got, expected)


def test_an_explicit_version_replaces_that_folder_whole(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    first = crop_checkpoint(tmp_path / "a" / CHECKPOINT_FILE, seed=1)
    second = crop_checkpoint(tmp_path / "b" / CHECKPOINT_FILE, seed=2)
    export_checkpoint(first, tmp_path / "out1", triton_repo=repo, triton_version=5)
    result = export_checkpoint(second, tmp_path / "out2", triton_repo=repo, triton_version=5)
    folder = repo / "pomona" / "5"
    assert sorted(p.name for p in (repo / "pomona").iterdir()) == ["5", "config.pbtxt"]
    assert (folder / ONNX_FILE).read_bytes() == (tmp_path / "out2" / ONNX_FILE).read_bytes()
    assert folder / ONNX_FILE in result.files
    check_version_folder(folder)


@pytest.mark.parametrize("version", ["0", "x"])
def test_bad_versions_are_usage_errors(tmp_path: Path, version: str) -> None:
    result = run_pomona("export", "--triton-repo", tmp_path, "--triton-version", version)
    assert result.returncode == 2
    assert "--triton-version" in result.stderr
