"""Training data: read a data file into float32 arrays and split it. Needs numpy, not torch."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

import numpy as np

from pomona.runtime.data import read_numbers
from pomona.runtime.data.shards import find_shards, shards_sha256
from pomona.runtime.errors import DataError

__all__ = [
    "BUNDLED_DATA",
    "MIN_TRAIN_ROWS",
    "Table",
    "locate",
    "read_table",
    "split_indices",
]

#: Name under which the bundled crop data are reported.
BUNDLED_DATA = "crop.csv (bundled)"
#: The standardization statistics need at least two rows in the training split.
MIN_TRAIN_ROWS = 2


@dataclass(frozen=True)
class Table:
    """Selected columns of a data file as float32 arrays, with where they came from."""

    source: str  # the file, folder or glob as the user named it, or BUNDLED_DATA
    sha256: str  # of the files' bytes (shards_sha256): --resume recognises the same data by it
    feature_names: tuple[str, ...]
    target_names: tuple[str, ...]
    features: np.ndarray  # float32 [rows, features]
    targets: np.ndarray  # float32 [rows, targets]

    def __len__(self) -> int:
        return int(self.features.shape[0])


def locate(path: str | os.PathLike[str] | None) -> tuple[str, list[str]]:
    """The name to report and the data files: the bundled file, or a file, folder or glob's."""
    if path is None:
        return BUNDLED_DATA, [str(resources.files("pomona.train").joinpath("data/crop.csv"))]
    return os.fspath(path), find_shards(path)


def read_table(
    path: str | os.PathLike[str] | None,
    features: Sequence[str],
    targets: Sequence[str],
) -> Table:
    """Read ``features`` and ``targets`` columns from a data file (CSV with a header line,
    JSON Lines or Parquet; see :mod:`pomona.runtime.data` for the rules), or from every
    data file of a folder or glob (shards, in sorted order, one after another).

    ``path=None`` reads the bundled crop data. Every problem raises :class:`DataError`
    naming the file and, for a bad cell, its line (1 is the header) and column.
    """
    source, files = locate(path)
    columns = [*features, *targets]
    parts = [read_numbers(file, columns) for file in files]
    values = parts[0] if len(parts) == 1 else np.concatenate(parts)
    del parts
    return Table(
        source=source,
        sha256=shards_sha256(files),
        feature_names=tuple(features),
        target_names=tuple(targets),
        features=np.ascontiguousarray(values[:, : len(features)]),
        targets=np.ascontiguousarray(values[:, len(features) :]),
    )


def split_indices(table: Table, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Shuffle the rows with ``seed`` and hold out ``round(rows * val_fraction)`` (at least one
    when the fraction is above 0) for validation. Returns (train, validation) row indices,
    each in ascending order.
    """
    n = len(table)
    n_val = 0 if val_fraction <= 0 else max(1, round(n * val_fraction))
    if n - n_val < MIN_TRAIN_ROWS:
        need = MIN_TRAIN_ROWS + (1 if val_fraction > 0 else 0)
        split = (
            f" ({MIN_TRAIN_ROWS} for training and 1 for validation at --val-fraction "
            f"{val_fraction:g})"
            if val_fraction > 0
            else ""
        )
        raise DataError(
            f"{table.source}: {n} data row{'s' if n != 1 else ''}, but training needs at least "
            f"{need}{split}"
        )
    if n_val == 0:
        return np.arange(n), np.arange(0)
    held = np.zeros(n, dtype=bool)
    held[np.random.default_rng(seed).permutation(n)[:n_val]] = True
    return np.flatnonzero(~held), np.flatnonzero(held)
