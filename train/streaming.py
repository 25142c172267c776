"""Training from shards streamed from disk (``--stream``): the data seen through the same
questions the in-memory run answers (statistics, batches, validation loss, metrics).

The pass before training (:func:`pomona.train.stream.scan`) gives the standardization
statistics, the feature correlation for the preconditioner and the least-squares
reference; each epoch then reads the shards again in a seeded order through a seeded
shuffle buffer. Rows are held out for validation by a seeded hash of their row number.

Under several ranks every rank reads the same stream (the order depends only on the seed
and the epoch) and takes its part of each global batch and of each held-out block; the
metric sums of the ranks are merged.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from pomona.runtime.errors import DataError
from pomona.train import distributed
from pomona.train.config import TrainConfig
from pomona.train.dataset import MIN_TRAIN_ROWS, locate
from pomona.train.metrics import MetricSums, least_squares_mse_of, merged
from pomona.train.stream import Scan, epoch_rows, scan, selected_blocks

__all__ = ["StreamTable", "StreamedData", "open_stream"]


@dataclass(frozen=True)
class StreamTable:
    """The shards of a data set, identified like :class:`pomona.train.dataset.Table`."""

    source: str
    sha256: str
    files: tuple[str, ...]
    feature_names: tuple[str, ...]
    target_names: tuple[str, ...]

    @property
    def columns(self) -> list[str]:
        return [*self.feature_names, *self.target_names]


class StreamedData:
    """One streamed data set with its scan: batches per epoch, validation, metrics."""

    def __init__(self, table: StreamTable, config: TrainConfig, device: torch.device) -> None:
        self.table, self.config, self.device = table, config, device
        self.found: Scan = scan(table.files, table.columns, config.val_fraction, config.seed)
        self.n_features = len(table.feature_names)
        self._check_rows()
        moments = self.found.moments
        std = moments.std()
        self.mean = torch.tensor(moments.mean, dtype=torch.float32)
        self.std = torch.tensor(std, dtype=torch.float32)
        f = self.n_features
        covariance = moments.comoment[:f, :f] / max(moments.n, 1)
        self.correlation = torch.from_numpy(covariance / np.outer(std[:f], std[:f]))

    def _check_rows(self) -> None:
        found, fraction = self.found, self.config.val_fraction
        if found.training_rows >= MIN_TRAIN_ROWS and (fraction == 0 or found.validation_rows):
            return
        n = found.rows
        need = MIN_TRAIN_ROWS + (1 if fraction > 0 else 0)
        split = (
            f" ({MIN_TRAIN_ROWS} for training and 1 for validation at --val-fraction "
            f"{fraction:g}; the seeded split by row gave {found.training_rows} and "
            f"{found.validation_rows})"
            if fraction > 0
            else ""
        )
        raise DataError(
            f"{self.table.source}: {n} data row{'s' if n != 1 else ''}, but training needs at "
            f"least {need}{split}"
        )

    @property
    def training_rows(self) -> int:
        return self.found.training_rows

    def statistics(self, which: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std of the ``features`` or ``targets`` over the training rows."""
        part = slice(0, self.n_features) if which == "features" else slice(self.n_features, None)
        return self.mean[part], self.std[part]

    def constant(self, which: str) -> list[str]:
        flags = self.found.moments.constant().tolist()
        if which == "features":
            return [n for n, c in zip(self.table.feature_names, flags, strict=False) if c]
        flags = flags[self.n_features :]
        return [n for n, c in zip(self.table.target_names, flags, strict=True) if c]

    def least_squares_mse(self) -> float:
        moments = self.found.moments
        return least_squares_mse_of(moments.comoment, moments.n, self.n_features)

    def _tensors(self, block: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        values = torch.from_numpy(np.ascontiguousarray(block))
        if self.device.type == "cuda":
            values = values.pin_memory().to(self.device, non_blocking=True)
        return values[:, : self.n_features], values[:, self.n_features :]

    def batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Epoch ``epoch``'s batches: raw features and *standardized* targets (this rank's
        part of each global batch)."""
        config, share = self.config, distributed.world().share
        y_mean, y_std = (t.to(self.device) for t in self.statistics("targets"))
        for block in epoch_rows(
            self.table.files,
            self.table.columns,
            self.found,
            fraction=config.val_fraction,
            seed=config.seed,
            epoch=epoch,
            batch_size=config.batch_size,
            buffer_rows=config.shuffle_buffer,
        ):
            x, y = self._tensors(share(block))
            yield x, (y - y_mean) / y_std

    def _held(self, validation: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        config, share = self.config, distributed.world().share
        for block in selected_blocks(
            self.table.files,
            self.table.columns,
            self.found,
            config.val_fraction,
            config.seed,
            validation=validation,
        ):
            yield self._tensors(share(block))

    @torch.no_grad()
    def _sums(self, model: nn.Module, validation: bool) -> MetricSums:
        sums = MetricSums(len(self.table.target_names))
        was_training = model.training
        model.eval()
        try:
            for x, y in self._held(validation):
                sums.add(model(x), y)
        finally:
            model.train(was_training)
        return merged(distributed.gather(sums))

    def validation_loss(self, model: nn.Module) -> float | None:
        """The MSE of ``model`` on the held-out rows (original scale), None without any."""
        if not self.found.validation_rows:
            return None
        return float(self._sums(model, validation=True).result(self.table.target_names)["mse"])

    def metrics(self, model: nn.Module, names: Sequence[str]) -> tuple[Any, Any]:
        """Training and validation metrics of ``model`` (validation None without a split)."""
        train = self._sums(model, validation=False).result(names)
        if not self.found.validation_rows:
            return train, None
        return train, self._sums(model, validation=True).result(names)


def open_stream(config: TrainConfig, device: torch.device) -> StreamedData:
    """Locate the shards, checksum them and scan them once."""
    from pomona.runtime.data.shards import shards_sha256

    source, files = locate(config.data)
    table = StreamTable(source, shards_sha256(files), tuple(files), config.features, config.targets)
    return StreamedData(table, config, device)
