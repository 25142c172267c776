"""Preparing a run: data and split, the model with its statistics, optimizer, schedule,
batch loader, and, with ``--resume``, the state of the run being continued."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader

from pomona.runtime.artifacts import CHECKPOINT_FILE
from pomona.runtime.errors import ArtifactError, PomonaError
from pomona.train.batches import BatchTensors, batch_loader
from pomona.train.checkpoint import load_checkpoint
from pomona.train.config import RESUME_KEYS, TrainConfig
from pomona.train.dataset import Table, read_table, split_indices
from pomona.train.model import Destandardize, Standardize, build_model
from pomona.train.schedule import build_scheduler

__all__ = [
    "CHECKPOINT_FILE",
    "BestEpoch",
    "Run",
    "constant_columns",
    "prepare",
    "resolve_device",
    "set_seed",
    "standardization",
]

#: Added to the correlation matrix's diagonal before inverting it: bounds the step along
#: directions the features hardly vary in (exactly collinear or constant columns).
PRECONDITION_DAMPING = 1e-3


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


def standardization(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-column mean and population std; a constant column gets std 1 (left unscaled)."""
    x = values.to(torch.float64)
    mean = x.mean(dim=0)
    std = x.std(dim=0, correction=0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return mean.to(torch.float32), std.to(torch.float32)


def input_preconditioner(standardized: torch.Tensor, damping: float) -> torch.Tensor:
    """``(C + damping I)^-1`` for the correlation matrix ``C`` of standardized features.

    Multiplying the first layer's weight gradient by it on the right is SGD on whitened
    (decorrelated) inputs: every direction of the linear model's loss gets the same
    curvature, so collinear columns (years next to GDP) no longer slow SGD down to a
    crawl. The model itself is unchanged.
    """
    z = standardized.to(torch.float64)
    corr = z.T @ z / max(1, len(z))
    eye = torch.eye(corr.shape[0], dtype=torch.float64)
    return torch.linalg.inv(corr + damping * eye).to(torch.float32)


def constant_columns(values: torch.Tensor, names: tuple[str, ...]) -> list[str]:
    """The names of the columns that hold one value on every row."""
    return [name for j, name in enumerate(names) if bool((values[:, j] == values[0, j]).all())]


@dataclass
class BestEpoch:
    """The epoch with the lowest validation loss so far, its weights, and the wait since."""

    epoch: int
    val_loss: float
    model_state: dict[str, torch.Tensor]
    epochs_without_improvement: int = 0
    stopped: bool = False  # early stopping ended the run

    def to_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "val_loss": self.val_loss,
            "model_state": self.model_state,
            "epochs_without_improvement": self.epochs_without_improvement,
            "stopped": self.stopped,
        }


@dataclass
class Run:
    """Everything the epochs need, built by :func:`prepare` and advanced by ``fit``."""

    config: TrainConfig
    device: torch.device
    table: Table
    x_train: torch.Tensor  # raw features and targets, on the CPU
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    model: nn.Sequential  # on ``device``
    optimizer: torch.optim.Optimizer
    scheduler: LambdaLR
    sampler: torch.Generator
    loader: DataLoader[tuple[torch.Tensor, ...]]  # features and *standardized* targets
    checkpoint_path: Path
    start: int  # epochs already done (by the checkpoint resumed from)
    resumed: bool
    history: list[dict[str, Any]] = field(default_factory=list)
    best: BestEpoch | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def out(self) -> Path:
        return Path(self.config.out)

    @property
    def target_scale(self) -> Destandardize:
        layer = self.model[-1]
        if not isinstance(layer, Destandardize):  # pragma: no cover - build_model's contract
            raise TypeError("build_model must end with Destandardize")
        return layer

    @property
    def standardized_net(self) -> nn.Sequential:
        """The model without its last layer: raw features in, standardized targets out."""
        return nn.Sequential(*list(self.model)[:-1])

    def checkpoint_state(self, epoch: int, metrics: dict[str, Any] | None) -> dict[str, Any]:
        """The checkpoint after ``epoch`` (see :mod:`pomona.train.checkpoint`).

        Beyond the keys documented there: ``target_normalization`` (the targets' mean and
        std, also the last layer's buffers), ``scheduler_state`` (the learning-rate
        schedule's position), ``best`` (best epoch, its validation loss and weights, the
        epochs since, whether early stopping ended the run; None without validation). A
        finished run's ``model_state`` is the kept (best) model; its last epoch's weights
        are then in ``last_model_state``, which ``--resume`` continues from.
        """
        standardize, target = self.model[0], self.target_scale
        if not isinstance(standardize, Standardize):  # pragma: no cover - build_model's contract
            raise TypeError("build_model must start with Standardize")
        return {
            "config": self.config.to_dict(),
            "feature_names": list(self.config.features),
            "target_names": list(self.config.targets),
            "hidden": list(self.config.hidden),
            "normalization": {
                "mean": standardize.mean.tolist(),
                "std": standardize.std.tolist(),
            },
            "target_normalization": {"mean": target.mean.tolist(), "std": target.std.tolist()},
            "data_sha256": self.table.sha256,
            "model_state": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer_state": self.optimizer.state_dict(),
            "scheduler_state": self.scheduler.state_dict(),
            "best": None if self.best is None else self.best.to_dict(),
            "epoch": epoch,
            "rng": _rng_state(self.sampler),
            "history": self.history,
            "metrics": metrics,
        }


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


def _show(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value)) or "(none)"
    return str(value)


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
    keys = RESUME_KEYS if config.schedule == "constant" else (*RESUME_KEYS, "epochs")
    changes = [
        f"--{key.replace('_', '-')} {_show(saved.get(key))} there, {_show(now[key])} now"
        for key in keys
        if saved.get(key) != now[key]
    ]
    if state.get("data_sha256") != table.sha256:
        changes.append(f"the data differ ({table.source} is not the file it was trained on)")
    if changes:
        spans = "; the --schedule spans all --epochs" if "epochs" in keys else ""
        raise PomonaError(
            f"cannot resume from {path}: it comes from a different run: {'; '.join(changes)}"
            f"{spans}. Use the same settings, or drop --resume to start over"
        )
    if state["epoch"] > config.epochs:
        raise PomonaError(
            f"cannot resume from {path}: it has {state['epoch']} epochs already, "
            f"more than --epochs {config.epochs}"
        )
    return state


Statistics = tuple[torch.Tensor, torch.Tensor]  # per-column mean and std


def _new_model(config: TrainConfig, features: Statistics, targets: Statistics) -> nn.Sequential:
    """The model with the training split's statistics, predicting the targets' mean."""
    set_seed(config.seed)
    model = build_model(len(config.features), len(config.targets), config.hidden)
    scaler, target, output = model[0], model[-1], model[-2]
    if not isinstance(scaler, Standardize) or not isinstance(target, Destandardize):
        raise TypeError("build_model must start with Standardize, end with Destandardize")
    for layer, (mean, std) in ((scaler, features), (target, targets)):
        layer.mean.copy_(mean)
        layer.std.copy_(std)
    with torch.no_grad():  # start from predicting the mean, not from errors of its size
        if isinstance(output, nn.Linear):
            output.bias.zero_()
    return model


def _precondition(model: nn.Sequential, standardized: torch.Tensor) -> None:
    """Multiply the first layer's weight gradient by the inverse feature correlation."""
    first = model[1]
    if not isinstance(first, nn.Linear):  # pragma: no cover - build_model's contract
        raise TypeError("build_model's layer 1 must be nn.Linear")
    inverse = input_preconditioner(standardized, PRECONDITION_DAMPING).to(first.weight.device)
    first.weight.register_hook(lambda grad: grad @ inverse)


def _column_warnings(config: TrainConfig, x: torch.Tensor, y: torch.Tensor) -> list[str]:
    if len(x) < 2:
        return []
    notes = [
        f"feature {name} is constant on the training rows: the model cannot use it"
        for name in constant_columns(x, config.features)
    ]
    notes += [
        f"target {name} is constant on the training rows"
        for name in constant_columns(y, config.targets)
    ]
    return notes


def _restore(run: Run, previous: dict[str, Any]) -> None:
    # A finished run's model_state is its best epoch; the last epoch's weights continue.
    run.model.load_state_dict(previous.get("last_model_state") or previous["model_state"])
    run.optimizer.load_state_dict(previous["optimizer_state"])
    if previous.get("scheduler_state") is not None:
        run.scheduler.load_state_dict(previous["scheduler_state"])
    _restore_rng(previous["rng"], run.sampler)
    run.history = [dict(row) for row in previous.get("history") or []]
    best = previous.get("best")
    if best:
        run.best = BestEpoch(**best)


def prepare(config: TrainConfig, table: Table | None = None, resume: bool = False) -> Run:
    """Read and split the data, build model, optimizer and schedule; restore a resumed run."""
    device = resolve_device(config.device)
    if table is None:
        table = read_table(config.data, config.features, config.targets)
    train_rows, val_rows = split_indices(table, config.val_fraction, config.seed)
    x_train = torch.from_numpy(table.features[train_rows])
    y_train = torch.from_numpy(table.targets[train_rows])
    out = Path(config.out)
    checkpoint_path = out / CHECKPOINT_FILE
    previous = _resume_state(checkpoint_path, config, table) if resume else None

    x_mean, x_std = standardization(x_train)
    y_mean, y_std = standardization(y_train)
    model = _new_model(config, (x_mean, x_std), (y_mean, y_std)).to(device)
    if config.precondition:
        _precondition(model, (x_train - x_mean) / x_std)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )
    steps = config.epochs * math.ceil(len(x_train) / config.batch_size)
    sampler = torch.Generator().manual_seed(config.seed)
    y_standard = ((y_train - y_mean) / y_std).to(device)
    run = Run(
        config=config,
        device=device,
        table=table,
        x_train=x_train,
        y_train=y_train,
        x_val=torch.from_numpy(table.features[val_rows]),
        y_val=torch.from_numpy(table.targets[val_rows]),
        model=model,
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, config.schedule, steps),
        sampler=sampler,
        loader=batch_loader(
            BatchTensors(x_train.to(device), y_standard), config.batch_size, sampler
        ),
        checkpoint_path=checkpoint_path,
        start=0 if previous is None else int(previous["epoch"]),
        resumed=previous is not None,
        warnings=_column_warnings(config, x_train, y_train),
    )
    if previous is not None:
        _restore(run, previous)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ArtifactError(f"{out}: cannot create the output folder: {err.strerror}") from err
    return run
