"""Fitting: the epochs of SGD, validation, the best epoch and early stopping, and a
checkpoint every N epochs or every so many seconds (see :class:`CheckpointClock`)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from pomona.runtime.errors import PomonaError
from pomona.train import distributed
from pomona.train.checkpoint import save_checkpoint
from pomona.train.metrics import MetricSums, merged
from pomona.train.prepare import BestEpoch, Run

__all__ = ["CheckpointClock", "EpochCallback", "evaluate", "fit", "shared_sums", "train_epoch"]

_EVAL_ROWS = 65536  # rows per forward pass when evaluating, to bound memory on big data

EpochCallback = Callable[[int, dict[str, Any]], None]


def _loss(error: torch.Tensor, global_rows: int | None, ranks: int) -> torch.Tensor:
    """The mean squared error of the batch; with ``global_rows`` (one rank's part of a
    global batch) the part's squared errors over the global batch's cells, times ``ranks``:
    DDP's average over the ranks is then the global batch's mean, whatever the parts' sizes."""
    if global_rows is None:
        return error.pow(2).mean()
    return error.pow(2).sum() * (ranks / (global_rows * error.shape[1]))


def train_epoch(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, ...]],
    optimizer: torch.optim.Optimizer,
    scheduler: LRScheduler | None = None,
    target_std: torch.Tensor | None = None,
    global_rows: Sequence[int] | None = None,
) -> float:
    """One pass of SGD steps; returns the mean squared error over the rows seen.

    The model is fitted to the targets it is given (standardized ones, in a run). With
    ``target_std`` the returned loss is on the original scale (errors times ``std``).
    ``scheduler.step()`` follows every SGD step. Under several ranks, ``global_rows`` is
    each step's global batch size (the batches are this rank's parts of them) and the
    returned loss is over every rank's rows.
    """
    model.train()
    total: torch.Tensor | None = None
    rows = 0
    ranks = distributed.world().size
    sizes = iter(global_rows) if global_rows is not None else None
    for x, y in batches:
        optimizer.zero_grad(set_to_none=True)
        error = model(x) - y
        loss = _loss(error, None if sizes is None else next(sizes), ranks)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        with torch.no_grad():
            raw = error if target_std is None else error * target_std
            weighted = raw.pow(2).mean() * x.shape[0] if sizes is None else raw.pow(2).mean(1).sum()
        total = weighted if total is None else total + weighted
        rows += x.shape[0]
    if sizes is not None:
        summed, rows_seen = distributed.all_sum([0.0 if total is None else float(total), rows])
        return summed / rows_seen if rows_seen else math.nan
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
    return torch.cat(parts) if parts else model(features)  # no rows: the right shape


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


def shared_sums(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> MetricSums:
    """The metric sums of ``model`` over rows ``x``, ``y`` (every rank holds them all): each
    rank measures its share and the sums of all ranks are merged, the same on every rank."""
    share = distributed.world().share
    sums = MetricSums(y.shape[1])
    sums.add(evaluate(model, share(x)), share(y))
    return merged(distributed.gather(sums))


def _validation_loss(run: Run, x_val: torch.Tensor, y_val: torch.Tensor) -> float | None:
    if run.stream is not None:
        return run.stream.validation_loss(run.model)
    if not len(x_val):
        return None
    if run.world.size > 1:  # reduced over the ranks' shares, not rank 0's alone
        return float(shared_sums(run.model, x_val, y_val).result(run.config.targets)["mse"])
    return float(nn.functional.mse_loss(evaluate(run.model, x_val), y_val))


def fit(run: Run, on_epoch: EpochCallback | None = None) -> None:
    """Run the epochs left, writing the checkpoint when :class:`CheckpointClock` says so;
    ``on_epoch`` follows each epoch. (``finish`` writes the last checkpoint.)

    Stops early when the validation loss has not improved for ``early_stopping`` epochs.
    Raises :class:`PomonaError` when the training loss stops being finite.
    """
    config = run.config
    x_val, y_val = run.x_val.to(run.device), run.y_val.to(run.device)
    net = distributed.wrap(run.standardized_net, run.device)
    target_std = run.target_scale.std
    global_rows = run.global_batches() if run.world.size > 1 else None
    clock = CheckpointClock(config.checkpoint_epochs, config.checkpoint_seconds)
    for epoch in range(run.start + 1, config.epochs + 1):
        if run.best is not None and run.best.stopped:
            break
        train_loss = train_epoch(
            net, run.batches(epoch), run.optimizer, run.scheduler, target_std, global_rows
        )
        if not math.isfinite(train_loss):
            raise PomonaError(
                f"training diverged in epoch {epoch}: the training loss is {train_loss}; "
                f"try a smaller --lr (now {config.lr:g})"
            )
        val_loss = _validation_loss(run, x_val, y_val)
        if val_loss is not None:
            _track_best(run, epoch, val_loss)
        run.history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss})
        if run.world.main and epoch < config.epochs and clock.due(epoch):  # rank 0 writes
            save_checkpoint(run.checkpoint_path, run.checkpoint_state(epoch, None))
        if on_epoch is not None:
            on_epoch(epoch, run.history[-1])
