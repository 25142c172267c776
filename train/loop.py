"""The training run in three named steps: prepare, fit, finish.

:func:`prepare` (``pomona.train.prepare``) reads and splits the data and builds model,
optimizer, schedule and loader, restoring them on ``--resume``; :func:`fit`
(``pomona.train.fit``) runs the epochs with a checkpoint after each; :func:`finish`
(``pomona.train.finish``) keeps the best epoch, measures it and writes the outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pomona.train import distributed
from pomona.train.config import TrainConfig
from pomona.train.dataset import Table
from pomona.train.finish import HISTORY_FILE, METRICS_FILE, PLOT_FILE, finish
from pomona.train.fit import EpochCallback, evaluate, fit, train_epoch
from pomona.train.prepare import (
    CHECKPOINT_FILE,
    prepare,
    resolve_device,
    set_seed,
    standardization,
)

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
    world: distributed.World  # the ranks that trained it (one, without torchrun)

    @property
    def out(self) -> Path:
        return Path(self.config.out)


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    on_epoch: EpochCallback | None = None,
    table: Table | None = None,
) -> TrainResult:
    """Train as ``config`` says and write checkpoint, metrics, history and plot to ``config.out``.

    With ``resume`` the run continues from ``config.out/checkpoint.pt``; model, optimizer,
    schedule, early-stopping and RNG states are restored, so the result equals that of an
    uninterrupted run. ``on_epoch(epoch, record)`` is called after each epoch's checkpoint
    is written. ``table`` is the data already read from ``config.data`` (read here when None).

    Under torchrun with several ranks (:mod:`pomona.train.distributed`) the ranks train
    together with DistributedDataParallel and rank 0 alone writes the files.
    """
    with distributed.process_group(resolve_device(config.device)) as world:
        run = prepare(config, table, resume)
        fit(run, on_epoch)
        metrics, plot_error = finish(run)
    return TrainResult(
        config=config,
        model=run.model,
        history=run.history,
        metrics=metrics,
        device=run.device,
        resumed_from=run.start if run.resumed else None,
        plot_error=plot_error,
        world=world,
    )
