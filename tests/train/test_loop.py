"""The training loop in-process: determinism, outputs, checkpoint contract, resume rules."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pomona.runtime.errors import ArtifactError, PomonaError
from pomona.train.checkpoint import load_checkpoint, model_from_checkpoint
from pomona.train.config import TrainConfig
from pomona.train.dataset import read_table, split_indices
from pomona.train.loop import evaluate, resolve_device, standardization, train
from pomona.train.metrics import least_squares_mse, regression_metrics


def write_synthetic(path: Path, rows: int, seed: int = 0) -> Path:
    """A CSV with the crop columns and a noisy linear relation, ``rows`` long."""
    rng = np.random.default_rng(seed)
    x = rng.normal([85, 90, 55], [12, 30, 12], size=(rows, 3))
    y = x @ np.array([[-0.4, -0.7], [0.9, 0.8], [0.6, 0.4]]) + rng.normal(0, 1, (rows, 2))
    lines = ["temp,rainfall,humidity,apples,oranges"]
    lines += [",".join(f"{v:.4f}" for v in row) for row in np.hstack([x, y])]
    path.write_text("\n".join(lines) + "\n")
    return path


def states_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def small(tmp_path: Path, name: str, **changes: Any) -> TrainConfig:
    return TrainConfig(**{"out": str(tmp_path / name), "epochs": 5, "device": "cpu", **changes})


def test_same_seed_same_weights_bit_for_bit(tmp_path: Path) -> None:
    a = train(small(tmp_path, "a", hidden=(8,)))
    b = train(small(tmp_path, "b", hidden=(8,)))
    c = train(small(tmp_path, "c", hidden=(8,), seed=1))
    assert states_equal(a.model.state_dict(), b.model.state_dict())
    assert a.history == b.history
    assert not states_equal(a.model.state_dict(), c.model.state_dict())


def test_outputs_and_checkpoint_contract(tmp_path: Path) -> None:
    config = small(tmp_path, "run")
    result = train(config)
    out = Path(config.out)
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint.pt",
        "history.csv",
        "loss_curve.png",
        "metrics.json",
    ]
    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    history = (out / "history.csv").read_text().splitlines()
    assert history[0] == "epoch,train_loss,val_loss" and len(history) == 1 + config.epochs

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(result.metrics))
    assert metrics["train"]["rows"] == 12 and metrics["validation"]["rows"] == 3
    for split in ("train", "validation"):
        assert set(metrics[split]["targets"]) == {"apples", "oranges"}
        assert set(metrics[split]["targets"]["apples"]) == {"mse", "mae", "r2"}

    state = torch.load(out / "checkpoint.pt", weights_only=True)
    for key in ("hidden", "feature_names", "target_names", "normalization", "model_state"):
        assert key in state
    assert state["epoch"] == config.epochs and state["metrics"] == result.metrics
    assert state["config"] == config.to_dict()
    assert [row["epoch"] for row in state["history"]] == list(range(1, 6))

    rebuilt = model_from_checkpoint(load_checkpoint(out / "checkpoint.pt"))
    table = read_table(None, config.features, config.targets)
    x = torch.from_numpy(table.features)
    assert torch.equal(rebuilt(x), result.model(x))

    train_rows, _ = split_indices(table, config.val_fraction, config.seed)
    mean, std = standardization(torch.from_numpy(table.features[train_rows]))
    assert state["normalization"] == {"mean": mean.tolist(), "std": std.tolist()}
    assert torch.equal(state["model_state"]["0.mean"], mean)


def test_mlp_has_no_least_squares_reference(tmp_path: Path) -> None:
    result = train(small(tmp_path, "mlp", hidden=(4, 3), val_fraction=0))
    assert result.metrics["least_squares_mse"] is None and result.metrics["validation"] is None
    assert load_checkpoint(Path(result.config.out) / "checkpoint.pt")["hidden"] == [4, 3]


def test_constant_column_is_left_unscaled() -> None:
    mean, std = standardization(torch.tensor([[1.0, 5.0], [3.0, 5.0]]))
    assert mean.tolist() == [2.0, 5.0] and std.tolist() == [1.0, 1.0]


def test_evaluate_is_gradient_free_and_restores_train_mode() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 1), torch.nn.Dropout(0.5))
    model.train()
    x = torch.randn(1000, 2)
    out = evaluate(model, x)
    assert not out.requires_grad and model.training
    with torch.no_grad():  # dropout was off: exactly the linear layer's output, every row
        assert torch.equal(out, model[0](x))


def test_metrics_by_hand() -> None:
    pred = torch.tensor([[1.0, 2.0], [3.0, 2.0]])
    true = torch.tensor([[1.0, 2.0], [1.0, 2.0]])
    metrics = regression_metrics(pred, true, ["a", "b"])
    assert metrics["mse"] == 1.0 and metrics["mae"] == 0.5
    assert metrics["targets"]["a"] == {"mse": 2.0, "mae": 1.0, "r2": None}
    x = torch.tensor([[0.0], [1.0], [2.0]])
    assert least_squares_mse(x, 3 * x + 1) == pytest.approx(0.0, abs=1e-20)


def test_resume_continues_exactly(tmp_path: Path) -> None:
    # Under the constant schedule a run may be extended: --epochs grows on resume.
    data = str(write_synthetic(tmp_path / "d.csv", 200))
    common = {"data": data, "batch_size": 16, "schedule": "constant"}
    straight = train(small(tmp_path, "straight", epochs=6, **common))
    part = small(tmp_path, "parts", epochs=3, **common)
    train(part)
    resumed = train(dataclasses.replace(part, epochs=6), resume=True)
    assert resumed.resumed_from == 3
    assert states_equal(straight.model.state_dict(), resumed.model.state_dict())
    assert straight.history == resumed.history
    assert straight.metrics == resumed.metrics


def test_resume_refuses_another_run(tmp_path: Path) -> None:
    config = small(tmp_path, "run", lr=0.1, schedule="constant")
    with pytest.raises(ArtifactError, match=r"no checkpoint at .* run without --resume"):
        train(config, resume=True)
    train(config)
    with pytest.raises(
        PomonaError, match=r"--hidden \(none\) there, 3 now; --lr 0\.1 there, 0\.2 now"
    ):
        train(dataclasses.replace(config, lr=0.2, hidden=(3,)), resume=True)
    other = write_synthetic(tmp_path / "other.csv", 20)
    with pytest.raises(PomonaError, match="the data differ"):
        train(dataclasses.replace(config, data=str(other)), resume=True)
    with pytest.raises(PomonaError, match="has 5 epochs already, more than --epochs 2"):
        train(dataclasses.replace(config, epochs=2), resume=True)


def test_divergence_is_reported(tmp_path: Path) -> None:
    with pytest.raises(PomonaError, match=r"training diverged in epoch \d+.*smaller --lr"):
        train(small(tmp_path, "boom", lr=1e6, momentum=0, epochs=100))


def test_device_resolution() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(PomonaError, match="no CUDA device"):
            resolve_device("cuda")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_training_matches_cpu(tmp_path: Path) -> None:
    data = str(write_synthetic(tmp_path / "d.csv", 500))
    cpu = train(small(tmp_path, "cpu", data=data, hidden=(16,), epochs=20))
    gpu = train(small(tmp_path, "gpu", data=data, hidden=(16,), epochs=20, device="cuda"))
    assert gpu.device.type == "cuda"
    for key, value in cpu.model.state_dict().items():
        torch.testing.assert_close(gpu.model.state_dict()[key], value, atol=1e-4, rtol=1e-4)
    assert gpu.metrics["train"]["mse"] == pytest.approx(cpu.metrics["train"]["mse"], rel=1e-3)
    rebuilt = model_from_checkpoint(load_checkpoint(Path(gpu.config.out) / "checkpoint.pt"))
    assert all(t.device.type == "cpu" for t in rebuilt.state_dict().values())
