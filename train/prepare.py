"""Preparing a run: data and split, the model with its statistics, optimizer, schedule,
batch loader, and, with ``--resume``, the state of the run being continued."""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
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
from pomona.train import distributed
from pomona.train.batches import BatchTensors, batch_loader, needs_pinning, on_device, place
from pomona.train.config import TrainConfig
from pomona.train.dataset import Table, read_table, split_indices
from pomona.train.model import Destandardize, Standardize, build_model
from pomona.train.resume import BestEpoch, restore, resume_state, rng_state
from pomona.train.schedule import build_scheduler
from pomona.train.streaming import StreamedData, StreamTable, open_stream

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
    """The one place that turns ``auto``/``cpu``/``cuda`` into a device; under torchrun
    each rank of a machine takes its own GPU (``LOCAL_RANK``)."""
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if name not in ("auto", "cuda"):
        raise PomonaError(f"unknown device {name!r}; choose auto, cpu or cuda")
    if not torch.cuda.is_available():
        raise PomonaError(
            f"--device cuda: no CUDA device is available to torch {torch.__version__}; "
            "use --device cpu or auto"
        )
    here = distributed.launched()
    if here.size == 1:
        return torch.device("cuda", torch.cuda.current_device())
    if here.local_rank >= torch.cuda.device_count():
        raise PomonaError(
            f"rank {here.rank}: {here.local_size} ranks on this machine but "
            f"{torch.cuda.device_count()} CUDA devices; start at most one rank per GPU "
            "(torchrun --nproc-per-node) or use --device cpu"
        )
    return torch.device("cuda", here.local_rank)


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
    return inverse_correlation(z.T @ z / max(1, len(z)), damping)


def inverse_correlation(correlation: torch.Tensor, damping: float) -> torch.Tensor:
    """``(C + damping I)^-1`` in float64, returned as float32 (see input_preconditioner)."""
    corr = correlation.to(torch.float64)
    eye = torch.eye(corr.shape[0], dtype=torch.float64)
    return torch.linalg.inv(corr + damping * eye).to(torch.float32)


def constant_columns(values: torch.Tensor, names: tuple[str, ...]) -> list[str]:
    """The names of the columns that hold one value on every row."""
    return [name for j, name in enumerate(names) if bool((values[:, j] == values[0, j]).all())]


@dataclass
class Run:
    """Everything the epochs need, built by :func:`prepare` and advanced by ``fit``."""

    config: TrainConfig
    device: torch.device
    table: Table | StreamTable
    x_train: torch.Tensor  # raw features and targets, on the CPU (empty when streaming)
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    model: nn.Sequential  # on ``device``
    optimizer: torch.optim.Optimizer
    scheduler: LambdaLR
    sampler: torch.Generator
    loader: DataLoader[tuple[torch.Tensor, ...]] | None  # features, *standardized* targets
    checkpoint_path: Path
    start: int  # epochs already done (by the checkpoint resumed from)
    resumed: bool
    training_rows: int  # over every rank
    world: distributed.World = field(default_factory=distributed.World)
    history: list[dict[str, Any]] = field(default_factory=list)
    best: BestEpoch | None = None
    warnings: list[str] = field(default_factory=list)
    stream: StreamedData | None = None  # the data, when streamed from disk instead

    def batches(self, epoch: int) -> Iterable[tuple[torch.Tensor, ...]]:
        """Epoch ``epoch``'s batches of features and standardized targets, on the device."""
        if self.stream is not None:
            return self.stream.batches(epoch)
        if self.loader is None:  # pragma: no cover - prepare sets one or the other
            raise TypeError("a run needs a loader or a stream")
        return on_device(self.loader, self.device)

    def global_batches(self) -> list[int]:
        """The rows of each of an epoch's global batches: ``batch_size``, the last fewer."""
        size, rows = self.config.batch_size, self.training_rows
        return [min(size, rows - start) for start in range(0, rows, size)]

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
            "rng": rng_state(self.sampler),
            "history": self.history,
            "metrics": metrics,
        }


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


def _precondition(model: nn.Sequential, correlation: torch.Tensor) -> None:
    """Multiply the first layer's weight gradient by the inverse feature correlation."""
    first = model[1]
    if not isinstance(first, nn.Linear):  # pragma: no cover - build_model's contract
        raise TypeError("build_model's layer 1 must be nn.Linear")
    inverse = inverse_correlation(correlation, PRECONDITION_DAMPING).to(first.weight.device)
    first.weight.register_hook(lambda grad: grad @ inverse)


def _column_warnings(config: TrainConfig, features: list[str], targets: list[str]) -> list[str]:
    notes = [
        f"feature {name} is constant on the training rows: the model cannot use it"
        for name in features
    ]
    notes += [f"target {name} is constant on the training rows" for name in targets]
    return notes


@dataclass
class _Data:
    """The training data as the rest of :func:`prepare` needs them, in memory or streamed."""

    table: Table | StreamTable
    features: Statistics
    targets: Statistics
    correlation: torch.Tensor  # of the standardized features over the training rows
    training_rows: int
    warnings: list[str]
    tensors: dict[str, torch.Tensor]  # x_train, y_train, x_val, y_val (empty when streamed)
    stream: StreamedData | None = None


def _rows(values: np.ndarray, rows: np.ndarray) -> torch.Tensor:
    """``values[rows]`` as a tensor: the array itself, not a copy, when ``rows`` (ascending,
    from :func:`split_indices`) are all of its rows."""
    if len(rows) == len(values) and values.flags.writeable:
        return torch.from_numpy(values)
    return torch.from_numpy(values[rows])


def _in_memory(config: TrainConfig, table: Table | None) -> _Data:
    if table is None:
        table = read_table(config.data, config.features, config.targets)
    train_rows, val_rows = split_indices(table, config.val_fraction, config.seed)
    x = _rows(table.features, train_rows)
    y = _rows(table.targets, train_rows)
    x_mean, x_std = standardization(x)
    z = ((x - x_mean) / x_std).to(torch.float64)
    constant = (constant_columns(x, config.features), constant_columns(y, config.targets))
    return _Data(
        table=table,
        features=(x_mean, x_std),
        targets=standardization(y),
        correlation=z.T @ z / max(1, len(z)),
        training_rows=len(x),
        warnings=_column_warnings(config, *constant) if len(x) >= 2 else [],
        tensors={
            "x_train": x,
            "y_train": y,
            "x_val": _rows(table.features, val_rows),
            "y_val": _rows(table.targets, val_rows),
        },
    )


def _streamed(config: TrainConfig, device: torch.device) -> _Data:
    stream = open_stream(config, device)
    empty = torch.zeros((0, len(config.features)))
    none = torch.zeros((0, len(config.targets)))
    constant = (stream.constant("features"), stream.constant("targets"))
    return _Data(
        table=stream.table,
        features=stream.statistics("features"),
        targets=stream.statistics("targets"),
        correlation=stream.correlation,
        training_rows=stream.training_rows,
        warnings=_column_warnings(config, *constant),
        tensors={"x_train": empty, "y_train": none, "x_val": empty, "y_val": none},
        stream=stream,
    )


def _loader(
    config: TrainConfig, data: _Data, device: torch.device, sampler: torch.Generator
) -> Any:
    """Whole shuffled batches; the training set moves to a GPU once when it fits there."""
    if data.stream is not None:
        return None
    x, y = data.tensors["x_train"], data.tensors["y_train"]
    y_mean, y_std = data.targets
    x, y = place(x, (y - y_mean) / y_std, device)
    return batch_loader(
        BatchTensors(x, y),
        config.batch_size,
        sampler,
        pin=needs_pinning(x.device, device),
        world=distributed.world(),
    )


def prepare(config: TrainConfig, table: Table | None = None, resume: bool = False) -> Run:
    """Read and split the data (or scan it, when streaming), build model, optimizer and
    schedule; restore a resumed run."""
    device = resolve_device(config.device)
    torch.set_num_threads(config.threads or distributed.default_threads())
    data = _streamed(config, device) if config.stream else _in_memory(config, table)
    out = Path(config.out)
    checkpoint_path = out / CHECKPOINT_FILE
    previous = resume_state(checkpoint_path, config, data.table) if resume else None
    start = 0 if previous is None else int(previous["epoch"])
    if not distributed.same_everywhere((start, data.table.sha256)):
        raise PomonaError(
            "the ranks read different data or checkpoints: every rank reads --data and, with "
            "--resume, OUT/checkpoint.pt itself; on several machines use the same files "
            "(a shared folder)"
        )

    model = _new_model(config, data.features, data.targets).to(device)
    if config.precondition:
        _precondition(model, data.correlation)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )
    steps = config.epochs * math.ceil(data.training_rows / config.batch_size)
    sampler = torch.Generator().manual_seed(config.seed)
    run = Run(
        config=config,
        device=device,
        table=data.table,
        x_train=data.tensors["x_train"],
        y_train=data.tensors["y_train"],
        x_val=data.tensors["x_val"],
        y_val=data.tensors["y_val"],
        model=model,
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, config.schedule, steps),
        sampler=sampler,
        loader=_loader(config, data, device, sampler),
        checkpoint_path=checkpoint_path,
        start=start,
        resumed=previous is not None,
        training_rows=data.training_rows,
        world=distributed.world(),
        warnings=data.warnings,
        stream=data.stream,
    )
    if previous is not None:
        restore(run, previous)
    if run.world.main:  # rank 0 alone writes
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ArtifactError(f"{out}: cannot create the output folder: {err.strerror}") from err
    return run
