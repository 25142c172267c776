"""Fitting: the epochs of SGD, validation, the best epoch and early stopping, and a
checkpoint every N epochs or every so many seconds (see :class:`CheckpointClock`)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from pomona.runtime.errors import PomonaError
from pomona.train.checkpoint import save_checkpoint
from pomona.train.prepare import BestEpoch, Run

__all__ = ["CheckpointClock", "EpochCallback", "evaluate", "fit", "train_epoch"]

_EVAL_ROWS = 65536  # rows per forward pass when evaluating, to bound memory on big data

EpochCallback = Callable[[int, dict[str, Any]], None]


def train_epoch(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, ...]],
    optimizer: torch.optim.Optimizer,
    scheduler: LRScheduler | None = None,
    target_std: torch.Tensor | None = None,
) -> float:
    """One pass of SGD steps; returns the mean squared error over the rows seen.

    The model is fitted to the targets it is given (standardized ones, in a run). With
    ``target_std`` the returned loss is on the original scale (errors times ``std``).
    ``scheduler.step()`` follows every SGD step.
    """
    model.train()
    total: torch.Tensor | None = None
    rows = 0
    for x, y in batches:
        optimizer.zero_grad(set_to_none=True)
        error = model(x) - y
        loss = error.pow(2).mean()
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        with torch.no_grad():
            raw = loss if target_std is None else (error * target_std).pow(2).mean()
        weighted = raw.detach() * x.shape[0]
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


def _track_best(run: Run, epoch: int, val_loss: float) -> None:
    """Remember the epoch if its validation loss is the lowest; stop when patience runs out."""
    best = run.best
    if best is None or val_loss < best.val_loss:
        weights = {k: v.detach().cpu().clone() for k, v in run.model.state_dict().items()}
        run.best = BestEpoch(epoch=epoch, val_loss=val_loss, model_state=weights)
        return
    best.epochs_without_improvement += 1
    patience = run.config.early_stopping
    if patience is not None and best.epochs_without_improvement >= patience:
        best.stopped = True


class CheckpointClock:
    """Decides after each epoch whether to write the checkpoint: every ``epochs`` epochs
    and/or once ``seconds`` have passed since the last one (either is enough)."""

    def __init__(self, epochs: int | None, seconds: float | None) -> None:
        self.epochs, self.seconds = epochs, seconds
        self.last = time.monotonic()

    def due(self, epoch: int) -> bool:
        now = time.monotonic()
        by_count = self.epochs is not None and epoch % self.epochs == 0
        by_time = self.seconds is not None and now - self.last >= self.seconds
        if by_count or by_time:
            self.last = now
            return True
        return False


def _validation_loss(run: Run, x_val: torch.Tensor, y_val: torch.Tensor) -> float | None:
    if run.stream is not None:
        return run.stream.validation_loss(run.model)
    if not len(x_val):
        return None
    return float(nn.functional.mse_loss(evaluate(run.model, x_val), y_val))


def fit(run: Run, on_epoch: EpochCallback | None = None) -> None:
    """Run the epochs left, writing the checkpoint when :class:`CheckpointClock` says so;
    ``on_epoch`` follows each epoch. (``finish`` writes the last checkpoint.)

    Stops early when the validation loss has not improved for ``early_stopping`` epochs.
    Raises :class:`PomonaError` when the training loss stops being finite.
    """
    config = run.config
    x_val, y_val = run.x_val.to(run.device), run.y_val.to(run.device)
    net, target_std = run.standardized_net, run.target_scale.std
    clock = CheckpointClock(config.checkpoint_epochs, config.checkpoint_seconds)
    for epoch in range(run.start + 1, config.epochs + 1):
        if run.best is not None and run.best.stopped:
            break
        train_loss = train_epoch(net, run.batches(epoch), run.optimizer, run.scheduler, target_std)
        if not math.isfinite(train_loss):
            raise PomonaError(
                f"training diverged in epoch {epoch}: the training loss is {train_loss}; "
                f"try a smaller --lr (now {config.lr:g})"
            )
        val_loss = _validation_loss(run, x_val, y_val)
        if val_loss is not None:
            _track_best(run, epoch, val_loss)
        run.history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss})
        if epoch < config.epochs and clock.due(epoch):
            save_checkpoint(run.checkpoint_path, run.checkpoint_state(epoch, None))
        if on_epoch is not None:
            on_epoch(epoch, run.history[-1])
