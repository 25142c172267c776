"""Failed exports: a clear message, a non-zero exit, and earlier artifacts left as they were."""

from __future__ import annotations

import json
import shutil
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import pomona.export.exporter as exporter
from pomona.export import EquivalenceError
from pomona.export.cli import export
from pomona.export.fold import fold_standardization
from pomona.runtime.artifacts import (
    CHECKPOINT_FILE,
    FEATURE_NAMES_KEY,
    FORMAT_KEY,
    MANIFEST_FILE,
    ONNX_FILE,
    TORCHSCRIPT_FILE,
)
from pomona.runtime.errors import ArtifactError
from tests.conftest import run_pomona
from tests.export.checkpoints import crop_checkpoint
from tests.export.conftest import CliExport


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(path.relative_to(folder)): (path.read_bytes(), path.stat().st_mtime_ns)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def _single_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("Error: ")
    return lines[0]


def _corrupt_random(path: Path) -> None:
    path.write_bytes(bytes(range(256)) * 40)


def _corrupt_truncated(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _corrupt_empty(path: Path) -> None:
    path.write_bytes(b"")


def _corrupt_text(path: Path) -> None:
    path.write_text("temp,rainfall,humidity\n1,2,3\n")


def _corrupt_zip(path: Path) -> None:
    """A zip archive with the right names but garbage inside each record."""
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    with zipfile.ZipFile(path, "w") as archive:
        for name in names:
            archive.writestr(name, b"\x80\x02garbage" * 3)


def test_corrupt_checkpoint_from_the_command_line(tmp_path: Path) -> None:
    checkpoint = crop_checkpoint(tmp_path / CHECKPOINT_FILE)
    _corrupt_random(checkpoint)
    result = run_pomona("export", "--checkpoint", checkpoint, "--out", tmp_path / "out")
    assert result.returncode == 1
    line = _single_error_line(result.stderr)
    assert "not a readable Pomona checkpoint" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "damage", [_corrupt_random, _corrupt_truncated, _corrupt_empty, _corrupt_text, _corrupt_zip]
)
def test_corrupt_checkpoint(damage: Callable[[Path], None], tmp_path: Path) -> None:
    checkpoint = crop_checkpoint(tmp_path / CHECKPOINT_FILE)
    damage(checkpoint)
    result = CliRunner().invoke(
        export, ["--checkpoint", str(checkpoint), "--out", str(tmp_path / "out")]
    )
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)
    line = _single_error_line(result.stderr)
    assert "not a readable Pomona checkpoint" in line
    assert not (tmp_path / "out").exists()


def test_missing_checkpoint(tmp_path: Path) -> None:
    result = run_pomona("export", "--checkpoint", tmp_path / "nope.pt", "--out", tmp_path / "out")
    assert result.returncode == 1
    assert "no such checkpoint" in _single_error_line(result.stderr)
    assert not (tmp_path / "out").exists()


def test_checkpoint_of_another_format(tmp_path: Path) -> None:
    checkpoint = crop_checkpoint(tmp_path / CHECKPOINT_FILE)
    state = torch.load(checkpoint, weights_only=True)
    state["format"] = 99
    torch.save(state, checkpoint)
    result = run_pomona("export", "--checkpoint", checkpoint, "--out", tmp_path / "out")
    assert result.returncode == 1
    assert "format 99 is not supported" in _single_error_line(result.stderr)
    assert not (tmp_path / "out").exists()


def _off_by_a_little(model: nn.Sequential) -> nn.Sequential:
    folded = fold_standardization(model)
    with torch.no_grad():
        folded[0].bias.add_(1e-2)
    return folded


def test_failed_equivalence_names_each_artifact_and_keeps_earlier_files(
    linear_cli_export: CliExport, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, triton = tmp_path / "out", tmp_path / "triton"
    shutil.copytree(linear_cli_export.out, out)
    shutil.copytree(linear_cli_export.triton_repo, triton)
    before_out, before_triton = _snapshot(out), _snapshot(triton)
    monkeypatch.setattr(exporter, "fold_standardization", _off_by_a_little)

    result = CliRunner().invoke(
        export,
        [
            "--checkpoint",
            str(linear_cli_export.checkpoint),
            "--out",
            str(out),
            "--triton-repo",
            str(triton),
        ],
    )

    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)
    message = result.stderr
    assert message.startswith("Error: exported artifacts differ from the trained model")
    for artifact in (f"{TORCHSCRIPT_FILE}: max abs diff", f"{ONNX_FILE}: max abs diff"):
        assert artifact in message
    assert "max rel diff" in message
    assert _snapshot(out) == before_out
    assert _snapshot(triton) == before_triton
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [MANIFEST_FILE, ONNX_FILE, TORCHSCRIPT_FILE]
    )


def test_equivalence_error_carries_the_report(
    linear_cli_export: CliExport, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(exporter, "fold_standardization", _off_by_a_little)
    with pytest.raises(EquivalenceError) as caught:
        exporter.export_checkpoint(linear_cli_export.checkpoint, tmp_path / "out")
    report = caught.value.report
    assert not report.passed
    for check in report.checks:
        assert not check.passed
        assert check.max_abs_diff == pytest.approx(1e-2, rel=1e-3)
        assert check.worst_fraction_of_tolerance > 1
    assert not (tmp_path / "out").exists()


def _metadata_with(changes: Mapping[str, str]) -> Callable[[Mapping[str, Any]], dict[str, str]]:
    original = exporter.onnx_metadata
    return lambda state: {**original(state), **changes}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {FORMAT_KEY: "999"},
            f"the runtime refuses the exported {ONNX_FILE}: model format '999' is not supported "
            "(this pomona reads format 1)",
        ),
        (
            {FEATURE_NAMES_KEY: json.dumps(["temp", "rainfall"])},
            f"the runtime refuses the exported {ONNX_FILE}: input has 3 features but metadata "
            "names 2",
        ),
        (
            {FEATURE_NAMES_KEY: json.dumps(["humidity", "rainfall", "temp"])},
            f"{ONNX_FILE} has the wrong interface: input names are ['humidity', 'rainfall', "
            "'temp'], expected ['temp', 'rainfall', 'humidity']",
        ),
    ],
    ids=["unknown-format", "too-few-names", "other-names"],
)
def test_a_model_the_runtime_refuses_fails_the_export_and_writes_nothing(
    linear_cli_export: CliExport,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    changes: dict[str, str],
    message: str,
) -> None:
    out, triton = tmp_path / "out", tmp_path / "triton"
    shutil.copytree(linear_cli_export.out, out)
    before = _snapshot(out)
    monkeypatch.setattr(exporter, "onnx_metadata", _metadata_with(changes))
    with pytest.raises(ArtifactError) as caught:
        exporter.export_checkpoint(linear_cli_export.checkpoint, out, triton_repo=triton)
    assert str(caught.value).startswith(message)
    assert _snapshot(out) == before
    assert not list(triton.iterdir())
    with pytest.raises(ArtifactError) as again:
        exporter.export_checkpoint(linear_cli_export.checkpoint, tmp_path / "new")
    assert str(again.value).startswith(message)
    assert not (tmp_path / "new").exists()


def test_a_refused_model_is_one_error_line(
    linear_cli_export: CliExport, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(exporter, "onnx_metadata", _metadata_with({FORMAT_KEY: "999"}))
    result = CliRunner().invoke(
        export, ["--checkpoint", str(linear_cli_export.checkpoint), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 1
    line = _single_error_line(result.stderr)
    assert "model format '999' is not supported (this pomona reads format 1)" in line
    assert not (tmp_path / "o").exists()
