"""Preparing a run: the training tensors cut from the table."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from pomona.train.config import TrainConfig
from pomona.train.dataset import read_table, split_indices
from pomona.train.prepare import prepare

CROP = ("temp", "rainfall", "humidity"), ("apples", "oranges")


def test_training_on_every_row_uses_the_table_without_a_copy(tmp_path: Path) -> None:
    table = read_table(None, *CROP)
    config = TrainConfig(out=str(tmp_path / "run"), val_fraction=0, device="cpu")
    run = prepare(config, table)
    assert np.shares_memory(run.x_train.numpy(), table.features)
    assert np.shares_memory(run.y_train.numpy(), table.targets)
    assert tuple(run.x_val.shape) == (0, 3) and tuple(run.y_val.shape) == (0, 2)


def test_a_split_takes_its_rows(tmp_path: Path) -> None:
    table = read_table(None, *CROP)
    config = TrainConfig(out=str(tmp_path / "run"), val_fraction=0.2, device="cpu")
    run = prepare(config, table)
    train, val = split_indices(table, 0.2, config.seed)
    assert np.array_equal(run.x_train.numpy(), table.features[train])
    assert np.array_equal(run.y_val.numpy(), table.targets[val])
    assert not np.shares_memory(run.x_train.numpy(), table.features)


def test_a_read_only_table_is_copied(tmp_path: Path) -> None:
    table = read_table(None, *CROP)
    features = table.features.copy()
    features.setflags(write=False)  # torch would warn about a tensor over it
    table = dataclasses.replace(table, features=features)
    run = prepare(TrainConfig(out=str(tmp_path / "run"), val_fraction=0, device="cpu"), table)
    assert np.array_equal(run.x_train.numpy(), features)
    assert not np.shares_memory(run.x_train.numpy(), features)
