"""Checkpoints for export tests, written with the real checkpoint format (no training)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pomona.train.checkpoint import save_checkpoint
from pomona.train.model import build_model

CROP_FEATURES = ["temp", "rainfall", "humidity"]
CROP_TARGETS = ["apples", "oranges"]
# Roughly the statistics of the bundled crop data.
CROP_MEAN = [85.0, 85.0, 55.0]
CROP_STD = [12.0, 30.0, 12.0]


def make_model(
    n_features: int,
    n_targets: int,
    hidden: Sequence[int] = (),
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    seed: int = 0,
    weight_scale: float = 1.0,
    target_mean: Sequence[float] | None = None,
    target_std: Sequence[float] | None = None,
) -> nn.Sequential:
    """``build_model`` with seeded random weights (times ``weight_scale``) and given statistics
    of the features (``mean``, ``std``) and targets (``target_mean``, ``target_std``)."""
    generator = torch.Generator().manual_seed(seed)
    model = build_model(n_features, n_targets, list(hidden))
    with torch.no_grad():
        for layer in model[1:]:
            if isinstance(layer, nn.Linear):
                bound = weight_scale / layer.in_features**0.5
                layer.weight.uniform_(-bound, bound, generator=generator)
                layer.bias.uniform_(-bound, bound, generator=generator)
        if mean is not None:
            model[0].mean.copy_(torch.tensor(mean, dtype=torch.float32))
        if std is not None:
            model[0].std.copy_(torch.tensor(std, dtype=torch.float32))
        if target_mean is not None:
            model[-1].mean.copy_(torch.tensor(target_mean, dtype=torch.float32))
        if target_std is not None:
            model[-1].std.copy_(torch.tensor(target_std, dtype=torch.float32))
    return model.eval()


def write_checkpoint(
    path: Path,
    model: nn.Sequential,
    feature_names: Sequence[str],
    target_names: Sequence[str],
    hidden: Sequence[int] = (),
    **overrides: Any,
) -> Path:
    """Save ``model`` with every documented checkpoint key (``overrides`` replace them)."""
    standardize = model[0]
    state: dict[str, Any] = {
        "model_state": model.state_dict(),
        "optimizer_state": torch.optim.SGD(model.parameters(), lr=0.1).state_dict(),
        "epoch": 5,
        "rng": {"torch": torch.get_rng_state(), "cuda": []},
        "config": {
            "data": None,
            "features": list(feature_names),
            "targets": list(target_names),
            "hidden": list(hidden),
            "lr": 0.1,
            "epochs": 5,
            "seed": 0,
            "device": "auto",
            "out": str(path.parent),
        },
        "feature_names": list(feature_names),
        "target_names": list(target_names),
        "hidden": list(hidden),
        "normalization": {
            "mean": standardize.mean.tolist(),
            "std": standardize.std.tolist(),
        },
        "history": [{"epoch": 5, "train_loss": 1.25, "val_loss": 2.5}],
        "metrics": {"train": {"mse": {name: 1.0 for name in target_names}}},
    }
    state.update(overrides)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, state)
    return path


def crop_checkpoint(path: Path, hidden: Sequence[int] = (), seed: int = 0) -> Path:
    """A checkpoint shaped like one trained on the bundled crop data."""
    model = make_model(3, 2, hidden, CROP_MEAN, CROP_STD, seed=seed)
    return write_checkpoint(path, model, CROP_FEATURES, CROP_TARGETS, hidden)
