"""The whole product through its real CLI: train -> export -> info -> predict, in subprocesses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pomona.runtime.artifacts import (
    CHECKPOINT_FILE,
    MANIFEST_FILE,
    METRICS_FILE,
    ONNX_FILE,
    TORCHSCRIPT_FILE,
    allowed_difference,
)
from pomona.train.checkpoint import load_checkpoint, model_from_checkpoint
from tests.conftest import REPO, run_pomona

CROP_CSV = REPO / "train" / "data" / "crop.csv"


@pytest.fixture(scope="module", params=[(), (8, 8)], ids=["linear", "mlp"])
def artifacts(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("artifacts")
    hidden = ",".join(map(str, request.param))
    train_args = ["train", "--out", out, "--epochs", "30", "--val-fraction", "0.2"]
    if hidden:
        train_args += ["--hidden", hidden]
    trained = run_pomona(*train_args)
    assert trained.returncode == 0, trained.stderr
    exported = run_pomona("export", "--checkpoint", out / CHECKPOINT_FILE, "--out", out)
    assert exported.returncode == 0, exported.stderr
    return out


def test_artifacts_match_the_contract(artifacts: Path) -> None:
    for name in (CHECKPOINT_FILE, METRICS_FILE, ONNX_FILE, TORCHSCRIPT_FILE, MANIFEST_FILE):
        assert (artifacts / name).is_file(), name
    assert not list(artifacts.glob("*.onnx.data"))
    manifest = json.loads((artifacts / MANIFEST_FILE).read_text())
    assert manifest["feature_names"] == ["temp", "rainfall", "humidity"]
    assert manifest["target_names"] == ["apples", "oranges"]


def test_info_reports_a_matching_manifest(artifacts: Path) -> None:
    info = run_pomona("info", artifacts / ONNX_FILE)
    assert info.returncode == 0, info.stderr
    for word in ("temp", "rainfall", "humidity", "apples", "oranges"):
        assert word in info.stdout
    shown = run_pomona("info", artifacts / ONNX_FILE, "--json")
    assert shown.returncode == 0, shown.stderr
    facts = json.loads(shown.stdout)
    assert facts["manifest"]["status"] == "ok", facts["manifest"]
    assert facts["feature_names"] == ["temp", "rainfall", "humidity"]
    assert facts["target_names"] == ["apples", "oranges"]
    recorded = json.loads((artifacts / MANIFEST_FILE).read_text())["artifacts"][ONNX_FILE]
    assert facts["sha256"] == recorded["sha256"]


def test_predict_agrees_with_the_trained_model(artifacts: Path, tmp_path: Path) -> None:
    output = tmp_path / "predictions.csv"
    done = run_pomona("predict", artifacts / ONNX_FILE, CROP_CSV, "-o", output)
    assert done.returncode == 0, done.stderr

    table = np.genfromtxt(output, delimiter=",", names=True)
    predicted = np.column_stack([table["apples"], table["oranges"]])
    rows = np.loadtxt(CROP_CSV, delimiter=",", skiprows=1, dtype=np.float32)
    model = model_from_checkpoint(load_checkpoint(artifacts / CHECKPOINT_FILE))
    with torch.no_grad():
        eager = model(torch.from_numpy(rows[:, :3])).numpy()
    assert predicted.shape == eager.shape
    assert np.all(np.abs(predicted - eager) <= allowed_difference(eager))
