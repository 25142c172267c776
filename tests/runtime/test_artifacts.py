"""The artifact contract: its documented values, the format check, the one manifest check."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pomona.runtime import artifacts
from pomona.runtime.artifacts import (
    FORMAT_KEY,
    MANIFEST_FILE,
    ONNX_FILE,
    ManifestCheck,
    check_format,
    check_manifest,
)
from pomona.runtime.errors import ArtifactError
from pomona.runtime.model_info import describe
from pomona.runtime.predict_cli import info
from pomona.runtime.predictor import Predictor
from tests.conftest import run_pomona
from tests.onnx_models import make_linear_onnx


def test_contract_values_are_the_documented_ones() -> None:
    """DESIGN.md, "Artifact contract (format 1)": changing one of these breaks old artifacts."""
    assert artifacts.FORMAT_VERSION == 1 and artifacts.SUPPORTED_FORMATS == ("1",)
    assert (artifacts.ONNX_FILE, artifacts.TORCHSCRIPT_FILE, artifacts.MANIFEST_FILE) == (
        "model.onnx",
        "model.pt",
        "manifest.json",
    )
    training = (
        artifacts.CHECKPOINT_FILE,
        artifacts.METRICS_FILE,
        artifacts.HISTORY_FILE,
        artifacts.PLOT_FILE,
    )
    assert training == ("checkpoint.pt", "metrics.json", "history.csv", "loss_curve.png")
    keys = (
        artifacts.FORMAT_KEY,
        artifacts.FEATURE_NAMES_KEY,
        artifacts.TARGET_NAMES_KEY,
        artifacts.TRAINING_KEY,
    )
    assert keys == (
        "pomona.format",
        "pomona.feature_names",
        "pomona.target_names",
        "pomona.training",
    )
    assert (artifacts.INPUT_NAME, artifacts.OUTPUT_NAME) == ("features", "predictions")
    assert (artifacts.ATOL, artifacts.RTOL) == (1e-5, 1e-5)


def test_allowed_difference_follows_the_rule() -> None:
    reference = np.array([[0.5, -2000.0], [-3.0, 10.0], [np.inf, 1.0]])
    scale = np.array([3.0, 2000.0])  # max(1, max |finite reference|) per column
    expected = artifacts.ATOL * scale + artifacts.RTOL * np.abs(reference)
    np.testing.assert_array_equal(artifacts.allowed_difference(reference), expected)


# -- format ------------------------------------------------------------------------------------


def test_unknown_format_is_refused_naming_both(tmp_path: Path) -> None:
    model = make_linear_onnx(tmp_path / ONNX_FILE, extra_metadata={FORMAT_KEY: "999"})
    with pytest.raises(ArtifactError) as caught:
        Predictor(model)
    message = str(caught.value)
    assert message.startswith(f"{model}: model format '999' is not supported")
    assert "this pomona reads format 1" in message


def test_info_refuses_an_unknown_format(tmp_path: Path) -> None:
    model = make_linear_onnx(tmp_path / ONNX_FILE, extra_metadata={FORMAT_KEY: "999"})
    result = run_pomona("info", model)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1
    assert "model format '999' is not supported" in result.stderr
    assert "this pomona reads format 1" in result.stderr


def test_a_model_without_the_format_key_is_accepted(tmp_path: Path) -> None:
    model = make_linear_onnx(tmp_path / ONNX_FILE)
    metadata = Predictor(model).metadata
    check_format({key: value for key, value in metadata.items() if key != FORMAT_KEY}, model)
    check_format(metadata, model)
    with pytest.raises(ArtifactError, match="'2' is not supported"):
        check_format({**metadata, FORMAT_KEY: "2"}, model)


# -- the manifest check ------------------------------------------------------------------------


def _sha256(model: Path) -> str:
    return hashlib.sha256(model.read_bytes()).hexdigest()


def _manifest(model: Path, text: str | None) -> None:
    if text is not None:
        (model.parent / MANIFEST_FILE).write_text(text)


# name -> (manifest text given the model's sha256, or None for no file; expected status)
MANIFESTS: dict[str, tuple[Callable[[str], str | None], str]] = {
    "ok": (lambda sha: json.dumps({"artifacts": {ONNX_FILE: {"sha256": sha}}}), "ok"),
    "no-file": (lambda sha: None, "none"),
    "other-files": (lambda sha: json.dumps({"artifacts": {"x.onnx": {"sha256": sha}}}), "none"),
    "mismatch": (
        lambda sha: json.dumps({"artifacts": {ONNX_FILE: {"sha256": "0" * 64}}}),
        "mismatch",
    ),
    "not-json": (lambda sha: "{not json", "unreadable"),
    "empty-object": (lambda sha: "{}", "unreadable"),
    "a-list": (lambda sha: "[]", "unreadable"),
    "no-sha256": (lambda sha: json.dumps({"artifacts": {ONNX_FILE: {"size": 1}}}), "unreadable"),
}


@pytest.fixture(params=list(MANIFESTS))
def case(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, str]:
    model = make_linear_onnx(tmp_path / ONNX_FILE)
    text, status = MANIFESTS[request.param]
    _manifest(model, text(_sha256(model)))
    return model, status


def test_check_manifest_status(case: tuple[Path, str]) -> None:
    model, status = case
    check = check_manifest(model)
    assert isinstance(check, ManifestCheck) and check.status == status
    assert check.refused is (status in ("mismatch", "unreadable"))
    assert check_manifest(model, _sha256(model)) == check


def test_predictor_follows_the_check(case: tuple[Path, str]) -> None:
    model, status = case
    check = check_manifest(model)
    if check.refused:
        with pytest.raises(ArtifactError) as caught:
            Predictor(model)
        assert str(caught.value).startswith(f"{model}: {check.detail}")
        assert "check_manifest=False" in str(caught.value)
    else:
        assert Predictor(model).manifest_checked is (status == "ok")
    assert Predictor(model, check_manifest=False).manifest_checked is False


def test_info_renders_the_same_check(case: tuple[Path, str]) -> None:
    model, status = case
    expected = check_manifest(model).as_dict()
    assert expected["status"] == status
    assert describe(model)["manifest"] == expected
    result = CliRunner().invoke(info, [str(model)])
    assert result.exit_code == 0, result.output
    assert f"manifest   {expected['status']}: {expected['detail']}" in result.output
