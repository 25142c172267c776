"""``pomona export`` end to end: files, ONNX graph and metadata, manifest, reproducibility."""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import socket
from importlib import metadata
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from pomona.export import BATCH_SIZES, ExportResult, export_checkpoint
from pomona.export.equivalence import NUMPY_CHECK
from pomona.export.torchscript import load_torchscript
from pomona.runtime.artifacts import (
    ATOL,
    CHECKPOINT_FILE,
    FEATURE_NAMES_KEY,
    FORMAT_KEY,
    FORMAT_VERSION,
    INPUT_NAME,
    MANIFEST_FILE,
    ONNX_FILE,
    OUTPUT_NAME,
    RTOL,
    TARGET_NAMES_KEY,
    TORCHSCRIPT_FILE,
    TRAINING_KEY,
)
from pomona.train.checkpoint import load_checkpoint, model_from_checkpoint
from tests.conftest import REPO
from tests.export.checkpoints import CROP_FEATURES, CROP_TARGETS
from tests.export.conftest import CliExport

ARTIFACTS = (ONNX_FILE, TORCHSCRIPT_FILE, MANIFEST_FILE)


def test_cli_writes_the_artifacts_and_reports(linear_cli_export: CliExport) -> None:
    assert sorted(p.name for p in linear_cli_export.out.iterdir()) == sorted(ARTIFACTS)
    stderr = linear_cli_export.process.stderr
    assert "Traceback" not in stderr
    assert "ONNX graph: Gemm" in stderr
    assert "15 training + 10240 random rows" in stderr
    report_lines = [line for line in stderr.splitlines() if "max abs diff" in line]
    assert len(report_lines) == 3  # model.pt, model.onnx on onnxruntime and on numpy
    names = [line.split("  max abs diff")[0].strip() for line in report_lines]
    assert sorted(names) == sorted([TORCHSCRIPT_FILE, ONNX_FILE, NUMPY_CHECK])
    assert all(line.rstrip().endswith("ok") for line in report_lines)


def test_linear_onnx_is_one_gemm_with_the_contract_interface(linear_cli_export: CliExport) -> None:
    model = onnx.load(str(linear_cli_export.out / ONNX_FILE))
    onnx.checker.check_model(model, full_check=True)
    assert [node.op_type for node in model.graph.node] == ["Gemm"]
    (features,) = model.graph.input
    (predictions,) = model.graph.output
    for value, name, width in ((features, INPUT_NAME, 3), (predictions, OUTPUT_NAME, 2)):
        assert value.name == name
        assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        batch, columns = value.type.tensor_type.shape.dim
        assert batch.dim_param == "batch" and not batch.HasField("dim_value")
        assert columns.dim_value == width
    assert not any(onnx.external_data_helper.uses_external_data(t) for t in model.graph.initializer)


def test_onnx_metadata_and_no_provenance(linear_cli_export: CliExport) -> None:
    model = onnx.load(str(linear_cli_export.out / ONNX_FILE))
    meta = {entry.key: entry.value for entry in model.metadata_props}
    assert meta[FORMAT_KEY] == str(FORMAT_VERSION) == "1"
    assert json.loads(meta[FEATURE_NAMES_KEY]) == CROP_FEATURES
    assert json.loads(meta[TARGET_NAMES_KEY]) == CROP_TARGETS
    training = json.loads(meta[TRAINING_KEY])
    assert training["epochs"] == 5 and training["hidden"] == []
    assert training["final_train_loss"] == 1.25
    assert "out" not in training["config"] and "data" in training["config"]
    assert set(meta) == {FORMAT_KEY, FEATURE_NAMES_KEY, TARGET_NAMES_KEY, TRAINING_KEY}
    assert model.doc_string == "" and model.graph.doc_string == ""
    assert len(model.graph.metadata_props) == 0
    for node in model.graph.node:
        assert len(node.metadata_props) == 0 and node.doc_string == ""
    for value in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        assert len(value.metadata_props) == 0


def test_onnx_file_holds_no_path_user_or_host(linear_cli_export: CliExport) -> None:
    data = (linear_cli_export.out / ONNX_FILE).read_bytes()
    forbidden = {
        str(linear_cli_export.checkpoint.parent),
        str(linear_cli_export.out),
        str(linear_cli_export.out.parent),
        os.getcwd(),
        str(REPO),
        str(Path.home()),
        getpass.getuser(),
        socket.gethostname(),
    }
    for text in forbidden:
        if len(text) > 2:
            assert text.encode() not in data, text
    for marker in (b"stack_trace", b"site-packages", b".py", b"torch.nn.modules"):
        assert marker not in data


def test_manifest_describes_the_files(linear_cli_export: CliExport) -> None:
    out = linear_cli_export.out
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["format"] == FORMAT_VERSION == 1
    assert manifest["name"] == "pomona"
    assert manifest["feature_names"] == CROP_FEATURES
    assert manifest["target_names"] == CROP_TARGETS
    assert set(manifest["versions"]) == {"pomona", "torch", "onnx", "onnxruntime"}
    # the installed distributions' versions: a CUDA build's torch.__version__ adds "+cu130"
    assert manifest["versions"]["torch"] == metadata.version("torch")
    assert torch.__version__.startswith(manifest["versions"]["torch"])
    assert manifest["versions"]["onnxruntime"] == ort.__version__
    assert set(manifest["artifacts"]) == {ONNX_FILE, TORCHSCRIPT_FILE}
    for name, entry in manifest["artifacts"].items():
        data = (out / name).read_bytes()
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    checkpoint = manifest["checkpoint"]
    assert checkpoint["file"] == CHECKPOINT_FILE and checkpoint["epoch"] == 5
    assert (
        checkpoint["sha256"]
        == hashlib.sha256(linear_cli_export.checkpoint.read_bytes()).hexdigest()
    )
    report = manifest["equivalence"]
    assert report["passed"] is True
    assert (report["atol"], report["rtol"]) == (ATOL, RTOL)
    assert report["batch_sizes"] == list(BATCH_SIZES)
    assert report["training_rows"] == 15 and report["random_rows"] >= 10_000
    for name in (ONNX_FILE, TORCHSCRIPT_FILE, NUMPY_CHECK):
        check = report["checks"][name]
        assert check["passed"] is True
        assert check["worst_fraction_of_tolerance"] <= 1
        assert check["rows"] == report["rows"]
    assert str(out) not in (out / MANIFEST_FILE).read_text()


def test_artifacts_compute_what_the_checkpoint_computes(
    linear_cli_export: CliExport, tmp_path: Path
) -> None:
    model = model_from_checkpoint(load_checkpoint(linear_cli_export.checkpoint))
    x = np.random.default_rng(1).normal([85, 85, 55], [12, 30, 12], (64, 3)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    session = ort.InferenceSession(str(linear_cli_export.out / ONNX_FILE))
    (onnx_out,) = session.run([OUTPUT_NAME], {INPUT_NAME: x})
    scripted = load_torchscript(linear_cli_export.out / TORCHSCRIPT_FILE)
    with torch.no_grad():
        pt_out = scripted(torch.from_numpy(x)).numpy()
    scale = max(1.0, float(np.abs(expected).max()))
    for actual in (onnx_out, pt_out):
        assert actual.dtype == np.float32 and actual.shape == (64, 2)
        np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL * scale)


def test_export_is_byte_identical_when_repeated(
    linear_cli_export: CliExport, tmp_path: Path
) -> None:
    again = export_checkpoint(linear_cli_export.checkpoint, tmp_path / "again")
    for name in ARTIFACTS:
        first = (linear_cli_export.out / name).read_bytes()
        assert (again.out / name).read_bytes() == first, name


def test_default_out_is_the_checkpoint_folder_and_mlp_is_gemm_relu(
    mlp_export: ExportResult,
) -> None:
    assert sorted(p.name for p in mlp_export.out.iterdir()) == sorted([CHECKPOINT_FILE, *ARTIFACTS])
    assert mlp_export.onnx_ops == ("Gemm", "Relu", "Gemm", "Relu", "Gemm")
    model = onnx.load(str(mlp_export.out / ONNX_FILE))
    onnx.checker.check_model(model, full_check=True)
    training = json.loads({e.key: e.value for e in model.metadata_props}[TRAINING_KEY])
    assert training["hidden"] == [16, 16]
    assert mlp_export.report.passed
    checks = {check.artifact for check in mlp_export.report.checks}
    assert checks == {ONNX_FILE, TORCHSCRIPT_FILE, NUMPY_CHECK}


@pytest.mark.parametrize("name", ["../escape", "a/b", ".hidden", ""])
def test_bad_model_name_is_a_usage_error(name: str, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from pomona.export.cli import export

    result = CliRunner().invoke(export, ["--checkpoint", str(tmp_path / "c.pt"), "--name", name])
    assert result.exit_code == 2
    assert "--name" in result.output
