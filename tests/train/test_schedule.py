"""The learning-rate schedule, the best epoch and early stopping, and resuming both exactly."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pomona.runtime.errors import PomonaError
from pomona.train.checkpoint import load_checkpoint
from pomona.train.config import TrainConfig
from pomona.train.loop import train
from pomona.train.schedule import WARMUP_SHARE, build_scheduler, lr_factor
from tests.train.test_loop import states_equal, write_synthetic


class Interrupted(Exception):
    pass


def _stop_after(epoch: int) -> Any:
    def on_epoch(done: int, record: dict[str, Any]) -> None:
        if done == epoch:
            raise Interrupted

    return on_epoch


def test_warm_up_then_decay_to_zero() -> None:
    total = 200
    warmup = math.ceil(WARMUP_SHARE * total)
    for schedule in ("cosine", "linear"):
        factors = [lr_factor(schedule, step, total) for step in range(total)]
        assert factors[0] == pytest.approx(1 / warmup)
        assert factors[warmup - 1] == 1.0 == max(factors)
        assert all(a >= b for a, b in zip(factors[warmup - 1 : -1], factors[warmup:], strict=True))
        assert factors[-1] < 0.01
    assert {lr_factor("constant", step, total) for step in range(total)} == {1.0}
    with pytest.raises(ValueError, match="unknown schedule"):
        lr_factor("step", 0, total)


def test_scheduler_follows_the_factor() -> None:
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=0.5)
    scheduler = build_scheduler(optimizer, "cosine", 40)
    for step in range(40):
        assert optimizer.param_groups[0]["lr"] == pytest.approx(0.5 * lr_factor("cosine", step, 40))
        optimizer.step()
        scheduler.step()


def _config(tmp_path: Path, name: str, data: Path, **changes: Any) -> TrainConfig:
    settings: dict[str, Any] = {
        "data": str(data), "epochs": 8, "batch_size": 16, "device": "cpu",
        "checkpoint_epochs": 1, "out": str(tmp_path / name), **changes,
    }  # fmt: skip
    return TrainConfig(**settings)


def test_a_killed_run_resumes_at_the_same_schedule_position(tmp_path: Path) -> None:
    data = write_synthetic(tmp_path / "d.csv", 120)
    straight = train(_config(tmp_path, "straight", data, hidden=(6,)))
    interrupted = _config(tmp_path, "parts", data, hidden=(6,))
    with pytest.raises(Interrupted):
        train(interrupted, on_epoch=_stop_after(3))
    saved = load_checkpoint(tmp_path / "parts" / "checkpoint.pt")
    assert saved["epoch"] == 3
    steps = 3 * math.ceil(96 / 16)
    assert saved["scheduler_state"]["last_epoch"] == steps
    assert saved["scheduler_state"]["_last_lr"][0] == pytest.approx(
        interrupted.lr * lr_factor("cosine", steps, 8 * 6)
    )
    resumed = train(interrupted, resume=True)
    assert resumed.resumed_from == 3
    assert states_equal(straight.model.state_dict(), resumed.model.state_dict())
    assert straight.history == resumed.history
    assert straight.metrics == resumed.metrics
    final = load_checkpoint(tmp_path / "parts" / "checkpoint.pt")["scheduler_state"]
    reference = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")["scheduler_state"]
    assert final == reference


def test_a_decaying_schedule_cannot_be_extended(tmp_path: Path) -> None:
    data = write_synthetic(tmp_path / "d.csv", 40)
    config = _config(tmp_path, "run", data, epochs=3)
    train(config)
    with pytest.raises(PomonaError, match=r"--epochs 3 there, 5 now; .*spans all --epochs"):
        train(dataclasses.replace(config, epochs=5), resume=True)


def _noise(path: Path, rows: int = 60) -> Path:
    """Targets with no relation to the features: validation loss soon rises with training."""
    rng = np.random.default_rng(3)
    values = rng.normal(0, 1, (rows, 5))
    lines = ["temp,rainfall,humidity,apples,oranges"]
    lines += [",".join(f"{v:.5f}" for v in row) for row in values]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_the_best_validation_epoch_is_kept(tmp_path: Path) -> None:
    data = _noise(tmp_path / "noise.csv")
    config = _config(tmp_path, "best", data, hidden=(32, 32), epochs=30, lr=0.3)
    result = train(config)
    val = [row["val_loss"] for row in result.history]
    best = int(np.argmin(val)) + 1
    assert result.metrics["best_epoch"] == best < 30
    assert result.metrics["validation"]["mse"] == pytest.approx(val[best - 1], rel=1e-6)
    assert result.metrics["stopped_early"] is False and result.metrics["epochs_run"] == 30


def test_early_stopping_stops_and_resumes_exactly(tmp_path: Path) -> None:
    data = _noise(tmp_path / "noise.csv")
    changes = {"hidden": (32, 32), "epochs": 30, "lr": 0.3, "early_stopping": 3}
    straight = train(_config(tmp_path, "straight", data, **changes))
    best = straight.metrics["best_epoch"]
    assert straight.metrics["stopped_early"] is True
    assert straight.metrics["epochs_run"] == best + 3 == len(straight.history)
    val = [row["val_loss"] for row in straight.history]
    assert min(val) == val[best - 1]

    interrupted = _config(tmp_path, "parts", data, **changes)
    with pytest.raises(Interrupted):
        train(interrupted, on_epoch=_stop_after(best + 1))
    resumed = train(interrupted, resume=True)
    assert resumed.metrics == straight.metrics
    assert states_equal(straight.model.state_dict(), resumed.model.state_dict())


def test_summary_names_the_kept_epoch(tmp_path: Path) -> None:
    from tests.conftest import run_pomona

    data = _noise(tmp_path / "noise.csv")
    out = tmp_path / "out"
    result = run_pomona(
        "train", "--data", data, "--hidden", "32,32", "--epochs", "30", "--lr", "0.3",
        "--early-stopping", "3", "--device", "cpu", "--out", out,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    metrics = load_checkpoint(out / "checkpoint.pt")["metrics"]
    assert (
        f"(best epoch {metrics['best_epoch']} kept, stopped early after epoch "
        f"{metrics['epochs_run']})" in result.stderr
    )
