"""What a reader is asked for (:class:`Spec`) and what it hands back (:class:`Batch`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Batch", "Spec"]


@dataclass(frozen=True)
class Spec:
    """The columns to read.

    ``numbers`` are read as float32 (every cell checked); ``keep`` are passed through
    as they are. ``positional`` lets a file without column names (``.npy``) stand for
    ``numbers`` by position. ``delimiter`` is the CSV delimiter, None to detect it.
    """

    numbers: tuple[str, ...]
    keep: tuple[str, ...] = ()
    positional: bool = False
    delimiter: str | None = None

    @classmethod
    def of(
        cls,
        numbers: Sequence[str],
        keep: Sequence[str] = (),
        *,
        positional: bool = False,
        delimiter: str | None = None,
    ) -> Spec:
        return cls(tuple(numbers), tuple(keep), positional, delimiter)

    @property
    def wanted(self) -> list[str]:
        """Every column read, each once, numbers first."""
        return list(dict.fromkeys([*self.numbers, *self.keep]))


@dataclass
class Batch:
    """Consecutive rows: float32 ``values`` ``[n, len(spec.numbers)]`` and kept columns.

    ``first_row`` is the 1-based number of the first row among the data rows; ``keep``
    maps each kept column to a list or a pyarrow array.
    """

    values: np.ndarray
    first_row: int
    keep: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.values.shape[0])
