"""Training reaches the least-squares optimum on awkward data, judged by numpy, not by itself."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from pomona.train.checkpoint import load_checkpoint, model_from_checkpoint
from pomona.train.config import TrainConfig
from pomona.train.dataset import read_table, split_indices
from pomona.train.finish import diagnose
from pomona.train.loop import train
from pomona.train.metrics import least_squares_mse
from pomona.train.model import Destandardize
from tests.conftest import run_pomona

LONGLEY_LIKE = ("year", "gdp", "population", "armed", "target")


def write_longley_like(path: Path, rows: int = 40, seed: int = 0) -> Path:
    """Calendar years, a GDP that grows with them (collinear) and a target in the 60,000s."""
    rng = np.random.default_rng(seed)
    year = 1947 + np.arange(rows, dtype=np.float64)
    gdp = 2.3e5 + 1.2e4 * (year - 1947) + rng.normal(0, 4e3, rows)
    population = 1.07e5 + 1.5e3 * (year - 1947) + rng.normal(0, 300, rows)
    armed = rng.normal(2.5e3, 700, rows)
    target = 6e4 + 0.03 * gdp + 0.2 * population - 0.5 * armed - 20 * (year - 1947)
    target += rng.normal(0, 300, rows)
    data = np.column_stack([year, gdp, population, armed, target])
    lines = [",".join(LONGLEY_LIKE)] + [",".join(f"{v:.6f}" for v in row) for row in data]
    path.write_text("\n".join(lines) + "\n")
    return path


def lstsq_mse(x: np.ndarray, y: np.ndarray) -> float:
    design = np.hstack([x.astype(np.float64), np.ones((len(x), 1))])
    coef = np.linalg.lstsq(design, y.astype(np.float64), rcond=None)[0]
    return float(((design @ coef - y) ** 2).mean())


def numpy_metrics(pred: np.ndarray, true: np.ndarray) -> tuple[float, float, float]:
    err = pred.astype(np.float64) - true
    ss_tot = ((true - true.mean(axis=0)) ** 2).sum(axis=0)
    r2 = float(np.mean(1 - (err**2).sum(axis=0) / ss_tot))
    return float((err**2).mean()), float(np.abs(err).mean()), r2


def test_least_squares_reference_has_an_intercept() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(50, 10, (30, 3))
    y = x @ rng.normal(size=(3, 2)) + 100 + rng.normal(0, 1, (30, 2))
    ours = least_squares_mse(torch.from_numpy(x), torch.from_numpy(y))
    assert ours == pytest.approx(lstsq_mse(x, y), rel=1e-9)


def test_collinear_large_magnitude_data_reach_the_optimum(tmp_path: Path) -> None:
    data = write_longley_like(tmp_path / "longley.csv")
    features, targets = LONGLEY_LIKE[:-1], LONGLEY_LIKE[-1:]
    config = TrainConfig(
        data=str(data), features=features, targets=targets, val_fraction=0, device="cpu",
        out=str(tmp_path / "out"),
    )  # fmt: skip
    result = train(config)
    table = read_table(str(data), features, targets)
    optimum = lstsq_mse(table.features, table.targets)
    assert result.metrics["least_squares_mse"] == pytest.approx(optimum, rel=1e-6)
    assert result.metrics["warnings"] == []

    # The rebuilt model, judged by numpy alone.
    model = model_from_checkpoint(load_checkpoint(tmp_path / "out" / "checkpoint.pt"))
    with torch.no_grad():
        pred = model(torch.from_numpy(table.features)).numpy()
    mse, mae, r2 = numpy_metrics(pred, table.targets.astype(np.float64))
    assert mse <= 1.01 * optimum
    train_metrics = result.metrics["train"]
    assert train_metrics["mse"] == pytest.approx(mse, rel=1e-5)
    assert train_metrics["mae"] == pytest.approx(mae, rel=1e-5)
    assert train_metrics["r2"] == pytest.approx(r2, rel=1e-6)


def test_targets_are_standardized_inside_the_model(tmp_path: Path) -> None:
    data = write_longley_like(tmp_path / "d.csv")
    config = TrainConfig(
        data=str(data), features=LONGLEY_LIKE[:-1], targets=LONGLEY_LIKE[-1:], hidden=(8,),
        epochs=20, device="cpu", out=str(tmp_path / "out"),
    )  # fmt: skip
    result = train(config)
    table = read_table(str(data), config.features, config.targets)
    train_rows, _ = split_indices(table, config.val_fraction, config.seed)
    y = table.targets[train_rows].astype(np.float64)
    last = result.model[-1]
    assert isinstance(last, Destandardize)
    np.testing.assert_allclose(last.mean.numpy(), y.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(last.std.numpy(), y.std(axis=0), rtol=1e-6)
    state = load_checkpoint(tmp_path / "out" / "checkpoint.pt")
    assert state["target_normalization"] == {
        "mean": last.mean.tolist(),
        "std": last.std.tolist(),
    }


def test_constant_column_warns_and_trains(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (50, 2))
    y = 3 * x[:, 0] - x[:, 1] + rng.normal(0, 0.1, 50)
    path = tmp_path / "c.csv"
    lines = ["a,b,flat,y"] + [
        f"{a},{b},7.5,{t}" for a, b, t in zip(x[:, 0], x[:, 1], y, strict=True)
    ]
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    result = run_pomona(
        "train", "--data", path, "--features", "a,b,flat", "--targets", "y",
        "--val-fraction", "0", "--device", "cpu", "--out", out,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert "WARNING: feature flat is constant on the training rows" in line
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["warnings"] == ["feature flat is constant on the training rows: " + (
        "the model cannot use it")]  # fmt: skip
    assert metrics["train"]["mse"] <= 1.01 * metrics["least_squares_mse"]
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["normalization"]["std"][2] == 1.0
    exported = run_pomona("export", "--checkpoint", out / "checkpoint.pt", "--out", out)
    assert exported.returncode == 0, exported.stderr


def test_large_magnitude_column_exports_and_is_equivalent(tmp_path: Path) -> None:
    data = write_longley_like(tmp_path / "longley.csv", rows=16)
    out = tmp_path / "out"
    trained = run_pomona(
        "train", "--data", data, "--features", ",".join(LONGLEY_LIKE[:-1]),
        "--targets", "target", "--val-fraction", "0", "--device", "cpu", "--out", out,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    exported = run_pomona("export", "--checkpoint", out / "checkpoint.pt", "--out", out)
    assert exported.returncode == 0, exported.stderr
    assert "FAILED" not in exported.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["equivalence"]["passed"] is True


def test_summary_and_metrics_say_when_the_optimum_is_not_reached(tmp_path: Path) -> None:
    data = write_longley_like(tmp_path / "d.csv")
    out = tmp_path / "out"
    result = run_pomona(
        "train", "--data", data, "--features", ",".join(LONGLEY_LIKE[:-1]),
        "--targets", "target", "--val-fraction", "0", "--epochs", "2", "--device", "cpu",
        "--out", out,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    line = result.stderr.strip()
    assert "\n" not in line
    assert re.search(r"WARNING: train MSE is \S+x the least-squares optimum: .*--epochs", line)
    metrics = json.loads((out / "metrics.json").read_text())
    assert any("least-squares optimum" in note for note in metrics["warnings"])


def test_a_growing_loss_is_diagnosed() -> None:
    metrics = {"least_squares_mse": None, "train": {"mse": 1.0}}
    falling = [{"train_loss": 10.0 / epoch} for epoch in range(1, 41)]
    rising = [{"train_loss": float(epoch)} for epoch in range(1, 41)]
    assert diagnose(metrics, falling) == []
    assert any("grew over the last epochs" in note for note in diagnose(metrics, rising))


def test_the_optimum_warning_names_the_kept_epoch() -> None:
    history = [{"train_loss": 1.0}] * 10
    metrics = {"least_squares_mse": 1.0, "train": {"mse": 1.2}, "best_epoch": 4, "epochs_run": 10}
    (note,) = diagnose(metrics, history)
    assert note.startswith("train MSE is 1.2x the least-squares optimum at epoch 4, kept for ")
    assert diagnose({**metrics, "train": {"mse": 1.04}}, history) == []
