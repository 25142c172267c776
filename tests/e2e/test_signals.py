"""A signal that ends ``pomona export`` or ``pomona predict --engine ray`` mid-run
leaves no staging folder, no temporary file and no output: the real CLI, signalled
once its staging folder holds files."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import POMONA, SUBPROCESS_TIMEOUT, needs
from tests.export.checkpoints import crop_checkpoint
from tests.onnx_models import make_linear_onnx


def _signal_once_staged(command: list[str], staged: str, folder: Path, signum: int) -> str:
    """Run ``command``; once a folder matching ``staged`` in ``folder`` holds a file, send
    ``signum``; return stderr. Fails if the command ends before staging anything."""
    with subprocess.Popen(command, stderr=subprocess.PIPE, text=True) as process:
        assert process.stderr is not None
        try:
            while process.poll() is None:
                if any(any(p.iterdir()) for p in folder.glob(staged) if p.is_dir()):
                    break
                time.sleep(0.02)
            assert process.poll() is None, process.stderr.read()
            process.send_signal(signum)
            _, stderr = process.communicate(timeout=SUBPROCESS_TIMEOUT)
        finally:
            process.kill()
    assert process.returncode == -signum, stderr  # ended by the signal: 128 + signum
    return stderr


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_export_ended_by_a_signal_leaves_nothing(tmp_path: Path, signum: int) -> None:
    checkpoint = crop_checkpoint(tmp_path / "run" / "checkpoint.pt", hidden=(8,))
    out = tmp_path / "out"
    out.mkdir()
    command = [*POMONA, "export", "--checkpoint", str(checkpoint), "--out", str(out)]
    _signal_once_staged(command, ".pomona-export-*", out, signum)
    assert sorted(p.name for p in out.iterdir()) == []


@pytest.mark.slow
def test_predict_on_ray_ended_by_a_signal_leaves_nothing(tmp_path: Path) -> None:
    needs("ray")
    pa, pq = needs("pyarrow"), needs("pyarrow.parquet")
    (tmp_path / "m").mkdir()
    model = make_linear_onnx(tmp_path / "m" / "model.onnx")
    shards = tmp_path / "in"
    shards.mkdir()
    x = np.random.default_rng(0).uniform(-50, 50, size=(2_000_000, 3)).astype(np.float32)
    for i in range(8):
        part = x[i::8]
        columns = {name: part[:, k] for k, name in enumerate(["temp", "rainfall", "humidity"])}
        pq.write_table(pa.table(columns), shards / f"rows-{i}.parquet")
    out = tmp_path / "result"
    command = [*POMONA, "predict", "--engine", "ray", "--workers", "1", str(model)]
    command += [str(shards), "-o", str(out), "--batch-size", "1000"]
    _signal_once_staged(command, ".result.*", tmp_path, signal.SIGTERM)
    assert _leftovers(tmp_path) == [] and not out.exists()
