"""``pomona export --ort``: model.ort and required_operators.config, checked and listed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from pomona.export import ExportResult, export_checkpoint
from pomona.export import ort as ort_module
from pomona.export.equivalence import NUMPY_CHECK
from pomona.runtime.artifacts import (
    MANIFEST_FILE,
    ONNX_FILE,
    ORT_CONFIG_FILE,
    ORT_FILE,
    TORCHSCRIPT_FILE,
)
from pomona.runtime.errors import ArtifactError
from pomona.runtime.predictor import Predictor
from tests.conftest import run_pomona
from tests.export.checkpoints import crop_checkpoint


@pytest.fixture(scope="module")
def ort_export(tmp_path_factory: pytest.TempPathFactory) -> ExportResult:
    root = tmp_path_factory.mktemp("ort")
    checkpoint = crop_checkpoint(root / "run" / "checkpoint.pt", hidden=(8,), seed=2)
    return export_checkpoint(checkpoint, root / "out", ort=True)


def test_ort_files_are_written_checked_and_listed(ort_export: ExportResult) -> None:
    out = ort_export.out
    names = [path.name for path in ort_export.files]
    assert names == [ONNX_FILE, TORCHSCRIPT_FILE, ORT_FILE, ORT_CONFIG_FILE, MANIFEST_FILE]
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    for name in (ORT_FILE, ORT_CONFIG_FILE):
        data = (out / name).read_bytes()
        assert manifest["artifacts"][name] == {
            "sha256": hashlib.sha256(data).hexdigest(),
            "size": len(data),
        }
    checks = manifest["equivalence"]["checks"]
    assert set(checks) == {ONNX_FILE, TORCHSCRIPT_FILE, NUMPY_CHECK, ORT_FILE}
    assert all(check["passed"] for check in checks.values())


def test_required_operators_config_lists_the_ops_and_no_path(ort_export: ExportResult) -> None:
    config = (ort_export.out / ORT_CONFIG_FILE).read_text()
    lines = config.splitlines()
    assert f"# - {ORT_FILE}" in lines
    ops = [line for line in lines if line and not line.startswith("#")]
    assert ops and all(line.count(";") == 2 for line in ops)  # domain;opset;op,op
    assert any("Gemm" in line for line in ops)
    assert str(ort_export.out) not in config and "/tmp" not in config


def test_runtime_loads_the_ort_model(ort_export: ExportResult) -> None:
    x = np.random.default_rng(0).uniform(0, 150, (100, 3)).astype(np.float32)
    ort = Predictor(ort_export.out / ORT_FILE)
    assert ort.backend == "onnxruntime" and ort.manifest_checked
    onnx = Predictor(ort_export.out / ONNX_FILE)
    assert ort.feature_names == onnx.feature_names and ort.target_names == onnx.target_names
    np.testing.assert_allclose(ort.predict(x), onnx.predict(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ArtifactError, match=r"numpy backend reads \.onnx files"):
        Predictor(ort_export.out / ORT_FILE, backend="numpy")


def test_info_names_the_ort_format_instead_of_an_onnx_header(ort_export: ExportResult) -> None:
    shown = run_pomona("info", str(ort_export.out / ORT_FILE))
    assert shown.returncode == 0, shown.stderr
    assert "format     ORT (onnxruntime's own format" in shown.stdout
    assert "IR None" not in shown.stdout and "ir/opset" not in shown.stdout
    onnx = run_pomona("info", str(ort_export.out / ONNX_FILE))
    assert "ir/opset   IR " in onnx.stdout and "opset ai.onnx" in onnx.stdout


def test_a_failing_converter_writes_nothing(
    ort_export: ExportResult, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ort_module, "CONVERTER", "pomona_no_such_converter")
    checkpoint = crop_checkpoint(tmp_path / "checkpoint.pt")
    with pytest.raises(ArtifactError, match=f"cannot write {ORT_FILE}: "):
        export_checkpoint(checkpoint, tmp_path / "out", ort=True)
    assert not (tmp_path / "out").exists()


def test_cli_flag(tmp_path: Path) -> None:
    shown = run_pomona("export", "--help")
    assert "--ort" in shown.stdout and ORT_CONFIG_FILE in " ".join(shown.stdout.split())
    checkpoint = crop_checkpoint(tmp_path / "checkpoint.pt")
    result = run_pomona("export", "--checkpoint", checkpoint, "--ort")
    assert result.returncode == 0, result.stderr
    assert f"  {ORT_FILE}  " in result.stderr and (tmp_path / ORT_FILE).is_file()


def test_export_runs_model_onnx_on_the_numpy_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Export loads model.onnx with the numpy backend too: a model it refuses is not written."""
    from pomona.runtime.backends import numpy_backend

    without_relu = {op: a for op, a in numpy_backend.SUPPORTED_OPS.items() if op != "Relu"}
    monkeypatch.setattr(numpy_backend, "SUPPORTED_OPS", without_relu)
    checkpoint = crop_checkpoint(tmp_path / "checkpoint.pt", hidden=(4,))
    with pytest.raises(ArtifactError) as caught:
        export_checkpoint(checkpoint, tmp_path / "out")
    assert str(caught.value).startswith(
        f"the runtime's numpy backend refuses the exported {ONNX_FILE}: "
        "the numpy backend cannot run this model: operator 'Relu'"
    )
    assert not (tmp_path / "out").exists()
