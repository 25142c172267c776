"""The training loop: SGD over whole-batch DataLoader batches, a checkpoint after every epoch."""

from __future__ import annotations

import csv
import json
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pomona.runtime.errors import ArtifactError, PomonaError
from pomona.runtime.files import atomic_write
from pomona.train.batches import BatchTensors, batch_loader
from pomona.train.checkpoint import load_checkpoint, save_checkpoint
from pomona.train.config import RESUME_KEYS, TrainConfig
from pomona.train.dataset import Table, read_table, split_indices
from pomona.train.metrics import least_squares_mse, regression_metrics
from pomona.train.model import Standardize, build_model

__all__ = [
    "CHECKPOINT_FILE",
    "HISTORY_FILE",
    "METRICS_FILE",
    "PLOT_FILE",
    "EpochCallback",
    "TrainResult",
    "evaluate",
    "resolve_device",
    "set_seed",
    "standardization",
    "train",
    "train_epoch",
]

CHECKPOINT_FILE = "checkpoint.pt"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.csv"
PLOT_FILE = "loss_curve.png"
_EVAL_ROWS = 65536  # rows per forward pass when evaluating, to bound memory on big data

EpochCallback = Callable[[int, dict[str, Any]], None]


@dataclass
class TrainResult:
    """What a run produced. ``model`` is on the CPU in eval mode."""

    config: TrainConfig
    model: nn.Sequential
    history: list[dict[str, Any]]
    metrics: dict[str, Any]
    device: torch.device
    resumed_from: int | None  # epochs already in the checkpoint, when resumed
    plot_error: str | None  # why the loss curve was not drawn, if it was not

    @property
    def out(self) -> Path:
        return Path(self.config.out)


def resolve_device(name: str) -> torch.device:
    """The one place that turns ``auto``/``cpu``/``cuda`` into a device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise PomonaError(
                f"--device cuda: no CUDA device is available to torch {torch.__version__}; "
                "use --device cpu or auto"
            )
        return torch.device("cuda")
    raise PomonaError(f"unknown device {name!r}; choose auto, cpu or cuda")


def set_seed(seed: int) -> None:
    """Seed every generator a training run may touch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def standardization(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-column mean and population std; a constant column gets std 1 (left unscaled)."""
    x = features.to(torch.float64)
    mean = x.mean(dim=0)
    std = x.std(dim=0, correction=0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return mean.to(torch.float32), std.to(torch.float32)


def train_epoch(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, ...]],
    optimizer: torch.optim.Optimizer,
) -> float:
    """One pass of SGD steps; returns the mean MSE loss over the rows seen."""
    model.train()
    total: torch.Tensor | None = None
    rows = 0
    for x, y in batches:
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        weighted = loss.detach() * x.shape[0]
        total = weighted if total is None else total + weighted
        rows += x.shape[0]
    return float(total) / rows if total is not None else math.nan


@torch.no_grad()
def evaluate(model: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """Predictions in eval mode and without autograd; the model is put back in train mode."""
    was_training = model.training
    model.eval()
    try:
        parts = [model(features[i : i + _EVAL_ROWS]) for i in range(0, len(features), _EVAL_ROWS)]
    finally:
        model.train(was_training)
    return torch.cat(parts) if parts else features.new_zeros((0,))


def _rng_state(sampler: torch.Generator) -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "sampler": sampler.get_state(),
    }


def _restore_rng(rng: dict[str, Any], sampler: torch.Generator) -> None:
    sampler.set_state(rng["sampler"])
    torch.set_rng_state(rng["torch"])
    cuda = rng.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def _resume_state(path: Path, config: TrainConfig, table: Table) -> dict[str, Any]:
    """Load the checkpoint to continue from, refusing one from a different run."""
    if not path.is_file():
        raise ArtifactError(
            f"--resume: no checkpoint at {path} to continue from; run without --resume to start"
        )
    state = load_checkpoint(path)
    if not isinstance(state.get("rng"), dict) or "sampler" not in state["rng"]:
        raise ArtifactError(f"{path}: the checkpoint has no training state (RNG) to resume from")
    saved = state.get("config") or {}
    now = config.to_dict()
    changes = [
        f"--{key.replace('_', '-')} {_show(saved.get(key))} there, {_show(now[key])} now"
        for key in RESUME_KEYS
        if saved.get(key) != now[key]
    ]
    if state.get("data_sha256") != table.sha256:
        changes.append(f"the data differ ({table.source} is not the file it was trained on)")
    if changes:
        raise PomonaError(
            f"cannot resume from {path}: it comes from a different run: {'; '.join(changes)}. "
            "Use the same settings, or drop --resume to start over"
        )
    if state["epoch"] > config.epochs:
        raise PomonaError(
            f"cannot resume from {path}: it has {state['epoch']} epochs already, "
            f"more than --epochs {config.epochs}"
        )
    return state


def _show(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value)) or "(none)"
    return str(value)


def _write_outputs(out: Path, history: list[dict[str, Any]], metrics: dict[str, Any]) -> None:
    with atomic_write(out / METRICS_FILE, "w", encoding="utf-8") as handle:
        json.dump(metrics, handle, indent=2)
        handle.write("\n")
    with atomic_write(out / HISTORY_FILE, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["epoch", "train_loss", "val_loss"])
        for row in history:
            val = row["val_loss"]
            writer.writerow(
                [row["epoch"], repr(row["train_loss"]), "" if val is None else repr(val)]
            )


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    on_epoch: EpochCallback | None = None,
    table: Table | None = None,
) -> TrainResult:
    """Train as ``config`` says and write checkpoint, metrics, history and plot to ``config.out``.

    With ``resume`` the run continues from ``config.out/checkpoint.pt``; model, optimizer
    and RNG states are restored, so the result equals that of an uninterrupted run.
    ``on_epoch(epoch, record)`` is called after each epoch's checkpoint is written.
    ``table`` is the data already read from ``config.data`` (read here when None).
    """
    device = resolve_device(config.device)
    if table is None:
        table = read_table(config.data, config.features, config.targets)
    train_rows, val_rows = split_indices(table, config.val_fraction, config.seed)
    x_train = torch.from_numpy(table.features[train_rows])
    y_train = torch.from_numpy(table.targets[train_rows])
    x_val = torch.from_numpy(table.features[val_rows])
    y_val = torch.from_numpy(table.targets[val_rows])
    out = Path(config.out)
    checkpoint_path = out / CHECKPOINT_FILE
    previous = _resume_state(checkpoint_path, config, table) if resume else None

    set_seed(config.seed)
    model = build_model(len(config.features), len(config.targets), config.hidden)
    scaler = model[0]
    if not isinstance(scaler, Standardize):  # pragma: no cover - build_model's contract
        raise TypeError("build_model must start with Standardize")
    mean, std = standardization(x_train)
    scaler.mean.copy_(mean)
    scaler.std.copy_(std)
    with torch.no_grad():  # start from predicting the mean, not from errors of its size
        output = model[-1]
        if isinstance(output, nn.Linear):
            output.bias.copy_(y_train.to(torch.float64).mean(dim=0))
    model.to(device)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )
    sampler = torch.Generator().manual_seed(config.seed)
    history: list[dict[str, Any]] = []
    if previous is not None:
        model.load_state_dict(previous["model_state"])
        optimizer.load_state_dict(previous["optimizer_state"])
        _restore_rng(previous["rng"], sampler)
        history = [dict(row) for row in previous.get("history") or []]
    start = previous["epoch"] if previous is not None else 0

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ArtifactError(f"{out}: cannot create the output folder: {err.strerror}") from err

    loader = batch_loader(
        BatchTensors(x_train.to(device), y_train.to(device)), config.batch_size, sampler
    )
    x_val_dev, y_val_dev = x_val.to(device), y_val.to(device)
    common = {
        "config": config.to_dict(),
        "feature_names": list(config.features),
        "target_names": list(config.targets),
        "hidden": list(config.hidden),
        "normalization": {"mean": mean.tolist(), "std": std.tolist()},
        "data_sha256": table.sha256,
    }

    def state(epoch: int, metrics: dict[str, Any] | None) -> dict[str, Any]:
        return {
            **common,
            "model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer_state": optimizer.state_dict(),
            "epoch": epoch,
            "rng": _rng_state(sampler),
            "history": history,
            "metrics": metrics,
        }

    for epoch in range(start + 1, config.epochs + 1):
        train_loss = train_epoch(model, loader, optimizer)
        if not math.isfinite(train_loss):
            raise PomonaError(
                f"training diverged in epoch {epoch}: the training loss is {train_loss}; "
                f"try a smaller --lr (now {config.lr:g})"
            )
        val_loss = None
        if len(val_rows):
            val_loss = float(nn.functional.mse_loss(evaluate(model, x_val_dev), y_val_dev))
        history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss})
        save_checkpoint(checkpoint_path, state(epoch, None))
        if on_epoch is not None:
            on_epoch(epoch, history[-1])

    metrics: dict[str, Any] = {
        "epochs": config.epochs,
        "features": list(config.features),
        "targets": list(config.targets),
        "hidden": list(config.hidden),
        "train": regression_metrics(evaluate(model, x_train.to(device)), y_train, config.targets),
        "validation": (
            regression_metrics(evaluate(model, x_val_dev), y_val, config.targets)
            if len(val_rows)
            else None
        ),
        "least_squares_mse": None if config.hidden else least_squares_mse(x_train, y_train),
    }
    save_checkpoint(checkpoint_path, state(config.epochs, metrics))
    _write_outputs(out, history, metrics)
    plot_error = None
    try:
        from pomona.train.plot import plot_history

        plot_history(history, out / PLOT_FILE)
    except ImportError as err:
        plot_error = f"no {PLOT_FILE}: {err.name or 'matplotlib'} is not installed"
    model.cpu().eval()
    return TrainResult(
        config=config,
        model=model,
        history=history,
        metrics=metrics,
        device=device,
        resumed_from=start if previous is not None else None,
        plot_error=plot_error,
    )
