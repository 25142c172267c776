"""``pomona train`` as users run it: defaults, summary line, kill and resume, misuse."""

from __future__ import annotations

import dataclasses
import json
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from pomona.train.checkpoint import load_checkpoint
from pomona.train.cli import train as train_command
from pomona.train.config import TrainConfig, default_lr
from pomona.train.loop import train
from tests.conftest import POMONA, run_pomona
from tests.train.test_loop import states_equal, write_synthetic


def test_defaults_end_within_one_percent_of_least_squares(tmp_path: Path) -> None:
    result = run_pomona("train", "--val-fraction", "0", "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    line = result.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    match = re.fullmatch(
        r"trained 15 rows x 3 features -> 2 targets, 200 epochs on (cpu|cuda): "
        r"train MSE (\S+) \(least-squares optimum (\S+)\), val MSE -; wrote .*out/",
        line,
    )
    assert match, line
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert f"{metrics['train']['mse']:.4f}" == match[2]
    assert f"{metrics['least_squares_mse']:.4f}" == match[3]
    assert metrics["train"]["mse"] <= 1.01 * metrics["least_squares_mse"]


def _epoch_in(path: Path) -> int:
    try:
        return int(load_checkpoint(path)["epoch"])
    except Exception:  # not written yet
        return 0


def kill_after_a_checkpoint(options: list[str], out: Path) -> int:
    """Run ``pomona train OPTIONS --out OUT``, SIGKILL it once a checkpoint is written;
    return the checkpoint's epoch."""
    errors_path = out.parent / f"{out.name}.err"
    with errors_path.open("w") as errors:
        proc = subprocess.Popen(
            [*POMONA, "train", *options, "--out", str(out)],
            stdout=subprocess.DEVNULL,
            stderr=errors,
        )
    try:
        while _epoch_in(out / "checkpoint.pt") < 1:
            if proc.poll() is not None:
                pytest.fail(f"training ended early: {errors_path.read_text()}")
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    return _epoch_in(out / "checkpoint.pt")


def test_sigkill_then_resume_gives_the_uninterrupted_weights(tmp_path: Path) -> None:
    data = write_synthetic(tmp_path / "big.csv", 500)
    options = [
        "--data",
        data,
        "--batch-size",
        "8",
        "--hidden",
        "16",
        "--device",
        "cpu",
        "--schedule",
        "constant",
        "--checkpoint-every",
        "1",
    ]
    out = tmp_path / "killed"
    # Far more epochs than it can finish before the kill; training stops at epoch k >= 1.
    kill_after_a_checkpoint([*map(str, options), "--epochs", "100000"], out)
    killed_at = _epoch_in(out / "checkpoint.pt")
    assert killed_at >= 1
    epochs = killed_at + 2

    resumed = run_pomona("train", *options, "--epochs", epochs, "--out", out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"(resumed at epoch {killed_at})" in resumed.stderr

    config = TrainConfig(
        data=str(data),
        hidden=(16,),
        batch_size=8,
        lr=default_lr((16,)),
        schedule="constant",
        epochs=epochs,
        device="cpu",
        out=str(tmp_path / "straight"),
    )
    straight = train(config)
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["epoch"] == epochs
    assert states_equal(state["model_state"], straight.model.state_dict())
    assert state["history"] == straight.history
    # Momentum buffers too: the optimizer continued, it did not restart.
    reference = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    for key, value in reference["optimizer_state"]["state"].items():
        assert torch.equal(state["optimizer_state"]["state"][key]["momentum_buffer"],
                           value["momentum_buffer"])  # fmt: skip


def test_resume_with_other_settings_is_refused(tmp_path: Path) -> None:
    config = TrainConfig(
        epochs=2, lr=0.1, schedule="constant", device="cpu", out=str(tmp_path / "out")
    )
    train(config)
    before = (tmp_path / "out" / "checkpoint.pt").read_bytes()
    result = run_pomona(
        "train",
        "--out",
        config.out,
        "--epochs",
        "4",
        "--lr",
        "0.05",
        "--schedule",
        "constant",
        "--resume",
    )
    assert result.returncode == 1
    assert result.stderr.startswith("Error: cannot resume from ")
    assert "--lr 0.1 there, 0.05 now" in result.stderr
    assert "drop --resume to start over" in result.stderr
    assert (tmp_path / "out" / "checkpoint.pt").read_bytes() == before
    again = dataclasses.replace(config, epochs=3)
    assert train(again, resume=True).resumed_from == 2


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--hidden", "32,x"], "expected comma-separated layer sizes"),
        (["--hidden", "0"], "layer sizes must be at least 1"),
        (["--features", "temp,,humidity"], "expected comma-separated column names"),
        (["--targets", "apples,apples"], "a column is named twice"),
        (["--targets", "temp"], "temp is both a feature and a target"),
        (["--val-fraction", "1"], "--val-fraction"),
        (["--lr", "0"], "--lr"),
        (["--epochs", "0"], "--epochs"),
        (["--batch-size", "0"], "--batch-size"),
        (["--device", "tpu"], "--device"),
        (["--schedule", "step"], "--schedule"),
        (["--early-stopping", "0"], "--early-stopping"),
        (["--early-stopping", "3", "--val-fraction", "0"], "needs a validation split"),
        (["--checkpoint-every", "0"], "expected a number of epochs (5) or a time"),
        (["--checkpoint-every", "5x"], "expected a number of epochs (5) or a time"),
        (["--checkpoint-every", "-1m"], "expected a number of epochs (5) or a time"),
        (["--threads", "0"], "--threads"),
        (["--shuffle-buffer", "-1"], "--shuffle-buffer"),
    ],
)
def test_misuse_is_a_usage_error(options: list[str], message: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(train_command, [*options, "--out", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cuda_without_a_gpu_says_so(tmp_path: Path) -> None:
    result = CliRunner().invoke(train_command, ["--device", "cuda", "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert "--device cuda: no CUDA device is available" in result.output


def test_help_lists_every_option() -> None:
    result = CliRunner().invoke(train_command, ["--help"])
    assert result.exit_code == 0
    for option in (
        "--data",
        "--features",
        "--targets",
        "--hidden",
        "--lr",
        "--momentum",
        "--weight-decay",
        "--epochs",
        "--batch-size",
        "--schedule",
        "--val-fraction",
        "--early-stopping",
        "--seed",
        "--device",
        "--out",
        "--stream",
        "--shuffle-buffer",
        "--threads",
        "--checkpoint-every",
        "--resume",
    ):
        assert option in result.output
