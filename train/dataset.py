"""Training data: read a CSV into float32 arrays and split it. Needs numpy only, not torch."""

from __future__ import annotations

import csv
import hashlib
import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from pomona.runtime.errors import DataError

__all__ = [
    "BUNDLED_DATA",
    "MIN_TRAIN_ROWS",
    "Table",
    "read_table",
    "split_indices",
]

#: Name under which the bundled crop data are reported.
BUNDLED_DATA = "crop.csv (bundled)"
#: The standardization statistics need at least two rows in the training split.
MIN_TRAIN_ROWS = 2
_FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class Table:
    """Selected columns of a CSV file as float32 arrays, with where they came from."""

    source: str  # the file as the user named it, or BUNDLED_DATA
    sha256: str  # of the file's bytes: --resume uses it to recognise the same data
    feature_names: tuple[str, ...]
    target_names: tuple[str, ...]
    features: np.ndarray  # float32 [rows, features]
    targets: np.ndarray  # float32 [rows, targets]

    def __len__(self) -> int:
        return int(self.features.shape[0])


def _read_bytes(path: str | os.PathLike[str] | None) -> tuple[str, bytes]:
    if path is None:
        return BUNDLED_DATA, resources.files("pomona.train").joinpath("data/crop.csv").read_bytes()
    name = os.fspath(path)
    p = Path(name)
    if not p.exists():
        raise DataError(f"{name}: no such file")
    if p.is_dir():
        raise DataError(f"{name}: is a folder, not a CSV file")
    try:
        return name, p.read_bytes()
    except OSError as err:
        raise DataError(f"{name}: cannot read it: {err.strerror or err}") from err


def _cell(source: str, line: int, column: str, text: str) -> float:
    where = f"{source}, line {line}, column '{column}'"
    stripped = text.strip()
    if not stripped:
        raise DataError(f"{where}: empty cell, expected a number")
    try:
        value = float(stripped)
    except ValueError:
        raise DataError(f"{where}: {stripped!r} is not a number") from None
    if not math.isfinite(value) or abs(value) > _FLOAT32_MAX:
        raise DataError(f"{where}: {stripped!r} is not a finite float32 number")
    return value


def read_table(
    path: str | os.PathLike[str] | None,
    features: Sequence[str],
    targets: Sequence[str],
) -> Table:
    """Read ``features`` and ``targets`` columns from a CSV file with a header line.

    ``path=None`` reads the bundled crop data. Every problem raises :class:`DataError`
    naming the file and, for a bad cell, its line (1 is the header) and column.
    """
    source, raw = _read_bytes(path)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"{source}: not UTF-8 text (byte {err.start} cannot be decoded)") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next((row for row in reader if row), None)
        if header is None:
            raise DataError(f"{source}: the file is empty; expected a header line and data rows")
        header = [name.strip() for name in header]
        header_line = reader.line_num
        wanted = [*features, *targets]
        positions = []
        for name in wanted:
            count = header.count(name)
            if count == 0:
                raise DataError(
                    f"{source}, line {header_line}: no column '{name}' in the header "
                    f"(columns: {', '.join(header)})"
                )
            if count > 1:
                raise DataError(f"{source}, line {header_line}: column '{name}' appears {count}x")
            positions.append(header.index(name))
        columns = list(zip(wanted, positions, strict=True))
        rows: list[list[float]] = []
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank line
            line = reader.line_num
            if len(row) != len(header):
                raise DataError(
                    f"{source}, line {line}: {len(row)} fields, but the header has {len(header)}"
                )
            rows.append([_cell(source, line, name, row[pos]) for name, pos in columns])
    except csv.Error as err:
        raise DataError(f"{source}, line {reader.line_num}: not valid CSV: {err}") from None
    if not rows:
        raise DataError(f"{source}: no data rows after the header")
    values = np.asarray(rows, dtype=np.float32).reshape(len(rows), len(wanted))
    return Table(
        source=source,
        sha256=hashlib.sha256(raw).hexdigest(),
        feature_names=tuple(features),
        target_names=tuple(targets),
        features=np.ascontiguousarray(values[:, : len(features)]),
        targets=np.ascontiguousarray(values[:, len(features) :]),
    )


def split_indices(table: Table, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Shuffle the rows with ``seed`` and hold out ``round(rows * val_fraction)`` (at least one
    when the fraction is above 0) for validation. Returns (train, validation) row indices.
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
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])
