"""The real ``torchrun`` launching the ``pomona`` command on 2 processes (gloo, CPU), as
the README shows it: a run, and a bad data file failing every rank without a hang."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SUBPROCESS_TIMEOUT
from tests.train.test_ddp import free_port

BIN = Path(sys.executable).parent
TORCHRUN, POMONA = BIN / "torchrun", BIN / "pomona"

pytestmark = pytest.mark.skipif(
    not (TORCHRUN.exists() and POMONA.exists()), reason="torchrun or pomona is not installed"
)


def torchrun_pomona(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """``torchrun --nproc-per-node 2 --rdzv-backend c10d --rdzv-endpoint 127.0.0.1:PORT
    --no-python pomona ARGS``."""
    command = [
        TORCHRUN,
        "--nproc-per-node",
        "2",
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"127.0.0.1:{free_port()}",
        "--no-python",
        POMONA,
        *args,
    ]
    return subprocess.run(
        list(map(str, command)),
        capture_output=True,
        text=True,
        check=False,
        timeout=SUBPROCESS_TIMEOUT,  # a hang guard: a rank left waiting fails the test
    )


def test_torchrun_trains_and_rank_zero_writes(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = torchrun_pomona("train", "--epochs", "5", "--device", "cpu", "--out", out)
    assert result.returncode == 0, result.stderr
    summaries = [line for line in result.stderr.splitlines() if line.startswith("trained ")]
    assert len(summaries) == 1, result.stderr
    assert "on cpu (2 ranks x 16 rows = global batch 32)" in summaries[0]
    assert "Traceback" not in result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs_run"] == 5
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint.pt",
        "history.csv",
        "loss_curve.png",
        "metrics.json",
    ]


def test_a_bad_data_file_fails_every_rank_with_one_error_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("temp,rainfall,humidity,apples,oranges\n1,2,x,4,5\n1,2,3,4,5\n1,2,3,4,6\n")
    result = torchrun_pomona("train", "--data", bad, "--out", tmp_path / "out")
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert errors, result.stderr
    assert set(errors) == {f"Error: {bad}, line 2, column 'humidity': 'x' is not a number"}
    assert "[rank0]: Traceback" not in result.stderr  # pomona's own: torchrun adds its report
    assert "[rank1]: Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
