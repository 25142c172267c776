"""Reading a whole input, or streaming it in batches, through the table of formats."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence

import numpy as np

from pomona.runtime.data import messages
from pomona.runtime.data.columns import Batch, Spec
from pomona.runtime.data.formats import FORMATS, Format, sniff
from pomona.runtime.data.source import MAX_LINE_BYTES, Source, open_source
from pomona.runtime.errors import DataError

__all__ = ["DEFAULT_BATCH_SIZE", "open_batches", "read_numbers"]

#: Rows per batch unless told otherwise.
DEFAULT_BATCH_SIZE = 65536


@contextlib.contextmanager
def open_batches(
    path: str | os.PathLike[str],
    spec: Spec,
    batch_size: int = DEFAULT_BATCH_SIZE,
    input_format: str | None = None,
    *,
    max_line_bytes: int = MAX_LINE_BYTES,
) -> Iterator[tuple[Source, Format, Iterator[Batch]]]:
    """Open ``path`` (``-`` for stdin): its source, format and batches (read lazily).

    Every problem with the data raises :class:`DataError` while the batches are read,
    among them a text line longer than ``max_line_bytes``.
    """
    with contextlib.closing(open_source(path, max_line_bytes)) as source:
        fmt = FORMATS[input_format] if input_format else sniff(source)
        if spec.keep and not fmt.named_columns:
            raise DataError(f"{source.name}: --keep needs named columns; .{fmt.name} has none")
        yield source, fmt, fmt.reader(source, spec, batch_size)


def read_numbers(
    path: str | os.PathLike[str],
    columns: Sequence[str],
    *,
    delimiter: str | None = None,
) -> np.ndarray:
    """Every row of the named columns as float32 ``[rows, len(columns)]``.

    DataError when a column is missing, a cell is not a finite number, or there are no rows.
    """
    spec = Spec.of(columns, delimiter=delimiter)
    with open_batches(path, spec) as (source, _, batches):
        parts = [batch.values for batch in batches]
        if not parts:
            raise messages.no_rows(source.name)
    return np.concatenate(parts) if len(parts) > 1 else parts[0]
