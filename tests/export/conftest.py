"""Exports shared by the export tests: each one takes seconds, so they run once per session."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from pomona.export import ExportResult, export_checkpoint
from pomona.runtime.artifacts import CHECKPOINT_FILE
from tests.conftest import run_pomona
from tests.export.checkpoints import crop_checkpoint


@dataclass(frozen=True)
class CliExport:
    checkpoint: Path
    out: Path
    triton_repo: Path
    process: subprocess.CompletedProcess[str]


@pytest.fixture(scope="session")
def linear_cli_export(tmp_path_factory: pytest.TempPathFactory) -> CliExport:
    """``pomona export`` (a real subprocess) of a linear crop checkpoint, with a Triton repo."""
    root = tmp_path_factory.mktemp("linear")
    checkpoint = crop_checkpoint(root / "run" / CHECKPOINT_FILE)
    out, triton = root / "out", root / "triton"
    process = run_pomona(
        "export", "--checkpoint", checkpoint, "--out", out, "--triton-repo", triton
    )
    assert process.returncode == 0, process.stderr
    return CliExport(checkpoint, out, triton, process)


@pytest.fixture(scope="session")
def mlp_export(tmp_path_factory: pytest.TempPathFactory) -> ExportResult:
    """An in-process export of a 16,16 MLP checkpoint into the checkpoint's own folder."""
    root = tmp_path_factory.mktemp("mlp")
    checkpoint = crop_checkpoint(root / CHECKPOINT_FILE, hidden=(16, 16), seed=1)
    return export_checkpoint(checkpoint)
